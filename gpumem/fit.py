"""The fit rule: does a GPU pod fit on a node, in declared budgets and in VRAM free right now.

Pure functions over a frozen NodeState (gpumem.state) and the policy's extender settings; the
caller passes the time. Per node, in MiB, with C the node's capacity:

- declared: sum(declared of pods on node) + sum(reservations) + need <= C
- live: free_live - not_yet_in_use >= need + floor, where not_yet_in_use is the budget of pods
  that have not allocated their VRAM yet (see gpumem.nodestate.idle_budget) plus reservations.
- telemetry stale (older than maxAgeSeconds: is_stale) or missing: staleMode budget-only skips
  the live check, deny refuses.

Every refusal says why, with the numbers. The fast path (quick_headroom) answers the same
question from a node's precomputed figures where it can, and only ever says "fits" where the
full rule would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gpumem.nodestate import idle_budget
from gpumem.policy import ExtenderSettings
from gpumem.state import LiveView, NodeState, QuickFit

PREFIX = "vramguard: "

RefusalKind = Literal["unknown-node", "no-capacity", "too-big", "declared", "live", "stale"]


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


@dataclass(frozen=True, slots=True)
class Relief:
    """What evicting a set of victims gives back on their node."""

    declared_mib: int = 0
    not_yet_using_mib: int = 0
    live_freed_mib: int = 0
    victims: int = 0


NO_RELIEF = Relief()


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

    @classmethod
    def of(cls, settings: ExtenderSettings) -> Limits:
        return cls(
            settings.floor_mib,
            settings.max_age_seconds,
            settings.stale_mode == "budget-only",
            settings.telemetry.preset,
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

    live = node.live
    if live is None or is_stale(live.sampled_at, limits.max_age_seconds, now):
        if limits.budget_only:
            return None, declared_headroom, True
        if live is None:
            why = f"no live GPU memory telemetry for the node ({limits.source})"
        else:
            why = (
                f"live GPU memory telemetry is {staleness_text(live, limits.max_age_seconds, now)}"
                f" ({live.source})"
            )
        return _refusal("stale", f"{why}; staleMode deny", False)

    idle = not_yet_in_use_mib(node, now) - relief.not_yet_using_mib
    free = live.free_mib + relief.live_freed_mib
    available = free - idle
    floor = limits.floor_mib
    if available < need + floor:
        idle_part = f" - {idle} not yet in use = {available}" if idle else ""
        return _refusal(
            "live",
            f"{_after(relief)}live free {free}{idle_part} MiB < need {need} + floor {floor} "
            f"MiB ({live.source}, {live.age(now):.0f}s old)",
            True,
            need + floor - available,
        )
    return None, min(declared_headroom, available - need - floor), False


def victims_relief(node: NodeState, uids: Sequence[str], now: float) -> Relief:
    """What evicting these pods gives back.

    Only pods the snapshot counts on the node count: a victim it does not know is either not a
    GPU pod or not counted in the node's figures yet, so removing it changes nothing here.
    Live VRAM freed is the victim's measured usage. Without per-pod usage, a victim past its
    warm-up is assumed to hold its budget (the best estimate there is), capped by the node's
    measured usage; a warming victim is assumed to hold nothing yet, which is the safe side.
    """
    by_uid = {pod.uid: pod for pod in node.pods}
    declared = idle = freed = estimated = victims = 0
    for uid in uids:
        pod = by_uid.get(uid)
        if pod is None:
            continue
        victims += 1
        declared += pod.declared_mib
        base, warming = idle_budget(pod, node.per_pod_usage)
        warm = pod.warming(now)
        idle += base + (warming if warm else 0)
        if pod.used_mib is not None:
            freed += pod.used_mib
        elif not node.per_pod_usage and not warm:
            estimated += pod.declared_mib
    live = node.live
    if live is not None and live.used_mib is not None:
        estimated = min(estimated, max(0, live.used_mib - freed))
    return Relief(declared, idle, freed + estimated, victims)


def _after(relief: Relief) -> str:
    if relief is NO_RELIEF:
        return ""
    return f"after evicting {relief.victims} GPU pod(s): "


def _refusal(
    kind: RefusalKind, message: str, resolvable: bool, short_mib: int | None = None
) -> Evaluation:
    return Refusal(kind, PREFIX + message, resolvable, short_mib), 0, False
