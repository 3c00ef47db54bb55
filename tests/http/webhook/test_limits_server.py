"""`python -m webhook` under a flood on loopback: idle, slow and oversized callers.

The real process with TLS on 127.0.0.1; its memory is read from /proc/<pid>/status (VmHWM,
the peak resident set, so no sampling and no timing is asserted). Deadlines are set short
(flags) so that the test waits seconds, not the defaults' tens of seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http.webhook.process import free_port, issue_certificate, wait_ready, webhook_process
from tests.http.webhook.reviews import POLICY_YAML, gpu_pod, review

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads the process's memory from /proc"
)

MEMORY_LIMIT_MIB = 256  # the Deployment's limit, and the settings' default
IDLE_CONNECTIONS = 1000
DEADLINE_SECONDS = 2


def memory_mib(pid: int, field: str = "VmRSS") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) / 1024


class Webhook:
    def __init__(self, process: subprocess.Popen[bytes], port: int, context: ssl.SSLContext):
        self.process, self.port, self.context = process, port, context

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)

    def tls(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context.wrap_socket(raw, server_hostname="127.0.0.1")

    def metrics(self) -> str:
        connection = self.connect()
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()


def mutate(connection: http.client.HTTPSConnection) -> int:
    connection.request(
        "POST",
        "/mutate",
        body=json.dumps(review(gpu_pod())),
        headers={"Content-Type": "application/json"},
    )
    reply = connection.getresponse()
    body = json.loads(reply.read())
    assert body["response"]["allowed"] is True
    return reply.status


def sample(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name + (f"{{{selector}}}" if selector else "")) + r" ([0-9.e+]+)"
    match = re.search(pattern, text)
    assert match is not None, f"{name} {labels} not exported"
    return float(match.group(1))


def sent_until_closed(sock: ssl.SSLSocket, most: int) -> int:
    sent = 0
    try:
        while sent < most:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        pass
    return sent


def answered(sock: ssl.SSLSocket) -> bytes:
    """What the server has sent so far, without waiting. (Readable alone says little: TLS
    1.3 session tickets arrive after the handshake without any answer.)"""
    sock.setblocking(False)
    try:
        return sock.recv(200)
    except (ssl.SSLWantReadError, BlockingIOError):
        return b""
    finally:
        sock.setblocking(True)
        sock.settimeout(10)


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed (or reset) the connection: recv returns nothing."""
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Webhook]:
    (tmp_path / "policy.yaml").write_text(POLICY_YAML)
    context = issue_certificate(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRAMGUARD_WEBHOOK_")}
    env["MALLOC_ARENA_MAX"] = "2"  # as the image sets it
    with webhook_process(
        tmp_path,
        port,
        policy=tmp_path / "policy.yaml",
        args=[
            "--memory-limit-mib", str(MEMORY_LIMIT_MIB),
            "--tls-handshake-timeout-seconds", str(DEADLINE_SECONDS),
            "--header-timeout-seconds", str(DEADLINE_SECONDS),
            "--body-timeout-seconds", str(DEADLINE_SECONDS),
            "--malloc-trim-seconds", "1",
        ],
        env=env,
    ) as process:  # fmt: skip
        wait_ready(port, context, process)
        yield Webhook(process, port, context)


@pytest.mark.slow
def test_a_flood_of_idle_slow_and_oversized_callers_stays_under_the_memory_limit(  # noqa: PLR0915
    webhook: Webhook,
) -> None:
    pid = webhook.process.pid
    at_rest = memory_mib(pid)
    # The API server's connection, opened before the flood and kept alive through it.
    apiserver = webhook.connect()
    assert mutate(apiserver) == 200

    idle = [socket.create_connection(("127.0.0.1", webhook.port)) for _ in range(IDLE_CONNECTIONS)]
    handshaken = []
    for _ in range(20):  # TLS done, then silence
        with contextlib.suppress(ssl.SSLError, OSError):  # refused: the cap is full
            handshaken.append(webhook.tls())
    slow_headers, slow_bodies = [], []
    time.sleep(DEADLINE_SECONDS + 1)  # the idle ones are gone: the cap has room again
    for _ in range(10):
        sock = webhook.tls()
        sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        slow_headers.append(sock)
        sock = webhook.tls()
        sock.sendall(
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )
        slow_bodies.append(sock)

    # A 64 MiB header: answered 431 and closed long before it is all sent.
    huge_header = webhook.tls()
    huge_header.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    assert sent_until_closed(huge_header, 64 * 1024 * 1024) < 64 * 1024 * 1024

    # A body over the limit, streamed (chunked: no Content-Length to trust). The answer is
    # read as soon as it comes: once the server closes, more sending would reset it away.
    oversized = webhook.tls()
    oversized.sendall(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"[" + b"{}," * 100_000
    answer = b""
    for _ in range(100):  # up to ~30 MiB of `{},{},...`
        try:
            oversized.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            # Closed right behind the 413; the reset may have discarded it (the metric
            # below says what the server decided).
            with contextlib.suppress(ConnectionResetError, ssl.SSLError, TimeoutError):
                answer = oversized.recv(200)
            break
        answer = answered(oversized)
        if answer:
            break
    assert not answer or answer.startswith(b"HTTP/1.1 413 ")
    oversized.close()

    # The kept-alive caller is answered throughout.
    assert mutate(apiserver) == 200
    for sock in slow_headers + slow_bodies:
        assert closed_by_server(sock)
    for sock in handshaken:
        assert closed_by_server(sock)
    for raw in idle:
        raw.close()
    assert mutate(apiserver) == 200
    fresh = webhook.connect()
    assert mutate(fresh) == 200  # and new connections are accepted again
    fresh.close()

    peak = memory_mib(pid, "VmHWM")
    time.sleep(2)  # malloc_trim runs within a second of the closes
    after = memory_mib(pid)
    print(f"\nRSS MiB: at rest {at_rest:.1f}, peak {peak:.1f}, after the flood {after:.1f}")
    assert peak < MEMORY_LIMIT_MIB * 0.75
    assert webhook.process.poll() is None

    text = webhook.metrics()
    apiserver.close()
    limited = "vramguard_webhook_connections_limited_total"
    assert sample(text, limited, reason="connection-limit") > 0
    assert sample(text, limited, reason="handshake-timeout") > 0
    assert sample(text, limited, reason="header-timeout") >= 10
    assert sample(text, limited, reason="body-timeout") >= 10
    assert sample(text, limited, reason="header-too-large") == 1
    assert sample(text, "vramguard_webhook_oversized_bodies_total", detected="streamed") == 1
    assert sample(text, "vramguard_webhook_connections_accepted_total") >= IDLE_CONNECTIONS
    assert sample(text, "vramguard_webhook_tls_handshakes_total") >= 25
