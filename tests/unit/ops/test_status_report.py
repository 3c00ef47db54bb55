"""ops.status_report: status rows from a snapshot and from the extender's /debug/snapshot,
their JSON and tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extender.debug import describe_snapshot
from gpumem.state import Reservation
from ops.status_report import (
    NodeRow,
    PodRow,
    StatusReport,
    render_status,
    status_from_debug,
    status_from_snapshot,
    status_json,
)
from ops.table import RED
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_pod,
    make_store,
    pod_exporter_reading,
)
from tests.unit.ops.reports import CPU, POLICY, A, snapshot_of


def test_status_rows_from_a_snapshot() -> None:
    pods = [
        make_pod("train", 4000, node="node-a"),
        make_pod("hog", 1000, node="node-a", namespace="team-b"),
        make_pod("pending", 2000),
    ]
    reading = pod_exporter_reading(
        {("team-a", "train"): 3000, ("team-b", "hog"): 1500}, free={"node-a": 9000}
    )
    status = status_from_snapshot(
        snapshot_of([A, CPU], pods, reading), NOW, {("team-b", "hog"): "gpu-batch"}
    )
    assert status.nodes == (
        NodeRow("cpu-1", None, 0, None, None, None, None),
        NodeRow("node-a", 14000, 5000, None, None, 9000, 3.0),
    )
    assert status.pods == (
        PodRow("team-a", "train", "node-a", None, 4000, 3000),
        PodRow("team-b", "hog", "node-a", "gpu-batch", 1000, 1500),
    )
    assert [p.over_budget for p in status.pods] == [False, True]


def test_status_from_the_extenders_snapshot_agrees_with_a_local_one() -> None:
    store = make_store(
        POLICY, [A], [make_pod("train", 4000, node="node-a")], dcgm_reading({"node-a": 9000})
    )
    store.reserve(Reservation("u1", "team-a", "next", "node-a", 2000, NOW + 30))
    described = json.loads(json.dumps(describe_snapshot(store.snapshot(), NOW)))
    remote = status_from_debug(described)
    local = status_from_snapshot(store.snapshot(), NOW)
    assert remote.nodes[0].reserved_mib == 2000
    assert local.nodes[0].reserved_mib is None
    assert remote.pods == local.pods
    strip = [(n.node, n.capacity_mib, n.declared_mib, n.live_free_mib) for n in remote.nodes]
    assert strip == [(n.node, n.capacity_mib, n.declared_mib, n.live_free_mib) for n in local.nodes]


@pytest.mark.parametrize(
    "described",
    [
        {},
        {"nodes": []},
        {"nodes": {"a": {"pods": [{"name": "x"}]}}},
        {"nodes": {"a": 3}},
        {"nodes": {"a": {"capacityMiB": "lots"}}},
    ],
)
def test_status_from_a_garbled_snapshot_is_a_value_error(described: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"snapshot|number"):
        status_from_debug(described)


STATUS = StatusReport(
    (
        NodeRow("node-a", 14000, 5000, 2000, 6000, 9000, 3.4),
        NodeRow("cpu-1", None, 0, None, None, None, None),
    ),
    (
        PodRow("team-a", "train", "node-a", "gpu-high", 4000, 3000),
        PodRow("team-b", "hog", "node-a", None, 1000, 1500),
    ),
    "extender",
)


def test_status_table_is_aligned_with_units() -> None:
    assert render_status(STATUS) == [
        "NODE    CAPACITY  DECLARED  RESERVED  LIVE USED  FREE      AGE",
        "node-a  13.7 GiB  5000 MiB  2000 MiB  6000 MiB   9000 MiB  3s",
        "cpu-1   -         0 MiB     -         -          -         -",
        "",
        "NAMESPACE  POD    NODE    CLASS     DECLARED  LIVE USED  OVER BUDGET",
        "team-a     train  node-a  gpu-high  4000 MiB  3000 MiB   no",
        "team-b     hog    node-a  -         1000 MiB  1500 MiB   yes",
    ]


def test_status_table_colours_over_budget_rows_only() -> None:
    lines = render_status(STATUS, colour=True)
    assert lines[-1].startswith(RED)
    assert lines[-1].endswith("\033[0m")
    assert RED not in "".join(lines[:-1])


def test_status_without_pods_says_so() -> None:
    assert render_status(StatusReport((), (), "api"))[-1] == "no GPU pods"


def test_status_json_uses_the_extenders_names() -> None:
    document = status_json(STATUS)
    assert document["nodes"][0] == {
        "name": "node-a",
        "capacityMiB": 14000,
        "declaredMiB": 5000,
        "reservedMiB": 2000,
        "liveUsedMiB": 6000,
        "liveFreeMiB": 9000,
        "telemetryAgeSeconds": 3.4,
    }
    assert document["pods"][1]["overBudget"] is True
    assert document["pods"][0]["class"] == "gpu-high"
