"""What `vramguard explain` says about one pod, as pure data: where it stands, its verdict on
every node (gpumem.explain.judge_nodes, the extender's own fit rule) with the node's figures,
the one-line summary, and the JSON and table it prints. On a node with several cards the
verdict also says which card refused, and has a row per card under it (ops.explain_cards)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from gpumem.explain import (
    NodeVerdict,
    Verdict,
    explain_verdicts,
    judge_nodes,
    without_prefix,
)
from gpumem.fit import staleness_text
from gpumem.pending import SchedulingPod
from gpumem.policy import ExtenderSettings
from gpumem.state import LiveView, NodeState, Snapshot
from ops.explain_cards import (
    CardVerdictRow,
    card_cells,
    card_json,
    card_rows,
    card_stale_reason,
    refused_card,
)
from ops.table import MISSING, render_table

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
    """One node's verdict for the pod with the node's figures (gpumem.explain.NodeVerdict)."""

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
    # On a node with several cards: the index of the card that refused (None when the
    # refusal is the node's, or the pod fits), and every card's row. Empty on a one-card node.
    refused_card: str | None = None
    cards: tuple[CardVerdictRow, ...] = ()


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
    """The pod judged on every node of the snapshot (gpumem.explain.judge_nodes). Without a
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
                _NOT_EVALUATED[live_read]
                or (
                    card_stale_reason(node, settings, now)
                    if node.cards
                    else _stale_reason(live, settings, now)
                )
            )
    refused = refused_card(node, verdict.refusal)
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
        refused_card=None if refused is None else refused.index,
        cards=card_rows(node, verdict, pod, settings, now),
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
        why = f"live telemetry {staleness_text(live, settings.max_age_seconds, now)}"
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
        "nodes": [_verdict_json(row) for row in report.rows],
    }


def _verdict_json(row: VerdictRow) -> dict[str, Any]:
    """A node's verdict; `refusedCard` and `cards` only on a node with several cards."""
    document: dict[str, Any] = {
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
    if row.cards:
        document["refusedCard"] = row.refused_card
        document["cards"] = [card_json(card) for card in row.cards]
    return document


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
        cells: list[tuple[str, ...]] = []
        red: list[bool] = []
        for row in shown:
            cells.append(verdict_cells(row))
            red.append(row.verdict == "refused")
            for card in row.cards:
                cells.append(card_cells(row.node, card))
                red.append(card.refused)
        lines += render_table(EXPLAIN_HEADERS, cells, red_rows=red, colour=colour)
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
