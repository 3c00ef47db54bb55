"""/preempt vets a bounded number of candidate nodes (issue 17: 100,000 proposed nodes blocked
the extender for 2.9 s against the scheduler's 5 s timeout)."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from extender.app import ExtenderDeps, FixedPolicy, create_app
from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from tests.http.extender.conftest import FakeBinder, make_settings
from tests.unit.extender.factories import NOW, dcgm_reading, make_node, make_pod, make_policy

LEFT_OUT = "vramguard_extender_preemption_nodes_left_out_total"


def test_preempt_vets_at_most_the_configured_nodes_fewest_victims_first(tmp_path: Path) -> None:
    policy = make_policy()
    store = ClusterStore(policy, clock=lambda: NOW)
    names = [f"gpu-{i:03d}" for i in range(50)]
    store.replace_nodes([make_node(name, allocatable_mib=14000) for name in names])
    store.replace_pods([])
    store.apply_telemetry(dcgm_reading(dict.fromkeys(names, 14000)))
    metrics = ExtenderMetrics()
    deps = ExtenderDeps(
        store=store,
        binder=FakeBinder(),
        policy=FixedPolicy(policy),
        metrics=metrics,
        clock=lambda: NOW,
    )
    app = create_app(make_settings(tmp_path, max_preemption_nodes=10), deps)
    # Node i proposes 50 - i victims, and the first five also break a PDB: the scheduler's
    # best candidates are those with no violation and the fewest victims, gpu-049 down.
    victims = {
        name: {
            "Pods": [{"UID": f"{name}-{k}"} for k in range(50 - i)],
            "NumPDBViolations": 1 if i < 5 else 0,
        }
        for i, name in enumerate(names)
    }
    args = {"Pod": make_pod("incoming", 2000), "NodeNameToMetaVictims": victims}

    with TestClient(app) as client:
        answer = client.post("/preempt", json=args)

    assert answer.status_code == 200
    kept = answer.json()["NodeNameToMetaVictims"]
    assert sorted(kept) == [f"gpu-{i:03d}" for i in range(40, 50)]
    assert len(kept["gpu-049"]["Pods"]) == 1  # the victims as proposed
    assert metrics.registry.get_sample_value(LEFT_OUT) == 40


def test_preempt_under_the_cap_considers_every_node(tmp_path: Path) -> None:
    policy = make_policy()
    store = ClusterStore(policy, clock=lambda: NOW)
    store.replace_nodes([make_node("gpu-1", allocatable_mib=14000)])
    store.replace_pods([])
    store.apply_telemetry(dcgm_reading({"gpu-1": 14000}))
    metrics = ExtenderMetrics()
    deps = ExtenderDeps(
        store=store, binder=FakeBinder(), policy=FixedPolicy(policy), metrics=metrics
    )
    app = create_app(make_settings(tmp_path, max_preemption_nodes=1), deps)
    args = {
        "Pod": make_pod("incoming", 2000),
        "NodeNameToVictims": {"gpu-1": {"Pods": [make_pod("victim", 1000)]}},
    }
    with TestClient(app) as client:
        answer = client.post("/preempt", json=args)
    assert answer.status_code == 200
    assert list(answer.json()["NodeNameToMetaVictims"]) == ["gpu-1"]
    assert metrics.registry.get_sample_value(LEFT_OUT) == 0
