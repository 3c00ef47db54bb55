"""What `vramguard status` shows, as pure data: per GPU node and per GPU pod, declared against
live, from a snapshot built here or from the extender's /debug/snapshot (extender.debug), and
the JSON and tables it prints."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from extender.debug import DebugSnapshot
from gpumem.state import PodKey, Snapshot
from ops.table import MISSING, mib_cell, render_table


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    capacity_mib: int | None
    declared_mib: int
    reserved_mib: int | None
    live_used_mib: int | None
    live_free_mib: int | None
    telemetry_age_seconds: float | None


@dataclass(frozen=True, slots=True)
class PodRow:
    namespace: str
    pod: str
    node: str
    pod_class: str | None
    declared_mib: int
    used_mib: int | None

    @property
    def over_budget(self) -> bool:
        return self.used_mib is not None and self.used_mib > self.declared_mib


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
            )
        )
        pods += _pod_rows(name, state.pods, classes)
    return StatusReport(tuple(nodes), tuple(sorted(pods, key=_pod_order)), "api")


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
            )
        )
        pods += _pod_rows(name, state.pods, classes)
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


def _pod_rows(
    node: str, pods: Iterable[_PodFigures], classes: Mapping[PodKey, str]
) -> list[PodRow]:
    return [
        PodRow(
            pod.namespace,
            pod.name,
            node,
            classes.get((pod.namespace, pod.name)),
            pod.declared_mib,
            pod.used_mib,
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
    """-o json: the same names as the extender's /debug/snapshot where they mean the same."""
    return {
        "source": status.source,
        "nodes": [
            {
                "name": n.node,
                "capacityMiB": n.capacity_mib,
                "declaredMiB": n.declared_mib,
                "reservedMiB": n.reserved_mib,
                "liveUsedMiB": n.live_used_mib,
                "liveFreeMiB": n.live_free_mib,
                "telemetryAgeSeconds": n.telemetry_age_seconds,
            }
            for n in status.nodes
        ],
        "pods": [
            {
                "namespace": p.namespace,
                "name": p.pod,
                "node": p.node,
                "class": p.pod_class,
                "declaredMiB": p.declared_mib,
                "usedMiB": p.used_mib,
                "overBudget": p.over_budget,
            }
            for p in status.pods
        ],
    }


NODE_HEADERS = ("NODE", "CAPACITY", "DECLARED", "RESERVED", "LIVE USED", "FREE", "AGE")
POD_HEADERS = ("NAMESPACE", "POD", "NODE", "CLASS", "DECLARED", "LIVE USED", "OVER BUDGET")


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


def pod_cells(row: PodRow) -> tuple[str, ...]:
    return (
        row.namespace,
        row.pod,
        row.node,
        row.pod_class or MISSING,
        mib_cell(row.declared_mib),
        mib_cell(row.used_mib),
        "yes" if row.over_budget else ("no" if row.used_mib is not None else MISSING),
    )


def render_status(status: StatusReport, colour: bool = False) -> list[str]:
    lines = render_table(NODE_HEADERS, [node_cells(n) for n in status.nodes])
    lines.append("")
    if status.pods:
        red = [p.over_budget for p in status.pods]
        lines += render_table(
            POD_HEADERS, [pod_cells(p) for p in status.pods], red_rows=red, colour=colour
        )
    else:
        lines.append("no GPU pods")
    return lines


def _pod_order(row: PodRow) -> tuple[str, str]:
    return (row.namespace, row.pod)
