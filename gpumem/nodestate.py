"""Building the NodeState of one node (pure): its capacity, its pods' views, how much of their
budgets is not in use yet, and its live free VRAM.

The extender's store (extender.store) calls build_node_state for each node a writer touched;
the caller passes the time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from gpumem.cards import build_cards, candidate_cards
from gpumem.idle import idle_budget, idle_window
from gpumem.nodes import Capacity, NodeFacts, node_capacity
from gpumem.pods import PodRecord
from gpumem.policy import ExtenderSettings, Policy
from gpumem.state import (
    NO_LABELS,
    CardState,
    LiveView,
    NodeState,
    PodGroup,
    PodView,
    QuickFit,
    Reservation,
    Sample,
    TelemetryReading,
)


def build_node_state(
    name: str,
    *,
    facts: NodeFacts | None,
    pods: Iterable[PodRecord],
    declared_mib: int,
    reservations: Iterable[Reservation],
    reading: TelemetryReading | None,
    pods_used: Sample | None,
    policy: Policy,
    built_at: float,
) -> NodeState:
    settings = policy.extender
    capacity = node_capacity(facts, policy.gpumem_resource_name, settings.capacity_slack_mib)
    pod_used = reading.pod_used if reading is not None else None
    per_pod_usage = pod_used is not None
    views = []
    idle_base = 0
    idle_warming = []
    for record in pods:
        used = pod_used.get(record.key) if pod_used is not None else None
        view = PodView(
            uid=record.uid,
            namespace=record.namespace,
            name=record.name,
            declared_mib=record.declared_mib,
            used_mib=used.mib if used is not None else None,
            warm_until=(
                record.warm_from + settings.warmup_seconds
                if record.warm_from is not None
                else math.inf
            ),
        )
        views.append(view)
        base, warming = idle_budget(view, per_pod_usage)
        idle_base += base
        if warming:
            idle_warming.append((view.warm_until, warming))
    live = live_view(name, capacity, reading, pods_used, settings)
    reserved = tuple(reservations)
    window = idle_window(idle_base, idle_warming, built_at)
    cards, pod_views, unassigned = build_cards(
        name, facts=facts, capacity=capacity, reading=reading, views=views, settings=settings
    )
    quick = None
    # The fast path is the node-wide rule: a node with several cards always takes the card rule.
    if (
        facts is not None
        and capacity.mib is not None
        and live is not None
        and not reserved
        and not cards
    ):
        quick = QuickFit(capacity.mib - declared_mib, live.free_mib, live.sampled_at, *window)
    quick_cards = None
    if unassigned is not None and facts is not None and capacity.mib is not None and not reserved:
        quick_cards = _quick_cards(
            cards, unassigned, capacity.mib - declared_mib, settings, built_at
        )
    return NodeState(
        name=name,
        known=facts is not None,
        capacity=capacity,
        declared_mib=declared_mib,
        pods=pod_views,
        reservations=reserved,
        live=live,
        per_pod_usage=per_pod_usage,
        idle_base_mib=idle_base,
        idle_warming=tuple(idle_warming),
        idle_window=window,
        quick=quick,
        labels=facts.labels if facts is not None else NO_LABELS,
        cards=cards,
        quick_cards=quick_cards,
        unassigned_group=unassigned,
    )


def _quick_cards(
    cards: tuple[CardState, ...],
    unassigned: PodGroup,
    node_room_mib: int,
    settings: ExtenderSettings,
    built_at: float,
) -> tuple[QuickFit, ...] | None:
    """The card rule's figures for the fast path (NodeState.quick_cards), or None."""
    quick = []
    for card in candidate_cards(cards, len(unassigned.pods), settings.allocation_policy):
        live = card.live
        if live is None or card.capacity_mib is None:
            return None
        room = min(card.capacity_mib - card.declared_mib - unassigned.declared_mib, node_room_mib)
        warming = [*card.group.idle_warming, *unassigned.idle_warming]
        base = card.group.idle_base_mib + unassigned.idle_base_mib
        window = idle_window(base, warming, built_at)
        quick.append(QuickFit(room, live.free_mib, live.sampled_at, *window))
    return tuple(quick)


def live_view(
    name: str,
    capacity: Capacity,
    reading: TelemetryReading | None,
    pods_used: Sample | None,
    settings: ExtenderSettings,
) -> LiveView | None:
    """Live free VRAM of a node: reported free, else total - used, where total comes from a
    query, GFD labels or nodeTotalMiB, and used from a query or the sum of the node's pods."""
    if reading is None:
        return None
    used = reading.used.get(name) if reading.has_node_usage else pods_used
    free = reading.free.get(name)
    if free is not None:
        return LiveView(free.mib, used.mib if used else None, free.sampled_at, reading.source)
    total = reading.total.get(name)
    total_mib = total.mib if total is not None else capacity.card_total_mib
    if total_mib is None:
        total_mib = settings.telemetry.node_total_mib
    if total_mib is None or used is None:
        return None
    sampled_at = min(used.sampled_at, total.sampled_at) if total else used.sampled_at
    return LiveView(max(0, total_mib - used.mib), used.mib, sampled_at, reading.source)
