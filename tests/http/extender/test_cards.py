"""A node with two cards over HTTP: /debug/snapshot lists its cards and each pod's card, and
/metrics has a free and a declared gauge per card (none for the one-card nodes)."""

from __future__ import annotations

import dataclasses

from tests.http.extender.conftest import Harness
from tests.unit.extender.factories import card_uuid, cards_reading, make_node, make_pod

NODE = "gpu-2x"


def two_cards(harness: Harness) -> None:
    harness.store.apply_node_event("ADDED", make_node(NODE, gfd_memory_mib=16384, gfd_count=2))
    harness.add_pod(make_pod("a", 3000, node=NODE))
    harness.add_pod(make_pod("u", 1000, node=NODE))
    reading = cards_reading(
        {NODE: [6000, 9000], "gpu-2": [11000]}, pod_cards={("team-a", "a"): (NODE, 1)}
    )
    # A source with per-pod usage too: the card gauges do not depend on it.
    harness.apply_telemetry(dataclasses.replace(reading, pod_used={}))


def test_debug_snapshot_of_a_two_card_node(harness: Harness) -> None:
    two_cards(harness)
    body = harness.client.get("/debug/snapshot").json()
    node = body["nodes"][NODE]
    assert [(c["index"], c["uuid"], c["liveFreeMiB"], c["pods"]) for c in node["cards"]] == [
        ("0", card_uuid(NODE, 0), 6000, []),
        ("1", card_uuid(NODE, 1), 9000, ["team-a/a"]),
    ]
    assert {p["name"]: p["card"] for p in node["pods"]} == {"a": card_uuid(NODE, 1), "u": None}
    # The one-card nodes beside it are as they were.
    assert "cards" not in body["nodes"]["gpu-2"]
    assert all("card" not in pod for pod in body["nodes"]["gpu-2"]["pods"])
    only = harness.client.get("/debug/snapshot", params={"node": NODE}).json()
    assert only["nodes"][NODE]["cards"] == node["cards"]


def test_metrics_per_card(harness: Harness) -> None:
    two_cards(harness)
    harness.client.get("/metrics")
    free = "vramguard_extender_card_free_mib"
    declared = "vramguard_extender_card_declared_mib"
    for index, free_mib, declared_mib in [("0", 6000, 0), ("1", 9000, 3000)]:
        labels = {"node": NODE, "gpu": index, "uuid": card_uuid(NODE, index=int(index))}
        assert harness.metrics.registry.get_sample_value(free, labels) == free_mib
        assert harness.metrics.registry.get_sample_value(declared, labels) == declared_mib
    text = harness.client.get("/metrics").text
    assert f'{free}{{gpu="1",node="{NODE}",uuid="{card_uuid(NODE, 1)}"}} 9000.0' in text
    assert 'node="gpu-2"' not in text  # a one-card node has no card series


def test_no_card_series_without_multi_card_nodes(harness: Harness) -> None:
    text = harness.client.get("/metrics").text
    assert "# TYPE vramguard_extender_card_free_mib gauge" in text
    assert "vramguard_extender_card_free_mib{" not in text
    assert "vramguard_extender_card_declared_mib{" not in text
