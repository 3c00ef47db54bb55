"""Prometheus metrics of one webhook app, in a registry of its own.

Each app owns its CollectorRegistry, so tests (and several apps in one process) never share
counters through prometheus_client's global registry.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
            "Requests that failed: invalid (4xx, not a usable AdmissionReview) or internal "
            "(an unexpected error while deciding; the pod was not admitted).",
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
        for decision in ("patched", "allowed", "denied", "errored", "invalid"):
            self.requests.labels(decision)
        for kind in ("invalid", "internal"):
            self.errors.labels(kind)
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
