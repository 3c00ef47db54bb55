"""The watchdog's rule: when a card's live free VRAM is below the floor and something needs
that VRAM now, recycle the pod that uses the most beyond its declared budget.

Admission and scheduling keep declared budgets within the card, but a budget is a promise,
not a limit: a time-sliced GPU has no memory isolation, and one tenant's allocator arena can
grow past its budget until its neighbours fail with CUDA out-of-memory errors (the seeds'
immich-ml at 10.7 GB). The watchdog is the backstop the seeds ran as gpu-vram-watchdog.

Per GPU node, one WatchdogDecision, in this order (all MiB):

1. telemetry-unavailable: no live reading for the node, or one older than maxAgeSeconds.
   Nothing is done blind.
2. ok: free >= floor.
3. no-contention: free < floor, but nothing needs the VRAM now: free >= the emergency floor
   and no Pending GPU pod waits for this node on live VRAM. A Pending pod counts when it fits
   on no node it may go to, and this node refuses it for live VRAM (fit kind "live"). A
   refusal on declared budgets does not count: recycling a pod gives its budget back only
   until its controller recreates it, and the over-budget usage is not what blocks that pod.
4. no-pod-usage: telemetry without per-pod usage (the dcgm preset) cannot say which pod is
   over its budget, so there is no one to choose.
5. cooldown: a pod on the node is terminating while telemetry still shows it holding VRAM,
   or this node had a recycle less than cooldown seconds ago. Freed VRAM takes a scrape or
   two to show; acting on the old figure would take a second pod for nothing.
6. none-over-budget: no pod uses more than it declared. Only pods with a declaration
   (declared > 0) and a measured usage count: a pod without a declaration never promised
   anything and is never recycled; neither is a pod in an excluded namespace (policy
   excludedNamespaces: vramguard keeps its hands off those entirely) or one already
   terminating.
7. recycle (reason over-budget): the pod with the largest used - declared; ties go to the
   larger used, then namespace/name.

A node asked for by name that is not a GPU node vramguard knows gets unknown-node.

Pure: frozen data in, decisions out, the caller passes the time.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from gpumem.explain import judge_nodes
from gpumem.fit import is_stale, staleness_text
from gpumem.objects import mapping
from gpumem.pending import PendingPod, pending_pod
from gpumem.policy import ExtenderSettings, Policy
from gpumem.state import NodeState, PodView, Snapshot

WatchdogAction = Literal["none", "recycle"]
Reason = Literal[
    "ok",
    "telemetry-unavailable",
    "no-contention",
    "no-pod-usage",
    "none-over-budget",
    "cooldown",
    "over-budget",
    "unknown-node",
]
ACTIONS: tuple[WatchdogAction, ...] = get_args(WatchdogAction)
REASONS: tuple[Reason, ...] = get_args(Reason)
# Which reasons go with which action (the metrics start every pair at 0).
RECYCLE_REASONS: tuple[Reason, ...] = ("over-budget",)
NONE_REASONS: tuple[Reason, ...] = tuple(r for r in REASONS if r not in RECYCLE_REASONS)


@dataclass(frozen=True, slots=True)
class WatchdogLimits:
    """The thresholds of the rule. emergency_floor_mib above floor_mib acts as floor_mib:
    every reading below the floor is then an emergency (the seeds' rule, with no contention
    test)."""

    floor_mib: int
    emergency_floor_mib: int
    cooldown_seconds: float
    max_age_seconds: float
    # Namespaces whose pods are never recycled (the policy's excludedNamespaces).
    protected_namespaces: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        policy: Policy,
        *,
        floor_mib: int | None = None,
        emergency_floor_mib: int | None = None,
        cooldown_seconds: float,
    ) -> WatchdogLimits:
        """The policy's floor and maxAgeSeconds unless given; the emergency floor defaults
        to half the floor."""
        settings = policy.extender
        floor = settings.floor_mib if floor_mib is None else floor_mib
        emergency = floor // 2 if emergency_floor_mib is None else emergency_floor_mib
        return cls(
            floor_mib=floor,
            emergency_floor_mib=min(emergency, floor),
            cooldown_seconds=cooldown_seconds,
            max_age_seconds=settings.max_age_seconds,
            protected_namespaces=frozenset(policy.excluded_namespaces),
        )


@dataclass(frozen=True, slots=True)
class Recycled:
    """A recycle decided earlier on a node (the pod deleted, or only logged in a dry run)."""

    node: str
    uid: str
    namespace: str
    name: str
    at: float


@dataclass(frozen=True, slots=True)
class WatchdogDecision:
    """What the watchdog does about one node, and why, with the numbers in `message`."""

    node: str
    action: WatchdogAction
    reason: Reason
    message: str
    free_mib: int | None = None
    floor_mib: int | None = None
    # The pod to recycle (action "recycle" only).
    victim: PodView | None = None

    @property
    def recycles(self) -> bool:
        return self.action == "recycle"

    @property
    def pod(self) -> str:
        """namespace/name of the victim, or "" when there is none."""
        return f"{self.victim.namespace}/{self.victim.name}" if self.victim is not None else ""


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


def decide(
    snapshot: Snapshot,
    limits: WatchdogLimits,
    settings: ExtenderSettings,
    now: float,
    *,
    facts: PodFacts | None = None,
    recycled: Mapping[str, Recycled] | None = None,
    only: Collection[str] = (),
) -> list[WatchdogDecision]:
    """One WatchdogDecision per GPU node (a node vramguard knows with a capacity or a live reading),
    sorted by name; with `only`, for those nodes alone. `settings` is the policy's extender
    section: a Pending pod is judged by the extender's own fit rule (gpumem.fit)."""
    nodes = snapshot.nodes
    gpu = sorted(name for name, node in nodes.items() if _is_gpu_node(node))
    facts = facts or PodFacts()
    waiting = _waiting_on_live_vram(facts.pending, nodes, settings, now)
    recycled = recycled or {}
    decisions = []
    for name in sorted(only) if only else gpu:
        node = nodes.get(name)
        if node is None or not _is_gpu_node(node):
            decisions.append(
                WatchdogDecision(
                    name, "none", "unknown-node", f"{name} is not a GPU node vramguard knows"
                )
            )
            continue
        context = _NodeContext(limits, now, facts.terminating, recycled.get(name))
        decisions.append(_decide_node(node, waiting.get(name, ()), context))
    return decisions


@dataclass(frozen=True, slots=True)
class _NodeContext:
    limits: WatchdogLimits
    now: float
    terminating: frozenset[str]
    last: Recycled | None


def _decide_node(
    node: NodeState, waiting: Sequence[PendingPod], context: _NodeContext
) -> WatchdogDecision:
    """The rule (see the module docstring) for one node; `waiting` are the Pending pods that
    this node refuses for live VRAM and no other node takes."""
    limits, now, name = context.limits, context.now, node.name
    floor = limits.floor_mib
    live = node.live
    if live is None:
        return WatchdogDecision(
            name, "none", "telemetry-unavailable", "no live GPU memory telemetry"
        )
    if is_stale(live.sampled_at, limits.max_age_seconds, now):
        return WatchdogDecision(
            name,
            "none",
            "telemetry-unavailable",
            f"live GPU memory telemetry is {staleness_text(live, limits.max_age_seconds, now)} "
            f"({live.source})",
        )
    free = live.free_mib

    def none(reason: Reason, message: str) -> WatchdogDecision:
        return WatchdogDecision(name, "none", reason, message, free, floor)

    if free >= floor:
        return none("ok", f"live free {free} MiB >= floor {floor} MiB")
    below = f"live free {free} MiB < floor {floor} MiB"
    emergency = min(limits.emergency_floor_mib, floor)
    if free < emergency:
        need = f"{below}, and < emergency floor {emergency} MiB"
    elif waiting:
        first = waiting[0]
        more = f" and {len(waiting) - 1} more" if len(waiting) > 1 else ""
        need = (
            f"{below}, and {first.namespace}/{first.name}{more} waits for it "
            f"(Pending, needs {first.need_mib} MiB, refused on live VRAM)"
        )
    else:
        return none(
            "no-contention",
            f"{below}, but nothing waits for it: no Pending GPU pod refused on live VRAM, "
            f"and free >= emergency floor {emergency} MiB",
        )
    if not node.per_pod_usage:
        return none(
            "no-pod-usage",
            f"{need}; telemetry ({live.source}) has no per-pod usage, so no pod can be "
            "found over its budget",
        )
    holding = [
        pod for pod in node.pods if pod.uid in context.terminating and (pod.used_mib or 0) > 0
    ]
    if holding:
        pod = holding[0]
        return none(
            "cooldown",
            f"{need}; waiting for {pod.namespace}/{pod.name} to terminate "
            f"(it still holds {pod.used_mib} MiB)",
        )
    last = context.last
    if last is not None and now - last.at < limits.cooldown_seconds:
        return none(
            "cooldown",
            f"{need}; {last.namespace}/{last.name} was recycled {now - last.at:.0f}s ago, "
            f"waiting {limits.cooldown_seconds:g}s for the freed VRAM to show",
        )
    over = [pod for pod in node.pods if _over_budget(pod, limits, context.terminating)]
    if not over:
        return none("none-over-budget", f"{need}; no pod uses more than it declared")
    victim = min(over, key=_victim_rank)
    used = victim.used_mib or 0
    return WatchdogDecision(
        name,
        "recycle",
        "over-budget",
        f"{need}; {victim.namespace}/{victim.name} uses {used} MiB of {victim.declared_mib} "
        f"declared (+{used - victim.declared_mib}), the most over its budget",
        free,
        floor,
        victim,
    )


def _is_gpu_node(node: NodeState) -> bool:
    return node.known and (node.capacity.mib is not None or node.live is not None)


def _over_budget(pod: PodView, limits: WatchdogLimits, terminating: frozenset[str]) -> bool:
    return (
        pod.declared_mib > 0
        and pod.used_mib is not None
        and pod.used_mib > pod.declared_mib
        and pod.uid not in terminating
        and pod.namespace not in limits.protected_namespaces
    )


def _victim_rank(pod: PodView) -> tuple[int, int, str, str]:
    used = pod.used_mib or 0
    return (-(used - pod.declared_mib), -used, pod.namespace, pod.name)


def _waiting_on_live_vram(
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


__all__ = [
    "ACTIONS",
    "NONE_REASONS",
    "REASONS",
    "RECYCLE_REASONS",
    "PodFacts",
    "Recycled",
    "WatchdogDecision",
    "WatchdogLimits",
    "decide",
    "pod_facts",
]
