"""Live GPU memory from Prometheus: presets to queries, read into per-node, per-card and per-pod
samples (parsing in extender.telemetry_parse), and a thin polling thread that feeds the store;
and, for `vramguard recommend`, each pod's usage over a window through a range query of the
same preset's per-pod series.

Sample age: an instant query answers [evaluation time, value], not the time the value was
scraped, so each query is paired with `timestamp(<query>)`, whose value is the scrape time of
each series (for a plain selector; for an aggregation it is the evaluation time again, so custom
queries that aggregate report age 0 until Prometheus drops the series after its lookback).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from extender.telemetry_parse import (
    CardKey,
    DeviceFigures,
    LabelSet,
    Parsed,
    Series,
    TelemetryError,
    Unit,
    card_claims,
    device_figures,
    parse_matrix,
    parse_vector,
    pod_cards,
    pod_histories,
    pod_samples,
    sample_times,
)
from gpumem.policy import Policy, Telemetry
from gpumem.recommend import UsageHistory
from gpumem.state import CardSample, PodKey, TelemetryReading
from kube.threads import Threads

__all__ = [
    "PRESETS",
    "HistoryWindow",
    "PrometheusQuery",
    "Query",
    "QueryPlan",
    "TelemetryError",
    "TelemetryPoller",
    "history_expr",
    "plan_queries",
    "read_pod_history",
    "read_telemetry",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    expr: str
    unit: Unit = "MiB"
    # Whether pod labels on its series name the pod holding the card (dcgm-exporter's pod
    # mapping). False where the only pod labels are the scrape target's own (the node agent's
    # pod on its per-GPU series), which would otherwise claim every card of its node.
    names_pods: bool = True


@dataclass(frozen=True)
class QueryPlan:
    source: str
    free: Query | None = None
    used: Query | None = None
    total: Query | None = None
    pod_used: Query | None = None
    # Series naming a pod and the GPU UUID it holds; the value is ignored.
    assignment: Query | None = None


PRESETS: Mapping[str, QueryPlan] = {
    # dcgm-exporter: framebuffer free/used per GPU (labels gpu, UUID), in MiB, labelled with the
    # node's Hostname (hostname in newer builds); with Kubernetes mapping on, also pod,
    # namespace and container of a pod on the GPU.
    "dcgm": QueryPlan("dcgm", free=Query("DCGM_FI_DEV_FB_FREE"), used=Query("DCGM_FI_DEV_FB_USED")),
    # A per-process exporter: bytes used, labelled namespace and pod.
    "pod-exporter": QueryPlan("pod-exporter", pod_used=Query("gpu_pod_memory_used_bytes", "bytes")),
    # `vramguard node-agent`: NVML per GPU (labels node, gpu, uuid) and per pod (namespace, pod,
    # container, gpu, uuid), and the kubelet's PodResources as one series per pod and card.
    "node-agent": QueryPlan(
        "node-agent",
        free=Query("vramguard_gpu_memory_free_bytes", "bytes", names_pods=False),
        used=Query("vramguard_gpu_memory_used_bytes", "bytes", names_pods=False),
        total=Query("vramguard_gpu_memory_total_bytes", "bytes", names_pods=False),
        pod_used=Query("gpu_pod_memory_used_bytes", "bytes"),
        assignment=Query("vramguard_pod_gpu_assignment"),
    ),
    "custom": QueryPlan("custom"),
}


def plan_queries(telemetry: Telemetry) -> QueryPlan:
    """The preset's queries, each replaced by the policy's own query (in MiB) where one is
    given; a replaced query keeps what its preset knows about the exporter's pod labels."""
    plan = PRESETS[telemetry.preset]
    q = telemetry.queries

    def override(expr: str | None, preset: Query | None) -> Query | None:
        if not expr:
            return preset
        return Query(expr, names_pods=preset.names_pods if preset else True)

    return replace(
        plan,
        free=override(q.free_mib, plan.free),
        used=override(q.used_mib, plan.used),
        total=override(q.total_mib, plan.total),
        pod_used=override(q.pod_used_mib, plan.pod_used),
        assignment=override(q.pod_card, plan.assignment),
    )


# --- Fetching -------------------------------------------------------------------------------------


class QueryFunction(Protocol):
    def __call__(self, expr: str) -> object: ...


def read_telemetry(
    query: QueryFunction, plan: QueryPlan, node_labels: Sequence[str], now: float
) -> tuple[TelemetryReading, list[str]]:
    """Run the plan's queries (blocking) and parse them into one reading, with the problems
    seen in series that were skipped. Raises TelemetryError when any query fails."""
    problems: list[str] = []
    # Series whose pod labels may name the pod holding their card (see Query.names_pods).
    labelled: list[Series] = []

    def run(expr: str) -> Parsed:
        try:
            return parse_vector(query(expr))
        except TelemetryError:
            raise
        except Exception as err:  # the client raises whatever its HTTP stack raises
            raise TelemetryError(f"{expr}: {type(err).__name__}: {err}") from err

    def fetch(q: Query) -> tuple[Parsed, dict[LabelSet, float]]:
        values = run(q.expr)
        times = sample_times(run(f"timestamp({q.expr})"))
        problems.extend(values.problems)
        if q.names_pods:
            labelled.extend(values.series)
        return values, times

    def per_device(q: Query | None, round_up: bool) -> DeviceFigures:
        if q is None:
            return DeviceFigures({}, {}, [])
        values, times = fetch(q)
        figures = device_figures(values, node_labels, q.unit, times, round_up)
        problems.extend(figures.problems)
        return figures

    pod_used = None
    if plan.pod_used is not None:
        values, times = fetch(plan.pod_used)
        pod_used, skipped = pod_samples(values, plan.pod_used.unit, times)
        problems.extend(skipped)
    free = per_device(plan.free, round_up=False)
    used = per_device(plan.used, round_up=True)
    total = per_device(plan.total, round_up=False)
    assigned: dict[PodKey, set[str]] = {}
    if plan.assignment is not None:
        # Only which pod holds which card matters here, not the value or its age.
        answer = run(plan.assignment.expr)
        problems.extend(answer.problems)
        assigned = card_claims(answer.series)
    held, ambiguous = pod_cards(
        card_claims(labelled), assigned, plan.assignment.expr if plan.assignment else ""
    )
    problems.extend(ambiguous)
    reading = TelemetryReading(
        source=plan.source,
        fetched_at=now,
        free=free.nodes,
        used=used.nodes,
        total=total.nodes,
        pod_used=pod_used,
        has_node_usage=plan.free is not None or plan.used is not None,
        cards=_cards(free, used, total),
        pod_cards=held,
    )
    return reading, problems


def _cards(
    free: DeviceFigures, used: DeviceFigures, total: DeviceFigures
) -> dict[str, dict[str, CardSample]]:
    """One CardSample per (node, UUID) seen in any of the three queries."""
    cards: dict[str, dict[str, CardSample]] = {}
    keys: dict[CardKey, None] = dict.fromkeys([*free.cards, *used.cards, *total.cards])
    for key in keys:
        node, uuid = key
        figures = [query.cards.get(key) for query in (free, used, total)]
        index = next((fig.index for fig in figures if fig is not None and fig.index), None)
        samples = [fig.sample if fig is not None else None for fig in figures]
        cards.setdefault(node, {})[uuid] = CardSample(uuid, index, *samples)
    return cards


# --- History: each pod's usage over a window (range queries) -----------------------------------

# A plain metric selector (a name and optional matchers), which max_over_time can take as a
# range vector of raw samples; anything else (an aggregation, arithmetic) needs a subquery.
_SELECTOR = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^{}]*\})?")


@dataclass(frozen=True)
class HistoryWindow:
    """A range query's window: (start, end], one point per step, each point covering the
    step before it."""

    start: float
    end: float
    step_seconds: int


class RangeQueryFunction(Protocol):
    def __call__(self, expr: str, start: float, end: float, step_seconds: int) -> object: ...


def history_expr(query: Query, step_seconds: int) -> str:
    """The query's highest value within each step, so that no sample between two points of
    the range query is lost (a peak shorter than the step still counts): max_over_time over
    the step, on a plain selector's raw samples, else on a subquery at Prometheus's default
    resolution (its evaluation interval)."""
    expr = query.expr.strip()
    if _SELECTOR.fullmatch(expr):
        return f"max_over_time({expr}[{step_seconds}s])"
    return f"max_over_time(({expr})[{step_seconds}s:])"


def read_pod_history(
    query_range: RangeQueryFunction, plan: QueryPlan, window: HistoryWindow
) -> tuple[dict[PodKey, UsageHistory], list[str]]:
    """Each pod's usage over the window from the plan's per-pod query (blocking), with the
    problems seen in series that were skipped. Raises TelemetryError when the query fails or
    the plan has no per-pod query (dcgm-exporter's pod labels repeat the card's figure for
    every pod on it, so they cannot tell pods sharing a card apart)."""
    query = plan.pod_used
    if query is None:
        raise TelemetryError(
            f"telemetry preset {plan.source} has no per-pod GPU memory series: use preset "
            f"node-agent or pod-exporter, or set extender.telemetry.queries.podUsedMiB"
        )
    expr = history_expr(query, window.step_seconds)
    # The first point covers the step after the window's start.
    start = window.start + window.step_seconds
    try:
        answer = query_range(expr, start, window.end, window.step_seconds)
    except Exception as err:  # the client raises whatever its HTTP stack raises
        raise TelemetryError(f"{expr}: {type(err).__name__}: {err}") from err
    parsed = parse_matrix(answer)
    histories, skipped = pod_histories(parsed, query.unit)
    return histories, [*parsed.problems, *skipped]


class PrometheusQuery:
    """custom_query of prometheus-api-client, with a timeout: it is synchronous, so it only
    ever runs in the telemetry thread (or a one-shot command)."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        # No retries of its own (its default backs off for seconds): the poller tries again
        # every refreshSeconds, and a fetch must fail fast to be counted as missing.
        self._client = PrometheusConnect(
            url=url, disable_ssl=False, timeout=timeout_seconds, retry=Retry(total=0)
        )

    def __call__(self, expr: str) -> object:
        return self._client.custom_query(expr)

    def range(self, expr: str, start: float, end: float, step_seconds: int) -> object:
        """A range query (custom_query_range): the matrix from start to end, one point per
        step."""
        return self._client.custom_query_range(
            expr,
            start_time=datetime.fromtimestamp(start, UTC),
            end_time=datetime.fromtimestamp(end, UTC),
            step=f"{step_seconds}s",
        )


class TelemetryPoller:
    """Fetch telemetry every refreshSeconds in a daemon thread; failures keep the last reading
    (see ClusterStore.telemetry_failed) and are logged once per change of state."""

    def __init__(
        self,
        query: QueryFunction,
        store: ClusterStore,
        policy: Callable[[], Policy],
        metrics: ExtenderMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._query = query
        self._store = store
        self._policy = policy
        self._metrics = metrics
        self._clock = clock
        self._threads = Threads()
        self._stop = self._threads.stopping
        self._failing = False
        self._problems_logged: frozenset[str] = frozenset()

    def start(self) -> None:
        self._threads.start("vramguard-telemetry", self._run)

    def stop(self) -> None:
        # A fetch in flight ends within its timeout; the thread is a daemon, so do not wait.
        self._threads.stop()

    def poll_once(self) -> bool:
        """One fetch; True when it succeeded."""
        telemetry = self._policy().extender.telemetry
        plan = plan_queries(telemetry)
        try:
            reading, problems = read_telemetry(
                self._query, plan, telemetry.node_labels, self._clock()
            )
        except TelemetryError as err:
            self._failed(plan.source, str(err))
            return False
        rejected = self._store.apply_telemetry(reading)
        for rejection in rejected:
            self._metrics.telemetry_rejected.labels(
                figure=rejection.figure, reason=rejection.reason
            ).inc()
        problems = [*problems, *(rejection.describe() for rejection in rejected)]
        self._metrics.telemetry_fetches.labels(result="ok").inc()
        self._metrics.telemetry_up.set(1)
        if self._failing:
            log.info("telemetry from Prometheus (%s) is back", plan.source)
        self._failing = False
        self._log_problems(problems)
        return True

    def _failed(self, source: str, error: str) -> None:
        self._store.telemetry_failed(source, error)
        self._metrics.telemetry_fetches.labels(result="error").inc()
        self._metrics.telemetry_up.set(0)
        if not self._failing:
            log.warning(
                "telemetry from Prometheus (%s) failing, keeping the last samples until they "
                "are older than maxAgeSeconds, then staleMode %s applies: %s",
                source,
                self._policy().extender.stale_mode,
                error,
            )
        self._failing = True

    def _log_problems(self, problems: Iterable[str]) -> None:
        # Once per distinct set, not every refresh: a misnamed label would flood the log.
        distinct = frozenset(problems)
        if distinct and distinct != self._problems_logged:
            log.warning(
                "telemetry: skipped %d series: %s", len(distinct), "; ".join(sorted(distinct))
            )
        self._problems_logged = distinct

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception:
                # A bug here must not end telemetry for good; it shows as failing instead.
                log.exception("telemetry poll crashed")
                self._failing = True
            interval = self._policy().extender.refresh_seconds
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))
