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
    card_uuid,
    cards_reading,
    dcgm_reading,
    make_node,
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


# --- nodes with several cards -------------------------------------------------------------------

NODE_2X = make_node("gpu-2x", gfd_memory_mib=16384, gfd_count=2)
CARD_PODS = [
    make_pod("a", 3000, node="gpu-2x"),
    make_pod("b", 2000, node="gpu-2x"),
    make_pod("c", 4000, node="gpu-2x"),  # unassigned
    make_pod("train", 4000, node="node-a"),
]
CARD_READING = cards_reading(
    {"gpu-2x": [6000, 9000], "node-a": [9000]},
    used={"gpu-2x": [10000, 7000], "node-a": [5000]},
    pod_cards={("team-a", "a"): ("gpu-2x", 0), ("team-a", "b"): ("gpu-2x", 1)},
)


def card_status(source: str) -> StatusReport:
    store = make_store(POLICY, [NODE_2X, A], CARD_PODS, CARD_READING)
    if source == "api":
        return status_from_snapshot(store.snapshot(), NOW)
    return status_from_debug(json.loads(json.dumps(describe_snapshot(store.snapshot(), NOW))))


@pytest.mark.parametrize("source", ["api", "extender"])
def test_a_two_card_node_has_a_row_per_card_and_its_pods_their_card(source: str) -> None:
    status = card_status(source)
    two, one = status.nodes
    assert [
        (c.index, c.uuid, c.capacity_mib, c.declared_mib, c.live_free_mib) for c in two.cards
    ] == [
        ("0", card_uuid("gpu-2x", 0), 15360, 3000, 6000),
        ("1", card_uuid("gpu-2x", 1), 15360, 2000, 9000),
    ]
    assert (two.declared_mib, two.unassigned_mib) == (9000, 4000)
    assert (one.cards, one.unassigned_mib) == ((), 0)
    assert [(p.pod, p.card_text) for p in status.pods] == [
        ("a", "gpu 0"),
        ("b", "gpu 1"),
        ("c", "unassigned"),
        ("train", "-"),
    ]
    assert status.pods[0].card == card_uuid("gpu-2x", 0)


def test_status_table_puts_the_cards_under_their_node() -> None:
    assert render_status(card_status("extender")) == [
        "NODE               CAPACITY  DECLARED  RESERVED  LIVE USED  FREE      AGE",
        "gpu-2x             31.0 GiB  9000 MiB  0 MiB     16.6 GiB   14.6 GiB  8s",
        "gpu-2x/gpu 0       15.0 GiB  3000 MiB  -         10000 MiB  6000 MiB  8s",
        "gpu-2x/gpu 1       15.0 GiB  2000 MiB  -         7000 MiB   9000 MiB  8s",
        "gpu-2x/unassigned  -         4000 MiB  -         -          -         -",
        "node-a             13.7 GiB  4000 MiB  0 MiB     5000 MiB   9000 MiB  8s",
        "",
        "NAMESPACE  POD    NODE    CARD        CLASS  DECLARED  LIVE USED  OVER BUDGET",
        "team-a     a      gpu-2x  gpu 0       -      3000 MiB  -          -",
        "team-a     b      gpu-2x  gpu 1       -      2000 MiB  -          -",
        "team-a     c      gpu-2x  unassigned  -      4000 MiB  -          -",
        "team-a     train  node-a  -           -      4000 MiB  -          -",
    ]


def test_status_table_without_unassigned_pods_has_no_unassigned_row() -> None:
    store = make_store(POLICY, [NODE_2X], CARD_PODS[:2], CARD_READING)
    lines = render_status(status_from_snapshot(store.snapshot(), NOW))
    assert [line.split()[0] for line in lines[:4]] == ["NODE", "gpu-2x", "gpu-2x/gpu", "gpu-2x/gpu"]
    assert lines[4] == ""


def test_status_json_of_a_two_card_node() -> None:
    document = status_json(card_status("extender"))
    two, one = document["nodes"]
    assert two["unassignedMiB"] == 4000
    assert two["cards"][1] == {
        "index": "1",
        "uuid": card_uuid("gpu-2x", 1),
        "capacityMiB": 15360,
        "totalMiB": 16000,
        "declaredMiB": 2000,
        "replicas": 1,
        "liveUsedMiB": 7000,
        "liveFreeMiB": 9000,
        "telemetryAgeSeconds": 8.0,
    }
    assert "cards" not in one
    assert "unassignedMiB" not in one
    pods = {p["name"]: p for p in document["pods"]}
    assert (pods["a"]["card"], pods["a"]["gpu"]) == (card_uuid("gpu-2x", 0), "0")
    assert (pods["c"]["card"], pods["c"]["gpu"]) == (None, None)
    assert "card" not in pods["train"]
    assert "gpu" not in pods["train"]
