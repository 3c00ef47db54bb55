"""What `vramguard status` shows, as pure data: per GPU node and per GPU pod, declared against
live, from a snapshot built here or from the extender's /debug/snapshot (extender.debug), and
the JSON and tables it prints.

A node with several cards also has a row per card (`node-a/gpu 1`) and one for its unassigned
pods' budgets, and its pods say which card they hold (CARD `gpu 1`, or `unassigned` while no
source has said). A one-card node, whose card is the node, prints as it always did, and the
CARD column is there only when some node has several cards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from extender.debug import DebugCard, DebugSnapshot
from gpumem.state import CardState, PodKey, Snapshot
from ops.table import MISSING, mib_cell, render_table


@dataclass(frozen=True, slots=True)
class CardRow:
    """One card of a node with several: its figures, and declared as the pods known to hold
    it declare (the unassigned pods' budgets are the node's, NodeRow.unassigned_mib)."""

    index: str
    uuid: str | None
    capacity_mib: int | None
    total_mib: int | None
    declared_mib: int
    replicas: int
    live_used_mib: int | None
    live_free_mib: int | None
    telemetry_age_seconds: float | None


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    capacity_mib: int | None
    declared_mib: int
    reserved_mib: int | None
    live_used_mib: int | None
    live_free_mib: int | None
    telemetry_age_seconds: float | None
    # Empty on a one-card node.
    cards: tuple[CardRow, ...] = ()
    # Declared by the node's pods whose card is not known (counted against every card).
    unassigned_mib: int = 0


@dataclass(frozen=True, slots=True)
class PodRow:
    namespace: str
    pod: str
    node: str
    pod_class: str | None
    declared_mib: int
    used_mib: int | None
    # On a node with several cards: the index and UUID of the card the pod holds, both None
    # while it is unassigned. On a one-card node several_cards is False and they are None.
    gpu: str | None = None
    card: str | None = None
    several_cards: bool = False

    @property
    def over_budget(self) -> bool:
        return self.used_mib is not None and self.used_mib > self.declared_mib

    @property
    def card_text(self) -> str:
        if not self.several_cards:
            return MISSING
        return "unassigned" if self.gpu is None else f"gpu {self.gpu}"


@dataclass(frozen=True, slots=True)
class StatusReport:
    nodes: tuple[NodeRow, ...]
    pods: tuple[PodRow, ...]
    source: str  # "api" (the API and Prometheus, read here) or "extender" (its snapshot)


def status_from_snapshot(
    snapshot: Snapshot, now: float, classes: Mapping[PodKey, str] | None = None
) -> StatusReport:
    """Rows from a snapshot built here from one list and one telemetry read: reservations
    exist only inside the extender, so reserved is unknown."""
    classes = classes or {}
    nodes = []
    pods: list[PodRow] = []
    for name, state in sorted(snapshot.nodes.items()):
        if not state.known:
            continue
        live = state.live
        nodes.append(
            NodeRow(
                name,
                state.capacity.mib,
                state.declared_mib,
                None,
                None if live is None else live.used_mib,
                None if live is None else live.free_mib,
                None if live is None else round(live.age(now), 1),
                tuple(_card_row(card, now) for card in state.cards),
                sum(pod.declared_mib for pod in state.unassigned) if state.cards else 0,
            )
        )
        indices = {card.uuid: card.index for card in state.cards if card.uuid is not None}
        pods += _pod_rows(name, state.pods, classes, indices, bool(state.cards))
    return StatusReport(tuple(nodes), tuple(sorted(pods, key=_pod_order)), "api")


def _card_row(card: CardState | DebugCard, now: float | None = None) -> CardRow:
    """A card of a snapshot built here (CardState: its live view, aged at `now`) or of the
    extender's (DebugCard: figures as the extender saw them)."""
    if isinstance(card, DebugCard):
        return CardRow(
            card.index,
            card.uuid,
            card.capacity_mib,
            card.total_mib,
            card.declared_mib,
            card.replicas,
            card.live_used_mib,
            card.live_free_mib,
            card.telemetry_age_seconds,
        )
    live = card.live
    return CardRow(
        card.index,
        card.uuid,
        card.capacity_mib,
        card.total_mib,
        card.declared_mib,
        card.replicas,
        None if live is None else live.used_mib,
        None if live is None else live.free_mib,
        None if live is None or now is None else round(live.age(now), 1),
    )


def status_from_debug(
    described: Mapping[str, Any], classes: Mapping[PodKey, str] | None = None
) -> StatusReport:
    """Rows from the extender's /debug/snapshot (extender.debug.DebugSnapshot). Raises
    ValueError when it is not that shape."""
    classes = classes or {}
    if not isinstance(described.get("nodes"), Mapping):
        raise ValueError("no 'nodes' object in the extender's snapshot")
    try:
        snapshot = DebugSnapshot.model_validate(described)
    except ValidationError as err:
        raise ValueError(f"unexpected extender snapshot: {_first_error(err)}") from err
    nodes = []
    pods: list[PodRow] = []
    for name, state in sorted(snapshot.nodes.items()):
        if not state.known:
            continue
        nodes.append(
            NodeRow(
                name,
                state.capacity_mib,
                state.declared_mib,
                state.reserved_mib,
                state.live_used_mib,
                state.live_free_mib,
                state.telemetry_age_seconds,
                tuple(_card_row(card) for card in state.cards),
                sum(pod.declared_mib for pod in state.pods if pod.card is None)
                if state.cards
                else 0,
            )
        )
        indices = {card.uuid: card.index for card in state.cards if card.uuid is not None}
        pods += _pod_rows(name, state.pods, classes, indices, bool(state.cards))
    return StatusReport(tuple(nodes), tuple(sorted(pods, key=_pod_order)), "extender")


class _PodFigures(Protocol):
    """A pod on a node, in a snapshot built here (PodView) or the extender's (DebugPod)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def declared_mib(self) -> int: ...
    @property
    def used_mib(self) -> int | None: ...
    @property
    def card(self) -> str | None: ...


def _pod_rows(
    node: str,
    pods: Iterable[_PodFigures],
    classes: Mapping[PodKey, str],
    indices: Mapping[str, str],
    several_cards: bool,
) -> list[PodRow]:
    """`indices`: the node's cards, UUID -> index."""
    return [
        PodRow(
            pod.namespace,
            pod.name,
            node,
            classes.get((pod.namespace, pod.name)),
            pod.declared_mib,
            pod.used_mib,
            indices.get(pod.card) if pod.card is not None else None,
            pod.card,
            several_cards,
        )
        for pod in pods
    ]


def _first_error(err: ValidationError) -> str:
    """Where the snapshot first differs from the model, and how ("nodes.a.capacityMiB: Input
    should be a valid integer, ..."), and how many more differences there are."""
    errors = err.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def status_json(status: StatusReport) -> dict[str, Any]:
    """-o json: the same names as the extender's /debug/snapshot where they mean the same.
    Only nodes with several cards have `cards` and `unassignedMiB`, and only their pods
    `card` (UUID) and `gpu` (index), null while unassigned."""
    return {
        "source": status.source,
        "nodes": [_node_json(n) for n in status.nodes],
        "pods": [_pod_json(p) for p in status.pods],
    }


def _node_json(row: NodeRow) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": row.node,
        "capacityMiB": row.capacity_mib,
        "declaredMiB": row.declared_mib,
        "reservedMiB": row.reserved_mib,
        "liveUsedMiB": row.live_used_mib,
        "liveFreeMiB": row.live_free_mib,
        "telemetryAgeSeconds": row.telemetry_age_seconds,
    }
    if row.cards:
        document["unassignedMiB"] = row.unassigned_mib
        document["cards"] = [
            {
                "index": c.index,
                "uuid": c.uuid,
                "capacityMiB": c.capacity_mib,
                "totalMiB": c.total_mib,
                "declaredMiB": c.declared_mib,
                "replicas": c.replicas,
                "liveUsedMiB": c.live_used_mib,
                "liveFreeMiB": c.live_free_mib,
                "telemetryAgeSeconds": c.telemetry_age_seconds,
            }
            for c in row.cards
        ]
    return document


def _pod_json(row: PodRow) -> dict[str, Any]:
    document: dict[str, Any] = {
        "namespace": row.namespace,
        "name": row.pod,
        "node": row.node,
        "class": row.pod_class,
        "declaredMiB": row.declared_mib,
        "usedMiB": row.used_mib,
        "overBudget": row.over_budget,
    }
    if row.several_cards:
        document["card"] = row.card
        document["gpu"] = row.gpu
    return document


NODE_HEADERS = ("NODE", "CAPACITY", "DECLARED", "RESERVED", "LIVE USED", "FREE", "AGE")
POD_HEADERS = ("NAMESPACE", "POD", "NODE", "CLASS", "DECLARED", "LIVE USED", "OVER BUDGET")
# With a CARD column after NODE, when some node has several cards.
CARD_POD_HEADERS = (*POD_HEADERS[:3], "CARD", *POD_HEADERS[3:])


def node_cells(row: NodeRow) -> tuple[str, ...]:
    return (
        row.node,
        mib_cell(row.capacity_mib),
        mib_cell(row.declared_mib),
        mib_cell(row.reserved_mib),
        mib_cell(row.live_used_mib),
        mib_cell(row.live_free_mib),
        MISSING if row.telemetry_age_seconds is None else f"{row.telemetry_age_seconds:.0f}s",
    )


def card_cells(node: str, row: CardRow) -> tuple[str, ...]:
    """A card's row under its node's: reservations are the node's, so RESERVED is -."""
    return (
        f"{node}/gpu {row.index}",
        mib_cell(row.capacity_mib),
        mib_cell(row.declared_mib),
        MISSING,
        mib_cell(row.live_used_mib),
        mib_cell(row.live_free_mib),
        MISSING if row.telemetry_age_seconds is None else f"{row.telemetry_age_seconds:.0f}s",
    )


def unassigned_cells(row: NodeRow) -> tuple[str, ...]:
    """The budgets of the node's pods whose card is not known: the fit rule counts them
    against every card, so they belong to no card row."""
    return (f"{row.node}/unassigned", MISSING, mib_cell(row.unassigned_mib), *[MISSING] * 4)


def node_rows(row: NodeRow) -> list[tuple[str, ...]]:
    """The node's row, then its cards' and its unassigned pods' (several cards only)."""
    rows = [node_cells(row)]
    rows += [card_cells(row.node, card) for card in row.cards]
    if row.cards and row.unassigned_mib:
        rows.append(unassigned_cells(row))
    return rows


def pod_cells(row: PodRow, with_card: bool = False) -> tuple[str, ...]:
    card = (row.card_text,) if with_card else ()
    return (
        row.namespace,
        row.pod,
        row.node,
        *card,
        row.pod_class or MISSING,
        mib_cell(row.declared_mib),
        mib_cell(row.used_mib),
        "yes" if row.over_budget else ("no" if row.used_mib is not None else MISSING),
    )


def render_status(status: StatusReport, colour: bool = False) -> list[str]:
    lines = render_table(NODE_HEADERS, [cells for n in status.nodes for cells in node_rows(n)])
    lines.append("")
    if status.pods:
        red = [p.over_budget for p in status.pods]
        with_card = any(p.several_cards for p in status.pods)
        lines += render_table(
            CARD_POD_HEADERS if with_card else POD_HEADERS,
            [pod_cells(p, with_card) for p in status.pods],
            red_rows=red,
            colour=colour,
        )
    else:
        lines.append("no GPU pods")
    return lines


def _pod_order(row: PodRow) -> tuple[str, str]:
    return (row.namespace, row.pod)
