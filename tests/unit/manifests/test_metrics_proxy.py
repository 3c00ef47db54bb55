"""manifests/base/extender_metrics_proxy.py: only GET /metrics gets through to the extender."""

from __future__ import annotations

import http.server
import importlib.util
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import ModuleType

import pytest

from .conftest import BASE

METRICS = b"# TYPE vramguard_extender_telemetry_up gauge\nvramguard_extender_telemetry_up 1\n"


def _load_proxy() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "extender_metrics_proxy", BASE / "extender_metrics_proxy.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Extender(http.server.BaseHTTPRequestHandler):
    """Stands in for the extender on loopback: records every path it is asked for."""

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(METRICS)))
        self.end_headers()
        self.wfile.write(METRICS)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


def _serve(server: http.server.ThreadingHTTPServer) -> threading.Thread:
    # A short poll interval: shutdown() waits for the loop to notice (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def extender() -> Iterator[http.server.ThreadingHTTPServer]:
    _Extender.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Extender)
    _serve(server)
    yield server
    server.shutdown()
    server.server_close()


def _proxy_for(upstream: str) -> Iterator[str]:
    proxy = _load_proxy()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), proxy.make_handler(upstream, timeout=2.0)
    )
    _serve(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(extender: http.server.ThreadingHTTPServer) -> Iterator[str]:
    yield from _proxy_for(f"http://127.0.0.1:{extender.server_address[1]}/metrics")


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def test_metrics_are_forwarded_with_their_content_type(proxy: str) -> None:
    status, body, content_type = _get(proxy + "/metrics")
    assert (status, body) == (200, METRICS)
    assert content_type == "text/plain; version=0.0.4"


@pytest.mark.parametrize(
    "path", ["/bind", "/filter", "/debug/snapshot", "/metrics/../bind", "/healthz/x"]
)
def test_nothing_else_reaches_the_extender(proxy: str, path: str) -> None:
    status, _, _ = _get(proxy + path)
    assert status == 404
    assert _Extender.seen == []


def test_post_is_not_forwarded(proxy: str) -> None:
    request = urllib.request.Request(proxy + "/bind", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 501
    assert _Extender.seen == []


def test_healthz_is_the_proxy_s_own(proxy: str) -> None:
    assert _get(proxy + "/healthz")[:2] == (200, b"ok\n")
    assert _Extender.seen == []


def test_extender_down_is_a_failed_scrape() -> None:
    # A port nothing listens on: bind, note it, close.
    probe = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Extender)
    port = probe.server_address[1]
    probe.server_close()
    for base in _proxy_for(f"http://127.0.0.1:{port}/metrics"):
        status, body, _ = _get(base + "/metrics")
        assert status == 502
        assert b"extender unreachable" in body
