"""The fit rule: does a GPU pod fit on a node, in declared budgets and in VRAM free right now.

Pure functions over a frozen NodeState (gpumem.state) and the policy's extender settings; the
caller passes the time. Per node, in MiB, with C the node's capacity:

- declared: sum(declared of pods on node) + sum(reservations) + need <= C
- live: free_live - not_yet_in_use >= need + floor, where not_yet_in_use is the budget of pods
  that have not allocated their VRAM yet (see gpumem.idle.idle_budget) plus reservations.
- telemetry stale (older than maxAgeSeconds: is_stale) or missing: staleMode budget-only skips
  the live check, deny refuses.

On a node with several cards the declared and live checks are made card by card, on every
card the device plugin could give the pod (gpumem.cards); the node-wide declared check stays,
because kube-scheduler counts the node's gpumem too.

Every refusal says why, with the numbers. The fast path (quick_headroom) answers the same
question from a node's precomputed figures where it can, and only ever says "fits" where the
full rule would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gpumem.cards import node_candidates
from gpumem.policy import AllocationPolicy, ExtenderSettings
from gpumem.relief import NO_CARD_RELIEF, NO_RELIEF, Relief
from gpumem.state import NO_PODS, CardState, LiveView, NodeState, QuickFit

PREFIX = "vramguard: "

RefusalKind = Literal[
    "unknown-node", "no-capacity", "too-big", "declared", "live", "stale", "no-budget"
]


def no_budget_message(gpumem_resource: str) -> str:
    """Why a GPU pod that declares no GPU memory is placed nowhere: with 0 MiB counted it would
    pass every node and take a card's memory uncounted (issue 17: the webhook bypassed with
    a pod that names the scheduler itself, or a namespace the webhook excludes)."""
    return (
        f"{PREFIX}the pod uses a GPU but declares no GPU memory ({gpumem_resource} is 0 or "
        "missing): it did not get a budget from vramguard's webhook (its namespace is "
        "excluded, or the pod named this scheduler itself); declare "
        f"{gpumem_resource} or let the webhook set it"
    )


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: RefusalKind
    message: str
    # Whether evicting pods from the node could make room: the scheduler only considers
    # preemption on FailedNodes, not on FailedAndUnresolvableNodes.
    resolvable: bool
    # MiB missing for the pod to fit (declared, live, too-big); None where no amount of
    # memory would do (unknown node, no capacity, stale telemetry). Ranks nodes best-first
    # when a Pending pod is explained (gpumem.explain).
    short_mib: int | None = None
    # On a node with several cards, the position (CardState.position) of the card that
    # refused; None for a node-wide refusal or one no single card made (too big for all).
    card: int | None = None


@dataclass(frozen=True, slots=True)
class NodeFit:
    name: str
    refusal: Refusal | None
    # MiB left once the pod is placed: the tighter of the declared and the live headroom.
    headroom_mib: int = 0
    # The live check was skipped: telemetry stale or missing and staleMode budget-only.
    live_skipped: bool = False

    @property
    def fits(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True, slots=True)
class Limits:
    """The settings the rule reads, looked up once per request rather than once per node."""

    floor_mib: int
    max_age_seconds: float
    budget_only: bool
    source: str
    allocation_policy: AllocationPolicy = "distributed"

    @classmethod
    def of(cls, settings: ExtenderSettings) -> Limits:
        return cls(
            settings.floor_mib,
            settings.max_age_seconds,
            settings.stale_mode == "budget-only",
            settings.telemetry.preset,
            settings.allocation_policy,
        )


# (refusal or None, headroom MiB, live check skipped): a plain tuple because /filter evaluates
# every candidate node and a frozen dataclass per node costs more than the rule itself.
Evaluation = tuple[Refusal | None, int, bool]


def check_node(
    need: int,
    name: str,
    node: NodeState | None,
    settings: ExtenderSettings,
    now: float,
    *,
    relief: Relief = NO_RELIEF,
) -> NodeFit:
    """Apply the fit rule to one node; relief is what evicting victims would give back."""
    refusal, headroom, live_skipped = evaluate(need, node, Limits.of(settings), now, relief)
    return NodeFit(name, refusal, headroom, live_skipped)


# --- The live check's parts -------------------------------------------------------------------


def is_stale(sampled_at: float, max_age_seconds: float, now: float) -> bool:
    """Whether a live sample is too old for the live check: older than maxAgeSeconds."""
    return now - sampled_at > max_age_seconds


def staleness_text(live: LiveView, max_age_seconds: float, now: float) -> str:
    """How stale a live sample is, as every refusal and report says it: "75s old >
    maxAgeSeconds 60"."""
    return f"{live.age(now):.0f}s old > maxAgeSeconds {max_age_seconds:g}"


def not_yet_in_use_mib(node: NodeState, now: float) -> int:
    """What the live check subtracts from live free VRAM: the budgets of pods that are not
    using theirs yet (NodeState.not_yet_using_mib) plus the active reservations."""
    start, end, idle = node.idle_window
    if not start <= now < end:
        idle = node.not_yet_using_mib(now)
    return idle + node.reserved_mib(now) if node.reservations else idle


def quick_headroom(
    quick: QuickFit, need: int, floor_mib: int, max_age_seconds: float, now: float
) -> int | None:
    """The fast path: the headroom (as the full rule counts it) where the pod fits with room
    to spare on a node without reservations, with fresh telemetry and no warm-up starting or
    ending since its state was built; None means "ask the full rule", not "does not fit"."""
    room, free, sampled_at, start, end, idle = quick
    live_room = free - idle - floor_mib - need
    if (
        need <= room
        and live_room >= 0
        and start <= now < end
        and not is_stale(sampled_at, max_age_seconds, now)
    ):
        return min(room - need, live_room)
    return None


def cards_quick_headroom(
    quick_cards: Sequence[QuickFit], need: int, floor_mib: int, max_age_seconds: float, now: float
) -> int | None:
    """The fast path on a node with several cards (NodeState.quick_cards): the tightest
    candidate card's headroom where every candidate takes the fast path; None means "ask the
    full rule", as for quick_headroom."""
    tightest: int | None = None
    for quick in quick_cards:
        headroom = quick_headroom(quick, need, floor_mib, max_age_seconds, now)
        if headroom is None:
            return None
        if tightest is None or headroom < tightest:
            tightest = headroom
    return tightest


# --- The rule ---------------------------------------------------------------------------------


def evaluate(
    need: int, node: NodeState | None, limits: Limits, now: float, relief: Relief = NO_RELIEF
) -> Evaluation:
    """The fit rule for one node (check_node without the NodeFit, for the per-node loops)."""
    if node is None or not node.known:
        return _refusal("unknown-node", "node is not in vramguard's node cache yet", False)
    capacity = node.capacity.mib
    if capacity is None:
        return _refusal(
            "no-capacity",
            "node advertises no GPU memory (no allocatable gpumem, no GPU Feature Discovery "
            "memory label)",
            False,
        )
    if need > capacity:
        return _refusal("too-big", f"need {need} > capacity {capacity} MiB", False, need - capacity)
    if node.cards:
        largest = max(node.cards, key=lambda card: card.capacity_mib or 0)
        card_capacity = largest.capacity_mib or 0
        if need > card_capacity:
            return _refusal(
                "too-big",
                f"need {need} > capacity {card_capacity} MiB of the largest card ({largest.label})",
                False,
                need - card_capacity,
            )

    declared = node.declared_mib - relief.declared_mib
    reserved = node.reserved_mib(now) if node.reservations else 0
    declared_headroom = capacity - declared - reserved - need
    if declared_headroom < 0:
        reserved_part = f" + reserved {reserved}" if reserved else ""
        return _refusal(
            "declared",
            f"{_after(relief)}declared {declared}{reserved_part} + {need} "
            f"> capacity {capacity} MiB",
            True,
            -declared_headroom,
        )

    if node.cards:
        outcome = _evaluate_cards(need, node, limits, now, relief, declared_headroom, reserved)
        if outcome[0] is not None or node.cards_live:
            return outcome
        # No card has live figures of its own: the cards were judged on their budgets, and
        # the node-wide live check follows (necessary, if not sufficient, on several cards).
        declared_headroom = outcome[1]
    live = node.live
    if live is None or is_stale(live.sampled_at, limits.max_age_seconds, now):
        return _stale(live, limits, now, declared_headroom, subject="node", label="")
    idle = not_yet_in_use_mib(node, now) - relief.not_yet_using_mib
    free = live.free_mib + relief.live_freed_mib
    return _live(need, free, idle, live, limits, now, declared_headroom, _after(relief))


def _stale(
    live: LiveView | None,
    limits: Limits,
    now: float,
    declared_headroom: int,
    *,
    subject: str,
    label: str,
) -> Evaluation:
    """No live figures, or too old, for the node or the card (`subject`, named by `label`):
    budget-only passes on the declared check alone, deny refuses."""
    if limits.budget_only:
        return None, declared_headroom, True
    if live is None:
        why = f"no live GPU memory telemetry for the {subject} ({limits.source})"
    else:
        why = (
            f"live GPU memory telemetry is {staleness_text(live, limits.max_age_seconds, now)}"
            f" ({live.source})"
        )
    return _refusal("stale", f"{label}{why}; staleMode deny", False)


def _live(  # noqa: PLR0917 (the figures of one check, in the order the rule states them)
    need: int,
    free: int,
    idle: int,
    live: LiveView,
    limits: Limits,
    now: float,
    declared_headroom: int,
    prefix: str,
) -> Evaluation:
    """free - not yet in use >= need + floor, on the node or a card (`prefix` names it)."""
    available = free - idle
    floor = limits.floor_mib
    if available < need + floor:
        idle_part = f" - {idle} not yet in use = {available}" if idle else ""
        return _refusal(
            "live",
            f"{prefix}live free {free}{idle_part} MiB < need {need} + floor {floor} "
            f"MiB ({live.source}, {live.age(now):.0f}s old)",
            True,
            need + floor - available,
        )
    return None, min(declared_headroom, available - need - floor), False


# --- The rule on a node with several cards (gpumem.cards) ------------------------------------


def _evaluate_cards(  # noqa: PLR0917 (the node rule's own figures, passed on)
    need: int,
    node: NodeState,
    limits: Limits,
    now: float,
    relief: Relief,
    node_headroom: int,
    reserved: int,
) -> Evaluation:
    """The declared and live checks on every candidate card; the tightest card decides.

    Evicting victims changes the replica counts the device plugin goes by, so with relief
    every card is a candidate (the safe side)."""
    if relief is NO_RELIEF:
        candidates = node_candidates(node, limits.allocation_policy, now)
    else:
        candidates = node.cards
    none = relief.by_card.get(None, NO_CARD_RELIEF)
    unassigned = node.unassigned_group or NO_PODS
    shared_declared = unassigned.declared_mib - none.declared_mib
    shared_idle = unassigned.not_yet_using_mib(now) + reserved - none.not_yet_using_mib
    context = _CardContext(need, node, limits, now, relief, shared_declared, shared_idle, reserved)
    headroom = node_headroom
    skipped = False
    worst: Evaluation | None = None
    for card in candidates:
        outcome = _evaluate_card(card, context)
        refusal, room, card_skipped = outcome
        if refusal is None:
            headroom = min(headroom, room)
            skipped = skipped or card_skipped
        elif worst is None or _shortfall(outcome) > _shortfall(worst):
            worst = (dataclasses.replace(refusal, card=card.position), room, card_skipped)
    if worst is not None:
        return worst
    return None, headroom, skipped


@dataclass(frozen=True, slots=True)
class _CardContext:
    """What every card of one node is judged against: the pod, the node-wide parts (the
    unassigned pods' declared and not-yet-used MiB, the reservations) and the victims."""

    need: int
    node: NodeState
    limits: Limits
    now: float
    relief: Relief
    shared_declared: int
    shared_idle: int
    reserved: int


def _evaluate_card(card: CardState, context: _CardContext) -> Evaluation:
    need, limits, now, relief = context.need, context.limits, context.now, context.relief
    shared_declared, shared_idle, reserved = (
        context.shared_declared,
        context.shared_idle,
        context.reserved,
    )
    own = relief.by_card.get(card.uuid, NO_CARD_RELIEF) if card.uuid else NO_CARD_RELIEF
    capacity = card.capacity_mib or 0
    declared = card.declared_mib - own.declared_mib
    declared_headroom = capacity - declared - shared_declared - reserved - need
    if declared_headroom < 0:
        unassigned_part = f" + unassigned {shared_declared}" if shared_declared else ""
        reserved_part = f" + reserved {reserved}" if reserved else ""
        return _refusal(
            "declared",
            f"{_after(relief)}{card.label}: declared {declared}{unassigned_part}{reserved_part}"
            f" + {need} > capacity {capacity} MiB",
            True,
            -declared_headroom,
        )
    if not context.node.cards_live:
        return None, declared_headroom, False
    live = card.live
    if live is None or is_stale(live.sampled_at, limits.max_age_seconds, now):
        return _stale(live, limits, now, declared_headroom, subject="card", label=f"{card.label}: ")
    idle = card.not_yet_using_mib(now) - own.not_yet_using_mib
    free = live.free_mib + own.live_freed_mib
    prefix = f"{_after(relief)}{card.label}: "
    return _live(need, free, idle + shared_idle, live, limits, now, declared_headroom, prefix)


def _shortfall(evaluation: Evaluation) -> int:
    refusal = evaluation[0]
    if refusal is None or refusal.short_mib is None:
        return -1
    return refusal.short_mib


def _after(relief: Relief) -> str:
    if relief is NO_RELIEF:
        return ""
    return f"after evicting {relief.victims} GPU pod(s): "


def _refusal(
    kind: RefusalKind, message: str, resolvable: bool, short_mib: int | None = None
) -> Evaluation:
    return Refusal(kind, PREFIX + message, resolvable, short_mib), 0, False
