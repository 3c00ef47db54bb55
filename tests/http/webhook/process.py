"""`python -m webhook` as a child process over HTTPS: certificate, start, readiness, stop.

Shared by tests/http/webhook/test_serving.py, tests/bench/webhook_bench.py and
tests/demo/webhook_demo.py.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SAMPLE_POLICY = REPO / "manifests" / "base" / "policy.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def issue_certificate(directory: Path) -> ssl.SSLContext:
    """`python -m certs` into `directory` (ca.crt, tls.crt, tls.key for localhost and
    127.0.0.1); returns a client context that trusts that CA."""
    subprocess.run(
        [sys.executable, "-m", "certs", "--out", str(directory), "--dns", "localhost",
         "--ip", "127.0.0.1"],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return ssl.create_default_context(cafile=str(directory / "ca.crt"))


@contextmanager
def webhook_process(
    directory: Path,
    port: int,
    *,
    policy: Path = SAMPLE_POLICY,
    args: Sequence[str] = (),
    python_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    stop_timeout: float = 15,
) -> Iterator[subprocess.Popen[bytes]]:
    """The webhook on 127.0.0.1:`port` serving `directory`/tls.crt and tls.key, logging to
    `directory`/webhook.log; stopped (SIGINT, then SIGKILL) on exit if still running.

    `args` go after the webhook's flags, `python_args` before `-m webhook` (e.g. cProfile),
    `env` replaces os.environ (PYTHONPATH is always the repository)."""
    command = [
        sys.executable, *python_args, "-m", "webhook",
        "--policy", str(policy),
        "--tls-cert", str(directory / "tls.crt"),
        "--tls-key", str(directory / "tls.key"),
        "--host", "127.0.0.1",
        "--port", str(port),
        *args,
    ]  # fmt: skip
    environment = {**(os.environ if env is None else env), "PYTHONPATH": str(REPO)}
    with (directory / "webhook.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, env=environment)
        try:
            yield process
        finally:
            stop(process, stop_timeout)


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGINT (uvicorn shuts down gracefully on it), then SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(
    port: int,
    context: ssl.SSLContext,
    process: subprocess.Popen[bytes],
    timeout: float = 30,
) -> None:
    """Poll GET /readyz until it answers 200; RuntimeError if the webhook exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the webhook exited with {process.returncode}; see webhook.log")
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.05)
    raise RuntimeError(f"the webhook did not become ready within {timeout:g} s")
