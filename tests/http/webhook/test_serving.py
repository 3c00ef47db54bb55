"""`python -m webhook` for real: HTTPS only, no API access, certificate rotation, clean stop."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certs.authority import KeyPair, issue_server_cert, new_ca, subject_names
from certs.files import write_pair
from tests.http.webhook.process import free_port, wait_ready, webhook_process
from tests.http.webhook.reviews import POLICY_YAML, decoded_patch, gpu_pod, review


@pytest.fixture
def ca() -> KeyPair:
    return new_ca()


@pytest.fixture
def server(tmp_path: Path, ca: KeyPair) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    (tmp_path / "policy.yaml").write_text(POLICY_YAML)
    write_pair(
        tmp_path, issue_server_cert(ca, subject_names(ips=["127.0.0.1"])), "tls.crt", "tls.key"
    )
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VRAMGUARD_WEBHOOK_", "KUBERNETES_SERVICE"))
    }
    env["VRAMGUARD_WEBHOOK_TLS_RELOAD_SECONDS"] = "0.1"  # from the environment, beside flags
    with webhook_process(
        tmp_path,
        port,
        policy=tmp_path / "policy.yaml",
        args=["--graceful-shutdown-seconds", "2"],
        env=env,
    ) as process:
        yield process, port, tmp_path


def client_context(ca: KeyPair) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.cert_pem.decode())


def served_serial(port: int, context: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_serves_https_rotates_certificates_and_stops_cleanly(
    server: tuple[subprocess.Popen[bytes], int, Path], ca: KeyPair
) -> None:
    process, port, directory = server
    context = client_context(ca)
    wait_ready(port, context, process)

    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    connection.request(
        "POST",
        "/mutate",
        body=json.dumps(review(gpu_pod())),
        headers={"Content-Type": "application/json"},
    )
    reply = connection.getresponse()
    assert reply.status == 200
    response = json.loads(reply.read())["response"]
    assert any(op["path"].endswith("vramguard.io~1gpumem") for op in decoded_patch(response))

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = raw.recv(100)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), "plain HTTP is not served"

    before = served_serial(port, context)
    fresh = issue_server_cert(ca, subject_names(ips=["127.0.0.1"]))
    write_pair(directory, fresh, "tls.crt", "tls.key")
    deadline = time.monotonic() + 10
    while served_serial(port, context) == before:
        assert time.monotonic() < deadline, "the new certificate was not served"
        time.sleep(0.05)
    assert served_serial(port, context) == fresh.certificate.serial_number
    assert process.poll() is None, "rotated without a restart"

    # An idle keep-alive connection (the API server keeps some) must not hold the shutdown
    # beyond --graceful-shutdown-seconds.
    assert connection.sock is not None
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down, then re-raises the signal: "terminated by SIGTERM" is the clean exit.
    assert process.wait(timeout=15) in (0, -signal.SIGTERM)
    connection.close()
    log = (directory / "webhook.log").read_text()
    assert "Application shutdown complete" in log
    assert "no API access" in log
    assert '"decision":"patched"' in log
