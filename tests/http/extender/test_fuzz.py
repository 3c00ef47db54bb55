"""Fuzzing the endpoints: anything a client sends gets a 200 or a 400, never a 500."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.store import ClusterStore
from tests.http.extender.conftest import Harness
from tests.unit.extender.factories import make_pod, make_policy

pytestmark = pytest.mark.slow

EXAMPLES = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
resource_names = st.sampled_from(
    ["vramguard.io/gpumem", "nvidia.com/gpu", "cpu", "memory"]
) | st.text(max_size=10)
quantities = (
    st.sampled_from(["3000", "5k", "3Gi", "0.5", "1e3", "-1", "lots", "", "1e400", "9" * 40, "1Ei"])
    | st.text(max_size=8)
    | st.integers(min_value=-10, max_value=10**20)
    | st.floats()
    | json_values
)
resource_maps = st.dictionaries(resource_names, quantities, max_size=3) | json_values
containers = st.fixed_dictionaries(
    {"name": st.text(max_size=8) | json_leaves},
    optional={
        "resources": st.fixed_dictionaries(
            {}, optional={"requests": resource_maps, "limits": resource_maps}
        )
        | json_values,
        "restartPolicy": st.sampled_from(["Always", "Never"]) | json_leaves,
    },
)
metadata = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=8) | json_leaves,
        "namespace": st.sampled_from(["team-a", "team-b"]) | json_leaves,
        "uid": st.text(max_size=8) | json_leaves,
    },
)
pods = st.fixed_dictionaries(
    {},
    optional={
        "metadata": metadata | json_values,
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "containers": st.lists(containers, max_size=3) | json_values,
                "initContainers": st.lists(containers, max_size=2) | json_values,
                "overhead": resource_maps,
                "nodeName": st.sampled_from(["gpu-1", "gpu-2"]) | json_leaves,
            },
        )
        | json_values,
        "status": json_values,
    },
)
node_names = st.sampled_from(["gpu-1", "gpu-2", "gpu-3", "cpu-1"]) | st.text(max_size=8)
nodes = st.fixed_dictionaries(
    {},
    optional={
        "metadata": st.fixed_dictionaries({}, optional={"name": node_names | json_leaves})
        | json_values,
        "status": json_values,
    },
)
extender_args = st.fixed_dictionaries(
    {},
    optional={
        "Pod": pods | json_values,
        "NodeNames": st.lists(node_names, max_size=6) | json_values,
        "Nodes": st.fixed_dictionaries(
            {}, optional={"items": st.lists(nodes, max_size=4) | json_values}
        )
        | json_values,
    },
)
binding_args = st.fixed_dictionaries(
    {},
    optional={
        "PodName": st.text(max_size=8) | json_leaves,
        "PodNamespace": st.sampled_from(["team-a", "team-b"]) | json_leaves,
        "PodUID": st.text(max_size=8) | json_leaves,
        "Node": node_names | json_leaves,
    },
)
meta_victims = st.fixed_dictionaries(
    {},
    optional={
        "Pods": st.lists(
            st.fixed_dictionaries({}, optional={"UID": st.text(max_size=8) | json_leaves}),
            max_size=3,
        )
        | json_values,
        "NumPDBViolations": json_leaves,
    },
)
victims = st.fixed_dictionaries(
    {},
    optional={"Pods": st.lists(pods, max_size=3) | json_values, "NumPDBViolations": json_leaves},
)
preemption_args = st.fixed_dictionaries(
    {},
    optional={
        "Pod": pods | json_values,
        "NodeNameToVictims": st.dictionaries(node_names, victims, max_size=3) | json_values,
        "NodeNameToMetaVictims": st.dictionaries(node_names, meta_victims, max_size=3)
        | json_values,
    },
)


def bodies(structured: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return (
        structured.map(lambda value: json.dumps(value).encode())
        | json_values.map(lambda value: json.dumps(value).encode())
        | st.binary(max_size=64)
    )


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    # Pods the structured bodies can name, so binds and preemptions reach the fit rule too.
    for namespace in ("team-a", "team-b"):
        for name in ("", "a", "0"):
            h.add_pod(make_pod(name or "x", 1000, namespace=namespace, uid=name or "x"))
    return h


def check(harness: Harness, path: str, body: bytes) -> Any:
    response = harness.client.post(path, content=body)
    assert response.status_code in (200, 400), (response.status_code, response.text)
    result = response.json()
    if response.status_code == 400:
        assert result["Error"]
    return result


@EXAMPLES
@given(body=bodies(extender_args))
def test_filter_fuzz(harness: Harness, body: bytes) -> None:
    result = check(harness, "/filter", body)
    if "NodeNames" in result and result["NodeNames"] is not None:
        candidates = json.loads(body).get("NodeNames") or []
        assert set(result["NodeNames"]) <= set(candidates)
        assert set(result["FailedNodes"]) <= set(candidates)


@EXAMPLES
@given(body=bodies(extender_args))
def test_prioritize_fuzz(harness: Harness, body: bytes) -> None:
    result = check(harness, "/prioritize", body)
    if isinstance(result, list):
        assert all(0 <= item["Score"] <= 10 for item in result)


@EXAMPLES
@given(body=bodies(binding_args))
def test_bind_fuzz(harness: Harness, body: bytes) -> None:
    check(harness, "/bind", body)


@EXAMPLES
@given(body=bodies(preemption_args))
def test_preempt_fuzz(harness: Harness, body: bytes) -> None:
    check(harness, "/preempt", body)


@settings(max_examples=500, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from(["ADDED", "MODIFIED", "DELETED"]), pods | nodes)))
def test_store_survives_any_watch_object(events: list[tuple[str, Any]]) -> None:
    store = ClusterStore(make_policy())
    for kind, obj in events:
        store.apply_pod_event(kind, obj)
        store.apply_node_event(kind, obj)
    for state in store.snapshot().nodes.values():
        assert state.declared_mib >= 0
