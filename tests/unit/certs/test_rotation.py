"""certs.rotation: every phase of a CA rotation, serving renewal, forced rotations, and broken
or hand-edited Secrets, on fixed clocks. Each state goes through the Secret's bytes and back
(``stored``), as it does between two passes of the webhook."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from cryptography import x509

from certs import rotation
from certs.authority import KeyPair, issue_bundle, issue_server_cert, new_ca, subject_names
from certs.rotation import (
    CA_BUNDLE,
    GENERATION,
    PHASE,
    PUBLISHED_AT,
    ROTATE,
    SWITCHED_AT,
    CertificateState,
    Parsed,
    Phase,
    Plan,
    Published,
    Timings,
    issuer_of,
    parse_published,
    parse_secret,
    plan,
    subject_names_of,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
_T = TypeVar("_T")
NAMES = subject_names(
    [
        "vramguard-webhook.vramguard.svc",
        "vramguard-webhook.vramguard",
        "vramguard-webhook.vramguard.svc.cluster.local",
    ]
)
TIMINGS = Timings(propagation=timedelta(seconds=60), overlap=timedelta(hours=1))


def secret_of(
    state: CertificateState, **annotations: str
) -> tuple[dict[str, bytes], dict[str, str]]:
    """What a write of ``state`` leaves in the Secret (keys and annotations set to None are
    absent), with extra annotations as an operator would add them."""
    data = {k: v for k, v in state.secret_data().items() if v is not None}
    notes = {k: v for k, v in state.secret_annotations().items() if v is not None}
    return data, {**notes, **annotations}


def stored(state: CertificateState, **annotations: str) -> Parsed:
    return parse_secret(*secret_of(state, **annotations))


def published(state: CertificateState) -> Published:
    return Published(state.generation, state.trusted)


def steps(result: Plan) -> list[str]:
    return [step.kind for step in result.steps]


def issuer(pair: KeyPair | None, state: CertificateState) -> x509.Certificate | None:
    assert pair is not None
    return issuer_of(pair.certificate, state.trusted)


@pytest.fixture(scope="module")
def created() -> CertificateState:
    return plan(None, None, T0, NAMES, TIMINGS).state


@pytest.fixture(scope="module")
def stable(created: CertificateState) -> CertificateState:
    """Created at T0 and published at T0: a Secret at rest."""
    result = plan(stored(created), published(created), T0, NAMES, TIMINGS)
    assert result.state.published_at == T0
    return result.state


# --- creation and rest -----------------------------------------------------------------------


def test_a_new_secret_holds_a_ca_and_a_serving_certificate_for_the_service(
    created: CertificateState,
) -> None:
    result = plan(None, None, T0, NAMES, TIMINGS)
    assert (result.changed, steps(result)) == (True, ["created"])
    state = result.state
    assert state.signer is not None
    assert state.serving is not None
    assert state.trusted == (state.signer.certificate,)
    assert issuer(state.serving, state) == state.signer.certificate
    assert subject_names_of(state.serving.certificate) == set(NAMES.dns)
    assert state.signer.certificate.not_valid_after_utc == T0 + timedelta(days=730)
    assert state.serving.certificate.not_valid_after_utc == T0 + timedelta(days=90)
    assert (state.generation, state.published_at, state.phase) == (1, None, Phase.STABLE)
    # The Secret's layout: ca.crt is the serving certificate's issuer, the bundle its CAs.
    data, annotations = secret_of(created)
    assert set(data) == {"tls.crt", "tls.key", "ca.crt", "ca.key", CA_BUNDLE}
    assert created.signer is not None
    assert data["ca.crt"] == data[CA_BUNDLE] == created.signer.cert_pem
    assert annotations == {GENERATION: "1", SWITCHED_AT: "2030-01-01T00:00:00Z", PHASE: "stable"}


def test_the_secret_reads_back_as_written(created: CertificateState) -> None:
    parsed = stored(created)
    assert parsed.problems == ()
    assert parsed.state == created


def test_the_bundle_counts_as_published_once_the_configuration_carries_it(
    created: CertificateState,
) -> None:
    # Not carried yet: nothing changes (the webhook publishes, then records the time itself).
    unpublished = plan(stored(created), None, T0, NAMES, TIMINGS)
    assert (unpublished.changed, unpublished.state.published_at) == (False, None)
    seen = plan(stored(created), published(created), T0 + timedelta(seconds=3), NAMES, TIMINGS)
    assert seen.changed
    assert seen.steps == ()
    assert seen.state.published_at == T0 + timedelta(seconds=3)
    # Another generation or other CAs in the configuration are not this bundle.
    assert not rotation.is_published(created, replace(published(created), generation=0))
    assert not rotation.is_published(created, Published(created.generation, ()))


def test_at_rest_nothing_changes_until_the_serving_certificate_is_due(
    stable: CertificateState,
) -> None:
    result = plan(stored(stable), published(stable), T0 + timedelta(days=10), NAMES, TIMINGS)
    assert (result.changed, result.steps, result.problems) == (False, (), ())
    assert result.wake_at == T0 + timedelta(days=90 - 30)


# --- the three steps of a CA rotation --------------------------------------------------------


@dataclass
class Cluster:
    """The Secret and the configuration as the webhook keeps them, driven by hand."""

    state: CertificateState
    carried: Published

    def pass_at(self, now: datetime, **annotations: str) -> Plan:
        """One pass as webhook.certificates does it: plan, write, publish, record."""
        result = plan(stored(self.state, **annotations), self.carried, now, NAMES, TIMINGS)
        self.state = stored(result.state).state
        if not rotation.is_published(self.state, self.carried):
            self.carried = published(self.state)
            self.state = rotation.mark_published(self.state, now)
        return result


def test_a_ca_near_its_end_is_rotated_in_three_steps(stable: CertificateState) -> None:
    assert stable.signer is not None
    old_ca = stable.signer.certificate
    old_serving = stable.serving
    cluster = Cluster(stable, published(stable))
    due = old_ca.not_valid_after_utc - timedelta(days=60)

    # Before: only the serving certificate's renewals come and go.
    cluster.state = replace(cluster.state, serving=_serving(stable.signer, due - timedelta(days=1)))
    before = cluster.pass_at(due - timedelta(seconds=1))
    assert steps(before) == []
    assert before.wake_at == due

    # (a) The new CA joins the bundle; the old CA's certificate is still the one served.
    added = cluster.pass_at(due)
    assert steps(added) == ["new-ca"]
    state = cluster.state
    assert state.phase == Phase.NEW_CA_TRUSTED
    assert state.pending is not None
    new_ca_cert = state.pending.certificate
    assert state.trusted == (old_ca, new_ca_cert)
    assert issuer(state.serving, state) == old_ca
    assert state.generation == stable.generation + 1
    assert cluster.carried.trusted == (old_ca, new_ca_cert)
    assert state.published_at == due

    # Not before the bundle has been published for the propagation delay.
    waiting = cluster.pass_at(due + timedelta(seconds=59))
    assert steps(waiting) == []
    assert waiting.wake_at == due + timedelta(seconds=60)

    # (b) The new CA signs; both stay trusted.
    switched = cluster.pass_at(due + timedelta(seconds=60))
    assert steps(switched) == ["switched-ca"]
    state = cluster.state
    assert state.phase == Phase.OVERLAP
    assert state.pending is None
    assert state.signer is not None
    assert state.signer.certificate == new_ca_cert
    assert issuer(state.serving, state) == new_ca_cert
    assert state.serving != old_serving
    assert state.trusted == (old_ca, new_ca_cert)
    assert state.generation == stable.generation + 1, "the bundle did not change"
    assert secret_of(state)[0]["ca.crt"] == state.signer.cert_pem
    assert switched.wake_at == due + timedelta(seconds=60) + TIMINGS.overlap

    # (c) After the overlap only the new CA stays.
    overlap_end = due + timedelta(seconds=60) + TIMINGS.overlap
    assert steps(cluster.pass_at(overlap_end - timedelta(seconds=1))) == []
    dropped = cluster.pass_at(overlap_end)
    assert steps(dropped) == ["dropped-old-ca"]
    assert cluster.state.trusted == (new_ca_cert,)
    assert cluster.state.phase == Phase.STABLE
    assert cluster.state.generation == stable.generation + 2
    assert list(cluster.carried.trusted) == [new_ca_cert]


def test_the_rotation_waits_while_the_bundle_is_not_published(stable: CertificateState) -> None:
    """Without the configuration (deleted, or its patch refused) the API server may not trust
    the new CA: it never signs."""
    added = plan(stored(stable, **{ROTATE: "ca"}), published(stable), T0, NAMES, TIMINGS)
    later = plan(stored(added.state), None, T0 + timedelta(days=1), NAMES, TIMINGS)
    assert later.state.pending is not None
    assert steps(later) == []
    assert later.changed is False


@dataclass(frozen=True)
class Lags:
    """How far behind the Secret the API servers and the replicas may be."""

    # An API server loads a published caBundle within this (the propagation delay).
    api: timedelta = TIMINGS.propagation
    # A replica serves the Secret's certificate within this (its sync plus the file reload).
    replica: timedelta = timedelta(seconds=40)


def test_no_certificate_is_ever_served_that_an_api_server_does_not_trust(
    stable: CertificateState,
) -> None:
    """A whole forced CA rotation, pass by pass every 5 s: at every moment, every bundle an
    API server may still be using verifies every certificate a replica may still be serving."""
    lags = Lags()
    cluster = Cluster(stable, published(stable))
    bundles: list[tuple[datetime, tuple[x509.Certificate, ...]]] = [(T0, stable.trusted)]
    served: list[tuple[datetime, KeyPair]] = []
    assert stable.serving is not None
    served.append((T0, stable.serving))
    seen_steps: list[str] = []
    now = T0
    while now < T0 + TIMINGS.overlap + timedelta(minutes=10):
        now += timedelta(seconds=5)
        request = {ROTATE: "ca"} if now == T0 + timedelta(minutes=1) else {}
        seen_steps += steps(cluster.pass_at(now, **request))
        if cluster.carried.trusted != bundles[-1][1]:
            bundles.append((now, cluster.carried.trusted))
        assert cluster.state.serving is not None
        if cluster.state.serving != served[-1][1]:
            served.append((now, cluster.state.serving))
        for bundle in _in_effect(bundles, now, lags.api):
            for pair in _in_effect(served, now, lags.replica):
                assert issuer_of(pair.certificate, bundle) is not None, now
    assert seen_steps == ["new-ca", "switched-ca", "dropped-old-ca"]
    assert len(bundles) == 3  # old, old + new, new
    assert len(served) == 2


@pytest.mark.parametrize(
    ("key", "always_verifies"),
    # The key the webhook's ServiceMonitor reads in the self-managed mode
    # (components/service-monitor, the chart), and the one it read before: the signer alone
    # names the new CA as soon as it signs, while a replica still serves the old CA's
    # certificate, and a scraper that read it first fails its scrapes until the replica
    # switches.
    [(CA_BUNDLE, True), ("ca.crt", False)],
)
def test_a_scraper_reading_the_bundle_verifies_every_served_certificate(
    stable: CertificateState, key: str, always_verifies: bool
) -> None:
    """Prometheus reads its CA from the Secret with a lag of its own (the operator's
    reconcile, then a config reload), a replica serves the Secret's certificate with another:
    through a whole forced CA rotation, the CAs in ``key`` of any Secret a scraper may hold
    verify every certificate a replica may be serving, for a scraper no later than the API
    servers (the propagation delay; tls_propagation_seconds is the knob where Prometheus is
    slower)."""
    lags = Lags()
    scraper_lags = (timedelta(0), timedelta(seconds=20), lags.api)
    cluster = Cluster(stable, published(stable))
    assert stable.serving is not None
    served: list[tuple[datetime, KeyPair]] = [(T0, stable.serving)]
    read: list[tuple[datetime, bytes]] = [(T0, secret_of(stable)[0][key])]
    failures = 0
    now = T0
    while now < T0 + TIMINGS.overlap + timedelta(minutes=10):
        now += timedelta(seconds=5)
        request = {ROTATE: "ca"} if now == T0 + timedelta(minutes=1) else {}
        cluster.pass_at(now, **request)
        assert cluster.state.serving is not None
        if cluster.state.serving != served[-1][1]:
            served.append((now, cluster.state.serving))
        if (current := secret_of(cluster.state)[0][key]) != read[-1][1]:
            read.append((now, current))
        for lag in scraper_lags:
            for pem in _in_effect(read, now, lag):
                trusted = tuple(x509.load_pem_x509_certificates(pem))
                for pair in _in_effect(served, now, lags.replica):
                    failures += issuer_of(pair.certificate, trusted) is None
    assert len(served) == 2, "the rotation switched the served certificate once"
    assert (failures == 0) == always_verifies, failures


def _in_effect(history: list[tuple[datetime, _T]], now: datetime, lag: timedelta) -> list[_T]:
    """What a reader at most ``lag`` behind may be using at ``now``: the last value older
    than the lag, and every value since."""
    older = [value for at, value in history if at <= now - lag]
    newer = [value for at, value in history if at > now - lag]
    return older[-1:] + newer


# --- serving renewal -------------------------------------------------------------------------


def test_a_serving_certificate_near_its_end_is_reissued_by_the_same_ca(
    stable: CertificateState,
) -> None:
    assert stable.serving is not None
    due = stable.serving.certificate.not_valid_after_utc - timedelta(days=30)
    assert not plan(stored(stable), published(stable), due - timedelta(1), NAMES, TIMINGS).changed
    result = plan(stored(stable), published(stable), due, NAMES, TIMINGS)
    assert steps(result) == ["reissued-serving"]
    assert "expires at 2030-04-01T00:00:00Z" in result.steps[0].reason
    state = result.state
    assert state.serving is not None
    assert state.serving.certificate.not_valid_after_utc == due + timedelta(days=90)
    assert issuer(state.serving, state) == issuer(stable.serving, stable)
    # The CAs and the overlap clock are the same: no rotation happened.
    assert (state.trusted, state.generation, state.switched_at) == (
        stable.trusted,
        stable.generation,
        stable.switched_at,
    )


def test_a_serving_certificate_missing_a_name_is_reissued(stable: CertificateState) -> None:
    wider = subject_names([*NAMES.dns, "localhost"], ["127.0.0.1"])
    result = plan(stored(stable), published(stable), T0 + timedelta(days=1), wider, TIMINGS)
    assert steps(result) == ["reissued-serving"]
    assert "does not name 127.0.0.1, localhost" in result.steps[0].reason
    assert result.state.serving is not None
    assert subject_names_of(result.state.serving.certificate) >= {"127.0.0.1", "localhost"}
    # Fewer names than the certificate carries is no reason to reissue.
    narrower = subject_names(NAMES.dns[:1])
    assert not plan(stored(stable), published(stable), T0, narrower, TIMINGS).changed


def test_a_reissue_waits_for_a_bundle_that_is_not_published(created: CertificateState) -> None:
    unpublished = replace(created, published_at=None)
    result = plan(stored(unpublished, **{ROTATE: "serving"}), None, T0, NAMES, TIMINGS)
    assert steps(result) == []
    assert result.state.serving == created.serving
    assert any("waiting for the bundle" in note for note in result.notes)
    # The request stays until it can be carried out.
    assert result.changed is False
    assert secret_of(result.state)[1][ROTATE] == "serving"
    later = plan(
        stored(result.state),
        published(created),
        T0 + timedelta(seconds=1),
        NAMES,
        TIMINGS,
    )
    assert later.changed  # published now: propagation starts
    assert later.steps == ()
    done = plan(stored(later.state), published(created), T0 + timedelta(seconds=61), NAMES, TIMINGS)
    assert steps(done) == ["reissued-serving"]
    assert ROTATE not in secret_of(done.state)[1]


# --- forced rotations ------------------------------------------------------------------------


def test_rotate_ca_starts_a_rotation_now_and_is_consumed(stable: CertificateState) -> None:
    result = plan(stored(stable, **{ROTATE: "ca"}), published(stable), T0, NAMES, TIMINGS)
    assert steps(result) == ["new-ca"]
    assert "requested (vramguard.io/rotate=ca)" in result.steps[0].reason
    assert ROTATE not in secret_of(result.state)[1]
    assert result.state.secret_annotations()[ROTATE] is None


def test_rotate_ca_during_a_rotation_adds_no_third_ca(stable: CertificateState) -> None:
    added = plan(stored(stable, **{ROTATE: "ca"}), published(stable), T0, NAMES, TIMINGS).state
    again = plan(stored(added, **{ROTATE: "ca"}), published(added), T0, NAMES, TIMINGS)
    assert steps(again) == []
    assert again.changed, "the request is removed"
    assert again.state.trusted == added.trusted
    assert any("already under way" in note for note in again.notes)


def test_rotate_serving_reissues_from_the_same_ca(stable: CertificateState) -> None:
    result = plan(
        stored(stable, **{ROTATE: " Serving "}),
        published(stable),
        T0 + timedelta(minutes=5),
        NAMES,
        TIMINGS,
    )
    assert steps(result) == ["reissued-serving"]
    assert result.state.serving != stable.serving
    assert issuer(result.state.serving, result.state) == issuer(stable.serving, stable)


def test_an_unknown_request_is_named_and_removed(stable: CertificateState) -> None:
    result = plan(stored(stable, **{ROTATE: "now"}), published(stable), T0, NAMES, TIMINGS)
    assert steps(result) == []
    assert result.changed
    assert result.problems == (
        "annotation vramguard.io/rotate='now' is not one of ca, serving; removed without rotating",
    )


# --- broken and hand-edited Secrets ----------------------------------------------------------


def test_a_broken_serving_key_is_replaced_from_the_trusted_ca(stable: CertificateState) -> None:
    data, annotations = secret_of(stable)
    data["tls.key"] = b"not a key"
    parsed = parse_secret(data, annotations)
    assert parsed.problems == ("tls.key is not an unencrypted PEM private key",)
    assert parsed.state.serving is None
    result = plan(parsed, published(stable), T0 + timedelta(hours=1), NAMES, TIMINGS)
    assert steps(result) == ["reissued-serving"]
    assert issuer(result.state.serving, result.state) == issuer(stable.serving, stable)


def test_a_serving_pair_that_does_not_match_is_replaced(stable: CertificateState) -> None:
    other = issue_server_cert(new_ca(), NAMES)
    data, annotations = secret_of(stable)
    data["tls.key"] = other.key_pem
    parsed = parse_secret(data, annotations)
    assert parsed.problems == ("tls.key does not belong to tls.crt",)


def test_a_serving_certificate_from_a_foreign_ca_is_replaced(stable: CertificateState) -> None:
    foreign = replace(stable, serving=issue_server_cert(new_ca(), NAMES, now=T0))
    result = plan(stored(foreign), published(stable), T0 + timedelta(hours=1), NAMES, TIMINGS)
    assert steps(result) == ["reissued-serving"]
    assert "not issued by ca.crt" in result.steps[0].reason


def test_a_broken_ca_key_is_replaced_by_a_rotation_that_keeps_serving(
    stable: CertificateState,
) -> None:
    data, annotations = secret_of(stable)
    data["ca.key"] = b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
    parsed = parse_secret(data, annotations)
    assert parsed.problems == ("ca.crt/ca.key: CA key is not an unencrypted PEM private key",)
    result = plan(parsed, published(stable), T0 + timedelta(hours=1), NAMES, TIMINGS)
    assert steps(result) == ["new-ca"]
    assert "no usable CA in the Secret" in result.steps[0].reason
    state = result.state
    assert state.serving == stable.serving, "the trusted certificate stays served"
    assert stable.signer is not None
    assert secret_of(state)[0]["ca.crt"] == stable.signer.cert_pem, "still its issuer"
    assert "ca.key" not in secret_of(state)[0]


def test_a_broken_bundle_is_rebuilt_from_the_ca(stable: CertificateState) -> None:
    data, annotations = secret_of(stable)
    data[CA_BUNDLE] = b"garbage"
    parsed = parse_secret(data, annotations)
    assert parsed.problems == (f"{CA_BUNDLE} holds no PEM certificate",)
    result = plan(parsed, published(stable), T0 + timedelta(hours=1), NAMES, TIMINGS)
    assert steps(result) == ["repaired"]
    assert result.state.trusted == stable.trusted
    # The generation moves on: the configuration is published again, and waited for.
    assert result.state.generation == stable.generation + 1
    assert result.state.published_at is None


def test_a_bundle_with_a_leaf_and_a_bad_block_keeps_only_cas(stable: CertificateState) -> None:
    assert stable.serving is not None
    data, annotations = secret_of(stable)
    bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    data[CA_BUNDLE] = data[CA_BUNDLE] + stable.serving.cert_pem + bad + data[CA_BUNDLE]
    parsed = parse_secret(data, annotations)
    assert parsed.state.trusted == stable.trusted
    assert parsed.problems == (
        f"{CA_BUNDLE}: certificate 2 is not a CA; dropped",
        f"{CA_BUNDLE}: certificate 3 is unreadable; dropped",
    )


def test_broken_annotations_restart_the_waits_they_guard(stable: CertificateState) -> None:
    parsed = stored(stable, **{GENERATION: "many", PUBLISHED_AT: "yesterday", SWITCHED_AT: "1"})
    assert parsed.problems == (
        "annotation vramguard.io/ca-bundle-generation='many' is not a count; taken as 0",
        "annotation vramguard.io/ca-bundle-published-at='yesterday' is not an RFC 3339 time; "
        "ignored",
        "annotation vramguard.io/ca-switched-at='1' is not an RFC 3339 time; ignored",
    )
    assert (parsed.state.generation, parsed.state.published_at) == (0, None)
    # A time without a zone is refused too: it could be read in any zone.
    naive = stored(stable, **{PUBLISHED_AT: "2030-01-01T00:00:00"})
    assert naive.state.published_at is None
    assert len(naive.problems) == 1


@pytest.mark.parametrize(
    "junk", [b"", b"\x00\xff" * 40, b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----"]
)
def test_any_bytes_in_every_key_plan_without_raising(junk: bytes) -> None:
    data = dict.fromkeys(rotation.MANAGED_KEYS, junk)
    parsed = parse_secret(data, {GENERATION: "3"})
    result = plan(parsed, None, T0, NAMES, TIMINGS)
    assert result.changed
    if not junk:  # nothing of ours at all: a new Secret's content, numbered on
        assert steps(result) == ["created"]
        assert result.state.generation == 4
    else:
        assert steps(result) == ["new-ca"]
        assert result.state.serving is None, "nothing servable until the new CA propagates"
        assert result.problems


def test_an_adopted_secret_from_make_certs_moves_to_a_ca_of_its_own() -> None:
    """`python -m certs` (the old self-signed overlay) leaves ca.crt, tls.crt and tls.key:
    its CA keeps being trusted, and served, until a CA with a key takes over."""
    old = issue_bundle(NAMES, days=365, now=T0)
    data = {
        "ca.crt": old.ca.cert_pem,
        "tls.crt": old.server.cert_pem,
        "tls.key": old.server.key_pem,
    }
    parsed = parse_secret(data, {})
    assert parsed.problems == (
        "ca.key is missing: a new CA is rotated in",
        f"{CA_BUNDLE} is missing; trusting ca.crt until a new CA takes over",
    )
    carried = Published(0, (old.ca.certificate,))
    cluster = Cluster(parsed.state, carried)
    assert steps(cluster.pass_at(T0)) == ["new-ca"]
    assert cluster.state.serving == old.server
    assert cluster.carried.trusted[0] == old.ca.certificate
    assert steps(cluster.pass_at(T0 + timedelta(seconds=60))) == ["switched-ca"]
    assert steps(cluster.pass_at(T0 + timedelta(seconds=60) + TIMINGS.overlap)) == [
        "dropped-old-ca"
    ]
    assert old.ca.certificate not in cluster.carried.trusted


def test_expired_cas_leave_the_bundle_and_an_expired_signer_is_replaced(
    stable: CertificateState,
) -> None:
    assert stable.signer is not None
    later = stable.signer.certificate.not_valid_after_utc + timedelta(days=1)
    result = plan(stored(stable), published(stable), later, NAMES, TIMINGS)
    assert result.problems == ("ca.crt expired at 2032-01-01T00:00:00Z",)
    assert steps(result) == ["repaired", "new-ca"]
    assert result.state.pending is not None
    assert result.state.trusted == (result.state.pending.certificate,)


def test_a_secret_behind_the_configuration_continues_its_numbering(
    stable: CertificateState,
) -> None:
    """The Secret was recreated or edited back: the configuration's CAs stay trusted (replicas
    may serve them) and the numbering continues above the configuration's."""
    elsewhere = new_ca(now=T0)
    carried = Published(7, (elsewhere.certificate,))
    result = plan(stored(stable), carried, T0 + timedelta(hours=1), NAMES, TIMINGS)
    assert steps(result) == ["repaired"]
    state = result.state
    assert state.generation == 8
    assert set(state.trusted) == {*stable.trusted, elsewhere.certificate}
    assert state.published_at is None
    assert state.switched_at == T0 + timedelta(hours=1)


def test_a_recreated_secret_keeps_trusting_what_the_configuration_trusts() -> None:
    elsewhere = new_ca(now=T0)
    result = plan(None, Published(5, (elsewhere.certificate,)), T0, NAMES, TIMINGS)
    assert steps(result) == ["created"]
    assert result.state.generation == 6
    assert result.state.trusted[0] == elsewhere.certificate
    assert result.wake_at == T0 + TIMINGS.overlap


def test_a_hand_edited_bundle_without_the_signer_gets_it_back(stable: CertificateState) -> None:
    data, annotations = secret_of(stable)
    data[CA_BUNDLE] = new_ca(now=T0).cert_pem
    result = plan(parse_secret(data, annotations), published(stable), T0, NAMES, TIMINGS)
    assert "repaired" in steps(result)
    assert stable.signer is not None
    assert stable.signer.certificate in result.state.trusted
    assert result.state.generation == stable.generation + 1


# --- the configuration's side, and the timings -----------------------------------------------


def test_the_configurations_bundles_are_read_together(stable: CertificateState) -> None:
    other = new_ca(now=T0).certificate
    assert stable.signer is not None
    bundle = stable.bundle_pem()
    found = parse_published("4", [bundle, bundle + _pem(other), b"", b"junk"])
    assert found == Published(4, (stable.signer.certificate, other))
    assert parse_published(None, []).generation == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ca_renew_days": 730}, "CA's renewal"),
        ({"serving_renew_days": 0}, "serving renewal"),
        ({"serving_renew_days": 60}, "earlier before its end"),
        ({"overlap": timedelta(0)}, "overlap > 0"),
        ({"propagation": timedelta(seconds=-1)}, "propagation must be >= 0"),
    ],
)
def test_timings_that_cannot_work_are_refused(fields: Mapping[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Timings(**fields)  # type: ignore[arg-type]


def test_now_must_carry_a_zone(created: CertificateState) -> None:
    with pytest.raises(ValueError, match="time zone"):
        plan(None, None, datetime(2030, 1, 1), NAMES, TIMINGS)


def _serving(ca: KeyPair, now: datetime) -> KeyPair:
    return issue_server_cert(ca, NAMES, days=90, now=now)


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return cert.public_bytes(serialization.Encoding.PEM)


def test_ca_names_differ_between_rotations(stable: CertificateState) -> None:
    """Two CAs with one subject would leave clients to guess which one signed."""
    added = plan(stored(stable, **{ROTATE: "ca"}), published(stable), T0, NAMES, TIMINGS).state
    subjects = {cert.subject for cert in added.trusted}
    assert len(subjects) == 2
