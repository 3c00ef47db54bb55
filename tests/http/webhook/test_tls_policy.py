"""What `python -m webhook` negotiates: AEAD-only TLS 1.2, TLS 1.3, optional client certificates,
and the handshake counter that tells whether callers reuse connections."""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.authority import issue_client_cert, new_ca
from certs.files import write_pair
from tests.http.webhook.process import free_port, issue_certificate, wait_ready, webhook_process
from tests.http.webhook.reviews import POLICY_YAML

CBC_ONLY = "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:AES128-SHA:AES256-SHA256:AES128-SHA256"


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VRAMGUARD_WEBHOOK_")}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, ssl.SSLContext]]:
    (tmp_path / "policy.yaml").write_text(POLICY_YAML)
    context = issue_certificate(tmp_path)
    port = free_port()
    with webhook_process(
        tmp_path, port, policy=tmp_path / "policy.yaml", env=environment()
    ) as process:
        wait_ready(port, context, process)
        yield process, port, context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[1], cipher[0]


def healthz(connection: http.client.HTTPSConnection) -> bytes:
    connection.request("GET", "/healthz")
    return connection.getresponse().read()


def tls12(context: ssl.SSLContext, ciphers: str) -> ssl.SSLContext:
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def test_tls12_offers_only_aead_and_tls13_works(
    served: tuple[subprocess.Popen[bytes], int, ssl.SSLContext], tmp_path: Path
) -> None:
    _, port, _ = served
    ca = str(tmp_path / "ca.crt")
    cbc = tls12(ssl.create_default_context(cafile=ca), CBC_ONLY)
    offered = [c["name"] for c in cbc.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert offered
    assert all("GCM" not in name and "CHACHA" not in name for name in offered)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):  # no cipher in common
        handshake(port, cbc)

    version, cipher = handshake(port, tls12(ssl.create_default_context(cafile=ca), "ALL"))
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-")
    assert "GCM" in cipher or "CHACHA20" in cipher
    version, _ = handshake(port, ssl.create_default_context(cafile=ca))
    assert version == "TLSv1.3"


def test_handshakes_are_counted_once_per_connection(
    served: tuple[subprocess.Popen[bytes], int, ssl.SSLContext],
) -> None:
    _, port, context = served

    def handshakes() -> float:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        match = re.search(r"^vramguard_webhook_tls_handshakes_total (\S+)$", text, re.MULTILINE)
        assert match is not None
        return float(match.group(1))

    before = handshakes()
    kept = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    for _ in range(5):  # one connection, five requests: one handshake
        kept.request("GET", "/healthz")
        assert kept.getresponse().read() == b"ok"
    kept.close()
    # The /metrics call of before and of after are one handshake each.
    assert handshakes() - before == 2


def test_client_certificates_from_the_configured_ca_are_required(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY_YAML)
    context = issue_certificate(tmp_path)
    callers = new_ca()
    (tmp_path / "client-ca.crt").write_bytes(callers.cert_pem)
    write_pair(tmp_path, issue_client_cert(callers, "kube-apiserver"), "client.crt", "client.key")
    port = free_port()
    with webhook_process(
        tmp_path,
        port,
        policy=tmp_path / "policy.yaml",
        args=["--tls-client-ca", str(tmp_path / "client-ca.crt")],
        env=environment(),
    ) as process:
        with_certificate = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with_certificate.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
        wait_ready(port, with_certificate, process)

        stranger = new_ca()
        write_pair(tmp_path, issue_client_cert(stranger, "someone"), "other.crt", "other.key")
        other = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        other.load_cert_chain(tmp_path / "other.crt", tmp_path / "other.key")
        for refused in (context, other):  # no certificate; one from another CA
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=refused, timeout=10)
            with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.HTTPException)):
                healthz(connection)
            connection.close()
