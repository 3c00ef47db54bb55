"""The one fake in the suite: a tiny metrics exporter standing in for dcgm-exporter, the
seeds' per-pod GPU memory exporter and `vramguard node-agent`. There is no GPU here; each test
says what the cards report and which pod holds which card.

It serves, at ``/metrics`` in the Prometheus text format, for every card of every node:

- dcgm-exporter's framebuffer gauges, in MiB, one series per GPU, labelled with the node:
  ``DCGM_FI_DEV_FB_FREE{gpu="0",UUID=...,device="nvidia0",modelName=...,Hostname="node-a"}``
  and ``DCGM_FI_DEV_FB_USED{...}``; with ``set_dcgm_pod_labels(True)``, a card that pods hold
  repeats them once per pod, with the same value and ``pod``, ``namespace``, ``container``
  labels, as dcgm-exporter does with ``--kubernetes-virtual-gpus``;
- the node agent's gauges, in bytes: ``vramguard_gpu_memory_{free,used,total}_bytes{node,gpu,
  uuid}`` and, for each pod ``assign`` placed, ``vramguard_pod_gpu_assignment{namespace,pod,
  container,gpu,uuid,node} 1``;
- a per-process exporter's gauge, in bytes:
  ``gpu_pod_memory_used_bytes{namespace="ns",pod="p",pid="1234"} 1073741824``, with the
  node agent's ``container``, ``gpu`` and ``uuid`` labels too once the pod is assigned.

    exporter = GPUExporter()
    exporter.start()
    exporter.set_node("node-a", total_mib=15360, used_mib=10700)     # one card
    exporter.set_cards("node-b", [CardReading(16384, 10384), CardReading(16384, 10384)])
    exporter.assign("team-a", "trainer-0", "node-b", 1)              # the device plugin's pick
    exporter.set_pod_usage("immich", "immich-ml-0", 2500)
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from tests.fakes.cards import card_uuid as card_uuid  # noqa: PLC0414  (re-exported)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1 << 20
PodKey = tuple[str, str]


@dataclass(frozen=True)
class CardReading:
    """What one card reports; free is what the total leaves after used."""

    total_mib: int
    used_mib: int
    product: str = "Tesla T4"

    @property
    def free_mib(self) -> int:
        return max(0, self.total_mib - self.used_mib)


@dataclass(frozen=True)
class Assignment:
    """Which card a pod's container holds, as the kubelet's PodResources would say."""

    node: str
    card_index: int
    container: str = "main"


class GPUExporter:
    """A threaded HTTP server on ``host``; values change with ``set_node``/``set_cards``,
    ``assign`` and ``set_pod_usage``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, tuple[CardReading, ...]] = {}
        self._pods: dict[PodKey, int] = {}
        self._assignments: dict[PodKey, Assignment] = {}
        self._dcgm_pod_labels = False
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
        self.set_cards(node, [CardReading(total_mib, used_mib, product)])

    def set_cards(self, node: str, cards: Sequence[CardReading]) -> None:
        """Report ``node``'s GPUs, card ``i`` as ``gpu="i"`` with UUID ``card_uuid(node, i)``."""
        if not cards:
            raise ValueError("a node reports at least one card (remove_node reports none)")
        if any(card.total_mib < 0 or card.used_mib < 0 for card in cards):
            raise ValueError("GPU memory cannot be negative")
        with self._lock:
            self._nodes[node] = tuple(cards)

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

    def assign(
        self, namespace: str, pod: str, node: str, card_index: int, *, container: str = "main"
    ) -> None:
        """Say that the pod holds card ``card_index`` of ``node`` (the device plugin's choice,
        as PodResources reports it): published as the node agent's assignment series, on the
        pod's usage series, and on dcgm's series when ``set_dcgm_pod_labels`` is on. Shown
        once ``node`` reports that card."""
        if card_index < 0:
            raise ValueError("a card index is 0 or more")
        with self._lock:
            self._assignments[(namespace, pod)] = Assignment(node, card_index, container)

    def unassign(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._assignments.pop((namespace, pod), None)

    def set_dcgm_pod_labels(self, enabled: bool) -> None:
        """Label dcgm's series with the pods on each card, one repeat per pod (dcgm-exporter's
        Kubernetes mapping with --kubernetes-virtual-gpus); off by default."""
        with self._lock:
            self._dcgm_pod_labels = enabled

    def clear(self) -> None:
        """Report nothing at all."""
        with self._lock:
            self._nodes.clear()
            self._pods.clear()
            self._assignments.clear()
            self._dcgm_pod_labels = False

    def nodes(self) -> Mapping[str, CardReading]:
        """Per node, its cards together (its one card after ``set_node``)."""
        with self._lock:
            nodes = dict(self._nodes)
        return {
            node: CardReading(
                sum(card.total_mib for card in cards),
                sum(card.used_mib for card in cards),
                cards[0].product,
            )
            for node, cards in nodes.items()
        }

    def cards(self) -> Mapping[str, tuple[CardReading, ...]]:
        """Per node, its cards by index."""
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
            nodes = dict(sorted(self._nodes.items()))
            pods = sorted(self._pods.items())
            assignments = sorted(self._assignments.items())
            dcgm_pod_labels = self._dcgm_pod_labels
        # Only assignments to a card that is reported: the kubelet's PodResources would not
        # list a pod on a card that is gone either.
        placed = {
            pod: a
            for pod, a in assignments
            if a.node in nodes and a.card_index < len(nodes[a.node])
        }
        holders: dict[tuple[str, int], list[dict[str, str]]] = {}
        for (namespace, pod), a in placed.items():
            holders.setdefault((a.node, a.card_index), []).append(
                {"pod": pod, "namespace": namespace, "container": a.container}
            )
        lines: list[str] = []
        for metric, help_text, value_of in DCGM_GAUGES:
            _header(lines, metric, help_text)
            for node, cards in nodes.items():
                for index, card in enumerate(cards):
                    labels = {
                        "gpu": str(index),
                        "UUID": card_uuid(node, index),
                        "device": f"nvidia{index}",
                        "modelName": card.product,
                        "Hostname": node,
                    }
                    # One series per pod on the card, each with the card's value; a card
                    # nobody holds keeps its one series without pod labels.
                    on_card = holders.get((node, index), []) if dcgm_pod_labels else []
                    for pod_labels in on_card or [{}]:
                        lines.append(f"{metric}{_labels(labels | pod_labels)} {value_of(card)}")
        for metric, help_text, value_of in AGENT_GAUGES:
            _header(lines, metric, help_text)
            for node, cards in nodes.items():
                for index, card in enumerate(cards):
                    labels = {"node": node, "gpu": str(index), "uuid": card_uuid(node, index)}
                    lines.append(f"{metric}{_labels(labels)} {value_of(card) * MIB}")
        metric = "vramguard_pod_gpu_assignment"
        _header(lines, metric, "The GPU a pod's container holds (kubelet PodResources).")
        for (namespace, pod), a in placed.items():
            labels = {"namespace": namespace, "pod": pod, **_card_labels(a), "node": a.node}
            lines.append(f"{metric}{_labels(labels)} 1")
        metric = "gpu_pod_memory_used_bytes"
        _header(lines, metric, "GPU memory used by a pod's processes.")
        for (namespace, pod), mib in pods:
            labels = {"namespace": namespace, "pod": pod, "pid": str(_pid(namespace, pod))}
            held = placed.get((namespace, pod))
            if held is not None:
                labels |= _card_labels(held)
            lines.append(f"{metric}{_labels(labels)} {mib * MIB}")
        return "\n".join(lines) + "\n"


def _free(card: CardReading) -> int:
    return card.free_mib


def _used(card: CardReading) -> int:
    return card.used_mib


def _total(card: CardReading) -> int:
    return card.total_mib


Gauge = tuple[str, str, Callable[[CardReading], int]]
DCGM_GAUGES: tuple[Gauge, ...] = (
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", _free),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", _used),
)
AGENT_GAUGES: tuple[Gauge, ...] = (
    ("vramguard_gpu_memory_free_bytes", "GPU memory free (NVML).", _free),
    ("vramguard_gpu_memory_used_bytes", "GPU memory used (NVML).", _used),
    ("vramguard_gpu_memory_total_bytes", "GPU memory in total (NVML).", _total),
)


def _header(lines: list[str], metric: str, help_text: str) -> None:
    lines.append(f"# HELP {metric} {help_text}")
    lines.append(f"# TYPE {metric} gauge")


def _card_labels(a: Assignment) -> dict[str, str]:
    """The node agent's labels for the card a pod's container holds."""
    return {
        "container": a.container,
        "gpu": str(a.card_index),
        "uuid": card_uuid(a.node, a.card_index),
    }


def _labels(labels: Mapping[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


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
