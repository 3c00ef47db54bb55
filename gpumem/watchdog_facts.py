"""What the watchdog's rule (gpumem.watchdog) reads about pods from the API besides the
snapshot: the Pending GPU pods of the served scheduler and the pods being deleted, and which
Pending pods wait for a node's live VRAM. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpumem.explain import judge_nodes
from gpumem.objects import mapping
from gpumem.pending import PendingPod, pending_pod
from gpumem.policy import ExtenderSettings, Policy
from gpumem.state import NodeState


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the rule reads about pods from the API besides the snapshot: the Pending GPU
    pods of the served scheduler, and the UIDs of pods being deleted."""

    pending: tuple[PendingPod, ...] = ()
    terminating: frozenset[str] = frozenset()


def pod_facts(raw_pods: Iterable[Mapping[str, Any]], policy: Policy) -> PodFacts:
    """Pending GPU pods (gpumem.pending.pending_pod: unbound, of the served scheduler,
    PodScheduled=False/Unschedulable, declaring GPU memory) and terminating pods."""
    pending: list[PendingPod] = []
    terminating: set[str] = set()
    names = policy.resource_names
    scheduler = policy.scheduler_name
    for raw in raw_pods:
        metadata = mapping(raw.get("metadata"))
        if metadata.get("deletionTimestamp"):
            uid = metadata.get("uid")
            if isinstance(uid, str) and uid:
                terminating.add(uid)
            continue
        if scheduler is not None:
            found = pending_pod(raw, scheduler, names)
            if found is not None:
                pending.append(found)
    return PodFacts(tuple(pending), frozenset(terminating))


def waiting_on_live_vram(
    pending: Sequence[PendingPod],
    nodes: Mapping[str, NodeState],
    settings: ExtenderSettings,
    now: float,
) -> dict[str, tuple[PendingPod, ...]]:
    """node -> the Pending pods that fit on no node they may go to, and that this node
    refuses for live VRAM (the verdicts `vramguard explain` prints). A pod that fits somewhere
    now is placed by the scheduler's next try, and recycling anything for it would be for
    nothing."""
    waiting: dict[str, list[PendingPod]] = {}
    for pod in pending:
        verdicts = judge_nodes(pod, nodes, settings, now)
        if any(v.verdict == "fits" for v in verdicts):
            continue
        for verdict in verdicts:
            if verdict.refusal is not None and verdict.refusal.kind == "live":
                waiting.setdefault(verdict.node, []).append(pod)
    return {name: tuple(pods) for name, pods in waiting.items()}
