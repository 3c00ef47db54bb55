"""A small plain-HTTP server for the looping commands' probes and metrics (`advertise
--health-port`, `watchdog --metrics-port`): GET only, answered by a function of the path, in a
daemon thread, with no access log (a probe or a scrape every few seconds is noise)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable

TEXT = "text/plain; charset=utf-8"

# path -> (status, content type, body)
Answer = Callable[[str], tuple[int, str, bytes]]


class ProbeServer:
    def __init__(self, answer: Answer, port: int, *, name: str) -> None:
        self._answer = answer
        self._server = http.server.ThreadingHTTPServer(("", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        answer = self._answer

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = answer(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                return

        return Handler
