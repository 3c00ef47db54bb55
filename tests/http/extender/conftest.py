from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from extender.app import ExtenderDeps, FixedPolicy, create_app
from extender.metrics import ExtenderMetrics
from extender.settings import Settings
from extender.store import ClusterStore
from gpumem.policy import Policy
from gpumem.state import TelemetryReading
from kube.errors import BindError
from tests.unit.extender.factories import NOW, dcgm_reading, make_node, make_pod, make_policy


class FakeBinder:
    """Implements the Binder protocol; records binds, can fail or be slow."""

    def __init__(self) -> None:
        self.bound: list[tuple[str, str, str, str]] = []
        self.failure: str | None = None
        self.delay = 0.0
        self._lock = threading.Lock()

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.failure is not None:
            raise BindError(self.failure)
        with self._lock:
            self.bound.append((namespace, name, uid, node))


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    policy = tmp_path / "policy.yaml"
    if not policy.exists():
        policy.write_text("{}\n")
    return Settings(policy=policy, prometheus_url="http://prometheus.invalid:9090", **overrides)


@dataclass
class Harness:
    """An extender app over an in-memory cluster: 4 nodes of 14000 MiB with pods on them."""

    tmp_path: Path
    policy: Policy = field(default_factory=make_policy)
    binder: FakeBinder = field(default_factory=FakeBinder)
    clock_now: float = NOW

    def __post_init__(self) -> None:
        self.store = ClusterStore(self.policy, clock=self.clock)
        self.metrics = ExtenderMetrics()
        self.nodes = [
            make_node("gpu-1", allocatable_mib=14000),
            make_node("gpu-2", allocatable_mib=14000),
            make_node("gpu-3", gfd_memory_mib=16384, gfd_count=1),
            make_node("cpu-1"),
        ]
        self.pods = [
            make_pod("resident-1", 8000, node="gpu-1"),
            make_pod("resident-2", 5300, node="gpu-1"),
            make_pod("resident-3", 2000, node="gpu-2", namespace="team-b"),
        ]
        self.store.replace_nodes(self.nodes)
        self.store.replace_pods(self.pods)
        self.store.apply_telemetry(
            dcgm_reading({"gpu-1": 600, "gpu-2": 11000, "gpu-3": 2100}, age=8)
        )
        self.deps = ExtenderDeps(
            store=self.store,
            binder=self.binder,
            policy=FixedPolicy(self.policy),
            metrics=self.metrics,
            clock=self.clock,
        )
        self.app = create_app(make_settings(self.tmp_path), self.deps)
        self.client = TestClient(self.app)

    def clock(self) -> float:
        return self.clock_now

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.nodes if n["metadata"]["name"] == name)

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        self.store.apply_pod_event("ADDED", pod)
        return pod

    def apply_telemetry(self, reading: TelemetryReading) -> None:
        self.store.apply_telemetry(reading)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.client.close()
