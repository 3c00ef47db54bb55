"""The one fake in the suite: a tiny metrics exporter standing in for dcgm-exporter and a
per-pod GPU memory exporter. There is no GPU here; each test says what the cards report.

It serves, at ``/metrics`` in the Prometheus text format:

- dcgm-exporter's framebuffer gauges, in MiB, one series per GPU, labelled with the node:
  ``DCGM_FI_DEV_FB_FREE{gpu="0",UUID=...,modelName=...,Hostname="node-a"} 15360``
  and ``DCGM_FI_DEV_FB_USED{...}``;
- a per-process exporter's gauge, in bytes:
  ``gpu_pod_memory_used_bytes{namespace="ns",pod="p",pid="1234"} 1073741824``.

    exporter = GPUExporter()
    exporter.start()
    exporter.set_node("node-a", total_mib=15360, used_mib=10700)
    exporter.set_pod_usage("immich", "immich-ml-0", 2500)
"""

from __future__ import annotations

import threading
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1 << 20


@dataclass(frozen=True)
class CardReading:
    """What one node's card reports; free is what the total leaves after used."""

    total_mib: int
    used_mib: int
    product: str = "Tesla T4"

    @property
    def free_mib(self) -> int:
        return max(0, self.total_mib - self.used_mib)


class GPUExporter:
    """A threaded HTTP server on ``host``; values change with ``set_node``/``set_pod_usage``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, CardReading] = {}
        self._pods: dict[tuple[str, str], int] = {}
        self._scrapes = 0
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """host:port, the scrape target."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="gpu-exporter",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._thread = None

    # -- what the tests set ----------------------------------------------------------------

    def set_node(
        self, node: str, total_mib: int, used_mib: int, *, product: str = "Tesla T4"
    ) -> None:
        """Report one GPU on ``node`` with ``used_mib`` of ``total_mib`` in use."""
        if total_mib < 0 or used_mib < 0:
            raise ValueError("GPU memory cannot be negative")
        with self._lock:
            self._nodes[node] = CardReading(total_mib, used_mib, product)

    def remove_node(self, node: str) -> None:
        """Stop reporting ``node`` (its exporter pod went away)."""
        with self._lock:
            self._nodes.pop(node, None)

    def set_pod_usage(self, namespace: str, pod: str, mib: int) -> None:
        """Report ``mib`` MiB in use by the pod's process (exported in bytes)."""
        if mib < 0:
            raise ValueError("GPU memory cannot be negative")
        with self._lock:
            self._pods[(namespace, pod)] = mib

    def remove_pod(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._pods.pop((namespace, pod), None)

    def clear(self) -> None:
        """Report nothing at all."""
        with self._lock:
            self._nodes.clear()
            self._pods.clear()

    def nodes(self) -> Mapping[str, CardReading]:
        with self._lock:
            return dict(self._nodes)

    @property
    def scrapes(self) -> int:
        """How many times /metrics was fetched."""
        with self._lock:
            return self._scrapes

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> str:
        with self._lock:
            self._scrapes += 1
            nodes = sorted(self._nodes.items())
            pods = sorted(self._pods.items())
        lines: list[str] = []
        for metric, help_text, value_of in (
            ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", _free),
            ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", _used),
        ):
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} gauge")
            for node, card in nodes:
                labels = {
                    "gpu": "0",
                    "UUID": _gpu_uuid(node),
                    "device": "nvidia0",
                    "modelName": card.product,
                    "Hostname": node,
                }
                lines.append(f"{metric}{_labels(labels)} {value_of(card)}")
        metric = "gpu_pod_memory_used_bytes"
        lines.append(f"# HELP {metric} GPU memory used by a pod's processes.")
        lines.append(f"# TYPE {metric} gauge")
        for (namespace, pod), mib in pods:
            labels = {"namespace": namespace, "pod": pod, "pid": str(_pid(namespace, pod))}
            lines.append(f"{metric}{_labels(labels)} {mib * MIB}")
        return "\n".join(lines) + "\n"


def _free(card: CardReading) -> int:
    return card.free_mib


def _used(card: CardReading) -> int:
    return card.used_mib


def _labels(labels: Mapping[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def _gpu_uuid(node: str) -> str:
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, node)}"


def _pid(namespace: str, pod: str) -> int:
    # Stable per pod, like a real process id would be for the life of the process.
    return 1000 + zlib.crc32(f"{namespace}/{pod}".encode()) % 60000


def _handler_for(exporter: GPUExporter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vramguard-e2e-gpu-exporter/1"
        routes: ClassVar[tuple[str, ...]] = ("/metrics", "/")

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in self.routes:
                self.send_error(404)
                return
            body = exporter.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per scrape every second would drown the test output

    return Handler
