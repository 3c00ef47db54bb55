"""Explanations of Pending pods through the app: never written by a request, written by the
background service that the app's lifespan runs."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from extender.app import ExtenderDeps, FixedPolicy, create_app
from extender.metrics import ExtenderMetrics
from extender.pending import (
    EVENT_COMPONENT,
    EVENT_REASON,
    FITS_CONDITION,
    FITS_REASON,
    PendingExplainer,
)
from extender.store import ClusterStore
from kube.binder import KubernetesBinder
from kube.conditions import KubernetesNudger
from kube.events import KubernetesEvents
from tests.http.extender.conftest import make_settings
from tests.http.extender.test_request_path import BindingResponse, Tripwire
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    unschedulable,
)


def seeds_store() -> ClusterStore:
    store = ClusterStore(make_policy(), clock=lambda: NOW)
    store.replace_nodes([make_node("gpu-1", allocatable_mib=14000)])
    store.replace_pods([make_pod("resident", 13300, node="gpu-1")])
    store.apply_telemetry(dcgm_reading({"gpu-1": 9000}))
    return store


class RecordingCore:
    """create_namespaced_event only, recorded."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.created = threading.Event()

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        self.bodies.append(body)
        self.created.set()
        return BindingResponse()


def explaining_deps(store: ClusterStore, core: Any) -> tuple[PendingExplainer, ExtenderDeps]:
    """The explainer as main() wires it, writing Events through `core`, and the app's deps."""
    metrics = ExtenderMetrics()
    explainer = PendingExplainer(
        store,
        KubernetesEvents(core, reason=EVENT_REASON, component=EVENT_COMPONENT, instance="test"),
        metrics,
        nudger=KubernetesNudger(core, condition=FITS_CONDITION, reason=FITS_REASON),
        scheduler_name="vramguard-scheduler",
        clock=lambda: NOW,
    )
    deps = ExtenderDeps(
        store=store,
        binder=KubernetesBinder(core),
        policy=FixedPolicy(store.policy),
        metrics=metrics,
        services=[explainer],
        clock=lambda: NOW,
    )
    return explainer, deps


def test_no_request_writes_an_event(tmp_path: Path) -> None:
    store = seeds_store()
    core = Tripwire(allowed={"create_namespaced_pod_binding": BindingResponse()})
    explainer, deps = explaining_deps(store, core)
    pending = unschedulable("incoming", 1500)
    explainer.apply_pod_event("ADDED", pending)
    # No `with`: the lifespan, and so the explainer's threads, do not run.
    client = TestClient(create_app(make_settings(tmp_path), deps))
    args = {"Pod": pending, "NodeNames": ["gpu-1"]}
    assert (
        client.post("/filter", json=args)
        .json()["FailedNodes"]["gpu-1"]
        .startswith("vramguard: declared 13300 + 1500")
    )
    assert client.post("/prioritize", json=args).status_code == 200
    assert client.get("/metrics").status_code == 200
    assert core.calls == []
    assert explainer.queued == 0


def test_the_lifespan_runs_the_explainer(tmp_path: Path) -> None:
    store = seeds_store()
    core = RecordingCore()
    explainer, deps = explaining_deps(store, core)
    with TestClient(create_app(make_settings(tmp_path), deps)) as client:
        explainer.apply_pod_event("ADDED", unschedulable("incoming", 1500))
        assert core.created.wait(5)
        body = client.get("/metrics").text
    [event] = core.bodies
    assert event["reason"] == "GPUMemoryUnavailable"
    assert event["message"] == (
        "vramguard: no node fits 1500 MiB of vramguard.io/gpumem: "
        "gpu-1: declared 13300 + 1500 > capacity 14000 MiB"
    )
    assert 'vramguard_extender_explanations_total{result="created"} 1.0' in body
    assert "vramguard_extender_unschedulable_gpu_pods 1.0" in body
