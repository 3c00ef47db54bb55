"""The extender's three scheduling verbs over a frozen Snapshot: /filter (filter_nodes),
/prioritize (score_nodes) and preemption (vet_preemption), each the fit rule of gpumem.fit
applied to the candidate nodes.

Pure: frozen data in, data out, the caller passes the time. The scores use the extender wire
protocol's priority range (extender.models), which is why this lives in the extender.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from extender.fit_memo import FitMemo
from extender.models import MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY
from gpumem.demand import PodDemand
from gpumem.fit import (
    Limits,
    RefusalKind,
    cards_quick_headroom,
    check_node,
    evaluate,
    no_budget_message,
)
from gpumem.policy import ExtenderSettings
from gpumem.relief import NO_RELIEF, victims_relief
from gpumem.state import NodeState, Snapshot


@dataclass(frozen=True)
class FilterResult:
    passed: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    refusals_by_kind: Mapping[RefusalKind, int] = field(default_factory=dict)
    # Nodes that passed without a live check (budget-only), for the stale-mode metric.
    live_skipped: int = 0
    # Each passed node's headroom as score_nodes counts it, for FitMemo.
    headrooms: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PreemptionVetting:
    kept: tuple[str, ...]
    refused: dict[str, str] = field(default_factory=dict)


def need_mib(demand: PodDemand) -> int:
    """The MiB a pod asks for; 0 with no GPU (see has_no_budget) passes untouched."""
    return demand.declared_mib or 0


def has_no_budget(demand: PodDemand) -> bool:
    """A GPU pod that declares no GPU memory: refused everywhere (gpumem.fit.no_budget_message)
    instead of passing every node with 0 MiB counted."""
    return demand.is_gpu and need_mib(demand) <= 0


def filter_nodes(
    demand: PodDemand,
    candidates: Sequence[str],
    snapshot: Snapshot,
    settings: ExtenderSettings,
    now: float,
    *,
    gpumem_resource: str = "vramguard.io/gpumem",
) -> FilterResult:
    """Split the candidates into nodes where the pod fits and refusals with their reasons."""
    need = need_mib(demand)
    if has_no_budget(demand):
        # Unresolvable: evicting pods would not give it a budget.
        message = no_budget_message(gpumem_resource)
        return FilterResult(
            passed=(),
            unresolvable=dict.fromkeys(candidates, message),
            refusals_by_kind={"no-budget": len(candidates)},
        )
    if need == 0:
        return FilterResult(passed=tuple(candidates))
    return _split(need, candidates, snapshot.nodes, Limits.of(settings), now)


def _split(
    need: int, candidates: Sequence[str], nodes: Mapping[str, NodeState], limits: Limits, now: float
) -> FilterResult:
    """filter_nodes for a pod that needs `need` MiB (> 0); score_nodes reads its headrooms."""
    # Passed nodes and their headroom, in candidate order: what /prioritize will rank.
    fits: dict[str, int] = {}
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    kinds: Counter[RefusalKind] = Counter()
    live_skipped = 0
    floor, max_age = limits.floor_mib, limits.max_age_seconds
    # The fast path of gpumem.fit.quick_headroom, inlined: this loop runs once per candidate
    # node for every GPU pod, and the calls cost more than the comparisons.
    base = need + floor
    for name in candidates:
        node = nodes.get(name)
        quick = node.quick if node is not None else None
        if quick is not None:
            room, free, sampled_at, start, end, idle = quick
            live_room = free - idle - base
            # now - sampled_at <= max_age: not gpumem.fit.is_stale, in the same arithmetic
            if (
                need <= room
                and live_room >= 0
                and start <= now < end
                and now - sampled_at <= max_age
            ):
                declared_room = room - need
                fits[name] = declared_room if declared_room < live_room else live_room
                continue
        elif node is not None and node.quick_cards is not None:
            headroom = cards_quick_headroom(node.quick_cards, need, floor, max_age, now)
            if headroom is not None:
                fits[name] = headroom
                continue
        refusal, room, skipped = evaluate(need, node, limits, now, NO_RELIEF)
        if refusal is None:
            fits[name] = max(0, room)
            live_skipped += skipped
            continue
        kinds[refusal.kind] += 1
        (failed if refusal.resolvable else unresolvable)[name] = refusal.message
    return FilterResult(tuple(fits), failed, unresolvable, kinds, live_skipped, fits)


def score_nodes(
    demand: PodDemand,
    candidates: Sequence[str],
    snapshot: Snapshot,
    settings: ExtenderSettings,
    now: float,
    *,
    memo: FitMemo | None = None,
) -> list[tuple[str, int]]:
    """Scores from MIN to MAX_EXTENDER_PRIORITY; a node where the pod does not fit scores MIN,
    the others 1..MAX by their headroom relative to the largest headroom among candidates.

    binpack ranks the tightest fit highest so the large holes stay free for large pods;
    spread ranks the largest headroom highest. `memo`, /filter's result for this pod, spares
    the fit check on every node unchanged since (FitMemo).
    """
    need = need_mib(demand)
    if need == 0:
        return [(name, MIN_EXTENDER_PRIORITY) for name in candidates]
    limits = Limits.of(settings)
    nodes = snapshot.nodes
    # Headroom per candidate, None where the pod does not fit.
    headrooms: list[int | None]
    if memo is not None and memo.reusable(need, limits, now):
        known = memo.headrooms.get
        if memo.nodes is nodes:  # nothing changed since /filter
            headrooms = [known(name) for name in candidates]
        else:
            then = memo.nodes.get
            now_of = nodes.get
            headrooms = [known(name) if now_of(name) is then(name) else None for name in candidates]
        if None in headrooms:  # nodes /filter did not pass, or changed since: check them
            unknown = [i for i, h in enumerate(headrooms) if h is None]
            fresh = _headrooms(need, [candidates[i] for i in unknown], nodes, limits, now)
            for i, h in zip(unknown, fresh, strict=True):
                headrooms[i] = h
    else:
        headrooms = _headrooms(need, candidates, nodes, limits, now)
    if None in headrooms:
        largest = max([h for h in headrooms if h is not None], default=0)
    else:  # the usual case, one pass fewer
        largest = max(cast("list[int]", headrooms), default=0)
    span = MAX_EXTENDER_PRIORITY - MIN_EXTENDER_PRIORITY - 1
    binpack = settings.scoring == "binpack"
    lowest, base = MIN_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY + 1
    pairs = zip(candidates, headrooms, strict=True)
    # share = headroom / largest (binpack: 1 - that), in comprehensions: one per candidate.
    if largest <= 0:
        fitting = base + round(span * (1.0 if binpack else 0.0))
        return [(name, lowest if h is None else fitting) for name, h in pairs]
    if binpack:
        return [
            (name, lowest if h is None else base + round(span * (1.0 - h / largest)))
            for name, h in pairs
        ]
    return [
        (name, lowest if h is None else base + round(span * (h / largest))) for name, h in pairs
    ]


def _headrooms(
    need: int, candidates: Sequence[str], nodes: Mapping[str, NodeState], limits: Limits, now: float
) -> list[int | None]:
    """Each candidate's headroom for `need` MiB, None where the pod does not fit: the rule
    /filter applies (the refusals' messages are built for nodes that do not fit, which
    kube-scheduler does not send to /prioritize)."""
    fits = _split(need, candidates, nodes, limits, now).headrooms
    return [fits.get(name) for name in candidates]


def vet_preemption(
    demand: PodDemand,
    victims_by_node: Mapping[str, Sequence[str]],
    snapshot: Snapshot,
    settings: ExtenderSettings,
    now: float,
    *,
    gpumem_resource: str = "vramguard.io/gpumem",
) -> PreemptionVetting:
    """Keep a candidate node only if evicting its proposed victims (UIDs) makes the pod fit.

    The victim sets are kept as proposed: the scheduler chose them for every resource, so
    dropping one here could leave CPU or memory short.
    """
    need = need_mib(demand)
    if has_no_budget(demand):
        # No eviction makes room for a pod without a budget: preempt nobody for it.
        message = no_budget_message(gpumem_resource)
        return PreemptionVetting(kept=(), refused=dict.fromkeys(victims_by_node, message))
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
