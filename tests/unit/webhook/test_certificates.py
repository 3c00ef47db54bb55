"""webhook.certificates: replicas keeping one Secret, one caBundle and their served files in
step through the API server's optimistic concurrency alone (kube.secrets over a fake API)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import urllib3
from cryptography import x509
from prometheus_client import CollectorRegistry

from certs import rotation
from certs.authority import subject_names
from certs.rotation import GENERATION, PUBLISHED_AT, ROTATE, Timings, issuer_of
from kube.secrets import KubernetesTLSStore, ca_bundles, object_annotations, secret_data
from tests.unit.kube.fake_tls_api import FakeTLSAPI
from tests.unit.kube.fakes import api_error
from webhook.certificate_metrics import CertificateMetrics
from webhook.certificates import CertificateManager, SyncOutcome

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NAMES = subject_names(["vramguard-webhook.vramguard.svc"])
TIMINGS = Timings(propagation=timedelta(seconds=60), overlap=timedelta(minutes=10))


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Replica:
    manager: CertificateManager
    registry: CollectorRegistry
    directory: Path
    reloads: list[int] = field(default_factory=list)

    def served(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.directory / "tls.crt").read_bytes())

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def api() -> FakeTLSAPI:
    fake = FakeTLSAPI()
    fake.add_configuration()
    return fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


def replica(api: FakeTLSAPI, clock: Clock, directory: Path, store: Any = None) -> Replica:
    registry = CollectorRegistry()
    tls_store = store or KubernetesTLSStore(
        api,
        api,
        namespace="vramguard",
        secret="vramguard-webhook-tls",
        webhook_configuration="vramguard",
    )
    manager = CertificateManager(
        tls_store,
        names=NAMES,
        timings=TIMINGS,
        cert_file=directory / "tls.crt",
        key_file=directory / "tls.key",
        metrics=CertificateMetrics(registry, self_managed=True),
        clock=clock,
    )
    made = Replica(manager, registry, directory)
    manager.on_served = lambda: made.reloads.append(1)
    return made


def carried(api: FakeTLSAPI) -> list[x509.Certificate]:
    """The CAs the webhook configuration makes the API server trust."""
    ((_, bundle),) = ca_bundles(api.configurations["vramguard"])
    return list(x509.load_pem_x509_certificates(bundle))


def annotate(api: FakeTLSAPI, key: str, value: str) -> None:
    """What `kubectl annotate secret` does (and a new resourceVersion)."""
    secret = api.secret()
    secret["metadata"].setdefault("annotations", {})[key] = value
    secret["metadata"]["resourceVersion"] += "0"


def test_the_first_pass_creates_publishes_and_serves(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path
) -> None:
    one = replica(api, clock, tmp_path)
    outcome = one.manager.sync()
    assert (outcome.result, outcome.served) == ("ok", True)
    secret = api.secret()
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "vramguard-webhook"
    data, _ = secret_data(secret)
    assert set(data) == {"tls.crt", "tls.key", "ca.crt", "ca.key", "ca-bundle.crt"}
    assert (tmp_path / "tls.crt").read_bytes() == data["tls.crt"]
    assert (tmp_path / "tls.key").read_bytes() == data["tls.key"]
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    assert [c.public_bytes(_PEM) for c in carried(api)] == [data["ca.crt"]]
    assert object_annotations(api.configurations["vramguard"]) == {GENERATION: "1"}
    assert object_annotations(secret)[PUBLISHED_AT] == "2030-01-01T00:00:00Z"
    assert api.writes() == [
        "create_namespaced_secret",
        "patch_mutating_webhook_configuration",
        "replace_namespaced_secret",
    ]
    assert one.reloads == [1]
    assert one.metric("vramguard_webhook_certificate_rotations_total", step="created") == 1
    # At rest a pass only reads.
    api.calls.clear()
    clock.advance(30)
    renewal = T0 + timedelta(days=90 - 30)
    assert one.manager.sync() == SyncOutcome("ok", served=True, wake_at=renewal)
    assert api.writes() == []
    assert one.reloads == [1]


def test_two_replicas_that_both_create_end_up_serving_one_certificate(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path
) -> None:
    one, two = replica(api, clock, tmp_path / "1"), replica(api, clock, tmp_path / "2")

    def other_replica_first(call: str) -> None:
        # Replica two read "no Secret", then replica one created it before two's create.
        if call == "create_namespaced_secret" and api.before is not None:
            api.before = None
            assert one.manager.sync().result == "ok"

    api.before = other_replica_first
    lost = two.manager.sync()
    assert (lost.result, lost.served) == ("conflict", False)
    assert "already exists" in (lost.error or "")
    assert two.metric("vramguard_webhook_certificate_write_conflicts_total") == 1
    assert two.manager.sync().result == "ok"
    assert one.served() == two.served()
    assert len(carried(api)) == 1


def test_a_forced_ca_rotation_across_two_replicas_never_serves_an_untrusted_certificate(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path
) -> None:
    replicas = [replica(api, clock, tmp_path / str(i)) for i in range(2)]
    for each in replicas:
        assert each.manager.sync().served
    first_ca = carried(api)
    annotate(api, ROTATE, "ca")
    bundles = [first_ca]
    served = {replicas[0].served().serial_number}
    for tick in range(200):  # 5 s passes, alternating replicas: 1000 s
        clock.advance(5)
        each = replicas[tick % 2]
        assert each.manager.sync().result in {"ok", "conflict"}
        if carried(api) != bundles[-1]:
            bundles.append(carried(api))
        for one in replicas:
            assert issuer_of(one.served(), carried(api)) is not None, f"tick {tick}"
            served.add(one.served().serial_number)
    assert len(bundles) == 3
    assert len(bundles[1]) == 2
    assert bundles[1][0] == first_ca[0]
    assert bundles[2] == bundles[1][1:]
    assert len(served) == 2
    assert replicas[0].served() == replicas[1].served()
    assert ROTATE not in object_annotations(api.secret())
    steps = {
        step: sum(
            r.metric("vramguard_webhook_certificate_rotations_total", step=step) for r in replicas
        )
        for step in ("new-ca", "switched-ca", "dropped-old-ca")
    }
    assert steps == {"new-ca": 1, "switched-ca": 1, "dropped-old-ca": 1}


def test_a_replica_with_a_stale_read_never_puts_an_older_bundle_back(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path
) -> None:
    one = replica(api, clock, tmp_path / "1")
    one.manager.sync()
    stale = _copy(api.secret())
    annotate(api, ROTATE, "ca")
    one.manager.sync()
    newer = carried(api)
    assert len(newer) == 2

    class StaleStore(KubernetesTLSStore):
        """Reads the Secret as it was before the rotation began."""

        def read_secret(self) -> dict[str, Any] | None:
            return _copy(stale)

    two = replica(
        api,
        clock,
        tmp_path / "2",
        StaleStore(
            api,
            api,
            namespace="vramguard",
            secret="vramguard-webhook-tls",
            webhook_configuration="vramguard",
        ),
    )
    outcome = two.manager.sync()
    assert outcome.result == "conflict"
    assert carried(api) == newer


def test_a_dead_api_is_an_outcome_that_says_why(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path
) -> None:
    one = replica(api, clock, tmp_path)
    api.failure = _refused()
    outcome = one.manager.sync()
    assert (outcome.result, outcome.served) == ("error", False)
    assert outcome.error == (
        "reading Secret vramguard/vramguard-webhook-tls: cannot reach the API server: "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    assert one.metric("vramguard_webhook_certificate_errors_total", kind="api") == 1
    assert not (tmp_path / "tls.crt").exists()


def test_served_files_alone_do_not_count_as_a_certificate(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path
) -> None:
    """Files an earlier run left behind may be from a CA dropped since: only a Secret read
    makes a replica ready to serve."""
    one = replica(api, clock, tmp_path)
    one.manager.sync()
    api.failure = _refused()
    assert replica(api, clock, tmp_path).manager.sync().served is False


def test_waiting_for_the_first_certificate_retries_and_says_why(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = replica(api, clock, tmp_path)
    api.fail_once = {"read_namespaced_secret": _refused()}
    with caplog.at_level(logging.WARNING, "webhook.certificates"):
        assert one.manager.wait_until_serving(threading.Event(), interval=0.01)
    (waiting,) = [r for r in caplog.records if "no serving certificate yet" in r.getMessage()]
    assert "Connection refused; retrying in 0.0s" in waiting.getMessage()
    assert (tmp_path / "tls.crt").exists()
    stopped = threading.Event()
    stopped.set()
    assert not replica(api, clock, tmp_path).manager.wait_until_serving(stopped, interval=0.01)


def test_without_the_webhook_configuration_it_serves_but_rotations_wait(
    clock: Clock, tmp_path: Path
) -> None:
    api = FakeTLSAPI()
    one = replica(api, clock, tmp_path)
    outcomes = [one.manager.sync() for _ in range(3)]
    assert {(o.result, o.served) for o in outcomes} == {("error", True)}
    assert "MutatingWebhookConfiguration vramguard not found" in (outcomes[0].error or "")
    assert (
        one.metric(
            "vramguard_webhook_certificate_errors_total", kind="missing-webhook-configuration"
        )
        == 3
    )
    annotate(api, ROTATE, "ca")
    clock.advance(3600)
    one.manager.sync()
    data, annotations = secret_data(api.secret())[0], object_annotations(api.secret())
    assert "next-ca.crt" in data, "the new CA waits: it is not published"
    assert PUBLISHED_AT not in annotations


def test_a_broken_secret_is_said_once_and_repaired(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = replica(api, clock, tmp_path)
    one.manager.sync()
    api.secret()["data"]["ca.key"] = "bm90IGEga2V5"  # "not a key"
    with caplog.at_level(logging.WARNING, "webhook.certificates"):
        for _ in range(3):
            clock.advance(5)
            assert one.manager.sync().result == "ok"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "Secret vramguard/vramguard-webhook-tls: ca.crt/ca.key: CA key is not an unencrypted PEM "
        "private key"
    ]
    assert one.metric("vramguard_webhook_certificate_errors_total", kind="invalid-secret") == 1
    clock.advance(60)
    one.manager.sync()
    assert issuer_of(one.served(), carried(api)) is not None
    assert "ca.key" in secret_data(api.secret())[0]


def test_a_refused_write_is_an_error_and_the_secret_as_read_is_still_served(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path
) -> None:
    one = replica(api, clock, tmp_path)
    one.manager.sync()
    annotate(api, ROTATE, "serving")
    clock.advance(TIMINGS.propagation.total_seconds())
    before = one.served()
    api.fail_once = {
        "replace_namespaced_secret": api_error(403, "Forbidden", "cannot update secrets")
    }
    outcome = one.manager.sync()
    assert (outcome.result, outcome.served) == ("error", True)
    assert outcome.error == (
        "updating Secret vramguard/vramguard-webhook-tls: 403 cannot update secrets"
    )
    assert one.served() == before


def test_an_unexpected_error_is_logged_counted_and_survived(
    api: FakeTLSAPI,
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one = replica(api, clock, tmp_path)
    planned = rotation.plan
    failures = [RuntimeError("a bug")]

    def plan_failing_once(*args: Any) -> rotation.Plan:
        if failures:
            raise failures.pop()
        return planned(*args)

    monkeypatch.setattr(rotation, "plan", plan_failing_once)
    stopping = threading.Event()
    with caplog.at_level(logging.ERROR, "webhook.certificates"):
        assert one.manager.wait_until_serving(stopping, interval=0.01)
    assert "certificate sync failed unexpectedly" in caplog.text
    assert one.metric("vramguard_webhook_certificate_errors_total", kind="internal") == 1


def test_the_loop_follows_a_rotation_until_stopped(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path
) -> None:
    one, two = replica(api, clock, tmp_path / "1"), replica(api, clock, tmp_path / "2")
    one.manager.sync()
    two.manager.sync()
    two.manager.start(interval=0.01)
    try:
        annotate(api, ROTATE, "serving")
        clock.advance(TIMINGS.propagation.total_seconds())
        one.manager.sync()  # one reissues (or two's loop did first); each serves it
        deadline = time.monotonic() + 10
        while len(two.reloads) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert two.served() == one.served()
        assert len(two.reloads) == 2
    finally:
        two.manager.stop()
    reads = len(api.calls)
    time.sleep(0.05)
    assert len(api.calls) == reads, "stopped"


def test_metrics_describe_the_state(api: FakeTLSAPI, clock: Clock, tmp_path: Path) -> None:
    one = replica(api, clock, tmp_path)
    one.manager.sync()
    ca_end = (T0 + timedelta(days=730)).timestamp()
    assert (
        one.metric("vramguard_webhook_certificate_expiration_timestamp_seconds", certificate="ca")
        == ca_end
    )
    assert one.metric("vramguard_webhook_certificate_rotation_phase", phase="stable") == 1
    assert one.metric("vramguard_webhook_certificate_ca_bundle_size") == 1
    assert one.metric("vramguard_webhook_certificate_ca_bundle_published") == 1
    assert one.metric("vramguard_webhook_certificate_last_sync_success_timestamp_seconds") == (
        T0.timestamp()
    )
    annotate(api, ROTATE, "ca")
    one.manager.sync()
    assert one.metric("vramguard_webhook_certificate_rotation_phase", phase="new-ca-trusted") == 1
    assert one.metric("vramguard_webhook_certificate_rotation_phase", phase="stable") == 0
    assert one.metric("vramguard_webhook_certificate_ca_bundle_size") == 2


def test_files_mode_reports_only_the_served_expiry() -> None:
    registry = CollectorRegistry()
    metrics = CertificateMetrics(registry, self_managed=False)
    metrics.follow_served(lambda: T0)
    assert (
        registry.get_sample_value(
            "vramguard_webhook_certificate_expiration_timestamp_seconds", {"certificate": "served"}
        )
        == T0.timestamp()
    )
    names = {family.name for family in registry.collect()}
    assert names == {"vramguard_webhook_certificate_expiration_timestamp_seconds"}


# --- helpers ----------------------------------------------------------------------------------

from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

_PEM = Encoding.PEM


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    import copy  # noqa: PLC0415

    return copy.deepcopy(obj)


def _refused() -> Exception:
    connection = urllib3.exceptions.NewConnectionError(
        urllib3.connection.HTTPConnection("localhost"),
        "Failed to establish a new connection: [Errno 111] Connection refused",
    )
    return urllib3.exceptions.MaxRetryError(
        urllib3.HTTPConnectionPool("localhost"), "/api/v1/secrets", connection
    )


def test_the_loop_says_a_failure_once_per_reason_and_when_it_is_over(
    api: FakeTLSAPI, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = replica(api, clock, tmp_path)
    one.manager.sync()
    api.failure = _refused()
    passes = len(api.calls)
    with caplog.at_level(logging.INFO, "webhook.certificates"):
        one.manager.start(interval=0.01)
        try:
            _wait_for(lambda: len(api.calls) >= passes + 5)
            api.failure = None
            _wait_for(lambda: "works again" in caplog.text)
        finally:
            one.manager.stop()
    failed = [r.getMessage() for r in caplog.records if "sync failed" in r.getMessage()]
    assert len(failed) == 1, failed
    assert "Connection refused; retrying every 0s at most" in failed[0]
    assert one.metric("vramguard_webhook_certificate_errors_total", kind="api") >= 5


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
