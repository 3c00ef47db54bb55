"""What the request path may touch, concurrent binds, and the app's lifespan."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from extender.app import ExtenderDeps, FixedPolicy, create_app
from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from extender.telemetry import TelemetryPoller
from extender.watches import node_watch, pod_watch
from gpumem.policy_file import PolicyFile
from gpumem.state import Reservation
from kube.binder import KubernetesBinder
from tests.http.extender.conftest import FakeBinder, make_settings
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
)


class Tripwire:
    """A client that records and raises on any call, except those explicitly allowed."""

    def __init__(self, allowed: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self._allowed = allowed or {}

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if name in self._allowed:
                return self._allowed[name]
            raise AssertionError(f"{name} called on the request path")

        return call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("query")(*args, **kwargs)


class BindingResponse:
    def release_conn(self) -> None:
        pass


def test_request_path_calls_no_api_or_prometheus_except_the_binding(tmp_path: Path) -> None:
    policy = make_policy()
    store = ClusterStore(policy, clock=lambda: NOW)
    pods = [make_pod("resident", 4000, node="gpu-1"), make_pod("incoming", 3000)]
    store.replace_nodes([make_node("gpu-1", allocatable_mib=14000)])
    store.replace_pods(pods)
    store.apply_telemetry(dcgm_reading({"gpu-1": 9000}))
    core = Tripwire(allowed={"create_namespaced_pod_binding": BindingResponse()})
    prometheus = Tripwire()
    metrics = ExtenderMetrics()
    # The production wiring, over clients that raise when touched. The lifespan does not run
    # (no `with`), so the background watches and poller do not touch them either.
    deps = ExtenderDeps(
        store=store,
        binder=KubernetesBinder(core),
        policy=FixedPolicy(policy),
        metrics=metrics,
        watches=[pod_watch(core, store, metrics), node_watch(core, store, metrics)],
        telemetry=TelemetryPoller(prometheus, store, lambda: policy, metrics),
        clock=lambda: NOW,
    )
    client = TestClient(create_app(make_settings(tmp_path), deps))
    incoming = pods[1]
    args = {"Pod": incoming, "NodeNames": ["gpu-1"]}

    assert client.post("/filter", json=args).json()["NodeNames"] == ["gpu-1"]
    assert client.post("/prioritize", json=args).status_code == 200
    preempt = {
        "Pod": incoming,
        "NodeNameToMetaVictims": {"gpu-1": {"Pods": [{"UID": pods[0]["metadata"]["uid"]}]}},
    }
    assert client.post("/preempt", json=preempt).status_code == 200
    assert client.get("/debug/snapshot").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert core.calls == []
    assert prometheus.calls == []

    meta = incoming["metadata"]
    bind = {
        "PodName": meta["name"],
        "PodNamespace": meta["namespace"],
        "PodUID": meta["uid"],
        "Node": "gpu-1",
    }
    assert client.post("/bind", json=bind).json() == {"Error": ""}
    assert core.calls == ["create_namespaced_pod_binding"]
    assert prometheus.calls == []


def test_concurrent_binds_never_exceed_capacity(tmp_path: Path) -> None:
    policy = make_policy()
    store = ClusterStore(policy, clock=lambda: NOW)
    store.replace_nodes([make_node("gpu-1", allocatable_mib=10000)])
    pods = [make_pod(f"p{i}", 1000) for i in range(32)]
    store.replace_pods([make_pod("resident", 500, node="gpu-1"), *pods])
    store.apply_telemetry(dcgm_reading({"gpu-1": 40000}))
    binder = FakeBinder()
    binder.delay = 0.02  # an API call slow enough for every bind to overlap
    deps = ExtenderDeps(store=store, binder=binder, policy=FixedPolicy(policy), clock=lambda: NOW)
    start = threading.Barrier(len(pods))

    def bind(pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        start.wait()
        response = client.post(
            "/bind",
            json={
                "PodName": meta["name"],
                "PodNamespace": meta["namespace"],
                "PodUID": meta["uid"],
                "Node": "gpu-1",
            },
        )
        assert response.status_code == 200
        return str(response.json()["Error"])

    with (
        TestClient(create_app(make_settings(tmp_path), deps)) as client,
        ThreadPoolExecutor(max_workers=len(pods)) as pool,
    ):
        errors = list(pool.map(bind, pods))

    bound = len(binder.bound)
    assert bound == 9  # 500 + 9 x 1000 <= 10000
    assert sum(1 for e in errors if e == "") == bound
    assert all("> capacity 10000 MiB" in e for e in errors if e)
    node = store.snapshot().node("gpu-1")
    assert node is not None
    assert node.declared_mib + node.reserved_mib(NOW) <= 10000


class FakeService:
    def __init__(self) -> None:
        self.events: list[str] = []

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> None:
        self.events.append("stop")

    def request_relist(self) -> None:
        self.events.append("relist")


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_lifespan_runs_services_and_reloads_the_policy(tmp_path: Path) -> None:
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text("extender:\n  floorMiB: 512\n")
    policy_file = PolicyFile(policy_path)
    store = ClusterStore(policy_file.current, clock=lambda: NOW)
    store.replace_nodes([make_node("gpu-1", allocatable_mib=14000)])
    store.replace_pods([])
    store.apply_telemetry(dcgm_reading({"gpu-1": 3600}))
    watch, telemetry = FakeService(), FakeService()
    deps = ExtenderDeps(
        store=store,
        binder=FakeBinder(),
        policy=policy_file,
        watches=[watch],
        telemetry=telemetry,
        clock=lambda: NOW,
    )
    settings = make_settings(tmp_path, policy_poll_seconds=0.05)
    args = {"Pod": make_pod("incoming", 3000), "NodeNames": ["gpu-1"]}

    with TestClient(create_app(settings, deps)) as client:
        assert watch.events == ["start"]
        assert telemetry.events == ["start"]
        assert client.post("/filter", json=args).json()["NodeNames"] == ["gpu-1"]

        policy_path.write_text("extender:\n  floorMiB: 1024\n")
        wait_for(lambda: client.post("/filter", json=args).json()["NodeNames"] == [])

        policy_path.write_text("extender:\n  floorMiB: [not a number]\n")
        wait_for(lambda: 'result="error"' in client.get("/metrics").text)
        assert client.post("/filter", json=args).json()["NodeNames"] == []  # last good kept

        policy_path.write_text("gpumemResourceName: example.com/vram\n")
        wait_for(lambda: "relist" in watch.events)
    assert watch.events[-1] == "stop"
    assert telemetry.events == ["start", "stop"]


def test_lifespan_sweeps_expired_reservations(tmp_path: Path) -> None:
    policy = make_policy(reservationTTLSeconds=0.1)
    now = [NOW]
    store = ClusterStore(policy, clock=lambda: now[0])
    store.replace_nodes([make_node("gpu-1", allocatable_mib=14000)])
    pod = make_pod("incoming", 3000)
    store.replace_pods([pod])
    binder = FakeBinder()
    deps = ExtenderDeps(
        store=store, binder=binder, policy=FixedPolicy(policy), clock=lambda: now[0]
    )
    settings = make_settings(tmp_path, reservation_sweep_seconds=0.02)
    meta = pod["metadata"]
    bind = {
        "PodName": meta["name"],
        "PodNamespace": meta["namespace"],
        "PodUID": meta["uid"],
        "Node": "gpu-1",
    }

    def reservations() -> tuple[Reservation, ...]:
        node = store.snapshot().node("gpu-1")
        assert node is not None
        return node.reservations

    with TestClient(create_app(settings, deps)) as client:
        assert client.post("/bind", json=bind).json() == {"Error": ""}
        assert reservations() != ()
        now[0] += 1
        wait_for(lambda: reservations() == ())
