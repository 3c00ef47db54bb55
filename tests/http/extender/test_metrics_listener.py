"""The metrics listener (--metrics-port): /metrics, /healthz and /readyz only, over the same
registry and readiness as the extender; and both servers together in one process."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from starlette.testclient import TestClient

from certs.serving import build_server
from extender.__main__ import build_metrics_server, serve_together
from extender.app import create_app, create_metrics_app
from tests.unit.extender.factories import make_policy

from .conftest import Harness, make_settings


@pytest.fixture
def metrics_client(harness: Harness) -> Iterator[TestClient]:
    with TestClient(create_metrics_app(harness.deps)) as client:
        yield client


def test_serves_metrics_health_and_readiness(harness: Harness, metrics_client: TestClient) -> None:
    metrics = metrics_client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    # The same registry as the main app: a filter there is counted here.
    harness.client.post("/filter", json={"Pod": {"metadata": {"name": "x"}}, "NodeNames": []})
    assert "vramguard_extender_requests_total" in metrics_client.get("/metrics").text
    assert metrics_client.get("/healthz").text == "ok"
    assert metrics_client.get("/readyz").status_code == 200


def test_readiness_is_the_extenders(harness: Harness, metrics_client: TestClient) -> None:
    harness.store._synced.clear()  # as before the first list of pods and nodes
    response = metrics_client.get("/readyz")
    assert response.status_code == 503
    assert "watches have not listed yet" in response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/filter"),
        ("POST", "/prioritize"),
        ("POST", "/bind"),
        ("POST", "/preempt"),
        ("GET", "/debug/snapshot"),
    ],
)
def test_serves_no_verb(metrics_client: TestClient, method: str, path: str) -> None:
    assert metrics_client.request(method, path, json={}).status_code == 404


def test_floor_gauge_follows_the_policy(harness: Harness, metrics_client: TestClient) -> None:
    assert harness.metric("vramguard_extender_floor_mib") == 512
    harness.store.set_policy(make_policy(floorMiB=1024))  # what a reload does
    assert "vramguard_extender_floor_mib 1024.0" in metrics_client.get("/metrics").text


# --- both servers in one process -------------------------------------------------------------


@contextmanager
def _serving_both(harness: Harness) -> Iterator[tuple[int, int, Callable[[], None]]]:
    """The extender's main server and its metrics server, run as main() runs them, on free
    loopback ports in a background thread; yields both ports and a function stopping the
    metrics server alone."""
    app = create_app(make_settings(harness.tmp_path), harness.deps)
    server = build_server(app, "127.0.0.1", 0, None, log_level="warning")
    metrics_server = build_metrics_server(
        create_metrics_app(harness.deps), "127.0.0.1", 0, "warning"
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(serve_together(server, None, metrics_server))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run, name="extender", daemon=True)
    thread.start()
    _wait_for(lambda: (server.started and metrics_server.started) or not thread.is_alive())
    assert server.started, errors
    assert metrics_server.started, errors

    def stop_metrics() -> None:
        metrics_server.should_exit = True

    try:
        yield (
            server.servers[0].sockets[0].getsockname()[1],
            metrics_server.servers[0].sockets[0].getsockname()[1],
            stop_metrics,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert not errors


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)


def _status(url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_both_listeners_serve_their_own_routes(harness: Harness) -> None:
    with _serving_both(harness) as (port, metrics_port, _):
        assert port != metrics_port
        assert _status(f"http://127.0.0.1:{metrics_port}/metrics") == 200
        assert _status(f"http://127.0.0.1:{metrics_port}/readyz") == 200
        assert _status(f"http://127.0.0.1:{metrics_port}/filter", data=b"{}") == 404
        # The verbs stay on the main listener.
        assert _status(f"http://127.0.0.1:{port}/filter", data=b"{}") == 400
        assert _status(f"http://127.0.0.1:{port}/metrics") == 200


def test_the_extender_stops_when_its_metrics_listener_does(harness: Harness) -> None:
    """A probe-less extender would linger unrestarted: one listener down stops both."""
    with _serving_both(harness) as (port, _, stop_metrics):
        stop_metrics()
        _wait_for(lambda: _unreachable(f"http://127.0.0.1:{port}/healthz"))


def _unreachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except OSError:  # refused (URLError), or reset by a server caught mid-shutdown
        return True
    return False
