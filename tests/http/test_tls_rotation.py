"""Hot certificate rotation through a real uvicorn server started by certs.serving."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from certs.authority import (
    KeyPair,
    issue_bundle,
    issue_client_cert,
    issue_server_cert,
    subject_names,
)
from certs.files import CA_CERT, TLS_CERT, TLS_KEY, read_ca, write_atomic, write_bundle, write_pair
from certs.reloading import ReloadingTLS
from certs.serving import build_server, run_server

NAMES = subject_names(["localhost"], ["127.0.0.1"])
WATCH_INTERVAL = 0.2


async def _ok(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@contextmanager
def _serving(tls: ReloadingTLS) -> Iterator[int]:
    """Run uvicorn in a background thread on a free loopback port; yield the port."""
    app = Starlette(routes=[Route("/", _ok)])
    server = build_server(app, "127.0.0.1", 0, tls, log_level="warning")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(run_server(server, tls, WATCH_INTERVAL))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run, name="uvicorn", daemon=True)
    thread.start()
    _wait_for(lambda: server.started or not thread.is_alive(), "server start")
    assert server.started, errors
    port: int = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert not errors


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _client_context(ca: KeyPair, client_dir: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if client_dir is not None:
        ctx.load_cert_chain(client_dir / "client.crt", client_dir / "client.key")
    return ctx


def _served_serial(port: int, ctx: ssl.SSLContext, server_name: str = "127.0.0.1") -> int:
    """Serial of the certificate a brand-new connection is given (verified against the CA).

    An IP address as server_name means no SNI is sent; "localhost" sends SNI.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(pair: KeyPair) -> int:
    return pair.certificate.serial_number


@dataclass
class _Traffic:
    """Requests made back to back, each on a new TLS connection, until stopped."""

    port: int
    ctx: ssl.SSLContext
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    serials: set[int] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        # No keep-alive: every request does a full handshake and so sees the current cert.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(verify=self.ctx, limits=limits, timeout=5) as client:
            while not self.stop.is_set():
                try:
                    with client.stream("GET", f"https://127.0.0.1:{self.port}/") as response:
                        stream = response.extensions["network_stream"]
                        # httpcore hands out the low-level _ssl object: positional arg only.
                        der = stream.get_extra_info("ssl_object").getpeercert(True)
                        self.serials.add(x509.load_der_x509_certificate(der).serial_number)
                        body = response.read()
                    if response.status_code == 200 and body == b"ok":
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status_code} {body!r}")
                except Exception as exc:  # every failure is the finding
                    self.failures.append(repr(exc))


@contextmanager
def _traffic(port: int, ctx: ssl.SSLContext) -> Iterator[_Traffic]:
    traffic = _Traffic(port, ctx)
    thread = threading.Thread(target=traffic.run, name="traffic", daemon=True)
    thread.start()
    try:
        yield traffic
    finally:
        traffic.stop.set()
        thread.join(timeout=10)


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    write_bundle(tmp_path, issue_bundle(NAMES))
    return tmp_path


def test_rotation_reaches_new_connections_without_failed_requests(tls_dir: Path) -> None:
    ca = read_ca(tls_dir)
    tls = ReloadingTLS(tls_dir / TLS_CERT, tls_dir / TLS_KEY)
    ctx = _client_context(ca)
    rotated = issue_server_cert(ca, NAMES)

    with _serving(tls) as port:
        old_serial = _served_serial(port, ctx)
        on_disk = x509.load_pem_x509_certificate((tls_dir / TLS_CERT).read_bytes())
        assert old_serial == on_disk.serial_number

        with _traffic(port, ctx) as traffic:
            _wait_for(lambda: traffic.ok >= 5, "traffic before the swap")
            write_pair(tls_dir, rotated, TLS_CERT, TLS_KEY)
            _wait_for(lambda: _served_serial(port, ctx) == _serial(rotated), "new cert", 10)
            assert _served_serial(port, ctx, server_name="localhost") == _serial(rotated)
            seen = traffic.ok
            _wait_for(lambda: traffic.ok >= seen + 5, "traffic after the swap")

    assert traffic.failures == []
    assert traffic.serials == {old_serial, _serial(rotated)}
    assert (tls.reloads, tls.reload_failures) == (1, 0)


def test_broken_files_keep_serving_the_last_good_certificate(tls_dir: Path) -> None:
    ca = read_ca(tls_dir)
    tls = ReloadingTLS(tls_dir / TLS_CERT, tls_dir / TLS_KEY)
    ctx = _client_context(ca)

    with _serving(tls) as port:
        good_serial = _served_serial(port, ctx)
        with _traffic(port, ctx) as traffic:
            write_atomic(tls_dir / TLS_CERT, b"-----BEGIN CERTIFICATE-----\ngarbage\n", 0o644)
            _wait_for(lambda: tls.reload_failures == 1, "the failure to be reported")
            assert _served_serial(port, ctx) == good_serial
            seen = traffic.ok
            _wait_for(lambda: traffic.ok >= seen + 5, "traffic with broken files")

        fixed = issue_server_cert(ca, NAMES)
        write_pair(tls_dir, fixed, TLS_CERT, TLS_KEY)
        _wait_for(lambda: _served_serial(port, ctx) == _serial(fixed), "the fixed cert")

    assert traffic.failures == []
    assert traffic.serials == {good_serial}
    assert tls.last_error is None
    assert (tls.reloads, tls.reload_failures) == (1, 1)


def test_client_ca_mode_requires_a_certificate_from_that_ca(tls_dir: Path) -> None:
    ca = read_ca(tls_dir)
    write_pair(tls_dir, issue_client_cert(ca, "kube-scheduler"), "client.crt", "client.key")
    stranger_dir = tls_dir / "stranger"
    write_bundle(stranger_dir, issue_bundle(NAMES, client_name="kube-scheduler"))
    tls = ReloadingTLS(tls_dir / TLS_CERT, tls_dir / TLS_KEY, client_ca_file=tls_dir / CA_CERT)
    url = "https://127.0.0.1:{}/"

    with _serving(tls) as port:
        with pytest.raises(httpx.TransportError):
            httpx.get(url.format(port), verify=_client_context(ca))
        with pytest.raises(httpx.TransportError):
            httpx.get(url.format(port), verify=_client_context(ca, stranger_dir))
        response = httpx.get(url.format(port), verify=_client_context(ca, tls_dir))
        assert response.status_code == 200
        assert response.text == "ok"
