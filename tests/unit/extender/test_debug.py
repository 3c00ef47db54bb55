"""extender.debug: /debug/snapshot on nodes with several cards (their cards, each pod's card),
and one-card nodes exactly as before cards existed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extender.debug import DebugSnapshot, debug_snapshot, describe_snapshot
from gpumem.state import Snapshot
from tests.unit.extender.factories import (
    NOW,
    card_uuid,
    cards_reading,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
)

NODE = "gpu-2x"
TWO_T4 = make_node(NODE, gfd_memory_mib=16384, gfd_count=2)
PODS = [
    make_pod("a", 3000, node=NODE),
    make_pod("b", 2000, node=NODE),
    make_pod("c", 4000, node=NODE),  # unassigned: no source says which card it got
]


def two_card_snapshot() -> Snapshot:
    reading = cards_reading(
        {NODE: [6000, 9000]},
        used={NODE: [10000, 7000]},
        pod_cards={("team-a", "a"): (NODE, 0), ("team-a", "b"): (NODE, 1)},
    )
    return make_store(make_policy(), [TWO_T4], PODS, reading).snapshot()


def test_a_node_with_two_cards_lists_them_with_their_pods() -> None:
    node = describe_snapshot(two_card_snapshot(), NOW)["nodes"][NODE]
    assert node["cards"] == [
        {
            "index": "0",
            "uuid": card_uuid(NODE, 0),
            "capacityMiB": 15360,
            "totalMiB": 16000,
            "declaredMiB": 3000,
            "replicas": 1,
            "liveFreeMiB": 6000,
            "liveUsedMiB": 10000,
            "telemetryAgeSeconds": 8.0,
            "pods": ["team-a/a"],
        },
        {
            "index": "1",
            "uuid": card_uuid(NODE, 1),
            "capacityMiB": 15360,
            "totalMiB": 16000,
            "declaredMiB": 2000,
            "replicas": 1,
            "liveFreeMiB": 9000,
            "liveUsedMiB": 7000,
            "telemetryAgeSeconds": 8.0,
            "pods": ["team-a/b"],
        },
    ]
    assert {pod["name"]: pod["card"] for pod in node["pods"]} == {
        "a": card_uuid(NODE, 0),
        "b": card_uuid(NODE, 1),
        "c": None,
    }


def test_cards_known_only_from_gfd_have_no_uuid_and_no_live_figures() -> None:
    store = make_store(make_policy(), [TWO_T4], PODS[:1], dcgm_reading({NODE: 12000}))
    cards = describe_snapshot(store.snapshot(), NOW)["nodes"][NODE]["cards"]
    assert [(c["index"], c["uuid"], c["liveFreeMiB"], c["pods"]) for c in cards] == [
        ("0", None, None, []),
        ("1", None, None, []),
    ]


@pytest.mark.parametrize(
    "node",
    [
        pytest.param(make_node(NODE, allocatable_mib=14000), id="allocatable"),
        pytest.param(make_node(NODE, gfd_memory_mib=16384, gfd_count=1), id="one-gfd-card"),
        pytest.param(make_node(NODE, gfd_memory_mib=16384), id="no-count-label"),
        pytest.param(make_node(NODE), id="cpu"),
    ],
)
def test_a_one_card_node_has_neither_cards_nor_a_pod_card(node: dict[str, Any]) -> None:
    # A per-GPU reading of one card: the card is the node, and the JSON is what it was.
    reading = cards_reading({NODE: [6000]}, pod_cards={("team-a", "a"): (NODE, 0)})
    described = describe_snapshot(make_store(make_policy(), [node], PODS, reading).snapshot(), NOW)
    state = described["nodes"][NODE]
    assert "cards" not in state
    assert all("card" not in pod for pod in state["pods"])
    assert set(state) == {
        "known",
        "capacityMiB",
        "capacitySource",
        "declaredMiB",
        "reservedMiB",
        "notYetUsingMiB",
        "liveFreeMiB",
        "liveUsedMiB",
        "telemetryAgeSeconds",
        "pods",
        "reservations",
    }


def test_the_json_reads_back_as_the_model_it_was_written_from() -> None:
    snapshot = two_card_snapshot()
    described = json.loads(json.dumps(describe_snapshot(snapshot, NOW)))
    assert DebugSnapshot.model_validate(described) == debug_snapshot(snapshot, NOW)


def test_a_snapshot_without_cards_reads_as_one_without_cards() -> None:
    # An extender from before cards, read by a newer `vramguard status`.
    store = make_store(make_policy(), [TWO_T4], PODS, cards_reading({NODE: [6000, 9000]}))
    described = describe_snapshot(store.snapshot(), NOW)
    for pod in described["nodes"][NODE]["pods"]:
        del pod["card"]
    del described["nodes"][NODE]["cards"]
    node = DebugSnapshot.model_validate(described).nodes[NODE]
    assert node.cards == []
    assert {pod.card for pod in node.pods} == {None}
