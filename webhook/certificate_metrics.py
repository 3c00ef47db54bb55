"""Metrics of the webhook's certificates, in the app's registry (webhook.metrics).

The served certificate's expiry is known in both TLS modes (from what the listener serves);
the rest describes the self-managed CA and its rotations and only exists in that mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from certs.reloading import ReloadingTLS
from certs.rotation import STEP_KINDS, CertificateState, Phase

ERROR_KINDS = ("api", "invalid-secret", "missing-webhook-configuration", "internal")


class CertificateMetrics:
    def __init__(self, registry: CollectorRegistry, *, self_managed: bool) -> None:
        self.registry = registry
        self.expiry = Gauge(
            "vramguard_webhook_certificate_expiration_timestamp_seconds",
            "Unix time at which a certificate ends: served (what this replica's listener "
            "serves now), ca (the CA that signs the self-managed serving certificate).",
            ["certificate"],
            registry=registry,
        )
        self.self_managed = self_managed
        if not self_managed:
            return
        self.rotations = Counter(
            "vramguard_webhook_certificate_rotations",
            "Changes this replica wrote to the self-managed Secret, by step: created, new-ca "
            "(a CA joined the bundle), switched-ca (it signs now), dropped-old-ca, "
            "reissued-serving, repaired (a hand-edited or broken part replaced).",
            ["step"],
            registry=registry,
        )
        self.errors = Counter(
            "vramguard_webhook_certificate_errors",
            "Failed certificate sync passes, by kind: api (a read or write failed), "
            "missing-webhook-configuration (no caBundle can be published), internal; and "
            "invalid-secret (the Secret held something unusable; once per new problem).",
            ["kind"],
            registry=registry,
        )
        self.conflicts = Counter(
            "vramguard_webhook_certificate_write_conflicts",
            "Writes another replica won first (expected with several replicas; the loser "
            "reads again).",
            registry=registry,
        )
        self.phase = Gauge(
            "vramguard_webhook_certificate_rotation_phase",
            "1 for the rotation phase the Secret is in: stable, new-ca-trusted (waiting for "
            "the new bundle to propagate), overlap (older CAs still trusted).",
            ["phase"],
            registry=registry,
        )
        self.bundle_size = Gauge(
            "vramguard_webhook_certificate_ca_bundle_size",
            "CAs in the bundle the webhook configuration trusts.",
            registry=registry,
        )
        self.published = Gauge(
            "vramguard_webhook_certificate_ca_bundle_published",
            "1 when the webhook configuration carries the Secret's CA bundle.",
            registry=registry,
        )
        self.last_success = Gauge(
            "vramguard_webhook_certificate_last_sync_success_timestamp_seconds",
            "Unix time of the last sync that read the Secret and published its bundle.",
            registry=registry,
        )
        for step in STEP_KINDS:
            self.rotations.labels(step)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)

    def follow_served(self, not_after: Callable[[], datetime]) -> None:
        """Report the served certificate's end as the listener sees it, at every scrape."""
        self.expiry.labels("served").set_function(lambda: not_after().timestamp())

    def follow_reloads(self, tls: ReloadingTLS) -> None:
        """Export the listener's reloads of the certificate files, at every scrape."""
        self.registry.register(_ReloadCollector(tls))

    def observed(self, state: CertificateState, *, published: bool, now: datetime) -> None:
        if state.signer is not None:
            self.expiry.labels("ca").set(state.signer.certificate.not_valid_after_utc.timestamp())
        for phase in Phase:
            self.phase.labels(phase.value).set(1 if state.phase == phase else 0)
        self.bundle_size.set(len(state.trusted))
        self.published.set(1 if published else 0)
        if published:
            self.last_success.set(now.timestamp())


class _ReloadCollector(Collector):
    def __init__(self, tls: ReloadingTLS) -> None:
        self.tls = tls

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "vramguard_webhook_certificate_reloads",
            "Times the listener switched to new certificate files (--tls-cert, --tls-key, "
            "--tls-client-ca) after they changed on disk.",
            value=self.tls.reloads,
        )
        yield CounterMetricFamily(
            "vramguard_webhook_certificate_reload_failures",
            "Changed certificate files that could not be loaded (unreadable, not PEM, key and "
            "certificate not a pair); each distinct broken content counts once, after it was "
            "seen on two checks in a row. The previous certificate stays served.",
            value=self.tls.reload_failures,
        )
        yield GaugeMetricFamily(
            "vramguard_webhook_certificate_last_reload_successful",
            "0 while the certificate files on disk cannot be loaded (the previous certificate "
            "is served, and will expire); 1 when what is on disk is what is served.",
            value=0 if self.tls.last_error is not None else 1,
        )
