"""Prometheus metrics of one webhook app, in a registry of its own.

Each app owns its CollectorRegistry, so tests (and several apps in one process) never share
counters through prometheus_client's global registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from certs.serving import CLOSE_REASONS, ConnectionStats

# Admission latency is sub-millisecond when healthy; the API server times out at seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class WebhookMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vramguard_webhook_requests",
            "Admission requests answered, by decision "
            "(patched, allowed, denied, errored, invalid).",
            ["decision"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vramguard_webhook_request_duration_seconds",
            "Time to answer POST /mutate, from the body read to the response built.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "vramguard_webhook_errors",
            "Requests that failed: invalid (4xx, not a usable AdmissionReview), internal "
            "(an unexpected error while deciding; the pod was not admitted) or disconnected "
            "(the caller left, or a body deadline closed it, before the whole body came) or "
            "busy (503: the bodies being read were over --max-buffered-bodies' budget).",
            ["kind"],
            registry=self.registry,
        )
        self.policy_reloads = Counter(
            "vramguard_webhook_policy_reloads",
            "Policy file changes seen, by result (success, error: the last good policy stays).",
            ["result"],
            registry=self.registry,
        )
        self.policy_last_reload_successful = Gauge(
            "vramguard_webhook_policy_last_reload_successful",
            "1 if the last policy (re)load succeeded, 0 if the file on disk is broken.",
            registry=self.registry,
        )
        self.policy_last_reload_success_timestamp = Gauge(
            "vramguard_webhook_policy_last_reload_success_timestamp_seconds",
            "Unix time of the last successful policy load.",
            registry=self.registry,
        )
        self.cluster_synced = Gauge(
            "vramguard_webhook_cluster_synced",
            "1 when Namespaces and PriorityClasses are known from the API (or no API access "
            "is configured), 0 while the watches are not synced.",
            registry=self.registry,
        )
        self.oversized_bodies = Counter(
            "vramguard_webhook_oversized_bodies",
            "Requests answered 413 (and their connection closed) because the body was over "
            "--max-body-bytes, by how it was found: content-length (declared, nothing read) or "
            "streamed (counted while reading).",
            ["detected"],
            registry=self.registry,
        )
        for decision in ("patched", "allowed", "denied", "errored", "invalid"):
            self.requests.labels(decision)
        for kind in ("invalid", "internal", "disconnected", "busy"):
            self.errors.labels(kind)
        for detected in ("content-length", "streamed"):
            self.oversized_bodies.labels(detected)
        for result in ("success", "error"):
            self.policy_reloads.labels(result)
        self.policy_loaded()

    def policy_loaded(self) -> None:
        self.policy_last_reload_successful.set(1)
        self.policy_last_reload_success_timestamp.set(time.time())

    def policy_reloaded(self, ok: bool) -> None:
        self.policy_reloads.labels("success" if ok else "error").inc()
        if ok:
            self.policy_loaded()
        else:
            self.policy_last_reload_successful.set(0)

    def follow_connections(self, stats: ConnectionStats) -> None:
        """Export the listener's connection counts (certs.serving) at every scrape."""
        self.registry.register(_ConnectionCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ConnectionCollector(Collector):
    def __init__(self, stats: ConnectionStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.stats
        yield GaugeMetricFamily(
            "vramguard_webhook_connections_open",
            "Connections open now, TLS handshakes in progress included (--max-connections "
            "caps it).",
            value=stats.open,
        )
        yield CounterMetricFamily(
            "vramguard_webhook_connections_accepted",
            "TCP connections accepted, refused ones included.",
            value=stats.accepted,
        )
        yield CounterMetricFamily(
            "vramguard_webhook_tls_handshakes",
            "TLS handshakes completed: each is a new connection the caller pays a handshake "
            "for. Their rate beside the request rate says whether the API server reuses "
            "connections.",
            value=stats.handshakes,
        )
        yield CounterMetricFamily(
            "vramguard_webhook_tls_sessions_resumed",
            "Completed TLS handshakes that resumed an earlier session (cheaper than a full one).",
            value=stats.resumed,
        )
        limited = CounterMetricFamily(
            "vramguard_webhook_connections_limited",
            "Connections refused or closed by a limit, by reason: connection-limit (over "
            "--max-connections, closed at accept), handshake-timeout, handshake-failed (no "
            "common protocol or cipher, bad client certificate, peer gone), header-timeout "
            "(nothing, or not the whole headers, within --header-timeout-seconds; 408 if "
            "something came), body-timeout, header-too-large (431).",
            labels=["reason"],
        )
        for reason in CLOSE_REASONS:
            limited.add_metric([reason], stats.limited[reason])
        yield limited
