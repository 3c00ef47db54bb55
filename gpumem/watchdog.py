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

On a node with several cards (NodeState.cards) with per-card live telemetry the rule is made
per card, one decision each: the card's live free against the floor; the Pending pods waiting
count for a card the device plugin could give them (gpumem.cards.candidate_cards); a
terminating pod known to hold the card, or unassigned (it may), holds its cooldown, as does a
recycle on that card; and the victim is the pod most over budget among those known to hold
the card. An unassigned pod is never chosen: it may be on another card, and recycling it would
free nothing here. Without per-card telemetry (cards known from GPU Feature Discovery alone)
the node keeps the node-wide rule: its free is the sum over its cards, so free below the floor
there means every card is below it, and any pod over budget is on a card that needs the VRAM.

Pure: frozen data in, decisions out, the caller passes the time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from gpumem.cards import node_candidates
from gpumem.fit import is_stale, staleness_text
from gpumem.pending import PendingPod
from gpumem.policy import ExtenderSettings, Policy
from gpumem.state import CardState, LiveView, NodeState, PodView, Snapshot
from gpumem.watchdog_facts import PodFacts, waiting_on_live_vram

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


def cooldown_key(node: str, card: str | None = None) -> str:
    """What a recycle's cooldown holds back: the node, or on a node with several cards the
    card (by UUID) the victim held, since the VRAM it frees shows on that card alone."""
    return node if card is None else f"{node}/{card}"


@dataclass(frozen=True, slots=True)
class Recycled:
    """A recycle decided earlier on a node (the pod deleted, or only logged in a dry run)."""

    node: str
    uid: str
    namespace: str
    name: str
    at: float
    # The card's UUID on a node with several cards.
    card: str | None = None

    @property
    def key(self) -> str:
        return cooldown_key(self.node, self.card)


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
    # The card decided on, on a node with several cards that have live telemetry; None when
    # the decision is the node's (one card, or no per-card figures).
    card: CardState | None = None

    @property
    def recycles(self) -> bool:
        return self.action == "recycle"

    @property
    def cooldown_key(self) -> str:
        return cooldown_key(self.node, None if self.card is None else self.card.uuid)

    @property
    def pod(self) -> str:
        """namespace/name of the victim, or "" when there is none."""
        return f"{self.victim.namespace}/{self.victim.name}" if self.victim is not None else ""


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
    """One WatchdogDecision per GPU node (a node vramguard knows with a capacity or a live
    reading), or per card of a node with several that have live telemetry, sorted by node and
    card; with `only`, for those nodes alone. `settings` is the policy's extender section: a
    Pending pod is judged by the extender's own fit rule (gpumem.fit). `recycled` is keyed by
    cooldown_key."""
    nodes = snapshot.nodes
    gpu = sorted(name for name, node in nodes.items() if _is_gpu_node(node))
    facts = facts or PodFacts()
    waiting = waiting_on_live_vram(facts.pending, nodes, settings, now)
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
        context = _Context(limits, now, facts.terminating)
        for unit in _units(node, waiting.get(name, ()), recycled, settings, now):
            decisions.append(_decide(node, unit, context))
    return decisions


@dataclass(frozen=True, slots=True)
class _Context:
    limits: WatchdogLimits
    now: float
    terminating: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Unit:
    """What one decision is about: a node judged as a whole, or one card of a node with
    several."""

    card: CardState | None
    live: LiveView | None
    # The pods that may be recycled for it: on a card, those known to hold it.
    pods: tuple[PodView, ...]
    # The pods whose termination may free VRAM here: on a card, also the unassigned ones.
    may_hold: tuple[PodView, ...]
    # Pending pods this node refuses for live VRAM and no other node takes: on a card, only
    # where the device plugin could give them that card.
    waiting: tuple[PendingPod, ...]
    last: Recycled | None
    # Unassigned pods (cards only): never chosen for a card they may not be on.
    unassigned: tuple[PodView, ...] = ()


def _units(
    node: NodeState,
    waiting: tuple[PendingPod, ...],
    recycled: Mapping[str, Recycled],
    settings: ExtenderSettings,
    now: float,
) -> list[_Unit]:
    name = node.name
    if not any(card.live is not None for card in node.cards):
        # One card, or cards without per-card figures: the node-wide rule (module docstring).
        return [_Unit(None, node.live, node.pods, node.pods, waiting, recycled.get(name))]
    unassigned = node.unassigned
    candidates = {c.position for c in node_candidates(node, settings.allocation_policy, now)}
    return [
        _Unit(
            card,
            card.live,
            card.pods,
            (*card.pods, *unassigned),
            waiting if card.position in candidates else (),
            recycled.get(cooldown_key(name, card.uuid)) if card.uuid is not None else None,
            unassigned,
        )
        for card in node.cards
    ]


def _decide(node: NodeState, unit: _Unit, context: _Context) -> WatchdogDecision:
    """The rule (see the module docstring) for one node or card."""
    limits, now, name, card = context.limits, context.now, node.name, unit.card
    floor = limits.floor_mib
    live = unit.live
    # On a card, every message names it first: the log line and the pod's Event say which.
    named = "" if card is None else f"{card.label}: "
    if live is None:
        scope = "" if card is None else " for the card"
        return WatchdogDecision(
            name,
            "none",
            "telemetry-unavailable",
            f"{named}no live GPU memory telemetry{scope}",
            card=card,
        )
    if is_stale(live.sampled_at, limits.max_age_seconds, now):
        return WatchdogDecision(
            name,
            "none",
            "telemetry-unavailable",
            f"{named}live GPU memory telemetry is "
            f"{staleness_text(live, limits.max_age_seconds, now)} ({live.source})",
            card=card,
        )
    free = live.free_mib

    def none(reason: Reason, message: str) -> WatchdogDecision:
        return WatchdogDecision(name, "none", reason, named + message, free, floor, card=card)

    if free >= floor:
        return none("ok", f"live free {free} MiB >= floor {floor} MiB")
    below = f"live free {free} MiB < floor {floor} MiB"
    emergency = min(limits.emergency_floor_mib, floor)
    waiting = unit.waiting
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
        pod for pod in unit.may_hold if pod.uid in context.terminating and (pod.used_mib or 0) > 0
    ]
    if holding:
        pod = holding[0]
        return none(
            "cooldown",
            f"{need}; waiting for {pod.namespace}/{pod.name} to terminate "
            f"(it still holds {pod.used_mib} MiB)",
        )
    last = unit.last
    if last is not None and now - last.at < limits.cooldown_seconds:
        return none(
            "cooldown",
            f"{need}; {last.namespace}/{last.name} was recycled {now - last.at:.0f}s ago, "
            f"waiting {limits.cooldown_seconds:g}s for the freed VRAM to show",
        )
    over = [pod for pod in unit.pods if _over_budget(pod, limits, context.terminating)]
    if not over:
        return none("none-over-budget", f"{need}; {_none_over(unit, limits, context)}")
    victim = min(over, key=_victim_rank)
    used = victim.used_mib or 0
    return WatchdogDecision(
        name,
        "recycle",
        "over-budget",
        f"{named}{need}; {victim.namespace}/{victim.name} uses {used} MiB of "
        f"{victim.declared_mib} declared (+{used - victim.declared_mib}), the most over its "
        "budget",
        free,
        floor,
        victim,
        card,
    )


def _none_over(unit: _Unit, limits: WatchdogLimits, context: _Context) -> str:
    if unit.card is None:
        return "no pod uses more than it declared"
    unknown = [pod for pod in unit.unassigned if _over_budget(pod, limits, context.terminating)]
    if not unknown:
        return "no pod on the card uses more than it declared"
    return (
        f"no pod known to be on the card uses more than it declared ({len(unknown)} "
        "unassigned pod(s) over budget: their card is not known, so none is recycled for this "
        "one)"
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


__all__ = [
    "ACTIONS",
    "NONE_REASONS",
    "REASONS",
    "RECYCLE_REASONS",
    "Recycled",
    "WatchdogDecision",
    "WatchdogLimits",
    "cooldown_key",
    "decide",
]
