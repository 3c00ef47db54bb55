"""Budgets from history (pure): per workload, the peak and p99 of its per-pod GPU memory over a
window, a recommended budget, and a verdict on the declared one; whether the recommended
budgets still fit each node and card; and the policy entries that would set them.

The rules, in MiB:

- A workload's history is its pods' (replicas, and pods it had before: recycled, rolled out,
  finished runs): each pod's usage per step of the range query, each value the highest sample
  of its step. The budget is per pod (kube-scheduler counts it per pod), so replicas are
  never added up: the peak is the highest any one pod used, and the p99 is over every pod's
  values together (nearest rank: the smallest value that at least 99% of them do not exceed).
- recommended = peak x safety, rounded up to a multiple of the step (at least one step).
- verdict: `over budget` when the peak is above the declared budget (the pod used more than
  it promised: what starves its neighbours on a card without memory isolation); `oversized`
  when the declared budget is more than `oversized_ratio` times the recommended one (at the
  default 1.5, a third of the budget or more would be given back, memory the scheduler keeps
  for a workload that never used it; closer than that is within what a week's noise, the
  rounding and the safety factor move); `ok` otherwise; `no data` without a sample in the
  window.
- fit: per node, the recommended budgets of the pods bound there (the declared one for a
  workload without data) against the node's capacity, and per card on a node with several,
  as the fit rule counts them: the card's pods plus the node's unassigned pods against the
  card's capacity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from gpumem.demand import DemandError, PodDemand, read_demand
from gpumem.objects import mapping, metadata_text
from gpumem.pods import TERMINAL_PHASES
from gpumem.policy import Policy
from gpumem.state import NodeState, PodKey, PodView
from gpumem.workloads import BARE_POD, WorkloadKey, Workloads

Verdict = Literal["over budget", "oversized", "ok", "no data"]
# Where a workload's budget is set, so where a new one has to go:
# template: its pod template declares vramguard.io/gpumem (edit the workload);
# policy: its template declares none and the webhook injects the namespace's gpumemMiB;
# pod: a pod without a controller (recreate it with another budget);
# none: nothing gives it one (a pod that asks for no GPU, or an excluded namespace);
# unknown: a controller whose template vramguard does not read (an operator's own kind).
BudgetSource = Literal["template", "policy", "pod", "none", "unknown"]

P99 = 99


@dataclass(frozen=True, slots=True)
class UsageHistory:
    """One pod's GPU memory over the window: (time, MiB) for each step with data, each the
    highest sample of its step."""

    points: tuple[tuple[float, int], ...]


@dataclass(frozen=True, slots=True)
class RecommendSettings:
    safety: Fraction = Fraction(6, 5)
    step_mib: int = 256
    oversized_ratio: Fraction = Fraction(3, 2)
    # The range query's step: each point stands for this many seconds of history.
    resolution_seconds: float = 60.0


@dataclass(frozen=True)
class WorkloadUsage:
    """What the analysis reads about one workload."""

    key: WorkloadKey
    declared_mib: int
    budget_source: BudgetSource
    # Its pods in the API now (not finished).
    pods_now: tuple[str, ...]
    # Pod name -> its history (pods gone from the API included).
    histories: Mapping[str, UsageHistory] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Recommendation:
    key: WorkloadKey
    declared_mib: int
    budget_source: BudgetSource
    pods_now: int
    pods_seen: int
    peak_mib: int | None
    peak_pod: str | None
    p99_mib: int | None
    recommended_mib: int | None
    verdict: Verdict
    # How much of the window the history covers: steps with data (any pod) x resolution.
    covered_seconds: float

    @property
    def budget_mib(self) -> int:
        """The budget the fit check counts: the recommended one, else the declared one."""
        return self.declared_mib if self.recommended_mib is None else self.recommended_mib


# --- The analysis of one workload --------------------------------------------------------------


def recommended_budget(peak_mib: int, safety: Fraction, step_mib: int) -> int:
    """peak x safety, rounded up to a multiple of step_mib, at least one step."""
    steps = math.ceil(Fraction(peak_mib) * safety / step_mib)
    return max(1, steps) * step_mib


def percentile(values: Sequence[int], q: int) -> int:
    """The nearest-rank q-th percentile: the smallest value that at least q% of the values
    do not exceed. values must not be empty."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(q, 100) * len(ordered)))
    return ordered[rank - 1]


def judge(peak_mib: int, declared_mib: int, recommended_mib: int, ratio: Fraction) -> Verdict:
    if peak_mib > declared_mib:
        return "over budget"
    if declared_mib > ratio * recommended_mib:
        return "oversized"
    return "ok"


def recommend(usage: WorkloadUsage, settings: RecommendSettings) -> Recommendation:
    values = [mib for history in usage.histories.values() for _, mib in history.points]
    peak = max(values, default=None)
    peak_pod = None
    recommended = None
    verdict: Verdict = "no data"
    if peak is not None:
        peak_pod = min(
            pod
            for pod, history in usage.histories.items()
            if any(mib == peak for _, mib in history.points)
        )
        recommended = recommended_budget(peak, settings.safety, settings.step_mib)
        verdict = judge(peak, usage.declared_mib, recommended, settings.oversized_ratio)
    steps = {t for history in usage.histories.values() for t, _ in history.points}
    return Recommendation(
        key=usage.key,
        declared_mib=usage.declared_mib,
        budget_source=usage.budget_source,
        pods_now=len(usage.pods_now),
        pods_seen=sum(1 for history in usage.histories.values() if history.points),
        peak_mib=peak,
        peak_pod=peak_pod,
        p99_mib=percentile(values, P99) if values else None,
        recommended_mib=recommended,
        verdict=verdict,
        covered_seconds=len(steps) * settings.resolution_seconds,
    )


# --- Pods, histories and controllers to workloads ---------------------------------------------


@dataclass(frozen=True)
class Gathered:
    workloads: tuple[WorkloadUsage, ...]
    # Pods with history that are not in the API and whose name no controller explains.
    unmatched: tuple[PodKey, ...]


def gather(
    pods: Iterable[Mapping[str, Any]],
    workloads: Workloads,
    histories: Mapping[PodKey, UsageHistory],
    policy: Policy,
) -> Gathered:
    """One WorkloadUsage per workload that has a GPU pod now or a pod in the history."""
    names = policy.resource_names
    owner_of: dict[PodKey, WorkloadKey] = {}
    declared: dict[WorkloadKey, list[int]] = {}
    running: dict[WorkloadKey, list[str]] = {}
    for raw in pods:
        pod_key = (metadata_text(raw, "namespace"), metadata_text(raw, "name"))
        workload = workloads.of_pod(raw)
        owner_of[pod_key] = workload
        if mapping(raw.get("status")).get("phase") in TERMINAL_PHASES:
            continue
        try:
            demand = read_demand(raw, names)
        except DemandError:
            # The apiserver validated it, so the policy reads the resource differently: a
            # GPU pod with no budget, as the extender counts it.
            demand = PodDemand(is_gpu=True, declared_mib=0, containers=())
        if demand.is_gpu or demand.declared_mib or pod_key in histories:
            declared.setdefault(workload, []).append(demand.declared_mib or 0)
            running.setdefault(workload, []).append(pod_key[1])
    per_workload: dict[WorkloadKey, dict[str, UsageHistory]] = {}
    unmatched = []
    for seen, history in sorted(histories.items()):
        found = owner_of.get(seen) or workloads.by_name(*seen)
        if found is None:
            unmatched.append(seen)
            continue
        per_workload.setdefault(found, {})[seen[1]] = history
    usages = []
    for key in sorted(declared.keys() | per_workload.keys()):
        budget, source = _budget(key, workloads, declared.get(key, []), policy)
        usages.append(
            WorkloadUsage(
                key=key,
                declared_mib=budget,
                budget_source=source,
                pods_now=tuple(sorted(running.get(key, []))),
                histories=per_workload.get(key, {}),
            )
        )
    return Gathered(tuple(usages), tuple(unmatched))


def _budget(
    key: WorkloadKey, workloads: Workloads, pods_declared: Sequence[int], policy: Policy
) -> tuple[int, BudgetSource]:
    """The workload's declared budget (the largest among its pods now: a rollout may be
    halfway; without pods, what its template would get) and where it is set."""
    from_pods = max(pods_declared) if pods_declared else None
    if key.kind == BARE_POD:
        return from_pods or 0, "pod"
    template = workloads.template(key)
    if template is None:
        return from_pods or 0, "unknown"
    try:
        demand = read_demand({"spec": mapping(template.get("spec"))}, policy.resource_names)
    except DemandError:
        return from_pods or 0, "unknown"
    rules = policy.for_namespace(key.namespace)
    source: BudgetSource
    if demand.declared_mib is not None:
        source, fallback = "template", demand.declared_mib
    elif demand.is_gpu and not rules.excluded:
        source, fallback = "policy", rules.gpumem_mib
    else:
        source, fallback = "none", 0
    return (fallback if from_pods is None else from_pods), source


# --- Do the recommended budgets fit? ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetFit:
    """One node, or one card of a node with several: declared and recommended budgets of
    the pods there against the capacity."""

    node: str
    # The card's index ("1": `gpu 1`) on a node with several, None for the node's own row.
    card: str | None
    uuid: str | None
    capacity_mib: int | None
    declared_mib: int
    recommended_mib: int
    pods: int

    @property
    def fits(self) -> bool | None:
        """None where the capacity is not known."""
        return None if self.capacity_mib is None else self.recommended_mib <= self.capacity_mib

    @property
    def over_mib(self) -> int:
        return 0 if self.capacity_mib is None else max(0, self.recommended_mib - self.capacity_mib)

    @property
    def label(self) -> str:
        return self.node if self.card is None else f"{self.node}/gpu {self.card}"


def fit_budgets(
    nodes: Iterable[NodeState],
    budget_of: Callable[[PodView], int],
    only: Callable[[NodeState], bool] = lambda node: True,
) -> tuple[BudgetFit, ...]:
    """Per GPU node (a known capacity, or GPU pods bound there) and card, the pods' budgets
    as declared and as `budget_of` says (the recommended one)."""
    rows: list[BudgetFit] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if (node.capacity.mib is None and not node.pods) or not only(node):
            continue
        rows.append(
            BudgetFit(
                node.name,
                None,
                None,
                node.capacity.mib,
                node.declared_mib,
                sum(budget_of(pod) for pod in node.pods),
                len(node.pods),
            )
        )
        unassigned = node.unassigned if node.cards else ()
        for card in node.cards:
            pods = (*card.pods, *unassigned)
            rows.append(
                BudgetFit(
                    node.name,
                    card.index,
                    card.uuid,
                    card.capacity_mib,
                    sum(pod.declared_mib for pod in pods),
                    sum(budget_of(pod) for pod in pods),
                    len(pods),
                )
            )
    return tuple(rows)


# --- The policy entries that would set them ---------------------------------------------------


@dataclass(frozen=True)
class NamespacePatch:
    """One namespace's entry of the policy's `namespaces:`: the whole entry (its current
    fields kept, YAML spelling) where the policy changes, with why; and what the policy
    cannot change (budgets declared in pod templates or bare pods)."""

    namespace: str
    entry: Mapping[str, Any] | None
    changes: tuple[str, ...]
    notes: tuple[str, ...]


def policy_patch(recommendations: Sequence[Recommendation], policy: Policy) -> list[NamespacePatch]:
    """Per namespace, the entry that sets the recommended budgets the policy can set.

    The policy's gpumemMiB is one budget for every pod of the namespace that declares none,
    so it becomes the largest recommendation among those workloads (a workload without data
    keeps the budget it has: lowering it on no evidence could starve it). A cap
    (maxGpumemMiB, the namespace's or the defaults') below a recommended budget is raised to
    it, since the webhook denies pods above it and the policy would not load with gpumemMiB
    above its cap."""
    by_namespace: dict[str, list[Recommendation]] = {}
    for rec in recommendations:
        by_namespace.setdefault(rec.key.namespace, []).append(rec)
    patches = []
    for namespace, recs in sorted(by_namespace.items()):
        patch = _namespace_patch(namespace, recs, policy)
        if patch.entry is not None or patch.notes:
            patches.append(patch)
    return patches


def _namespace_patch(
    namespace: str, recs: Sequence[Recommendation], policy: Policy
) -> NamespacePatch:
    rules = policy.for_namespace(namespace)
    notes = []
    for rec in recs:
        if rec.recommended_mib is None or rec.recommended_mib == rec.declared_mib:
            continue
        if rec.budget_source == "template":
            notes.append(
                f"{rec.key.label} declares {rec.declared_mib} MiB in its pod template: set "
                f"{policy.gpumem_resource_name} to {rec.recommended_mib} there (requests and "
                f"limits); the policy does not change it"
            )
        elif rec.budget_source == "pod":
            notes.append(
                f"pod {rec.key.name} has no controller: recreate it declaring "
                f"{rec.recommended_mib} MiB"
            )
        elif rec.budget_source in ("none", "unknown") and not rules.excluded:
            notes.append(
                f"{rec.key.label}: nothing vramguard reads sets its budget "
                f"({_source_text(rec.budget_source)}); give its pods {rec.recommended_mib} MiB"
            )
    if rules.excluded:
        if any(rec.recommended_mib is not None for rec in recs):
            notes.insert(0, "excluded from the webhook (excludedNamespaces): no budget is set here")
        return NamespacePatch(namespace, None, (), tuple(notes))
    from_policy = [rec for rec in recs if rec.budget_source == "policy"]
    with_data = [rec for rec in from_policy if rec.recommended_mib is not None]
    changes = []
    budget = rules.gpumem_mib
    if with_data:
        target = max(rec.budget_mib for rec in with_data)
        if len(with_data) < len(from_policy):
            target = max(target, rules.gpumem_mib)
        if target != rules.gpumem_mib:
            budget = target
            changes.append(_budget_change(rules.gpumem_mib, target, from_policy))
    needed = max([budget, *(r.recommended_mib for r in recs if r.recommended_mib is not None)])
    cap = rules.max_gpumem_mib
    new_cap = None
    if cap is not None and needed > cap:
        new_cap = needed
        where = "" if _sets_cap(policy, namespace) else " (from defaults)"
        changes.append(
            f"maxGpumemMiB {cap}{where} -> {needed}: below a recommended budget, so the "
            f"webhook would deny those pods"
        )
    if not changes:
        return NamespacePatch(namespace, None, (), tuple(notes))
    current = policy.namespaces.get(namespace)
    entry: dict[str, Any] = (
        dict(current.model_dump(by_alias=True, exclude_unset=True)) if current else {}
    )
    if budget != rules.gpumem_mib:
        entry["gpumemMiB"] = budget
    if new_cap is not None:
        entry["maxGpumemMiB"] = new_cap
    return NamespacePatch(namespace, entry, tuple(changes), tuple(notes))


def _sets_cap(policy: Policy, namespace: str) -> bool:
    entry = policy.namespaces.get(namespace)
    return entry is not None and "max_gpumem_mib" in entry.model_fields_set


def _budget_change(was: int, now: int, from_policy: Sequence[Recommendation]) -> str:
    parts = []
    for rec in from_policy:
        if rec.recommended_mib is None:
            parts.append(f"{rec.key.label}: no data, keeps {was}")
        else:
            parts.append(f"{rec.key.label}: peak {rec.peak_mib}, {rec.verdict}")
    text = f"gpumemMiB {was} -> {now}: " + "; ".join(parts)
    generous = [
        rec for rec in from_policy if rec.recommended_mib is not None and rec.recommended_mib < now
    ]
    if generous:
        text += (
            ". One budget for every pod here that declares none, so "
            + ", ".join(f"{rec.key.label} (recommended {rec.recommended_mib})" for rec in generous)
            + " would get more than it needs: declare its own in its pod template"
        )
    return text


def _source_text(source: BudgetSource) -> str:
    return {
        "none": "it asks for no GPU resource",
        "unknown": "a controller whose pod template vramguard does not read",
    }.get(source, source)
