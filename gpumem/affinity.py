"""Whether a pod's nodeSelector and required node affinity allow a node.

The part of kube-scheduler's NodeAffinity plugin that explaining a refusal needs: a
nodeSelector (every label equal) and requiredDuringSchedulingIgnoredDuringExecution's
nodeSelectorTerms (ORed; the requirements of one term ANDed; matchExpressions on the node's
labels, matchFields on its name). Taints, preferred affinity and the rest are kube-scheduler's to
explain. Pure: raw terms and labels in, a bool out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gpumem.objects import mapping, sequence


def admits(
    node_selector: Mapping[str, str],
    affinity_terms: Sequence[Mapping[str, Any]],
    node: str,
    labels: Mapping[str, str],
) -> bool:
    """Whether a pod's nodeSelector and required node affinity allow the node (taints and the
    rest are kube-scheduler's to explain)."""
    for key, value in node_selector.items():
        if labels.get(key) != value:
            return False
    if not affinity_terms:
        return True
    return any(_term_matches(term, node, labels) for term in affinity_terms)


def _term_matches(term: Mapping[str, Any], node: str, labels: Mapping[str, str]) -> bool:
    """A nodeSelectorTerm: all its requirements hold; a term with none matches no node."""
    expressions = sequence(term.get("matchExpressions"))
    fields = sequence(term.get("matchFields"))
    if not expressions and not fields:
        return False
    for item in expressions:
        requirement = mapping(item)
        key = str(requirement.get("key", ""))
        if not _requirement_holds(requirement, labels.get(key)):
            return False
    for item in fields:
        requirement = mapping(item)
        value = node if requirement.get("key") == "metadata.name" else None
        if not _requirement_holds(requirement, value):
            return False
    return True


def _requirement_holds(requirement: Mapping[str, Any], value: str | None) -> bool:
    operator = requirement.get("operator")
    values = [str(v) for v in sequence(requirement.get("values"))]
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False
