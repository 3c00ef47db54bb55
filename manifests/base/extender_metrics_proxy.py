"""Expose the extender's /metrics, and nothing else, on the pod network.

The extender listens on 127.0.0.1 only: its /bind verb creates Bindings with the scheduler
pod's credentials and must be reachable by nothing but the kube-scheduler beside it. Prometheus
cannot reach loopback, so this sidecar (standard library only, run from the vramguard image)
forwards GET /metrics to the extender and answers its own /healthz. Every other path is 404.

Delete it once the extender serves metrics on a listener of its own.
Environment: UPSTREAM_METRICS_URL, LISTEN_PORT, UPSTREAM_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import http.server
import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

DEFAULT_UPSTREAM = "http://127.0.0.1:8888/metrics"
DEFAULT_PORT = 8889
BAD_GATEWAY = 502
TEXT = "text/plain; charset=utf-8"


def make_handler(upstream: str, timeout: float) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler class that forwards GET /metrics to `upstream`."""

    class MetricsProxy(http.server.BaseHTTPRequestHandler):
        server_version = "vramguard-extender-metrics"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/healthz":
                self._reply(200, b"ok\n", TEXT)
            elif path == "/metrics":
                self._forward()
            else:
                self._reply(404, b"not found\n", TEXT)

        def _forward(self) -> None:
            accept = self.headers.get("Accept", "*/*")
            request = urllib.request.Request(upstream, headers={"Accept": accept})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    body = response.read()
                    content_type = response.headers.get("Content-Type", TEXT)
                    status = response.status
            except (urllib.error.URLError, OSError) as err:
                # The scrape fails, so Prometheus records up == 0 for the extender: an
                # extender that is down shows as down, never as a proxy serving stale data.
                self._reply(BAD_GATEWAY, f"extender unreachable: {err}\n".encode(), TEXT)
                return
            self._reply(status, body, content_type)

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            # One line per scrape is noise; errors still reach stderr through log_error.
            return

    return MetricsProxy


def main() -> int:
    upstream = os.environ.get("UPSTREAM_METRICS_URL", DEFAULT_UPSTREAM)
    port = int(os.environ.get("LISTEN_PORT", str(DEFAULT_PORT)))
    timeout = float(os.environ.get("UPSTREAM_TIMEOUT_SECONDS", "5"))
    server = http.server.ThreadingHTTPServer(("", port), make_handler(upstream, timeout))
    print(f"forwarding :{port}/metrics to {upstream}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
