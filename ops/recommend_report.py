"""What `vramguard recommend` shows, as pure data: per workload its peak, p99, declared and
recommended budget and verdict (gpumem.recommend), per node and card whether the recommended
budgets fit, and the policy entries that would set them; and the table, JSON and policy YAML
it prints.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from gpumem.objects import metadata_text
from gpumem.policy import Policy
from gpumem.recommend import (
    BudgetFit,
    NamespacePatch,
    Recommendation,
    RecommendSettings,
    UsageHistory,
    fit_budgets,
    gather,
    policy_patch,
    recommend,
)
from gpumem.state import NodeState, PodKey, PodView, Snapshot
from gpumem.workloads import Controller, WorkloadKey, Workloads
from ops.table import MISSING, render_table

WORKLOAD_HEADERS = (
    "NAMESPACE",
    "WORKLOAD",
    "PODS",
    "HISTORY",
    "PEAK",
    "P99",
    "DECLARED",
    "SET IN",
    "RECOMMENDED",
    "VERDICT",
)
NODE_HEADERS = ("NODE", "PODS", "CAPACITY", "DECLARED", "RECOMMENDED", "FITS")
COMMENT_WIDTH = 96
UNMATCHED_SHOWN = 5


@dataclass(frozen=True)
class HistorySource:
    """Where the history came from, for the header."""

    preset: str
    expr: str
    window_seconds: float
    end: float


@dataclass(frozen=True)
class RecommendReport:
    source: HistorySource
    settings: RecommendSettings
    workloads: tuple[Recommendation, ...]
    fits: tuple[BudgetFit, ...]
    patches: tuple[NamespacePatch, ...]
    # Pods with history whose workload is not known (gone, and no controller's name).
    unmatched: tuple[PodKey, ...]

    @property
    def over_budget(self) -> tuple[Recommendation, ...]:
        return tuple(rec for rec in self.workloads if rec.verdict == "over budget")


def build_report(
    *,
    policy: Policy,
    pods: Sequence[Mapping[str, Any]],
    controllers: Iterable[Controller],
    histories: Mapping[PodKey, UsageHistory],
    snapshot: Snapshot,
    settings: RecommendSettings,
    source: HistorySource,
    namespaces: Sequence[str] = (),
) -> RecommendReport:
    """The whole analysis; `namespaces` (when given) selects the workloads, and the nodes
    shown are those their pods are bound to."""
    workloads = Workloads(controllers)
    gathered = gather(pods, workloads, histories, policy)
    selected = set(namespaces)
    recs = tuple(
        recommend(usage, settings)
        for usage in gathered.workloads
        if not selected or usage.key.namespace in selected
    )
    by_workload = {rec.key: rec for rec in recs}
    owners: dict[PodKey, WorkloadKey] = {
        (metadata_text(raw, "namespace"), metadata_text(raw, "name")): workloads.of_pod(raw)
        for raw in pods
    }

    def budget_of(pod: PodView) -> int:
        rec = by_workload.get(owners.get((pod.namespace, pod.name), _NOBODY))
        if rec is None or rec.recommended_mib is None:
            return pod.declared_mib
        return rec.recommended_mib

    def shown(node: NodeState) -> bool:
        return not selected or any(pod.namespace in selected for pod in node.pods)

    fits = fit_budgets(snapshot.nodes.values(), budget_of, shown)
    unmatched = tuple(key for key in gathered.unmatched if not selected or key[0] in selected)
    return RecommendReport(
        source=source,
        settings=settings,
        workloads=recs,
        fits=fits,
        patches=tuple(policy_patch(recs, policy)),
        unmatched=unmatched,
    )


_NOBODY = WorkloadKey("", "", "")


# --- Text -------------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """The two largest units: `7d`, `6d 23h`, `3h 12m`, `45m`, `0m`."""
    minutes = round(seconds / 60)
    parts = []
    for unit, size in (("d", 1440), ("h", 60), ("m", 1)):
        count, minutes = divmod(minutes, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2]) or "0m"


def exact_mib(value: int | None) -> str:
    """MiB as a number to copy into a policy or a manifest (never rounded to GiB)."""
    return MISSING if value is None else f"{value} MiB"


def _fraction_text(value: Any) -> str:
    return f"{float(value):g}"


def header_lines(report: RecommendReport) -> list[str]:
    source = report.source
    settings = report.settings
    step = duration_text(settings.resolution_seconds)
    end = datetime.fromtimestamp(source.end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"History: {duration_text(source.window_seconds)} to {end} of {source.expr} "
        f"(preset {source.preset}), one point per {step}, each the peak of its {step}",
        f"Recommended: peak x {_fraction_text(settings.safety)}, rounded up to "
        f"{settings.step_mib} MiB; oversized: declared > "
        f"{_fraction_text(settings.oversized_ratio)} x recommended",
    ]


def workload_cells(rec: Recommendation) -> list[str]:
    return [
        rec.key.namespace,
        rec.key.label,
        str(rec.pods_seen),
        duration_text(rec.covered_seconds) if rec.peak_mib is not None else MISSING,
        exact_mib(rec.peak_mib),
        exact_mib(rec.p99_mib),
        exact_mib(rec.declared_mib),
        rec.budget_source,
        exact_mib(rec.recommended_mib),
        rec.verdict,
    ]


def fits_text(fit: BudgetFit) -> str:
    if fit.fits is None:
        return "capacity unknown"
    return "yes" if fit.fits else f"NO ({fit.over_mib} MiB over)"


def node_cells(fit: BudgetFit) -> list[str]:
    return [
        fit.label,
        str(fit.pods),
        exact_mib(fit.capacity_mib),
        exact_mib(fit.declared_mib),
        exact_mib(fit.recommended_mib),
        fits_text(fit),
    ]


def render_recommendation(report: RecommendReport, colour: bool = False) -> list[str]:
    lines = header_lines(report)
    lines.append("")
    if not report.workloads:
        lines.append("no GPU workloads")
    else:
        lines += render_table(
            WORKLOAD_HEADERS,
            [workload_cells(rec) for rec in report.workloads],
            red_rows=[rec.verdict == "over budget" for rec in report.workloads],
            colour=colour,
        )
        lines.append(
            "PODS: pods in the history (replicas, and pods since replaced); PEAK: the most "
            "one pod used (a budget is per pod); SET IN: where the budget is set"
        )
    if report.fits:
        lines.append("")
        lines += render_table(
            NODE_HEADERS,
            [node_cells(fit) for fit in report.fits],
            red_rows=[fit.fits is False for fit in report.fits],
            colour=colour,
        )
        if any(fit.card is not None for fit in report.fits):
            lines.append(
                "A card counts the pods known to hold it and the node's unassigned pods, as "
                "the fit rule does."
            )
    if report.unmatched:
        lines.append("")
        lines.append(_unmatched_text(report.unmatched))
    return lines


def _unmatched_text(unmatched: Sequence[PodKey]) -> str:
    names = ", ".join(f"{ns}/{pod}" for ns, pod in unmatched[:UNMATCHED_SHOWN])
    hidden = len(unmatched) - UNMATCHED_SHOWN
    more = f" and {hidden} more" if hidden > 0 else ""
    pods = "1 pod" if len(unmatched) == 1 else f"{len(unmatched)} pods"
    return (
        f"Left out: {pods} in the history that are gone from the cluster and match no "
        f"controller's pod names: {names}{more}"
    )


# --- JSON -------------------------------------------------------------------------------------


def recommendation_json(report: RecommendReport) -> dict[str, Any]:
    source = report.source
    settings = report.settings
    return {
        "window": {
            "seconds": source.window_seconds,
            "end": datetime.fromtimestamp(source.end, UTC).isoformat(),
            "resolutionSeconds": settings.resolution_seconds,
        },
        "preset": source.preset,
        "series": source.expr,
        "safety": float(settings.safety),
        "stepMiB": settings.step_mib,
        "oversizedRatio": float(settings.oversized_ratio),
        "workloads": [
            {
                "namespace": rec.key.namespace,
                "kind": rec.key.kind,
                "name": rec.key.name,
                "podsNow": rec.pods_now,
                "podsSeen": rec.pods_seen,
                "coveredSeconds": rec.covered_seconds,
                "peakMiB": rec.peak_mib,
                "peakPod": rec.peak_pod,
                "p99MiB": rec.p99_mib,
                "declaredMiB": rec.declared_mib,
                "budgetSetIn": rec.budget_source,
                "recommendedMiB": rec.recommended_mib,
                "verdict": rec.verdict,
            }
            for rec in report.workloads
        ],
        "nodes": [
            {
                "node": fit.node,
                "card": fit.card,
                "uuid": fit.uuid,
                "pods": fit.pods,
                "capacityMiB": fit.capacity_mib,
                "declaredMiB": fit.declared_mib,
                "recommendedMiB": fit.recommended_mib,
                "fits": fit.fits,
                "overMiB": fit.over_mib,
            }
            for fit in report.fits
        ],
        "policy": {
            "namespaces": {
                patch.namespace: dict(patch.entry)
                for patch in report.patches
                if patch.entry is not None
            },
            "changes": {
                patch.namespace: list(patch.changes) for patch in report.patches if patch.changes
            },
            "notes": {
                patch.namespace: list(patch.notes) for patch in report.patches if patch.notes
            },
        },
        "unmatched": [f"{ns}/{pod}" for ns, pod in report.unmatched],
        "overBudget": bool(report.over_budget),
    }


# --- The policy entries -------------------------------------------------------------------------


def render_policy(report: RecommendReport) -> str:
    """The `namespaces:` entries that set the recommended budgets, as YAML with the reasons in
    comments: each entry is whole (its fields in --policy are kept), to replace the file's."""
    source = report.source
    settings = report.settings
    end = datetime.fromtimestamp(source.end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = _comment(
        f"vramguard recommend: budgets from {duration_text(source.window_seconds)} of "
        f"{source.expr} (preset {source.preset}) to {end}; recommended = peak x "
        f"{_fraction_text(settings.safety)}, rounded up to {settings.step_mib} MiB. Review, "
        "then replace these entries under namespaces: in the policy file; each entry is whole "
        "(the fields it has in --policy are kept). Both services reload the policy.",
        "",
    )
    entries = [patch for patch in report.patches if patch.entry is not None]
    lines.append("namespaces:" if entries else "namespaces: {}")
    for patch in report.patches:
        for change in patch.changes:
            lines += _comment(f"{patch.namespace}: {change}", "  ")
        for note in patch.notes:
            lines += _comment(f"{patch.namespace}: {note}", "  ")
        if patch.entry is not None:
            body = yaml.safe_dump(
                {patch.namespace: dict(patch.entry)}, sort_keys=False, default_flow_style=False
            )
            lines += ["  " + line for line in body.splitlines()]
    if not report.patches:
        lines += _comment("nothing to change: no workload with history has a new budget", "  ")
    return "\n".join(lines) + "\n"


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(
        text,
        width=COMMENT_WIDTH,
        initial_indent=f"{indent}# ",
        subsequent_indent=f"{indent}#   ",
        break_on_hyphens=False,
    )
