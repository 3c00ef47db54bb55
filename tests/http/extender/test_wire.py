"""The extender v1 wire protocol as kube-scheduler speaks it (Go field names, null for nil)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from extender.app import ExtenderDeps, FixedPolicy, create_app
from extender.store import ClusterStore
from gpumem.policy import Policy
from gpumem.state import Reservation
from tests.http.extender.conftest import FakeBinder, Harness, make_settings
from tests.unit.extender.factories import NOW, dcgm_reading, make_pod, make_policy

ALL = ["gpu-1", "gpu-2", "gpu-3", "cpu-1"]


def cache_args(pod: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """ExtenderArgs of a nodeCacheCapable extender: Go sends the nil NodeList as null."""
    return {"Pod": pod, "Nodes": None, "NodeNames": names}


def list_args(pod: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "Pod": pod,
        "Nodes": {"metadata": {}, "items": nodes},
        "NodeNames": None,
    }


# --- filter --------------------------------------------------------------------------------------


def test_filter_node_cache_capable(harness: Harness) -> None:
    pod = make_pod("incoming", 3000)
    response = harness.client.post("/filter", json=cache_args(pod, ALL))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "Nodes": None,
        "NodeNames": ["gpu-2"],
        "FailedNodes": {
            "gpu-1": "vramguard: declared 13300 + 3000 > capacity 14000 MiB",
            "gpu-3": "vramguard: live free 2100 MiB < need 3000 + floor 512 MiB (dcgm, 8s old)",
        },
        "FailedAndUnresolvableNodes": {
            "cpu-1": "vramguard: node advertises no GPU memory (no allocatable gpumem, no GPU "
            "Feature Discovery memory label)"
        },
        "Error": "",
    }


def test_filter_with_node_list_returns_the_passing_nodes_untouched(harness: Harness) -> None:
    nodes = [copy.deepcopy(harness.node(name)) for name in ALL]
    nodes[1]["metadata"]["annotations"]["example.com/unknown-to-vramguard"] = "kept"
    nodes[1]["status"]["futureField"] = {"nested": [1, 2, 3]}
    body = list_args(make_pod("incoming", 3000), nodes)
    body["Nodes"]["apiVersion"] = "v1"
    body["Nodes"]["kind"] = "NodeList"

    result = harness.client.post("/filter", json=body).json()

    assert result["NodeNames"] is None
    assert result["Nodes"] == {
        "apiVersion": "v1",
        "kind": "NodeList",
        "metadata": {},
        "items": [nodes[1]],
    }
    assert set(result["FailedNodes"]) == {"gpu-1", "gpu-3"}
    assert set(result["FailedAndUnresolvableNodes"]) == {"cpu-1"}


@pytest.mark.parametrize("mode", ["NodeNames", "Nodes"])
def test_filter_pod_without_gpu_demand_passes_every_node(harness: Harness, mode: str) -> None:
    pod = make_pod("web", None, gpu=False)
    if mode == "NodeNames":
        result = harness.client.post("/filter", json=cache_args(pod, [*ALL, "unknown"])).json()
        assert result["NodeNames"] == [*ALL, "unknown"]
    else:
        nodes = [harness.node(name) for name in ALL]
        result = harness.client.post("/filter", json=list_args(pod, nodes)).json()
        assert result["Nodes"]["items"] == nodes
    assert result["FailedNodes"] == {}
    assert result["FailedAndUnresolvableNodes"] == {}


def test_filter_accepts_null_items_and_empty_candidates(harness: Harness) -> None:
    pod = make_pod("incoming", 3000)
    result = harness.client.post(
        "/filter", json={"Pod": pod, "Nodes": {"metadata": {}, "items": None}}
    ).json()
    assert result["Nodes"]["items"] == []
    result = harness.client.post("/filter", json=cache_args(pod, [])).json()
    assert result["NodeNames"] == []


def test_filter_unknown_node_is_unresolvable(harness: Harness) -> None:
    result = harness.client.post(
        "/filter", json=cache_args(make_pod("incoming", 100), ["gpu-9"])
    ).json()
    assert result["FailedAndUnresolvableNodes"] == {
        "gpu-9": "vramguard: node is not in vramguard's node cache yet"
    }


def test_filter_stale_telemetry_budget_only_is_counted(harness: Harness) -> None:
    harness.apply_telemetry(dcgm_reading({"gpu-2": 100}, age=300))
    result = harness.client.post(
        "/filter", json=cache_args(make_pod("incoming", 3000), ["gpu-2"])
    ).json()
    assert result["NodeNames"] == ["gpu-2"]
    assert (
        harness.metric("vramguard_extender_stale_telemetry_decisions_total", mode="budget-only")
        == 1
    )


# --- prioritize ----------------------------------------------------------------------------------


def test_prioritize(harness: Harness) -> None:
    harness.apply_telemetry(dcgm_reading({"gpu-1": 600, "gpu-2": 11000, "gpu-3": 15000}))
    response = harness.client.post(
        "/prioritize", json=cache_args(make_pod("incoming", 1000), ["gpu-2", "gpu-3", "gpu-1"])
    )
    assert response.status_code == 200
    scores = response.json()
    assert [s["Host"] for s in scores] == ["gpu-2", "gpu-3", "gpu-1"]
    by_host = {s["Host"]: s["Score"] for s in scores}
    # binpack: gpu-2 (headroom 9488) is tighter than gpu-3 (13488); gpu-1 does not fit.
    assert by_host["gpu-2"] > by_host["gpu-3"] > by_host["gpu-1"] == 0
    assert all(0 <= s <= 10 for s in by_host.values())


def test_prioritize_with_node_list(harness: Harness) -> None:
    nodes = [harness.node("gpu-2"), harness.node("gpu-3")]
    scores = harness.client.post(
        "/prioritize", json=list_args(make_pod("incoming", 1000), nodes)
    ).json()
    assert [s["Host"] for s in scores] == ["gpu-2", "gpu-3"]


def test_prioritize_after_filter_scores_as_without_it(harness: Harness) -> None:
    """kube-scheduler's order: /filter, then /prioritize for the same pod (extender.fit_memo)."""
    harness.apply_telemetry(dcgm_reading({"gpu-1": 600, "gpu-2": 11000, "gpu-3": 15000}))
    names = ["gpu-2", "gpu-3", "gpu-1"]
    alone = harness.client.post("/prioritize", json=cache_args(make_pod("alone", 1000), names))
    pod = make_pod("incoming", 1000)
    passed = harness.client.post("/filter", json=cache_args(pod, names)).json()["NodeNames"]
    assert passed == ["gpu-2", "gpu-3"]
    after = harness.client.post("/prioritize", json=cache_args(pod, names))
    assert after.json() == alone.json()
    # gpu-3 fills up between the two calls: its score follows the store, not /filter.
    harness.client.post("/filter", json=cache_args(pod, names))
    harness.store.reserve(Reservation("r", "ns", "other", "gpu-3", 15000, NOW + 30))
    by_host = {
        s["Host"]: s["Score"]
        for s in harness.client.post("/prioritize", json=cache_args(pod, names)).json()
    }
    assert by_host["gpu-3"] == 0
    assert by_host["gpu-2"] > 0


# --- bind ----------------------------------------------------------------------------------------


def binding_args(pod: dict[str, Any], node: str) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "PodName": meta["name"],
        "PodNamespace": meta["namespace"],
        "PodUID": meta["uid"],
        "Node": node,
    }


def test_bind(harness: Harness) -> None:
    pod = harness.add_pod(make_pod("incoming", 3000))
    response = harness.client.post("/bind", json=binding_args(pod, "gpu-2"))
    assert response.status_code == 200
    assert response.json() == {"Error": ""}
    assert harness.binder.bound == [("team-a", "incoming", pod["metadata"]["uid"], "gpu-2")]
    snapshot = harness.client.get("/debug/snapshot", params={"node": "gpu-2"}).json()
    assert snapshot["nodes"]["gpu-2"]["reservedMiB"] == 3000
    assert harness.metric("vramguard_extender_binds_total", result="bound") == 1
    assert harness.metric("vramguard_extender_reservations") == 1


def test_bind_of_a_pod_known_only_from_filter(harness: Harness) -> None:
    pod = make_pod("incoming", 3000)
    harness.client.post("/filter", json=cache_args(pod, ["gpu-2"]))
    assert harness.client.post("/bind", json=binding_args(pod, "gpu-2")).json() == {"Error": ""}


def test_bind_refused_when_the_node_filled_up(harness: Harness) -> None:
    pod = harness.add_pod(make_pod("incoming", 3000))
    result = harness.client.post("/bind", json=binding_args(pod, "gpu-1")).json()
    assert result == {"Error": "vramguard: declared 13300 + 3000 > capacity 14000 MiB"}
    assert harness.binder.bound == []
    assert harness.metric("vramguard_extender_binds_total", result="refused") == 1


def test_bind_api_error_rolls_back(harness: Harness) -> None:
    pod = harness.add_pod(make_pod("incoming", 3000))
    harness.binder.failure = "binding team-a/incoming to gpu-2: 500 etcdserver: request timed out"
    result = harness.client.post("/bind", json=binding_args(pod, "gpu-2")).json()
    assert result["Error"] == (
        "vramguard: binding team-a/incoming to gpu-2: 500 etcdserver: request timed out"
    )
    snapshot = harness.client.get("/debug/snapshot").json()
    assert snapshot["nodes"]["gpu-2"]["reservedMiB"] == 0
    assert harness.metric("vramguard_extender_binds_total", result="api-error") == 1


def test_bind_unknown_pod(harness: Harness) -> None:
    result = harness.client.post("/bind", json=binding_args(make_pod("ghost", 1), "gpu-2")).json()
    assert "not in vramguard's cache yet" in result["Error"]


# --- preempt -------------------------------------------------------------------------------------


def test_preempt_with_meta_victims(harness: Harness) -> None:
    victim = harness.pods[0]["metadata"]["uid"]  # resident-1, 8000 MiB on gpu-1
    body = {
        "Pod": make_pod("urgent", 6000),
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {
            # Budgets: 13300 - 8000 + 6000 <= 14000. Live: 600 free + the victim's 8000
            # (no per-pod usage: its budget, within the card's 13000 used) >= 6000 + 512.
            "gpu-1": {"Pods": [{"UID": victim}], "NumPDBViolations": 1},
            # Nothing to evict and 2100 MiB live free: preemption cannot help here.
            "gpu-3": {"Pods": [], "NumPDBViolations": 0},
        },
    }
    harness.apply_telemetry(dcgm_reading({"gpu-1": 600, "gpu-3": 2100}, used={"gpu-1": 13000}))

    result = harness.client.post("/preempt", json=body).json()

    assert result == {
        "NodeNameToMetaVictims": {"gpu-1": {"Pods": [{"UID": victim}], "NumPDBViolations": 1}}
    }


def test_preempt_with_full_victim_pods(harness: Harness) -> None:
    resident_1, resident_2, _ = harness.pods
    harness.apply_telemetry(dcgm_reading({"gpu-1": 600}, used={"gpu-1": 13000}))
    body = {
        "Pod": make_pod("urgent", 6000),
        "NodeNameToVictims": {
            "gpu-1": {"Pods": [resident_1, resident_2], "NumPDBViolations": 0},
        },
        "NodeNameToMetaVictims": None,
    }
    result = harness.client.post("/preempt", json=body).json()
    assert result == {
        "NodeNameToMetaVictims": {
            "gpu-1": {
                "Pods": [
                    {"UID": resident_1["metadata"]["uid"]},
                    {"UID": resident_2["metadata"]["uid"]},
                ],
                "NumPDBViolations": 0,
            }
        }
    }


def test_preempt_drops_nodes_where_eviction_does_not_help(harness: Harness) -> None:
    _, resident_2, _ = harness.pods
    body = {
        "Pod": make_pod("urgent", 6000),
        "NodeNameToMetaVictims": {
            "gpu-1": {"Pods": [{"UID": resident_2["metadata"]["uid"]}], "NumPDBViolations": 0}
        },
    }
    assert harness.client.post("/preempt", json=body).json() == {"NodeNameToMetaVictims": {}}


# --- debug, health, metrics ----------------------------------------------------------------------


def test_debug_snapshot(harness: Harness) -> None:
    harness.add_pod(make_pod("warming", 1000, node="gpu-2", started_at=NOW - 10))
    body = harness.client.get("/debug/snapshot").json()
    assert body["synced"] is True
    assert body["telemetry"] == {
        "source": "dcgm",
        "failing": False,
        "error": None,
        "ageSeconds": 0.0,
    }
    gpu_2 = body["nodes"]["gpu-2"]
    assert gpu_2["capacityMiB"] == 14000
    assert gpu_2["capacitySource"] == "allocatable"
    assert gpu_2["declaredMiB"] == 3000
    assert gpu_2["liveFreeMiB"] == 11000
    assert gpu_2["telemetryAgeSeconds"] == 8.0
    assert gpu_2["notYetUsingMiB"] == 1000
    assert {p["name"]: p["warmingUp"] for p in gpu_2["pods"]} == {
        "resident-3": False,
        "warming": True,
    }
    assert body["nodes"]["gpu-3"]["capacitySource"] == "gfd"
    assert body["nodes"]["gpu-3"]["capacityMiB"] == 16384 - 1024
    assert body["nodes"]["cpu-1"]["capacityMiB"] is None
    only = harness.client.get("/debug/snapshot", params={"node": "gpu-3"}).json()
    assert list(only["nodes"]) == ["gpu-3"]


def test_healthz(harness: Harness) -> None:
    assert harness.client.get("/healthz").text == "ok"


def bare_client(tmp_path: Path, policy: Policy) -> tuple[TestClient, ClusterStore]:
    """An app over a store that has listed nothing and fetched no telemetry yet."""
    store = ClusterStore(policy, clock=lambda: NOW)
    deps = ExtenderDeps(store=store, binder=FakeBinder(), policy=FixedPolicy(policy))
    return TestClient(create_app(make_settings(tmp_path), deps)), store


def test_readyz_waits_for_both_lists(tmp_path: Path) -> None:
    client, store = bare_client(tmp_path, make_policy())
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "watches have not listed yet" in response.text
    store.replace_pods([])
    assert client.get("/readyz").status_code == 503
    store.replace_nodes([])
    assert client.get("/readyz").status_code == 200  # budget-only needs no telemetry


def test_readyz_in_deny_mode_waits_for_telemetry(tmp_path: Path) -> None:
    client, store = bare_client(tmp_path, make_policy(staleMode="deny"))
    store.replace_pods([])
    store.replace_nodes([])
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "staleMode is deny" in response.text
    store.apply_telemetry(dcgm_reading({}))
    assert client.get("/readyz").status_code == 200


def test_metrics(harness: Harness) -> None:
    harness.client.post("/filter", json=cache_args(make_pod("incoming", 3000), ALL))
    harness.client.post("/filter", content=b"{")
    text = harness.client.get("/metrics").text
    assert 'vramguard_extender_requests_total{result="ok",verb="filter"} 1.0' in text
    assert 'vramguard_extender_requests_total{result="bad-request",verb="filter"} 1.0' in text
    assert 'vramguard_extender_nodes_filtered_out_total{reason="declared"} 1.0' in text
    assert 'vramguard_extender_nodes_filtered_out_total{reason="live"} 1.0' in text
    assert 'vramguard_extender_nodes_filtered_out_total{reason="no-capacity"} 1.0' in text
    assert 'vramguard_extender_request_duration_seconds_bucket{le="0.005",verb="filter"}' in text
    assert "vramguard_extender_telemetry_age_seconds 0.0" in text
    assert "vramguard_extender_telemetry_stale_nodes 0.0" in text
    assert "vramguard_extender_reservations 0.0" in text


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/filter", b"{", "malformed ExtenderArgs: (body): Invalid JSON"),
        ("/filter", b"", "malformed ExtenderArgs: (body): Invalid JSON"),
        ("/filter", b"[]", "malformed ExtenderArgs: (body): Input should be an object"),
        ("/filter", b'{"NodeNames": []}', "malformed ExtenderArgs: Pod: Field required"),
        ("/filter", b'{"Pod": null}', "malformed ExtenderArgs: Pod: Input should be an object"),
        ("/filter", b'{"Pod": {}, "NodeNames": "gpu-1"}', "NodeNames: Input should be a valid"),
        ("/filter", b'{"Pod": {}, "NodeNames": [1]}', "NodeNames.0: Input should be a valid str"),
        ("/filter", b'{"Pod": {}, "Nodes": {"items": [3]}}', "Nodes.items.0: Input should be"),
        ("/prioritize", b'{"Pod": 7}', "malformed ExtenderArgs: Pod: Input should be an object"),
        ("/bind", b'{"PodName": "p"}', "malformed ExtenderBindingArgs: PodNamespace: Field req"),
        ("/bind", b'{"PodName": "p", "PodNamespace": "n", "PodUID": 5, "Node": "x"}', "PodUID"),
        (
            "/preempt",
            b'{"Pod": {}, "NodeNameToMetaVictims": {"n": {"Pods": [{}]}}}',
            "NodeNameToMetaVictims.n.Pods.0.UID: Field required",
        ),
        ("/preempt", b'{"Pod": {}, "NodeNameToVictims": []}', "NodeNameToVictims: Input should"),
    ],
)
def test_malformed_requests_are_400(harness: Harness, path: str, body: bytes, message: str) -> None:
    response = harness.client.post(path, content=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["Error"]


def test_unreadable_gpumem_quantity_is_400(harness: Harness) -> None:
    pod = make_pod("incoming", 3000)
    pod["spec"]["containers"][0]["resources"]["limits"]["vramguard.io/gpumem"] = "lots"
    response = harness.client.post("/filter", json=cache_args(pod, ALL))
    assert response.status_code == 400
    assert response.json()["Error"].startswith("Pod: container 'trainer': vramguard.io/gpumem")


def test_wrong_method(harness: Harness) -> None:
    assert harness.client.get("/filter").status_code == 405
