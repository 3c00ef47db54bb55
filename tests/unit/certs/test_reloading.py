"""ReloadingTLS without sockets: real TLS handshakes over in-memory BIOs."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from certs.authority import (
    KeyPair,
    issue_bundle,
    issue_client_cert,
    issue_server_cert,
    new_ca,
    subject_names,
)
from certs.files import CA_CERT, TLS_CERT, TLS_KEY, write_atomic, write_bundle, write_pair
from certs.reloading import CertificateLoadError, ReloadingTLS

NAMES = subject_names(["svc.ns.svc"], ["127.0.0.1"])


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> x509.Certificate:
    """Run a full handshake in memory plus one application record; return the server's cert."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="svc.ns.svc")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    # With TLS 1.3 the server judges the client certificate after the client thinks it is done:
    # only exchanging data shows a rejection.
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _client_ctx(ca: KeyPair, tmp_path: Path, cert: KeyPair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if cert is not None:
        write_pair(tmp_path / "client", cert, "c.crt", "c.key")
        ctx.load_cert_chain(tmp_path / "client" / "c.crt", tmp_path / "client" / "c.key")
    return ctx


@pytest.fixture
def ca() -> KeyPair:
    return new_ca()


@pytest.fixture
def tls_dir(tmp_path: Path, ca: KeyPair) -> Path:
    out = tmp_path / "tls"
    write_bundle(out, issue_bundle(NAMES, ca=ca))
    return out


def _reloading(tls_dir: Path, client_ca: bool = False) -> ReloadingTLS:
    return ReloadingTLS(
        tls_dir / TLS_CERT, tls_dir / TLS_KEY, tls_dir / CA_CERT if client_ca else None
    )


def _serial(tls_dir: Path) -> int:
    return x509.load_pem_x509_certificate((tls_dir / TLS_CERT).read_bytes()).serial_number


def test_serves_the_initial_certificate(tls_dir: Path, ca: KeyPair, tmp_path: Path) -> None:
    tls = _reloading(tls_dir)
    assert tls.context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert _handshake(tls.context, _client_ctx(ca, tmp_path)).serial_number == _serial(tls_dir)
    assert not tls.reload_if_changed()
    assert tls.reloads == 0


def test_rotation_serves_new_certificate_on_the_same_context(
    tls_dir: Path, ca: KeyPair, tmp_path: Path
) -> None:
    tls = _reloading(tls_dir)
    served = tls.context
    write_pair(tls_dir, issue_server_cert(ca, NAMES), TLS_CERT, TLS_KEY)

    assert tls.reload_if_changed()
    assert tls.context is served
    assert _handshake(served, _client_ctx(ca, tmp_path)).serial_number == _serial(tls_dir)
    assert not tls.reload_if_changed()
    assert (tls.reloads, tls.reload_failures) == (1, 0)


def test_touching_without_changing_content_is_not_a_reload(tls_dir: Path) -> None:
    tls = _reloading(tls_dir)
    write_atomic(tls_dir / TLS_CERT, (tls_dir / TLS_CERT).read_bytes(), 0o644)
    assert not tls.reload_if_changed()


@pytest.mark.parametrize("breakage", ["garbage", "mismatch", "missing"])
def test_broken_files_keep_last_good_and_are_reported_once(
    breakage: str,
    tls_dir: Path,
    ca: KeyPair,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls = _reloading(tls_dir)
    good_serial = _serial(tls_dir)
    if breakage == "garbage":
        write_atomic(tls_dir / TLS_CERT, b"not a certificate", 0o644)
    elif breakage == "mismatch":
        other = issue_server_cert(ca, NAMES)
        write_atomic(tls_dir / TLS_KEY, other.key_pem, 0o600)
    else:
        (tls_dir / TLS_KEY).unlink()

    with caplog.at_level(logging.WARNING, logger="certs.reloading"):
        # First sighting might be a writer between two files: not reported yet.
        assert not tls.reload_if_changed()
        assert tls.reload_failures == 0
        for _ in range(3):
            assert not tls.reload_if_changed()
    assert tls.reload_failures == 1
    assert tls.last_error
    assert len(caplog.records) == 1
    assert "keeping the previous TLS certificate" in caplog.text
    assert _handshake(tls.context, _client_ctx(ca, tmp_path)).serial_number == good_serial

    write_pair(tls_dir, issue_server_cert(ca, NAMES), TLS_CERT, TLS_KEY)
    assert tls.reload_if_changed()
    assert tls.last_error is None
    assert _handshake(tls.context, _client_ctx(ca, tmp_path)).serial_number == _serial(tls_dir)


def test_half_written_pair_is_not_reported(tls_dir: Path, ca: KeyPair) -> None:
    tls = _reloading(tls_dir)
    new = issue_server_cert(ca, NAMES)
    write_atomic(tls_dir / TLS_KEY, new.key_pem, 0o600)
    assert not tls.reload_if_changed()  # key is new, cert still old
    write_atomic(tls_dir / TLS_CERT, new.cert_pem, 0o644)
    assert tls.reload_if_changed()
    assert (tls.reloads, tls.reload_failures) == (1, 0)


def test_client_ca_requires_a_client_certificate(
    tls_dir: Path, ca: KeyPair, tmp_path: Path
) -> None:
    tls = _reloading(tls_dir, client_ca=True)
    assert tls.requires_client_cert
    with pytest.raises(ssl.SSLError):
        _handshake(tls.context, _client_ctx(ca, tmp_path))
    stranger = issue_client_cert(new_ca(), "stranger")
    with pytest.raises(ssl.SSLError):
        _handshake(tls.context, _client_ctx(ca, tmp_path, stranger))
    known = issue_client_cert(ca, "kube-scheduler")
    assert _handshake(tls.context, _client_ctx(ca, tmp_path, known))

    # Verification survives a rotation of the serving pair.
    write_pair(tls_dir, issue_server_cert(ca, NAMES), TLS_CERT, TLS_KEY)
    assert tls.reload_if_changed()
    with pytest.raises(ssl.SSLError):
        _handshake(tls.context, _client_ctx(ca, tmp_path))
    assert _handshake(tls.context, _client_ctx(ca, tmp_path, known))


def test_unloadable_initial_files_raise(tmp_path: Path) -> None:
    with pytest.raises(CertificateLoadError, match=r"tls\.crt"):
        ReloadingTLS(tmp_path / "tls.crt", tmp_path / "tls.key")


def test_watch_picks_up_changes_until_cancelled(tls_dir: Path, ca: KeyPair) -> None:
    tls = _reloading(tls_dir)

    async def scenario() -> None:
        watcher = asyncio.create_task(tls.watch(interval=0.01))
        write_pair(tls_dir, issue_server_cert(ca, NAMES), TLS_CERT, TLS_KEY)
        for _ in range(200):
            if tls.reloads:
                break
            await asyncio.sleep(0.01)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

    asyncio.run(scenario())
    assert tls.reloads == 1
