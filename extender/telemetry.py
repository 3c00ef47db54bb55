"""Live GPU memory from Prometheus: presets to queries, pure parsing of query results into
per-node and per-pod samples, and a thin polling thread that feeds the store.

Sample age: an instant query answers [evaluation time, value], not the time the value was
scraped, so each query is paired with `timestamp(<query>)`, whose value is the scrape time of
each series (for a plain selector; for an aggregation it is the evaluation time again, so custom
queries that aggregate report age 0 until Prometheus drops the series after its lookback).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, TypeVar

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from gpumem.policy import Policy, Telemetry
from gpumem.state import PodKey, Sample, TelemetryReading
from kube.threads import Threads

log = logging.getLogger(__name__)

MIB = 1 << 20
Unit = Literal["MiB", "bytes"]
LabelSet = frozenset[tuple[str, str]]
# Prometheus renames a target label that clashes with a scraped one to exported_<name>; for
# pod-level exporters the exported_* labels are the ones naming the workload pod.
POD_LABELS = (("exported_namespace", "exported_pod"), ("namespace", "pod"))


class TelemetryError(Exception):
    """A fetch that failed or answered something that is not an instant vector."""


@dataclass(frozen=True)
class Query:
    expr: str
    unit: Unit = "MiB"


@dataclass(frozen=True)
class QueryPlan:
    source: str
    free: Query | None = None
    used: Query | None = None
    total: Query | None = None
    pod_used: Query | None = None


PRESETS: Mapping[str, QueryPlan] = {
    # dcgm-exporter: framebuffer free/used per GPU, in MiB, labelled with the node's hostname.
    "dcgm": QueryPlan("dcgm", free=Query("DCGM_FI_DEV_FB_FREE"), used=Query("DCGM_FI_DEV_FB_USED")),
    # A per-process exporter: bytes used, labelled namespace and pod.
    "pod-exporter": QueryPlan("pod-exporter", pod_used=Query("gpu_pod_memory_used_bytes", "bytes")),
    "custom": QueryPlan("custom"),
}


def plan_queries(telemetry: Telemetry) -> QueryPlan:
    """The preset's queries, each replaced by the policy's own query where one is given."""
    plan = PRESETS[telemetry.preset]
    q = telemetry.queries
    return replace(
        plan,
        free=Query(q.free_mib) if q.free_mib else plan.free,
        used=Query(q.used_mib) if q.used_mib else plan.used,
        total=Query(q.total_mib) if q.total_mib else plan.total,
        pod_used=Query(q.pod_used_mib) if q.pod_used_mib else plan.pod_used,
    )


# --- Pure parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    value: float
    timestamp: float

    @property
    def label_set(self) -> LabelSet:
        # timestamp() drops the metric name; match its series on the other labels.
        return frozenset((k, v) for k, v in self.labels.items() if k != "__name__")


@dataclass(frozen=True)
class Parsed:
    series: list[Series]
    problems: list[str]


def parse_vector(answer: object) -> Parsed:
    """Parse an instant-query answer: the result list (what custom_query returns) or the whole
    API response. Raises TelemetryError when it is not a vector at all; a series with a bad
    value is skipped and described in problems."""
    result = _result_list(answer)
    series = []
    problems = []
    for item in result:
        if not isinstance(item, Mapping):
            problems.append(f"not a series: {item!r:.80}")
            continue
        labels = item.get("metric")
        point = item.get("value")
        if (
            not isinstance(labels, Mapping)
            or not isinstance(point, Sequence)
            or isinstance(point, str)
            or len(point) != 2
        ):
            problems.append(f"not a series: {item!r:.80}")
            continue
        try:
            timestamp = float(point[0])
            value = float(point[1])
        except (TypeError, ValueError):
            problems.append(f"unreadable sample {point!r:.80}")
            continue
        if not math.isfinite(timestamp) or not math.isfinite(value) or value < 0:
            problems.append(f"unusable value {point[1]!r} in {dict(labels)!r:.80}")
            continue
        series.append(Series({str(k): str(v) for k, v in labels.items()}, value, timestamp))
    return Parsed(series, problems)


def _result_list(answer: object) -> Sequence[object]:
    if isinstance(answer, Mapping):
        if answer.get("status") not in (None, "success"):
            raise TelemetryError(f"query failed: {answer.get('error', answer.get('status'))}")
        data = answer.get("data", answer)
        if not isinstance(data, Mapping) or data.get("resultType") not in (None, "vector"):
            raise TelemetryError("query did not return an instant vector")
        answer = data.get("result")
    if not isinstance(answer, list):
        raise TelemetryError(f"query did not return a list of series: {answer!r:.80}")
    return answer


def sample_times(parsed: Parsed) -> dict[LabelSet, float]:
    """Scrape time per series, from the answer of a timestamp(<query>) query."""
    return {s.label_set: s.value for s in parsed.series}


def to_mib(value: float, unit: Unit, round_up: bool) -> int:
    mib = value / MIB if unit == "bytes" else value
    return math.ceil(mib) if round_up else math.floor(mib)


def node_of(labels: Mapping[str, str], node_labels: Sequence[str]) -> str | None:
    """The Node name of a series: the first of node_labels it carries."""
    for label in node_labels:
        value = labels.get(label)
        if value:
            # instance is host:port; a bare host is what can match a Node name.
            return value.rsplit(":", 1)[0] if label == "instance" and ":" in value else value
    return None


def node_samples(
    parsed: Parsed,
    node_labels: Sequence[str],
    unit: Unit,
    times: Mapping[LabelSet, float],
    round_up: bool,
) -> tuple[dict[str, Sample], list[str]]:
    """Sum a per-GPU (or per-node) series per node; a node's sample is as old as its oldest
    GPU's."""
    return _sum_by(
        parsed,
        lambda labels: node_of(labels, node_labels),
        f"no node label ({', '.join(node_labels)})",
        unit,
        times,
        round_up=round_up,
    )


def pod_samples(
    parsed: Parsed, unit: Unit, times: Mapping[LabelSet, float]
) -> tuple[dict[PodKey, Sample], list[str]]:
    """Sum per-process series per pod."""
    return _sum_by(parsed, _pod_of, "no namespace/pod labels", unit, times, round_up=True)


K = TypeVar("K", str, tuple[str, str])


def _sum_by(
    parsed: Parsed,
    key_of: Callable[[Mapping[str, str]], K | None],
    missing_key: str,
    unit: Unit,
    times: Mapping[LabelSet, float],
    *,
    round_up: bool,
) -> tuple[dict[K, Sample], list[str]]:
    """Sum the series that share a key; a sum is as old as its oldest series."""
    sums: dict[K, float] = {}
    oldest: dict[K, float] = {}
    problems = []
    for s in parsed.series:
        key = key_of(s.labels)
        if key is None:
            problems.append(f"{missing_key} in {dict(s.labels)!r:.80}")
            continue
        sums[key] = sums.get(key, 0.0) + s.value
        sampled_at = min(s.timestamp, times.get(s.label_set, s.timestamp))
        oldest[key] = min(oldest.get(key, sampled_at), sampled_at)
    return {
        key: Sample(to_mib(total, unit, round_up), oldest[key]) for key, total in sums.items()
    }, problems


def _pod_of(labels: Mapping[str, str]) -> PodKey | None:
    for namespace_label, pod_label in POD_LABELS:
        namespace, pod = labels.get(namespace_label), labels.get(pod_label)
        if namespace and pod:
            return (namespace, pod)
    return None


# --- Fetching -------------------------------------------------------------------------------------


class QueryFunction(Protocol):
    def __call__(self, expr: str) -> object: ...


def read_telemetry(
    query: QueryFunction, plan: QueryPlan, node_labels: Sequence[str], now: float
) -> tuple[TelemetryReading, list[str]]:
    """Run the plan's queries (blocking) and parse them into one reading, with the problems
    seen in series that were skipped. Raises TelemetryError when any query fails."""
    problems: list[str] = []

    def fetch(q: Query) -> tuple[Parsed, dict[LabelSet, float]]:
        try:
            values = parse_vector(query(q.expr))
            times = sample_times(parse_vector(query(f"timestamp({q.expr})")))
        except TelemetryError:
            raise
        except Exception as err:  # the client raises whatever its HTTP stack raises
            raise TelemetryError(f"{q.expr}: {type(err).__name__}: {err}") from err
        problems.extend(values.problems)
        return values, times

    def per_node(q: Query | None, round_up: bool) -> dict[str, Sample]:
        if q is None:
            return {}
        values, times = fetch(q)
        samples, skipped = node_samples(values, node_labels, q.unit, times, round_up)
        problems.extend(skipped)
        return samples

    pod_used = None
    if plan.pod_used is not None:
        values, times = fetch(plan.pod_used)
        pod_used, skipped = pod_samples(values, plan.pod_used.unit, times)
        problems.extend(skipped)
    reading = TelemetryReading(
        source=plan.source,
        fetched_at=now,
        free=per_node(plan.free, round_up=False),
        used=per_node(plan.used, round_up=True),
        total=per_node(plan.total, round_up=False),
        pod_used=pod_used,
        has_node_usage=plan.free is not None or plan.used is not None,
    )
    return reading, problems


class PrometheusQuery:
    """custom_query of prometheus-api-client, with a timeout: it is synchronous, so it only
    ever runs in the telemetry thread."""

    def __init__(self, url: str, timeout_seconds: float) -> None:
        # No retries of its own (its default backs off for seconds): the poller tries again
        # every refreshSeconds, and a fetch must fail fast to be counted as missing.
        self._client = PrometheusConnect(
            url=url, disable_ssl=False, timeout=timeout_seconds, retry=Retry(total=0)
        )

    def __call__(self, expr: str) -> object:
        return self._client.custom_query(expr)


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
        self._store.apply_telemetry(reading)
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
