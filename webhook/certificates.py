"""The self-managed serving certificate (``--tls-mode self-managed``): one loop per replica.

Every pass reads the Secret and the MutatingWebhookConfiguration, lets certs.rotation decide
what the Secret should hold, writes it (losing to any replica that wrote first, then reading
again: the API server's optimistic concurrency is the only election), publishes the Secret's
CA bundle into the configuration's caBundle, and writes the Secret's serving pair into the
local files the listener's hot reload (certs.reloading) follows. So every replica serves the
certificate of the Secret, and a rotation reaches each without a restart.

No pass blocks a request: the loop runs in a thread, and the listener only ever reads files.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol

from certs import rotation
from certs.authority import KeyPair, SubjectNames
from certs.files import CERT_MODE, KEY_MODE, write_atomic
from certs.rotation import CertificateState, Parsed, Plan, Published, Timings
from kube.secrets import (
    AlreadyExists,
    Conflict,
    RawObject,
    TLSStoreError,
    ca_bundle_patch,
    ca_bundles,
    object_annotations,
    secret_body,
    secret_data,
)
from kube.threads import Threads
from webhook.certificate_metrics import CertificateMetrics
from webhook.logs import FIELDS

log = logging.getLogger(__name__)

SECRET_LABELS: Mapping[str, str] = {
    "app.kubernetes.io/name": "vramguard",
    "app.kubernetes.io/component": "webhook",
    "app.kubernetes.io/part-of": "vramguard",
    "app.kubernetes.io/managed-by": "vramguard-webhook",
}
# After a lost write race: soon, and at a random moment, so the replicas do not collide again.
CONFLICT_DELAY = (0.1, 0.6)
# Failed passes back off from 1 s, doubling, up to this (and never beyond the sync interval).
LONGEST_RETRY = 30.0

SyncResult = Literal["ok", "conflict", "error"]


class CertificateStore(Protocol):
    """The Secret and the webhook configuration (kube.secrets.KubernetesTLSStore)."""

    @property
    def namespace(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def secret_path(self) -> str: ...
    @property
    def configuration_path(self) -> str: ...

    def read_secret(self) -> RawObject | None: ...
    def create_secret(self, body: RawObject) -> RawObject: ...
    def replace_secret(self, body: RawObject) -> RawObject: ...
    def read_webhook_configuration(self) -> RawObject | None: ...
    def patch_webhook_configuration(self, patch: RawObject) -> RawObject: ...


@dataclass(frozen=True)
class SyncOutcome:
    """One pass: ``served`` when the local files hold a certificate and the Secret was read."""

    result: SyncResult
    served: bool
    wake_at: datetime | None = None
    error: str | None = None


class CertificateManager:
    """Keeps the Secret, the caBundle and the served files in step; see the module doc."""

    def __init__(
        self,
        store: CertificateStore,
        *,
        names: SubjectNames,
        timings: Timings,
        cert_file: Path,
        key_file: Path,
        metrics: CertificateMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._names = names
        self._timings = timings
        self._cert_file = cert_file
        self._key_file = key_file
        self._metrics = metrics
        self._clock = clock
        self._threads = Threads(join_seconds=2.0)
        self._reported: tuple[str, ...] = ()
        self._last: SyncOutcome | None = None
        # Called after the served files changed (the listener's reload, so it is immediate).
        self.on_served: Callable[[], object] | None = None

    # -- one pass ------------------------------------------------------------------------

    def sync(self) -> SyncOutcome:
        """One pass; API failures and lost races are outcomes, never exceptions."""
        now = self._clock()
        try:
            secret = self._store.read_secret()
        except TLSStoreError as err:
            # Files left by an earlier run are not served on that basis alone: only what a
            # Secret read says is current.
            return self._failed("api", str(err), served=False)
        parsed = self._parse(secret)
        # What the Secret holds now is valid to serve, whatever happens next in this pass.
        as_read = None if parsed is None else parsed.state.serving
        try:
            configuration = self._store.read_webhook_configuration()
        except TLSStoreError as err:
            # Keep following the Secret: another replica may be publishing for all of them.
            return self._failed("api", str(err), served=self._serve(as_read))

        published = self._published(configuration)
        plan = rotation.plan(parsed, published, now, self._names, self._timings)
        self._report(plan)
        state = plan.state
        if plan.changed:
            try:
                secret = self._write(secret, state)
            except (AlreadyExists, Conflict) as err:
                return self._lost(err, served=self._serve(as_read))
            except TLSStoreError as err:
                return self._failed("api", str(err), served=self._serve(as_read))
            self._log_steps(plan)

        if configuration is None:
            served = self._serve(state.serving)
            self._metrics.observed(state, published=False, now=now)
            return self._missing_configuration(served, plan.wake_at)
        if not rotation.is_published(state, published):
            try:
                self._publish(configuration, state)
                state = rotation.mark_published(state, now)
                secret = self._write(secret, state)
            except Conflict as err:
                # The next pass sees the bundle published and records it then.
                return self._lost(err, served=self._serve(state.serving))
            except TLSStoreError as err:
                return self._failed("api", str(err), served=self._serve(state.serving))
        served = self._serve(state.serving)
        self._metrics.observed(state, published=True, now=now)
        return SyncOutcome("ok", served=served, wake_at=plan.wake_at)

    # -- loops ---------------------------------------------------------------------------

    def wait_until_serving(self, stopping: threading.Event, interval: float) -> bool:
        """Pass until there is a certificate to serve (False: stopped first). The HTTPS
        listener, hence /healthz and /readyz, only opens after this returns True."""
        failures = 0
        while not stopping.is_set():
            outcome = self._sync_safely()
            if outcome.served:
                return True
            failures = failures + 1 if outcome.result == "error" else 0
            delay = self._delay(outcome, failures, interval)
            log.warning(
                "no serving certificate yet (the HTTPS listener opens once there is one): "
                "%s; retrying in %.1fs",
                outcome.error or "the Secret's CA bundle has not propagated yet",
                delay,
                extra={FIELDS: {"secret": self._store.secret_path}},
            )
            stopping.wait(delay)
        return False

    def run(self, stopping: threading.Event, interval: float) -> None:
        """Pass every ``interval`` seconds, sooner when something is due, after a failure
        with backoff, until ``stopping`` is set."""
        failures = 0
        while True:
            last = self._last
            delay = interval if last is None else self._delay(last, failures, interval)
            if stopping.wait(delay):
                return
            outcome = self._sync_safely()
            if outcome.result != "error":
                if failures:
                    log.info("certificate sync works again after %d failed passes", failures)
                failures = 0
                continue
            failures += 1
            # Once per reason, not once per pass: the metric counts every failed pass.
            if failures == 1 or (last is not None and last.error != outcome.error):
                log.warning(
                    "certificate sync failed (serving the last certificate meanwhile): %s; "
                    "retrying every %.0fs at most",
                    outcome.error,
                    min(interval, LONGEST_RETRY),
                    extra={FIELDS: {"secret": self._store.secret_path}},
                )

    def start(self, interval: float) -> None:
        """Run the loop in a daemon thread."""
        self._threads.start("tls-self-managed", lambda: self.run(self._threads.stopping, interval))

    def stop(self) -> None:
        self._threads.stop()

    # -- internals -----------------------------------------------------------------------

    def _sync_safely(self) -> SyncOutcome:
        try:
            outcome = self.sync()
        except Exception as err:
            # A loop that dies quietly lets the certificate expire: say it, and keep going.
            log.exception("certificate sync failed unexpectedly")
            self._metrics.errors.labels("internal").inc()
            outcome = SyncOutcome("error", served=False, error=f"{type(err).__name__}: {err}")
        self._last = outcome
        return outcome

    def _delay(self, outcome: SyncOutcome, failures: int, interval: float) -> float:
        """Seconds until the next pass: soon at a random moment after a lost race, with
        backoff after failures, else the interval or sooner when the plan says so."""
        if outcome.result == "conflict":
            return random.uniform(*CONFLICT_DELAY)
        if outcome.result == "error":
            return float(min(interval, LONGEST_RETRY, 2.0 ** max(failures - 1, 0)))
        if outcome.wake_at is None:
            return interval
        due = (outcome.wake_at - self._clock()).total_seconds()
        return min(interval, max(due, 0.1))

    def _parse(self, secret: RawObject | None) -> Parsed | None:
        if secret is None:
            return None
        data, undecodable = secret_data(secret)
        parsed = rotation.parse_secret(data, object_annotations(secret))
        extra = tuple(f"data key {key} is not base64; ignored" for key in undecodable)
        return Parsed(parsed.state, extra + parsed.problems, parsed.empty)

    def _published(self, configuration: RawObject | None) -> Published | None:
        if configuration is None:
            return None
        return rotation.parse_published(
            object_annotations(configuration).get(rotation.GENERATION),
            [bundle for _, bundle in ca_bundles(configuration)],
        )

    def _write(self, secret: RawObject | None, state: CertificateState) -> RawObject:
        body = secret_body(
            namespace=self._store.namespace,
            name=self._store.secret,
            data=state.secret_data(),
            annotations=state.secret_annotations(),
            labels=SECRET_LABELS,
            existing=secret,
        )
        if secret is None:
            return self._store.create_secret(body)
        return self._store.replace_secret(body)

    def _publish(self, configuration: RawObject, state: CertificateState) -> None:
        patch = ca_bundle_patch(
            configuration, state.bundle_pem(), {rotation.GENERATION: str(state.generation)}
        )
        self._store.patch_webhook_configuration(patch)
        log.info(
            "published the CA bundle to %s",
            self._store.configuration_path,
            extra={
                FIELDS: {
                    "generation": state.generation,
                    "cas": len(state.trusted),
                    "phase": state.phase.value,
                }
            },
        )

    def _serve(self, serving: KeyPair | None) -> bool:
        """Write the serving pair where the listener reads it, when it differs from what is
        there (the key first: a new certificate never appears before its key)."""
        if serving is not None and self._on_disk() != (serving.cert_pem, serving.key_pem):
            for path in (self._cert_file, self._key_file):
                path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self._key_file, serving.key_pem, KEY_MODE)
            write_atomic(self._cert_file, serving.cert_pem, CERT_MODE)
            cert = serving.certificate
            log.info(
                "serving the certificate of %s",
                self._store.secret_path,
                extra={
                    FIELDS: {
                        "serial": format(cert.serial_number, "x"),
                        "issuer": cert.issuer.rfc4514_string(),
                        "expires": cert.not_valid_after_utc.isoformat(),
                    }
                },
            )
            if self.on_served is not None:
                self.on_served()
        return self._has_files()

    def _on_disk(self) -> tuple[bytes, bytes] | None:
        try:
            return self._cert_file.read_bytes(), self._key_file.read_bytes()
        except OSError:
            return None

    def _has_files(self) -> bool:
        return self._cert_file.is_file() and self._key_file.is_file()

    def _report(self, plan: Plan) -> None:
        """Problems of the Secret, once each time they change (not on every pass)."""
        if plan.problems != self._reported and plan.problems:
            self._metrics.errors.labels("invalid-secret").inc()
            log.warning(
                "%s: %s",
                self._store.secret_path,
                "; ".join(plan.problems),
                extra={FIELDS: {"problems": list(plan.problems)}},
            )
        self._reported = plan.problems
        for note in plan.notes:
            log.info("%s: %s", self._store.secret_path, note)

    def _log_steps(self, plan: Plan) -> None:
        for step in plan.steps:
            self._metrics.rotations.labels(step.kind).inc()
            log.info(
                "certificate rotation: %s: %s",
                step.kind,
                step.reason,
                extra={
                    FIELDS: {
                        "secret": self._store.secret_path,
                        "step": step.kind,
                        "phase": plan.state.phase.value,
                        "generation": plan.state.generation,
                    }
                },
            )

    def _missing_configuration(self, served: bool, wake_at: datetime | None) -> SyncOutcome:
        message = (
            f"{self._store.configuration_path} not found: the API server cannot be given this "
            "webhook's CA, and rotations wait until it exists"
        )
        self._metrics.errors.labels("missing-webhook-configuration").inc()
        return SyncOutcome("error", served=served, wake_at=wake_at, error=message)

    def _failed(self, kind: str, message: str, *, served: bool) -> SyncOutcome:
        # Logged by the loop, with when it tries again.
        self._metrics.errors.labels(kind).inc()
        return SyncOutcome("error", served=served, error=message)

    def _lost(self, err: Exception, *, served: bool) -> SyncOutcome:
        self._metrics.conflicts.inc()
        log.info("another replica wrote first (%s); reading again", err)
        return SyncOutcome("conflict", served=served, error=str(err))


@contextmanager
def stop_on_sigterm(stopping: threading.Event) -> Iterator[None]:
    """While waiting for the first certificate (before uvicorn handles signals), SIGTERM ends
    the wait instead of killing the process mid-write."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous: Any = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
