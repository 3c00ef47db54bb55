"""The self-managed CA and serving certificate: what the Secret holds, and when it changes.

Everything here is pure: the Secret's data and annotations come in as bytes and strings, the
time is the caller's, and the answer is a new state to write (or none). Reading and writing
the Secret and the webhook configuration live in ``kube.secrets``; the loop that does both, in
``webhook.certificates``.

The Secret (type kubernetes.io/tls) holds:

- ``tls.crt``/``tls.key``: the serving pair every replica serves;
- ``ca.crt``/``ca.key``: the CA that signs serving certificates (``ca.crt`` is the issuer of
  ``tls.crt``, as cert-manager writes it, so whatever verifies with ``ca.crt`` keeps working);
- ``next-ca.crt``/``next-ca.key``: during a rotation, the new CA, trusted but not signing yet;
- ``ca-bundle.crt``: every CA the API server must trust, the webhook's ``caBundle``.

A CA rotation never makes the API server see a certificate it does not trust:

1. the new CA joins the bundle (old + new); replicas still serve the old CA's certificate;
2. once that bundle has been in the webhook configuration for ``propagation``, the new CA
   signs a new serving certificate, which replicas pick up one by one: both are trusted;
3. ``overlap`` after that switch, the old CA leaves the bundle.

A serving certificate near its end is reissued by the same CA, which the bundle already holds.
Parts of the Secret that are missing or unreadable (edited by hand, left by an older install)
are replaced by the same rules, so a repair is as safe as a rotation.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certs.authority import KeyPair, SubjectNames, issue_server_cert, load_ca, new_ca
from certs.files import CA_CERT, CA_KEY, TLS_CERT, TLS_KEY

NEXT_CA_CERT = "next-ca.crt"
NEXT_CA_KEY = "next-ca.key"
CA_BUNDLE = "ca-bundle.crt"
# Every data key the planner writes; any other key in the Secret is left alone.
MANAGED_KEYS = (TLS_CERT, TLS_KEY, CA_CERT, CA_KEY, NEXT_CA_CERT, NEXT_CA_KEY, CA_BUNDLE)

_PREFIX = "vramguard.io/"
# Raised by one each time the bundle changes; the webhook configuration carries the number of
# the bundle it holds, so a replica that read an older Secret never puts an older bundle back.
GENERATION = _PREFIX + "ca-bundle-generation"
# When the webhook configuration was first seen carrying this generation's bundle.
PUBLISHED_AT = _PREFIX + "ca-bundle-published-at"
# When ca.crt started signing the served certificate: the overlap is counted from here.
SWITCHED_AT = _PREFIX + "ca-switched-at"
# For people (kubectl get secret -o yaml); derived from the content, never read back.
PHASE = _PREFIX + "rotation-phase"
# Set by an operator to rotate now: "ca" (the whole rotation) or "serving" (a new leaf).
ROTATE = _PREFIX + "rotate"
MANAGED_ANNOTATIONS = (GENERATION, PUBLISHED_AT, SWITCHED_AT, PHASE, ROTATE)
ROTATE_VALUES = ("ca", "serving")

CA_NAME = "vramguard-webhook-ca"
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)

StepKind = Literal[
    "created", "new-ca", "switched-ca", "dropped-old-ca", "reissued-serving", "repaired"
]
STEP_KINDS: tuple[StepKind, ...] = (
    "created",
    "new-ca",
    "switched-ca",
    "dropped-old-ca",
    "reissued-serving",
    "repaired",
)


class Phase(StrEnum):
    STABLE = "stable"  # one CA trusted, and it signs the served certificate
    NEW_CA_TRUSTED = "new-ca-trusted"  # step 1 done: waiting for the bundle to propagate
    OVERLAP = "overlap"  # step 2 done: older CAs stay trusted until the overlap ends


@dataclass(frozen=True)
class Timings:
    """How long certificates live, and how long each step of a rotation waits."""

    ca_days: int = 730
    ca_renew_days: int = 60
    serving_days: int = 90
    serving_renew_days: int = 30
    # How long the API servers get to load a new caBundle before a certificate needs it.
    propagation: timedelta = timedelta(seconds=60)
    # How long old CAs stay trusted after the switch: every replica must have moved to the
    # new serving certificate by then, including one that could not reach the API for a while.
    overlap: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not 0 < self.ca_renew_days < self.ca_days:
            raise ValueError("the CA's renewal must start after 0 and before its validity ends")
        if not 0 < self.serving_renew_days < self.serving_days:
            raise ValueError("serving renewal must start after 0 and before its validity ends")
        # Otherwise a serving certificate capped by an ending CA would need renewing before
        # the CA rotation that gives it a longer life has begun.
        if self.serving_renew_days >= self.ca_renew_days:
            raise ValueError("the CA must be renewed earlier before its end than the serving cert")
        if self.propagation < timedelta(0) or self.overlap <= timedelta(0):
            raise ValueError("propagation must be >= 0 and overlap > 0")


@dataclass(frozen=True)
class CertificateState:
    """What the Secret holds, as the planner reads and writes it. ``signer`` and ``serving`` are
    None only while a broken Secret is being repaired."""

    signer: KeyPair | None
    pending: KeyPair | None
    trusted: tuple[x509.Certificate, ...]
    serving: KeyPair | None
    generation: int
    published_at: datetime | None
    switched_at: datetime | None
    # The operator's vramguard.io/rotate, kept only while it waits to be carried out.
    request: str | None = None

    @property
    def phase(self) -> Phase:
        if self.pending is not None:
            return Phase.NEW_CA_TRUSTED
        signer = None if self.signer is None else self.signer.certificate
        if any(cert != signer for cert in self.trusted):
            return Phase.OVERLAP
        return Phase.STABLE

    def bundle_pem(self) -> bytes:
        """The trusted CAs as one PEM file: ca-bundle.crt and the caBundle."""
        return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in self.trusted)

    def secret_data(self) -> dict[str, bytes | None]:
        """Every managed key: its bytes, or None where the key must not be in the Secret."""
        issuer = self.signer.cert_pem if self.signer is not None else self._serving_issuer_pem()
        return {
            TLS_CERT: None if self.serving is None else self.serving.cert_pem,
            TLS_KEY: None if self.serving is None else self.serving.key_pem,
            CA_CERT: issuer,
            CA_KEY: None if self.signer is None else self.signer.key_pem,
            NEXT_CA_CERT: None if self.pending is None else self.pending.cert_pem,
            NEXT_CA_KEY: None if self.pending is None else self.pending.key_pem,
            CA_BUNDLE: self.bundle_pem(),
        }

    def secret_annotations(self) -> dict[str, str | None]:
        """Every managed annotation, None where it must be absent (a request is removed by
        the write that carries it out)."""
        return {
            GENERATION: str(self.generation),
            PUBLISHED_AT: _timestamp(self.published_at),
            SWITCHED_AT: _timestamp(self.switched_at),
            PHASE: self.phase.value,
            ROTATE: self.request,
        }

    def _serving_issuer_pem(self) -> bytes | None:
        if self.serving is None:
            return None
        issuer = issuer_of(self.serving.certificate, self.trusted)
        return None if issuer is None else issuer.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Parsed:
    """A Secret read: the usable state, and what was wrong with it."""

    state: CertificateState
    problems: tuple[str, ...] = ()
    # Nothing of ours in it at all (an empty Secret made by hand or by a tool): created anew.
    empty: bool = False


@dataclass(frozen=True)
class Published:
    """What the webhook configuration carries: the bundle generation and the CAs."""

    generation: int
    trusted: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    reason: str


@dataclass(frozen=True)
class Plan:
    """The state the Secret should hold. ``changed``: it differs from what was read (a write is
    due). ``wake_at``: the next time something is due, for a loop that wants to be on time."""

    state: CertificateState
    changed: bool
    steps: tuple[Step, ...] = ()
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    wake_at: datetime | None = None


# --- reading -------------------------------------------------------------------------------


def parse_secret(data: Mapping[str, bytes], annotations: Mapping[str, str]) -> Parsed:
    """The state in a Secret's data and annotations. Never raises: an unusable part is left
    out and named in ``problems``, for the planner to replace."""
    problems: list[str] = []
    present = {key for key in MANAGED_KEYS if data.get(key)}
    signer = _ca_pair(data, CA_CERT, CA_KEY, problems)
    pending = _ca_pair(data, NEXT_CA_CERT, NEXT_CA_KEY, problems)
    serving = _serving_pair(data, problems)
    if CA_BUNDLE in present:
        trusted = _bundle(data[CA_BUNDLE], CA_BUNDLE, problems)
    elif CA_CERT in present:
        # A Secret written by `python -m certs` or cert-manager has ca.crt and no bundle: what
        # the webhook configuration trusts today is that CA, which keeps its certificate
        # served while a CA with a key of ours is rotated in.
        trusted = _bundle(data[CA_CERT], CA_CERT, problems)
        problems.append(f"{CA_BUNDLE} is missing; trusting {CA_CERT} until a new CA takes over")
    else:
        trusted = ()
    generation = _generation(annotations.get(GENERATION), problems)
    state = CertificateState(
        signer=signer,
        pending=pending,
        trusted=trusted,
        serving=serving,
        generation=generation,
        published_at=_time(annotations, PUBLISHED_AT, problems),
        switched_at=_time(annotations, SWITCHED_AT, problems),
        request=annotations.get(ROTATE),
    )
    return Parsed(state, tuple(problems), empty=not present)


def parse_published(generation: str | None, bundles: Iterable[bytes]) -> Published:
    """The webhook configuration's generation annotation and its webhooks' caBundles (their
    CAs together; an unreadable one counts as no CA)."""
    ignored: list[str] = []
    trusted: list[x509.Certificate] = []
    for bundle in bundles:
        trusted += [c for c in _bundle(bundle, "caBundle", ignored) if c not in trusted]
    return Published(_generation(generation, ignored), tuple(trusted))


# --- deciding ------------------------------------------------------------------------------


def plan(
    parsed: Parsed | None,
    published: Published | None,
    now: datetime,
    names: SubjectNames,
    timings: Timings,
) -> Plan:
    """What the Secret should hold at ``now``: ``parsed`` None when there is no Secret,
    ``published`` None when there is no webhook configuration."""
    _check_aware(now)
    if parsed is None or parsed.empty:
        previous = 0 if parsed is None else parsed.state.generation
        return _create(previous, published, now, names, timings)
    return _Planner(parsed, published, now, names, timings).run()


def mark_published(state: CertificateState, now: datetime) -> CertificateState:
    """The state once the webhook configuration carries its bundle, from ``now`` on."""
    return replace(state, published_at=now)


def is_published(state: CertificateState, published: Published | None) -> bool:
    """Whether the webhook configuration carries exactly this state's bundle."""
    return (
        published is not None
        and published.generation == state.generation
        and set(published.trusted) == set(state.trusted)
    )


def issuer_of(
    cert: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """The candidate whose key signed ``cert``, if any."""
    for candidate in candidates:
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def subject_names_of(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses (as text) a certificate is valid for."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {name.lower() for name in sans.get_values_for_type(x509.DNSName)}
    return names | {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def required_names(names: SubjectNames) -> set[str]:
    """The names a serving certificate must carry, as subject_names_of spells them."""
    return set(names.dns) | {str(ip) for ip in names.ips}


def _create(
    previous: int,
    published: Published | None,
    now: datetime,
    names: SubjectNames,
    timings: Timings,
) -> Plan:
    ca = _new_ca(now, timings)
    # CAs the webhook configuration already trusts stay trusted for the overlap: replicas may
    # still serve a certificate of theirs (the Secret was deleted, not the Deployment).
    kept = [] if published is None else [c for c in published.trusted if _is_live_ca(c, now)]
    generation = max(previous, 0 if published is None else published.generation) + 1
    state = CertificateState(
        signer=ca,
        pending=None,
        trusted=(*kept, ca.certificate),
        serving=issue_server_cert(ca, names, days=timings.serving_days, now=now),
        generation=generation,
        published_at=None,
        switched_at=now,
    )
    return Plan(
        state,
        changed=True,
        steps=(Step("created", f"new CA {_describe(ca.certificate)} and serving certificate"),),
        wake_at=now + timings.overlap if kept else None,
    )


@dataclass
class _Planner:
    """One pass of the rules over a copy of the state (a builder local to ``plan``)."""

    parsed: Parsed
    published: Published | None
    now: datetime
    names: SubjectNames
    timings: Timings
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wakes: list[datetime] = field(default_factory=list)
    renumber: bool = False
    # A request that cannot be carried out yet stays in the Secret for a later pass.
    defer_request: bool = False

    def run(self) -> Plan:
        before = self.parsed.state
        self.problems += self.parsed.problems
        force_ca, force_serving = self._request()
        state = self._catch_up(before)
        state = self._drop_dead(state)
        state = self._trust_own_cas(state)
        state = self._start_ca_rotation(state, force_ca)
        # Numbered before deciding: a bundle changed in this pass is not published yet.
        state = self._numbered(before, state)
        state = self._mark_seen(state)
        published = self._has_propagated(state)
        if state.pending is not None:
            state = self._switch(state, published, force_serving)
        else:
            state = self._renew_serving(state, published, force_serving)
        state = self._numbered(before, self._drop_old(state))
        state = replace(state, request=before.request if self.defer_request else None)
        changed = _differs(before, state)
        return Plan(
            state,
            changed=changed,
            steps=tuple(self.steps),
            problems=tuple(self.problems),
            notes=tuple(self.notes),
            wake_at=min((w for w in self.wakes if w > self.now), default=None),
        )

    def _request(self) -> tuple[bool, bool]:
        request = self.parsed.state.request
        if request is None:
            return False, False
        value = request.strip().lower()
        if value not in ROTATE_VALUES:
            self.problems.append(
                f"annotation {ROTATE}={request!r} is not one of {', '.join(ROTATE_VALUES)}; "
                "removed without rotating"
            )
            return False, False
        return value == "ca", value == "serving"

    def _catch_up(self, state: CertificateState) -> CertificateState:
        """A Secret whose generation is behind the webhook configuration's was recreated or
        edited: continue the numbering, and keep trusting what the API server trusts now."""
        published = self.published
        if published is None or published.generation <= state.generation:
            return state
        kept = [c for c in published.trusted if _is_live_ca(c, self.now) and c not in state.trusted]
        self.steps.append(
            Step(
                "repaired",
                f"the webhook configuration carries bundle generation {published.generation}, "
                f"the Secret {state.generation}: continuing from it",
            )
        )
        self.renumber = True
        return replace(
            state,
            trusted=(*state.trusted, *kept),
            switched_at=self.now if kept else state.switched_at,
        )

    def _numbered(self, before: CertificateState, state: CertificateState) -> CertificateState:
        """A bundle that differs from the one read gets a generation above every one seen
        (the Secret's and the webhook configuration's), and is not published yet. Applying
        it twice in a pass changes nothing more."""
        if not self.renumber and set(state.trusted) == set(before.trusted):
            return state
        seen = 0 if self.published is None else self.published.generation
        return replace(state, generation=max(before.generation, seen) + 1, published_at=None)

    def _trust_own_cas(self, state: CertificateState) -> CertificateState:
        """The signing and the pending CA belong in the bundle (a hand edit may drop them)."""
        missing = [
            pair.certificate
            for pair in (state.signer, state.pending)
            if pair is not None and pair.certificate not in state.trusted
        ]
        if not missing:
            return state
        self.steps.append(Step("repaired", f"the bundle lacked {_describe(missing[0])}; added"))
        return replace(state, trusted=(*state.trusted, *missing))

    def _drop_dead(self, state: CertificateState) -> CertificateState:
        """Expired CAs verify nothing; an expired signer or pending CA can sign nothing."""
        signer, pending = state.signer, state.pending
        if signer is not None and not _is_live_ca(signer.certificate, self.now):
            self.problems.append(f"{CA_CERT} expired at {_iso(_end(signer.certificate))}")
            signer = None
        if pending is not None and not _is_live_ca(pending.certificate, self.now):
            pending = None
        trusted = tuple(c for c in state.trusted if _is_live_ca(c, self.now))
        if len(trusted) != len(state.trusted):
            self.steps.append(Step("repaired", "removed expired CAs from the bundle"))
        return replace(state, signer=signer, pending=pending, trusted=trusted)

    def _start_ca_rotation(self, state: CertificateState, force: bool) -> CertificateState:
        signer = state.signer
        if state.pending is not None:
            if force:
                self.notes.append(f"{ROTATE}=ca: a CA rotation is already under way")
            return state
        if signer is None:
            reason = "no usable CA in the Secret"
        elif _end(signer.certificate) - self.now <= timedelta(days=self.timings.ca_renew_days):
            reason = f"the CA expires at {_iso(_end(signer.certificate))}"
        elif force:
            reason = f"requested ({ROTATE}=ca)"
        else:
            self.wakes.append(_end(signer.certificate) - timedelta(days=self.timings.ca_renew_days))
            return state
        pending = _new_ca(self.now, self.timings)
        self.steps.append(
            Step(
                "new-ca",
                f"{reason}: {_describe(pending.certificate)} added to the bundle; it signs "
                f"once the bundle has been published for {_span(self.timings.propagation)}",
            )
        )
        return replace(state, pending=pending, trusted=(*state.trusted, pending.certificate))

    def _mark_seen(self, state: CertificateState) -> CertificateState:
        if state.published_at is None and is_published(state, self.published):
            return mark_published(state, self.now)
        return state

    def _has_propagated(self, state: CertificateState) -> bool:
        return state.published_at is not None and self.now >= self._propagated_at(state)

    def _propagated_at(self, state: CertificateState) -> datetime:
        assert state.published_at is not None
        return state.published_at + self.timings.propagation

    def _wait_for_propagation(self, state: CertificateState) -> None:
        """Something waits for the bundle: be back when it has propagated (an unpublished
        bundle is published in the same pass, and the next pass knows when)."""
        if state.published_at is not None:
            self.wakes.append(self._propagated_at(state))

    def _switch(
        self, state: CertificateState, published: bool, force_serving: bool
    ) -> CertificateState:
        """Step 2: the pending CA signs, once the API servers trust it."""
        pending = state.pending
        assert pending is not None
        if not published:
            self._wait_for_propagation(state)
            if force_serving:
                self.notes.append(
                    f"{ROTATE}=serving: the new serving certificate comes with the CA"
                )
            return state
        serving = self._issue(pending)
        self.steps.append(
            Step(
                "switched-ca",
                f"{_describe(pending.certificate)} signs the serving certificate now; older CAs "
                f"stay trusted for {_span(self.timings.overlap)}",
            )
        )
        return replace(state, signer=pending, pending=None, serving=serving, switched_at=self.now)

    def _renew_serving(
        self, state: CertificateState, published: bool, force: bool
    ) -> CertificateState:
        signer = state.signer
        if signer is None:
            return state
        reason = self._serving_problem(state.serving, signer) or (
            f"requested ({ROTATE}=serving)" if force else None
        )
        if reason is None:
            return state
        if not published:
            self._wait_for_propagation(state)
            self.defer_request = force
            self.notes.append(f"serving certificate: {reason}; waiting for the bundle to propagate")
            return state
        serving = self._issue(signer)
        self.steps.append(Step("reissued-serving", reason))
        same_ca = state.serving is not None and issuer_of(
            state.serving.certificate, [signer.certificate]
        )
        # A certificate from another CA (or none known) is replaced: that is a switch, and what
        # replicas served before must stay trusted for the overlap.
        switched_at = state.switched_at if same_ca else self.now
        return replace(state, serving=serving, switched_at=switched_at)

    def _serving_problem(self, serving: KeyPair | None, signer: KeyPair) -> str | None:
        if serving is None:
            return "no usable serving certificate in the Secret"
        cert = serving.certificate
        if issuer_of(cert, [signer.certificate]) is None:
            return f"the serving certificate was not issued by {CA_CERT}"
        missing = required_names(self.names) - subject_names_of(cert)
        if missing:
            return f"the serving certificate does not name {', '.join(sorted(missing))}"
        renew_at = _end(cert) - timedelta(days=self.timings.serving_renew_days)
        if self.now < renew_at:
            self.wakes.append(renew_at)
            return None
        # Never capped by the CA's end into a loop of reissues: Timings starts the CA's
        # rotation earlier, and a new CA signs the next serving certificate.
        return f"the serving certificate expires at {_iso(_end(cert))}"

    def _drop_old(self, state: CertificateState) -> CertificateState:
        """Step 3: after the overlap, only the CAs in use stay trusted."""
        keep = [pair.certificate for pair in (state.signer, state.pending) if pair is not None]
        if state.serving is not None:
            issuer = issuer_of(state.serving.certificate, state.trusted)
            keep += [] if issuer is None else [issuer]
        old = [c for c in state.trusted if c not in keep]
        if not old or not keep:
            return state
        if state.switched_at is None:
            self.notes.append("no switch time recorded: the overlap starts now")
            self.wakes.append(self.now + self.timings.overlap)
            return replace(state, switched_at=self.now)
        due = state.switched_at + self.timings.overlap
        if self.now < due:
            self.wakes.append(due)
            return state
        self.steps.append(
            Step(
                "dropped-old-ca", f"removed {', '.join(_describe(c) for c in old)} from the bundle"
            )
        )
        return replace(state, trusted=tuple(c for c in state.trusted if c in keep))

    def _issue(self, ca: KeyPair) -> KeyPair:
        return issue_server_cert(ca, self.names, days=self.timings.serving_days, now=self.now)


def _differs(before: CertificateState, after: CertificateState) -> bool:
    return (
        before.secret_data() != after.secret_data()
        or before.secret_annotations() != after.secret_annotations()
    )


# --- parsing helpers -----------------------------------------------------------------------


def _ca_pair(
    data: Mapping[str, bytes], cert_key: str, key_key: str, problems: list[str]
) -> KeyPair | None:
    cert, key = data.get(cert_key) or b"", data.get(key_key) or b""
    if not cert and not key:
        return None
    if not key:
        if cert_key == CA_CERT and data.get(NEXT_CA_KEY):
            # What the planner itself writes while a new CA replaces an unusable one: ca.crt
            # is then the served certificate's issuer, kept trusted, without a key.
            return None
        # `python -m certs` and cert-manager leave ca.crt without its key: a CA that cannot
        # sign (the bundle keeps it trusted while one of ours takes over).
        problems.append(
            f"{key_key} is missing: a new CA is rotated in"
            if cert_key == CA_CERT
            else f"{cert_key} has no {key_key}"
        )
        return None
    if not cert:
        problems.append(f"{key_key} has no {cert_key}")
        return None
    try:
        return load_ca(cert, key)
    except ValueError as err:
        problems.append(f"{cert_key}/{key_key}: {err}")
        return None


def _serving_pair(data: Mapping[str, bytes], problems: list[str]) -> KeyPair | None:
    cert_pem, key_pem = data.get(TLS_CERT) or b"", data.get(TLS_KEY) or b""
    if not cert_pem and not key_pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        problems.append(f"{TLS_CERT} is not a PEM certificate")
        return None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        problems.append(f"{TLS_KEY} is not an unencrypted PEM private key")
        return None
    if key.public_key() != cert.public_key():
        problems.append(f"{TLS_KEY} does not belong to {TLS_CERT}")
        return None
    return KeyPair(cert_pem=cert_pem, key_pem=key_pem)


def _bundle(pem: bytes, what: str, problems: list[str]) -> tuple[x509.Certificate, ...]:
    """The CA certificates of a PEM file, in order, each once; the rest named in problems."""
    found: list[x509.Certificate] = []
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not blocks:
        problems.append(f"{what} holds no PEM certificate")
    for index, block in enumerate(blocks, 1):
        try:
            cert = x509.load_pem_x509_certificate(block)
        except ValueError:
            problems.append(f"{what}: certificate {index} is unreadable; dropped")
            continue
        if not _is_ca(cert):
            problems.append(f"{what}: certificate {index} is not a CA; dropped")
            continue
        if cert not in found:
            found.append(cert)
    return tuple(found)


def _generation(raw: str | None, problems: list[str]) -> int:
    if raw is None:
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        problems.append(f"annotation {GENERATION}={raw!r} is not a count; taken as 0")
        return 0
    return value


def _time(annotations: Mapping[str, str], key: str, problems: list[str]) -> datetime | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        # Unknown means "not yet": the wait it guards starts again, which is the safe side.
        problems.append(f"annotation {key}={raw!r} is not an RFC 3339 time; ignored")
        return None
    return value.astimezone(UTC)


# --- small helpers -------------------------------------------------------------------------


def _new_ca(now: datetime, timings: Timings) -> KeyPair:
    # A name of its own per CA, even two in one second: with one subject for two CAs clients
    # would have to guess the issuer. The time says when it was made, for people.
    name = f"{CA_NAME}@{int(now.timestamp())}-{secrets.token_hex(4)}"
    return new_ca(name, days=timings.ca_days, now=now)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _is_live_ca(cert: x509.Certificate, now: datetime) -> bool:
    return _end(cert) > now


def _end(cert: x509.Certificate) -> datetime:
    return cert.not_valid_after_utc


def _describe(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return f"{name} (until {_iso(_end(cert))})"


def _timestamp(value: datetime | None) -> str | None:
    return None if value is None else _iso(value)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone")
