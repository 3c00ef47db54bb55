"""The fit rule: does a GPU pod fit on a node, in declared budgets and in VRAM free right now.

Pure functions over a frozen Snapshot and the policy's extender settings; the caller passes the
time. Per node, in MiB, with C the node's capacity:

- declared: sum(declared of pods on node) + sum(reservations) + need <= C
- live: free_live - not_yet_using >= need + floor, where not_yet_using is the budget of pods
  that have not allocated their VRAM yet (see snapshot.idle_budget) plus reservations.
- telemetry stale or missing: staleMode budget-only skips the live check, deny refuses.

Every refusal says why, with the numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from extender.models import MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY
from extender.snapshot import NodeState, Snapshot, idle_budget
from gpumem.demand import PodDemand
from gpumem.policy import ExtenderSettings

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
    # when a Pending pod is explained (extender.explain).
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


@dataclass(frozen=True)
class FilterResult:
    passed: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    refusals_by_kind: Mapping[RefusalKind, int] = field(default_factory=dict)
    # Nodes that passed without a live check (budget-only), for the stale-mode metric.
    live_skipped: int = 0


@dataclass(frozen=True)
class PreemptionVetting:
    kept: tuple[str, ...]
    refused: dict[str, str] = field(default_factory=dict)


def need_mib(demand: PodDemand) -> int:
    """The MiB a pod asks for; 0 means it has no GPU-memory demand and passes untouched."""
    return demand.declared_mib or 0


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
    refusal, headroom, live_skipped = _evaluate(need, node, Limits.of(settings), now, relief)
    return NodeFit(name, refusal, headroom, live_skipped)


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


def _evaluate(
    need: int, node: NodeState | None, limits: Limits, now: float, relief: Relief
) -> Evaluation:
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
    if live is None or now - live.sampled_at > limits.max_age_seconds:
        if limits.budget_only:
            return None, declared_headroom, True
        if live is None:
            why = f"no live GPU memory telemetry for the node ({limits.source})"
        else:
            why = (
                f"live GPU memory telemetry is {live.age(now):.0f}s old > maxAgeSeconds "
                f"{limits.max_age_seconds:g} ({live.source})"
            )
        return _refusal("stale", f"{why}; staleMode deny", False)

    start, end, idle = node.idle_window
    if not start <= now < end:
        idle = node.not_yet_using_mib(now)
    idle += reserved - relief.not_yet_using_mib
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


def filter_nodes(
    demand: PodDemand,
    candidates: Sequence[str],
    snapshot: Snapshot,
    settings: ExtenderSettings,
    now: float,
) -> FilterResult:
    """Split the candidates into nodes where the pod fits and refusals with their reasons."""
    need = need_mib(demand)
    if need == 0:
        return FilterResult(passed=tuple(candidates))
    passed: list[str] = []
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    kinds: Counter[RefusalKind] = Counter()
    live_skipped = 0
    nodes = snapshot.nodes
    limits = Limits.of(settings)
    floor, max_age = limits.floor_mib, limits.max_age_seconds
    for name in candidates:
        node = nodes.get(name)
        # The fast path: a node with no reservations, fresh telemetry and no warm-up starting
        # or ending since the snapshot was built, where the pod fits with room to spare, passes
        # without the full rule. It only ever says "fits" where _evaluate would (tested).
        quick = node.quick if node is not None else None
        if quick is not None:
            room, free, sampled_at, start, end, idle = quick
            if (
                need <= room
                and now - sampled_at <= max_age
                and start <= now < end
                and free - idle - floor >= need
            ):
                passed.append(name)
                continue
        refusal, _, skipped = _evaluate(need, node, limits, now, NO_RELIEF)
        if refusal is None:
            passed.append(name)
            live_skipped += skipped
            continue
        kinds[refusal.kind] += 1
        (failed if refusal.resolvable else unresolvable)[name] = refusal.message
    return FilterResult(tuple(passed), failed, unresolvable, kinds, live_skipped)


def score_nodes(
    demand: PodDemand,
    candidates: Sequence[str],
    snapshot: Snapshot,
    settings: ExtenderSettings,
    now: float,
) -> list[tuple[str, int]]:
    """Scores from MIN to MAX_EXTENDER_PRIORITY; a node where the pod does not fit scores MIN,
    the others 1..MAX by their headroom relative to the largest headroom among candidates.

    binpack ranks the tightest fit highest so the large holes stay free for large pods;
    spread ranks the largest headroom highest.
    """
    need = need_mib(demand)
    if need == 0:
        return [(name, MIN_EXTENDER_PRIORITY) for name in candidates]
    limits = Limits.of(settings)
    nodes = snapshot.nodes
    # Headroom per candidate, None where the pod does not fit.
    floor, max_age = limits.floor_mib, limits.max_age_seconds
    headrooms: list[int | None] = []
    for name in candidates:
        node = nodes.get(name)
        quick = node.quick if node is not None else None
        if quick is not None:  # the fast path of filter_nodes
            room, free, sampled_at, start, end, idle = quick
            live_room = free - idle - floor - need
            fresh = now - sampled_at <= max_age and start <= now < end
            if fresh and need <= room and live_room >= 0:
                headrooms.append(min(room - need, live_room))
                continue
        refusal, room, _ = _evaluate(need, node, limits, now, NO_RELIEF)
        headrooms.append(None if refusal is not None else max(0, room))
    largest = max((h for h in headrooms if h is not None), default=0)
    span = MAX_EXTENDER_PRIORITY - MIN_EXTENDER_PRIORITY - 1
    binpack = settings.scoring == "binpack"
    scores = []
    for name, headroom in zip(candidates, headrooms, strict=True):
        if headroom is None:
            scores.append((name, MIN_EXTENDER_PRIORITY))
            continue
        share = headroom / largest if largest > 0 else 0.0
        if binpack:
            share = 1.0 - share
        scores.append((name, MIN_EXTENDER_PRIORITY + 1 + round(span * share)))
    return scores


def vet_preemption(
    demand: PodDemand,
    victims_by_node: Mapping[str, Sequence[str]],
    snapshot: Snapshot,
    settings: ExtenderSettings,
    now: float,
) -> PreemptionVetting:
    """Keep a candidate node only if evicting its proposed victims (UIDs) makes the pod fit.

    The victim sets are kept as proposed: the scheduler chose them for every resource, so
    dropping one here could leave CPU or memory short.
    """
    need = need_mib(demand)
    if need == 0:
        return PreemptionVetting(kept=tuple(victims_by_node))
    kept: list[str] = []
    refused: dict[str, str] = {}
    for name, uids in victims_by_node.items():
        node = snapshot.nodes.get(name)
        relief = victims_relief(node, uids, now) if node is not None else NO_RELIEF
        fit = check_node(need, name, node, settings, now, relief=relief)
        if fit.refusal is None:
            kept.append(name)
        else:
            refused[name] = fit.refusal.message
    return PreemptionVetting(tuple(kept), refused)


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
