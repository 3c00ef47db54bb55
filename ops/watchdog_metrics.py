"""The watchdog's metrics (vramguard_watchdog_*, in a registry of its own) and the plain-HTTP
server for its /metrics, /healthz and /readyz (`vramguard watchdog --metrics-port`)."""

from __future__ import annotations

import time
from typing import Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from gpumem.watchdog import NONE_REASONS, RECYCLE_REASONS, WatchdogDecision
from ops.probes import TEXT, ProbeServer

METRICS_PREFIX = "vramguard_watchdog_"

RecycleResult = Literal["dry-run", "deleted", "gone", "conflict", "error"]
RECYCLE_RESULTS: tuple[RecycleResult, ...] = ("dry-run", "deleted", "gone", "conflict", "error")
ErrorKind = Literal["cluster", "telemetry", "internal"]
ERROR_KINDS: tuple[ErrorKind, ...] = ("cluster", "telemetry", "internal")


class WatchdogMetrics:
    """The watchdog's metrics, in a registry of its own. Every label value it can take starts
    at 0, so that increase() sees the first recycle."""

    def __init__(self, *, dry_run: bool) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.dry_run_label = "true" if dry_run else "false"
        self.decisions = Counter(
            METRICS_PREFIX + "decisions_total",
            "Decisions per GPU node and cycle, by action (none, recycle), reason and dry_run.",
            ["action", "reason", "dry_run"],
            registry=r,
        )
        self.recycles = Counter(
            METRICS_PREFIX + "recycles_total",
            "Pods chosen for recycling, by result: dry-run (logged only), deleted, gone (404: "
            "already deleted), conflict (409: the name now belongs to another pod), error.",
            ["result"],
            registry=r,
        )
        self.cycle_errors = Counter(
            METRICS_PREFIX + "cycle_errors_total",
            "Cycles that decided nothing, by what failed: cluster (the API server), telemetry "
            "(Prometheus), internal (a bug; logged with its traceback).",
            ["kind"],
            registry=r,
        )
        self.last_success = Gauge(
            METRICS_PREFIX + "last_success_timestamp_seconds",
            "Unix time of the last cycle that read the cluster and telemetry and decided "
            "(0: none yet).",
            registry=r,
        )
        self.dry_run = Gauge(
            METRICS_PREFIX + "dry_run",
            "1 when recycles are only logged (DRY_RUN), 0 when pods are deleted.",
            registry=r,
        )
        self.dry_run.set(1 if dry_run else 0)
        for reason in NONE_REASONS:
            self.decisions.labels("none", reason, self.dry_run_label)
        for reason in RECYCLE_REASONS:
            self.decisions.labels("recycle", reason, self.dry_run_label)
        for result in RECYCLE_RESULTS:
            self.recycles.labels(result)
        for kind in ERROR_KINDS:
            self.cycle_errors.labels(kind)

    def decided(self, decision: WatchdogDecision) -> None:
        self.decisions.labels(decision.action, decision.reason, self.dry_run_label).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Observed(Protocol):
    """What the server reads of the loop (ops.watchdog_loop.Watchdog)."""

    @property
    def metrics(self) -> WatchdogMetrics: ...

    @property
    def last_cycle_ended(self) -> float | None:
        """time.monotonic() at the end of the last cycle; None before the first."""
        ...


class MetricsServer(ProbeServer):
    """GET /metrics; /healthz: 200 while cycles keep ending (one ended within `stale_after`
    seconds, or the first is still running); /readyz: 200 while serving, so that a watchdog
    that cannot read the cluster or Prometheus stays scraped and its error counters seen.
    Plain HTTP on every address: counters and "ok", nothing else."""

    def __init__(self, watchdog: Observed, port: int, *, stale_after: float) -> None:
        self._watchdog = watchdog
        self._stale_after = stale_after
        self._started = time.monotonic()
        super().__init__(self.answer, port, name="vramguard-watchdog-metrics")

    def answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._watchdog.metrics.render()
        if path == "/healthz":
            ended = self._watchdog.last_cycle_ended
            since = time.monotonic() - (ended if ended is not None else self._started)
            if since <= self._stale_after:
                return 200, TEXT, b"ok\n"
            return 503, TEXT, f"no cycle ended in the last {self._stale_after:g} s\n".encode()
        if path == "/readyz":
            return 200, TEXT, b"ok\n"
        return 404, TEXT, b"not found\n"
