"""The node agent's scans: read NVML, the kubelet's PodResources and the GPU processes'
cgroups, join them (gpumem.attribution) with the node's pods, and publish the result.

A source that fails costs only what it gives: no NVML, no per-card or per-pod figures but the
assignments still; no PodResources, no assignments but the memory still; no pod names, the
processes' memory counted as unattributed. Each failure is counted (errors_total{source});
a source that starts failing, or fails differently, is logged once as a warning, and once
more when it recovers, so that a missing socket does not log every 10 s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpumem.attribution import PodIdentity, attribute
from gpumem.devices import ContainerDevices
from kube.podresources import PodResourcesError
from kube.reflector import Restart
from ops.node_agent_metrics import AgentView, NodeAgentMetrics, Source
from ops.nvml import NvmlReading
from ops.procfs import read_containers

log = logging.getLogger("ops.node_agent")


@dataclass(frozen=True)
class Options:
    node: str
    interval: float
    proc_root: Path


class NvmlSource(Protocol):
    def read(self) -> NvmlReading: ...


class PodResourcesSource(Protocol):
    def list(self) -> tuple[ContainerDevices, ...]:
        """Raises PodResourcesError."""
        ...


class PodNames(Protocol):
    """The node's pods (kube.nodepods.NodePods), kept current between start and stop."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def by_uid(self) -> Mapping[str, PodIdentity] | None:
        """The node's pods by UID; None while they are not known."""
        ...


class NoPodNames:
    """Without API access: processes are not attributed to pods."""

    def start(self) -> None:
        return

    def stop(self) -> None:
        return

    def by_uid(self) -> Mapping[str, PodIdentity] | None:
        return None


class NodeAgent:
    def __init__(
        self,
        options: Options,
        nvml: NvmlSource,
        pod_resources: PodResourcesSource,
        pod_names: PodNames,
        metrics: NodeAgentMetrics,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self._nvml = nvml
        self._pod_resources = pod_resources
        self._pod_names = pod_names
        self._failing: dict[str, str] = {}  # what is failing now -> its error, for the logs
        self.last_scan_ended: float | None = None  # time.monotonic()
        self.last_view: AgentView | None = None

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.scan()
            except Exception:  # a bug must not stop the agent; logged with its traceback
                log.exception("scan_error=internal")
                self.last_scan_ended = time.monotonic()
            stop.wait(self.options.interval)

    def scan(self) -> bool:
        """One scan; True when every GPU and PodResources were read."""
        started = time.monotonic()
        try:
            return self._scan()
        finally:
            self.last_scan_ended = time.monotonic()
            self.metrics.scan_seconds.observe(self.last_scan_ended - started)

    def _scan(self) -> bool:
        reading = self._nvml.read()
        nvml_ok = reading.available and not reading.problems
        self._source_result("nvml", nvml_ok, len(reading.problems))
        self._report("nvml", {f"{p.gpu} {p.step}": str(p) for p in reading.problems})
        allocations: tuple[ContainerDevices, ...] | None
        try:
            allocations = self._pod_resources.list()
            self._report("podresources", {})
        except PodResourcesError as err:
            allocations = None
            self._report("podresources", {"list": str(err)})
        self._source_result("podresources", allocations is not None, int(allocations is None))

        pids = [p.pid for gpu in reading.gpus for p in gpu.processes]
        containers, problems = read_containers(self.options.proc_root, pids)
        for problem in problems:
            # One line each: a process that exits mid-scan is an event, not a state.
            log.info("source=proc %s", problem)
        self._source_result("proc", not problems, len(problems))

        pods = self._pod_names.by_uid()
        self.metrics.source_up.labels("kube").set(1 if pods is not None else 0)
        view = AgentView(
            self.options.node,
            reading.gpus,
            attribute(reading.gpus, allocations, containers, pods),
        )
        self.metrics.publish(view)
        self.last_view = view
        complete = nvml_ok and allocations is not None
        if complete:
            self.metrics.last_success.set(time.time())
        a = view.attribution
        log.debug(
            "scan gpus=%d processes=%d pod_usage=%d assignments=%d unattributed=%d",
            len(reading.gpus),
            len(pids),
            len(a.pod_usage),
            len(a.assignments),
            sum(s.processes for s in a.unattributed),
        )
        return complete

    def _source_result(self, source: Source, ok: bool, errors: int) -> None:
        self.metrics.source_up.labels(source).set(1 if ok else 0)
        if errors:
            self.metrics.errors.labels(source).inc(errors)

    def _report(self, source: Source, failing: Mapping[str, str]) -> None:
        """Log what started failing (or fails differently) and what recovered."""
        prefix = source + ":"
        for key, error in failing.items():
            full = prefix + key
            if self._failing.get(full) != error:
                log.warning("source=%s failing: %s", source, error)
                self._failing[full] = error
        for full in [k for k in self._failing if k.startswith(prefix)]:
            if full[len(prefix) :] not in failing:
                log.info("source=%s recovered: %s", source, full[len(prefix) :])
                del self._failing[full]


class PodWatchLog:
    """kube.reflector.Hooks of the pod watch: a log line per list, a counted one per
    failure (errors_total{source="kube"})."""

    def __init__(self, metrics: NodeAgentMetrics) -> None:
        self._metrics = metrics

    def listed(self, resource: str, count: int, version: str) -> None:
        log.info("source=kube listed %d pods of the node at resourceVersion %s", count, version)

    def restarted(
        self, resource: str, reason: Restart, err: Exception | None, delay: float
    ) -> None:
        if reason == "error":
            self._metrics.errors.labels("kube").inc()
            log.warning("source=kube pod watch failed, retrying in %.1fs: %s", delay, err)
        else:
            log.info("source=kube pod watch relisting (%s)", reason)


__all__ = ["NoPodNames", "NodeAgent", "Options", "PodWatchLog"]
