"""What the operator commands (`vramguard preflight`, `status`, `explain`) say, as pure data.

Pure functions over a frozen Snapshot (or the extender's /debug/snapshot JSON): the preflight
answer with its arithmetic per node, the status rows, one pod's verdict on every node
(extender.explain.judge_nodes), and the aligned tables they print. The
live arithmetic is the live part of the fit rule (extender.fit): live free minus the budgets
not yet in use (snapshot.NodeState.not_yet_using_mib) minus reservations, against need + floor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from extender.explain import (
    NodeVerdict,
    SchedulingPod,
    Verdict,
    explain_verdicts,
    judge_nodes,
    without_prefix,
)
from extender.snapshot import LiveView, NodeState, PodKey, Snapshot
from gpumem.policy import ExtenderSettings
from gpumem.quantity import format_mib

RED = "\033[31m"
RESET = "\033[0m"
MISSING = "-"

Answer = Literal["yes", "no", "stale"]


# --- preflight ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreflightLine:
    node: str
    need_mib: int
    floor_mib: int
    # None when the node has no fresh live telemetry (stale_reason says why).
    free_mib: int | None = None
    not_yet_using_mib: int = 0
    stale_reason: str | None = None

    @property
    def available_mib(self) -> int | None:
        return None if self.free_mib is None else self.free_mib - self.not_yet_using_mib

    @property
    def fits(self) -> bool | None:
        available = self.available_mib
        return None if available is None else available >= self.need_mib + self.floor_mib


@dataclass(frozen=True, slots=True)
class Preflight:
    answer: Answer
    lines: tuple[PreflightLine, ...]
    problem: str | None = None

    @property
    def exit_status(self) -> int:
        return {"yes": 0, "no": 1, "stale": 2}[self.answer]


def preflight(
    snapshot: Snapshot,
    need_mib: int,
    *,
    floor_mib: int,
    max_age_seconds: float,
    now: float,
    node: str | None = None,
) -> Preflight:
    """Yes when some node (or `node`) has need + floor MiB live free after the budgets not yet
    in use; stale when none does and some node had no fresh telemetry to tell (it might);
    no otherwise. Only nodes with a GPU memory capacity are candidates."""
    if node is not None:
        state = snapshot.nodes.get(node)
        if state is None or not state.known:
            return Preflight("no", (), f"node {node} not found")
        if state.capacity.mib is None:
            return Preflight("no", (), f"node {node} advertises no GPU memory")
        candidates: Sequence[NodeState] = [state]
    else:
        candidates = [
            s for _, s in sorted(snapshot.nodes.items()) if s.known and s.capacity.mib is not None
        ]
        if not candidates:
            return Preflight("no", (), "no node advertises GPU memory")
    lines = tuple(preflight_line(s, need_mib, floor_mib, max_age_seconds, now) for s in candidates)
    if any(line.fits for line in lines):
        return Preflight("yes", lines)
    if any(line.fits is None for line in lines):
        return Preflight("stale", lines)
    return Preflight("no", lines)


def preflight_line(
    node: NodeState, need_mib: int, floor_mib: int, max_age_seconds: float, now: float
) -> PreflightLine:
    live = node.live
    if live is None:
        return PreflightLine(node.name, need_mib, floor_mib, stale_reason="no live telemetry")
    if now - live.sampled_at > max_age_seconds:
        return PreflightLine(
            node.name,
            need_mib,
            floor_mib,
            stale_reason=f"live telemetry {live.age(now):.0f}s old > maxAgeSeconds "
            f"{max_age_seconds:g}",
        )
    idle = node.not_yet_using_mib(now) + node.reserved_mib(now)
    return PreflightLine(node.name, need_mib, floor_mib, live.free_mib, idle)


def render_preflight_line(line: PreflightLine, colour: bool = False) -> str:
    want = f"need {line.need_mib} + floor {line.floor_mib}"
    if line.free_mib is None:
        return f"{line.node}: {line.stale_reason}; {want}: {_paint('STALE', colour)}"
    verdict = "yes" if line.fits else _paint("NO", colour)
    return (
        f"{line.node}: live free {line.free_mib} MiB - {line.not_yet_using_mib} not yet in use "
        f"= {line.available_mib} MiB; {want}: {verdict}"
    )


def render_preflight(result: Preflight, colour: bool = False) -> list[str]:
    lines = [render_preflight_line(line, colour) for line in result.lines]
    if result.problem is not None:
        lines.append(result.problem)
    return lines


# --- status -------------------------------------------------------------------------------------


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
class Status:
    nodes: tuple[NodeRow, ...]
    pods: tuple[PodRow, ...]
    source: str  # "api" (the API and Prometheus, read here) or "extender" (its snapshot)


def status_from_snapshot(
    snapshot: Snapshot, now: float, classes: Mapping[PodKey, str] | None = None
) -> Status:
    """Rows from a snapshot built here from one list and one telemetry read: reservations
    exist only inside the extender, so reserved is unknown."""
    classes = classes or {}
    nodes = []
    pods = []
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
        for pod in state.pods:
            pods.append(
                PodRow(
                    pod.namespace,
                    pod.name,
                    name,
                    classes.get((pod.namespace, pod.name)),
                    pod.declared_mib,
                    pod.used_mib,
                )
            )
    return Status(tuple(nodes), tuple(sorted(pods, key=_pod_order)), "api")


def status_from_debug(
    described: Mapping[str, Any], classes: Mapping[PodKey, str] | None = None
) -> Status:
    """Rows from the extender's /debug/snapshot (app.describe_snapshot). Raises ValueError
    when it is not that shape."""
    classes = classes or {}
    raw_nodes = described.get("nodes")
    if not isinstance(raw_nodes, Mapping):
        raise ValueError("no 'nodes' object in the extender's snapshot")
    nodes = []
    pods = []
    try:
        for name, state in sorted(raw_nodes.items()):
            if not state.get("known", True):
                continue
            nodes.append(
                NodeRow(
                    str(name),
                    _int_or_none(state.get("capacityMiB")),
                    int(state.get("declaredMiB") or 0),
                    _int_or_none(state.get("reservedMiB")),
                    _int_or_none(state.get("liveUsedMiB")),
                    _int_or_none(state.get("liveFreeMiB")),
                    _float_or_none(state.get("telemetryAgeSeconds")),
                )
            )
            for pod in state.get("pods") or ():
                namespace, pod_name = str(pod["namespace"]), str(pod["name"])
                pods.append(
                    PodRow(
                        namespace,
                        pod_name,
                        str(name),
                        classes.get((namespace, pod_name)),
                        int(pod.get("declaredMiB") or 0),
                        _int_or_none(pod.get("usedMiB")),
                    )
                )
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"unexpected extender snapshot: {type(err).__name__}: {err}") from err
    return Status(tuple(nodes), tuple(sorted(pods, key=_pod_order)), "extender")


def status_json(status: Status) -> dict[str, Any]:
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
        _mib(row.capacity_mib),
        _mib(row.declared_mib),
        _mib(row.reserved_mib),
        _mib(row.live_used_mib),
        _mib(row.live_free_mib),
        MISSING if row.telemetry_age_seconds is None else f"{row.telemetry_age_seconds:.0f}s",
    )


def pod_cells(row: PodRow) -> tuple[str, ...]:
    return (
        row.namespace,
        row.pod,
        row.node,
        row.pod_class or MISSING,
        _mib(row.declared_mib),
        _mib(row.used_mib),
        "yes" if row.over_budget else ("no" if row.used_mib is not None else MISSING),
    )


def render_status(status: Status, colour: bool = False) -> list[str]:
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


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    red_rows: Sequence[bool] = (),
    colour: bool = False,
) -> list[str]:
    """Columns left-aligned, two spaces apart; colour (ANSI red) is applied after padding so
    escape codes never shift a column."""
    body = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [_row(headers, widths)]
    for index, row in enumerate(body):
        line = _row(row, widths)
        lines.append(_paint(line, colour and index < len(red_rows) and red_rows[index]))
    return lines


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _paint(text: str, colour: bool) -> str:
    return f"{RED}{text}{RESET}" if colour else text


def _mib(value: int | None) -> str:
    return MISSING if value is None else format_mib(value)


def _pod_order(row: PodRow) -> tuple[str, str]:
    return (row.namespace, row.pod)


def _int_or_none(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a number: {value!r}")
    return int(value)


def _float_or_none(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


# --- explain ------------------------------------------------------------------------------------

# Whether Prometheus was read: without it the live part of the fit rule cannot be judged,
# and the verdicts are the declared budgets' alone (as staleMode budget-only would judge).
LiveRead = Literal["read", "not-read", "unavailable"]
_NOT_EVALUATED: Mapping[LiveRead, str] = {
    "read": "",
    "not-read": "live check not evaluated (no --prometheus-url)",
    "unavailable": "live check not evaluated (telemetry unavailable)",
}
MAX_NAMED_NODES = 5


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """One node's verdict for the pod with the node's figures (extender.explain.NodeVerdict)."""

    node: str
    verdict: Verdict
    # The refusal in the extender's words (without its "vramguard: "), or why it fits.
    reason: str
    refusal_kind: str | None
    headroom_mib: int | None
    # Whether the live part of the fit rule decided: it let the pod in, or refused it (a
    # declared refusal comes before the live check; without telemetry it is skipped).
    live_checked: bool
    live_free_mib: int | None
    telemetry_age_seconds: float | None
    declared_mib: int
    capacity_mib: int | None


@dataclass(frozen=True)
class PodExplanation:
    """`vramguard explain`: one pod, where it stands and its verdict on every node."""

    namespace: str
    name: str
    phase: str
    scheduler: str
    served_scheduler: str
    resource: str
    need_mib: int
    node: str | None
    terminating: bool
    # The scheduler's own PodScheduled=False (Unschedulable) message.
    scheduler_message: str | None
    # False: vramguard has nothing to say node by node (terminated, declares nothing).
    judged: bool
    summary: str
    live: LiveRead
    rows: tuple[VerdictRow, ...] = ()

    @property
    def other_scheduler(self) -> bool:
        return self.scheduler != self.served_scheduler


def explain_report(
    pod: SchedulingPod,
    snapshot: Snapshot,
    settings: ExtenderSettings,
    now: float,
    *,
    resource: str,
    served_scheduler: str,
    live: LiveRead,
) -> PodExplanation:
    """The pod judged on every node of the snapshot (extender.explain.judge_nodes). Without a
    telemetry read (live != "read") the live check is skipped everywhere, as staleMode
    budget-only skips it, and the rows say so: a refusal for missing telemetry would be a
    claim about the extender's telemetry, which was not looked at."""
    result = PodExplanation(
        namespace=pod.namespace,
        name=pod.name,
        phase=pod.phase,
        scheduler=pod.scheduler_name,
        served_scheduler=served_scheduler,
        resource=resource,
        need_mib=pod.need_mib,
        node=pod.node_name,
        terminating=pod.terminating,
        scheduler_message=pod.scheduler_message,
        judged=False,
        summary="",
        live=live,
    )
    if pod.terminated:
        summary = f"{pod.phase}: it holds no GPU memory and is not scheduled again"
        return replace(result, summary=summary)
    if pod.demand_error is not None:
        summary = f"its GPU memory declaration cannot be read: {pod.demand_error}"
        return replace(result, summary=summary)
    if pod.need_mib <= 0:
        summary = f"declares no {resource}: vramguard does not judge it"
        return replace(result, summary=summary)
    if live != "read":
        settings = settings.model_copy(update={"stale_mode": "budget-only"})
    verdicts = judge_nodes(pod, snapshot.nodes, settings, now, bound_to=pod.node_name)
    rows = tuple(
        _verdict_row(v, snapshot.nodes[v.node], pod, settings=settings, now=now, live_read=live)
        for v in verdicts
    )
    return replace(
        result,
        judged=True,
        summary=_summary(pod, verdicts, resource, live),
        rows=rows,
    )


def _summary(
    pod: SchedulingPod, verdicts: Sequence[NodeVerdict], resource: str, live: LiveRead
) -> str:
    """Bound, or the extender's one-line explanation (its GPUMemoryUnavailable Event's text),
    or where the pod fits."""
    if pod.node_name:
        return f"bound to {pod.node_name}"
    explanation = explain_verdicts(pod.need_mib, verdicts, resource=resource)
    if explanation.explains:
        return explanation.message
    fits = [v.node for v in verdicts if v.verdict == "fits"]
    summary = f"fits on {_named(fits)}"
    if live != "read":
        summary += " by the declared budgets (live check not evaluated)"
    if pod.scheduler_message is not None:
        summary += (
            "; vramguard would let it in now: what else stopped the scheduler is in its message"
        )
    return summary


def _verdict_row(
    verdict: NodeVerdict,
    node: NodeState,
    pod: SchedulingPod,
    *,
    settings: ExtenderSettings,
    now: float,
    live_read: LiveRead,
) -> VerdictRow:
    live = node.live
    reason = {
        "bound": _bound_reason(node, pod),
        "not-admitted": "the pod's nodeSelector or node affinity rules it out",
        "no-gpu": "advertises no GPU memory",
    }.get(verdict.verdict, "")
    if verdict.refusal is not None:
        reason = without_prefix(verdict.refusal.message)
    elif verdict.verdict == "fits":
        reason = f"{verdict.headroom_mib} MiB to spare"
        if verdict.live_skipped:
            reason += " in budgets; " + (
                _NOT_EVALUATED[live_read] or _stale_reason(live, settings, now)
            )
    return VerdictRow(
        node=verdict.node,
        verdict=verdict.verdict,
        reason=reason,
        refusal_kind=None if verdict.refusal is None else verdict.refusal.kind,
        headroom_mib=verdict.headroom_mib,
        live_checked=(verdict.verdict == "fits" and not verdict.live_skipped)
        or (verdict.refusal is not None and verdict.refusal.kind == "live"),
        live_free_mib=None if live is None else live.free_mib,
        telemetry_age_seconds=None if live is None else round(live.age(now), 1),
        declared_mib=node.declared_mib,
        capacity_mib=node.capacity.mib,
    )


def _bound_reason(node: NodeState, pod: SchedulingPod) -> str:
    reason = f"runs here: its {pod.need_mib} MiB are in DECLARED"
    view = node.pod(pod.uid)
    if view is not None and view.used_mib is not None:
        reason += f", it uses {view.used_mib} MiB"
    return reason


def _stale_reason(live: LiveView | None, settings: ExtenderSettings, now: float) -> str:
    if live is None:
        why = "no live telemetry for the node"
    else:
        why = (
            f"live telemetry {live.age(now):.0f}s old > maxAgeSeconds {settings.max_age_seconds:g}"
        )
    return f"{why}: live check skipped (staleMode budget-only)"


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED_NODES])
    left = len(names) - MAX_NAMED_NODES
    return shown + (f" and {left} more" if left > 0 else "")


def explanation_json(report: PodExplanation) -> dict[str, Any]:
    """-o json: the pod, the summary and every node's verdict, figures in MiB."""
    return {
        "pod": {
            "namespace": report.namespace,
            "name": report.name,
            "phase": report.phase,
            "node": report.node,
            "terminating": report.terminating,
            "scheduler": report.scheduler,
            "servedScheduler": report.served_scheduler,
            "otherScheduler": report.other_scheduler,
            "resource": report.resource,
            "needMiB": report.need_mib,
            "schedulerMessage": report.scheduler_message,
        },
        "judged": report.judged,
        "summary": report.summary,
        "live": report.live,
        "nodes": [
            {
                "name": row.node,
                "verdict": row.verdict,
                "reason": row.reason,
                "refusalKind": row.refusal_kind,
                "headroomMiB": row.headroom_mib,
                "liveChecked": row.live_checked,
                "liveFreeMiB": row.live_free_mib,
                "telemetryAgeSeconds": row.telemetry_age_seconds,
                "declaredMiB": row.declared_mib,
                "capacityMiB": row.capacity_mib,
            }
            for row in report.rows
        ],
    }


EXPLAIN_HEADERS = ("NODE", "VERDICT", "LIVE FREE", "DECLARED/CAPACITY", "REASON")
_VERDICT_TEXT: Mapping[Verdict, str] = {
    "bound": "bound",
    "fits": "fits",
    "refused": "refused",
    "not-admitted": "not admitted",
    "no-gpu": "no GPU memory",
}


def verdict_cells(row: VerdictRow) -> tuple[str, ...]:
    capacity = MISSING if row.capacity_mib is None else str(row.capacity_mib)
    return (
        row.node,
        _VERDICT_TEXT[row.verdict],
        MISSING if row.live_free_mib is None else f"{row.live_free_mib} MiB",
        f"{row.declared_mib}/{capacity} MiB",
        row.reason,
    )


def render_explanation(report: PodExplanation, colour: bool = False) -> list[str]:
    """A header (the pod, where it stands, what it needs, the scheduler's own message), then
    the table of GPU nodes; nodes without GPU memory are named on one line below it."""
    fields = [("Pod", f"{report.namespace}/{report.name}"), ("Phase", _phase_text(report))]
    if report.node:
        fields.append(("Node", report.node))
    scheduler = report.scheduler
    if report.other_scheduler:
        scheduler += (
            f" (not {report.served_scheduler}: vramguard never judges this pod; the verdicts "
            "say what it would)"
        )
    fields.append(("Scheduler", scheduler))
    if report.need_mib > 0:
        fields.append(("Need", f"{report.need_mib} MiB of {report.resource}"))
    if report.scheduler_message is not None:
        fields.append(("Scheduler says", report.scheduler_message or MISSING))
    if report.judged and report.live != "read":
        fields.append(("Telemetry", _NOT_EVALUATED[report.live]))
    fields.append(("Summary", report.summary))
    width = max(len(key) for key, _ in fields) + 2
    lines = [f"{key}:".ljust(width) + value for key, value in fields]
    if not report.judged:
        return lines
    shown = [row for row in report.rows if row.verdict != "no-gpu"]
    without = [row.node for row in report.rows if row.verdict == "no-gpu"]
    lines.append("")
    if shown:
        red = [row.verdict == "refused" for row in shown]
        lines += render_table(
            EXPLAIN_HEADERS, [verdict_cells(r) for r in shown], red_rows=red, colour=colour
        )
    if without:
        count = len(without)
        lines.append(
            f"{count} node{'s' if count != 1 else ''} advertise{'s' if count == 1 else ''} "
            f"no GPU memory: {_named(without)}"
        )
    if not report.rows:
        lines.append("no nodes")
    return lines


def _phase_text(report: PodExplanation) -> str:
    text = report.phase or "unknown"
    if report.terminating:
        text += ", terminating"
    if report.scheduler_message is not None:
        text += ", unschedulable"
    elif not report.node and text.startswith("Pending"):
        text += ", not scheduled yet"
    return text
