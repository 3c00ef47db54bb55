"""The node agent's metrics (in a registry of its own) and its /metrics, /healthz and /readyz.

What it reads, as the latest scan saw it (a series vanishes with its pod, its process or a
GPU NVML could no longer read, rather than keeping its last value):

    vramguard_gpu_memory_{free,used,total}_bytes{node,gpu,uuid}      NVML, per card
    gpu_pod_memory_used_bytes{namespace,pod,container,gpu,uuid}      NVML processes, per pod
    vramguard_pod_gpu_assignment{namespace,pod,container,gpu,uuid,node} = 1   PodResources
    vramguard_node_agent_unattributed_{memory_bytes,processes}{node,gpu,uuid}
    vramguard_node_agent_unmapped_devices{node,kind}                 MIG or unresolved IDs

The first three are the names the extender's node-agent telemetry preset reads;
gpu_pod_memory_used_bytes is the seeds' per-pod exporter's name, so that the pod-exporter
preset reads it too. And its own health: errors by source, the last complete scan, scan time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpumem.attribution import Attribution
from gpumem.gpus import GpuReading
from ops.probes import TEXT, ProbeServer

PREFIX = "vramguard_node_agent_"

Source = Literal["nvml", "podresources", "proc", "kube"]
SOURCES: tuple[Source, ...] = ("nvml", "podresources", "proc", "kube")
UNMAPPED_KINDS = ("mig", "unresolved")


@dataclass(frozen=True)
class AgentView:
    """What one scan found, as published."""

    node: str
    gpus: tuple[GpuReading, ...] = ()
    attribution: Attribution = field(default_factory=Attribution)


class _ViewCollector(Collector):
    """The readings' families, built from the latest view at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._view: AgentView | None = None

    def publish(self, view: AgentView) -> None:
        with self._lock:
            self._view = view

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            view = self._view
        if view is None:
            return
        node = view.node
        gpu_labels = ["node", "gpu", "uuid"]
        memory = {
            kind: GaugeMetricFamily(
                f"vramguard_gpu_memory_{kind}_bytes",
                f"GPU memory {kind} on the card, in bytes (NVML).",
                labels=gpu_labels,
            )
            for kind in ("free", "used", "total")
        }
        for gpu in view.gpus:
            labels = [node, str(gpu.index), gpu.uuid]
            memory["free"].add_metric(labels, gpu.free_bytes)
            memory["used"].add_metric(labels, gpu.used_bytes)
            memory["total"].add_metric(labels, gpu.total_bytes)
        yield from memory.values()
        a = view.attribution
        pod_used = GaugeMetricFamily(
            "gpu_pod_memory_used_bytes",
            "GPU memory a container's processes use on the card, in bytes (NVML per process, "
            "mapped to the pod through /proc/<pid>/cgroup).",
            labels=["namespace", "pod", "container", "gpu", "uuid"],
        )
        for usage in a.pod_usage:
            pod_used.add_metric(
                [usage.namespace, usage.pod, usage.container, str(usage.gpu), usage.uuid],
                usage.used_bytes,
            )
        yield pod_used
        assigned = GaugeMetricFamily(
            "vramguard_pod_gpu_assignment",
            "1: the container holds (a replica of) this GPU, per the kubelet's PodResources; "
            "gpu is empty when NVML did not read the card.",
            labels=["namespace", "pod", "container", "gpu", "uuid", "node"],
        )
        for held in a.assignments:
            index = "" if held.gpu is None else str(held.gpu)
            assigned.add_metric(
                [held.namespace, held.pod, held.container, index, held.uuid, node], 1
            )
        yield assigned
        stray_bytes = GaugeMetricFamily(
            PREFIX + "unattributed_memory_bytes",
            "GPU memory of processes on the card that belong to no known pod, in bytes.",
            labels=gpu_labels,
        )
        stray_count = GaugeMetricFamily(
            PREFIX + "unattributed_processes",
            "Processes on the card that belong to no known pod (host processes, or pods the "
            "agent cannot name).",
            labels=gpu_labels,
        )
        for stray in a.unattributed:
            labels = [node, str(stray.gpu), stray.uuid]
            stray_bytes.add_metric(labels, stray.used_bytes)
            stray_count.add_metric(labels, stray.processes)
        yield stray_bytes
        yield stray_count
        unmapped = GaugeMetricFamily(
            PREFIX + "unmapped_devices",
            "Device IDs of GPU resources that name no card: mig (a MIG instance, not "
            "described per card) and unresolved (a GPU index NVML did not read).",
            labels=["node", "kind"],
        )
        for kind in UNMAPPED_KINDS:
            unmapped.add_metric([node, kind], a.unmapped_devices.get(kind, 0))
        yield unmapped


class NodeAgentMetrics:
    """Every label value of the counters starts at 0, so that increase() sees the first."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._view = _ViewCollector()
        r.register(self._view)
        self.errors = Counter(
            PREFIX + "errors_total",
            "Failed reads, by source: nvml (a GPU or NVML itself), podresources (the kubelet "
            "socket), proc (a process's cgroup, most often one that just exited), kube (the "
            "pod watch of the API).",
            ["source"],
            registry=r,
        )
        self.source_up = Gauge(
            PREFIX + "source_up",
            "1 when the last scan read the source without an error, else 0 (kube: 1 while "
            "the node's pods are known, from the last successful list and the watch since).",
            ["source"],
            registry=r,
        )
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time of the last scan that read every GPU and PodResources (0: none yet).",
            registry=r,
        )
        self.scan_seconds = Histogram(
            PREFIX + "scan_duration_seconds",
            "Time one scan took: NVML, PodResources and the processes' cgroups.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        for source in SOURCES:
            self.errors.labels(source)
            self.source_up.labels(source).set(0)

    def publish(self, view: AgentView) -> None:
        self._view.publish(view)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Observed(Protocol):
    """What the server reads of the loop (ops.node_agent_loop.NodeAgent)."""

    @property
    def metrics(self) -> NodeAgentMetrics: ...

    @property
    def last_scan_ended(self) -> float | None:
        """time.monotonic() at the end of the last scan; None before the first."""
        ...


class MetricsServer(ProbeServer):
    """GET /metrics; /healthz: 200 while scans keep ending (one within `stale_after` s, or
    the first still running: a scan stuck in NVML or the kubelet gets the pod restarted);
    /readyz: 200 once a scan has ended, whatever it could read, so that an agent missing a
    source is still scraped and its errors seen. Plain HTTP: figures and "ok", no secrets."""

    def __init__(self, agent: Observed, port: int, *, stale_after: float) -> None:
        self._agent = agent
        self._stale_after = stale_after
        self._started = time.monotonic()
        super().__init__(self.answer, port, name="vramguard-node-agent-metrics")

    def answer(self, path: str) -> tuple[int, str, bytes]:
        ended = self._agent.last_scan_ended
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._agent.metrics.render()
        if path == "/healthz":
            since = time.monotonic() - (ended if ended is not None else self._started)
            if since <= self._stale_after:
                return 200, TEXT, b"ok\n"
            return 503, TEXT, f"no scan ended in the last {self._stale_after:g} s\n".encode()
        if path == "/readyz":
            if ended is not None:
                return 200, TEXT, b"ok\n"
            return 503, TEXT, b"no scan has ended yet\n"
        return 404, TEXT, b"not found\n"


__all__ = ["SOURCES", "AgentView", "MetricsServer", "NodeAgentMetrics", "Source"]
