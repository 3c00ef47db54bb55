"""The cluster as the admission decision sees it: Namespace labels and PriorityClasses.

Frozen data, filled in by the cluster watches (webhook.cluster) or left unknown without API
access, and read by `decide` without waiting for anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ClassPriority:
    """What the Priority admission plugin copies from a PriorityClass into a pod."""

    value: int
    preemption_policy: str | None = None


@dataclass(frozen=True)
class ClusterView:
    """What the webhook knows about the cluster, from watches. A field that is None is
    unknown (no API access, or not synced yet), and the rules that need it are skipped."""

    namespace_labels: Mapping[str, Mapping[str, str]] | None = None
    priority_classes: frozenset[str] | None = None
    global_default_class: str | None = None
    # value and preemptionPolicy by class name, where known (the same watch as the names).
    class_priorities: Mapping[str, ClassPriority] = field(default_factory=dict)

    def labels_of(self, namespace: str) -> Mapping[str, str] | None:
        if self.namespace_labels is None:
            return None
        return self.namespace_labels.get(namespace)
