from __future__ import annotations

from typing import Any

import pytest

from gpumem.pending import PendingPod


def incoming(need: int = 1500, **fields: Any) -> PendingPod:
    return PendingPod(uid="u-1", namespace="team-a", name="incoming", need_mib=need, **fields)


def expression(operator: str, *values: str, key: str = "pool") -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


AFFINITY = {
    "in": (expression("In", "t4", "a10"), {"pool": "a10"}, True),
    "in-missing-label": (expression("In", "t4"), {}, False),
    "not-in": (expression("NotIn", "t4"), {"pool": "a10"}, True),
    "not-in-missing-label": (expression("NotIn", "t4"), {}, True),
    "not-in-listed": (expression("NotIn", "t4"), {"pool": "t4"}, False),
    "exists": (expression("Exists"), {"pool": ""}, True),
    "does-not-exist": (expression("DoesNotExist"), {"pool": "t4"}, False),
    "gt": (expression("Gt", "8", key="mem"), {"mem": "16"}, True),
    "gt-equal": (expression("Gt", "16", key="mem"), {"mem": "16"}, False),
    "lt": (expression("Lt", "8", key="mem"), {"mem": "4"}, True),
    "gt-not-a-number": (expression("Gt", "8", key="mem"), {"mem": "lots"}, False),
    "unknown-operator": (expression("Near", "t4"), {"pool": "t4"}, False),
    "empty-term-matches-nothing": ({}, {"pool": "t4"}, False),
    "match-fields-name": (
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]},
        {},
        True,
    ),
}


@pytest.mark.parametrize(("term", "labels", "admits"), AFFINITY.values(), ids=AFFINITY.keys())
def test_required_node_affinity(term: dict[str, Any], labels: dict[str, str], admits: bool) -> None:
    assert incoming(affinity_terms=(term,)).admits("n", labels) is admits


def test_affinity_terms_are_ored() -> None:
    pod = incoming(affinity_terms=(expression("In", "t4"), expression("In", "a10")))
    assert pod.admits("n", {"pool": "a10"})
    assert not pod.admits("n", {"pool": "h100"})
