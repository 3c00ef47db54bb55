"""A Node's GPU memory capacity (gpumem.nodes)."""

from __future__ import annotations

from typing import Any

import pytest

from gpumem.advertise import plan_node
from gpumem.nodes import GfdCards, gfd_cards, node_capacity, node_facts
from tests.unit.extender.factories import make_node


@pytest.mark.parametrize(
    ("node", "capacity", "source"),
    [
        (make_node("n", allocatable_mib=14000), 14000, "allocatable"),
        (
            make_node("n", allocatable_mib=14000, gfd_memory_mib=24576, gfd_count=1),
            14000,
            "allocatable",
        ),
        (make_node("n", gfd_memory_mib=24576, gfd_count=1), 24576 - 1024, "gfd"),
        (make_node("n", gfd_memory_mib=24576, gfd_count=4), 4 * 24576 - 1024, "gfd"),
        (make_node("n", gfd_memory_mib=24576), 24576 - 1024, "gfd"),
        (make_node("n", gfd_memory_mib=512, gfd_count=1), 0, "gfd"),
        (make_node("n"), None, "none"),
    ],
)
def test_node_capacity(node: dict[str, Any], capacity: int | None, source: str) -> None:
    result = node_capacity(node_facts(node), "vramguard.io/gpumem", 1024)
    assert (result.mib, result.source) == (capacity, source)


MEMORY, COUNT = "nvidia.com/gpu.memory", "nvidia.com/gpu.count"


@pytest.mark.parametrize(
    ("labels", "cards", "total"),
    [
        ({}, None, None),
        ({MEMORY: "lots"}, None, None),
        ({MEMORY: "-1"}, None, None),
        ({MEMORY: "24576"}, GfdCards(24576, None), 24576),
        ({MEMORY: "24576", COUNT: "4"}, GfdCards(24576, 4), 4 * 24576),
        ({MEMORY: " 24576 ", COUNT: " 2 "}, GfdCards(24576, 2), 2 * 24576),
        # An unreadable count is no card: the fit rule and the advertiser guess no count.
        ({MEMORY: "24576", COUNT: "abc"}, GfdCards(24576, 0), 0),
        ({MEMORY: "24576", COUNT: "-1"}, GfdCards(24576, 0), 0),
        ({MEMORY: "24576", COUNT: "0"}, GfdCards(24576, 0), 0),
        ({MEMORY: "0", COUNT: "1"}, GfdCards(0, 1), 0),
    ],
)
def test_gfd_cards(labels: dict[str, str], cards: GfdCards | None, total: int | None) -> None:
    assert gfd_cards(labels) == cards
    assert (None if cards is None else cards.total_mib) == total


def test_a_node_whose_gpu_count_is_unreadable_has_no_gfd_capacity_as_the_advertiser_says() -> None:
    node = make_node("n", gfd_memory_mib=24576, gfd_count=2)
    node["metadata"]["labels"][COUNT] = "two"
    capacity = node_capacity(node_facts(node), "vramguard.io/gpumem", 1024)
    assert (capacity.mib, capacity.source) == (None, "none")
    advert = plan_node(node, "vramguard.io/gpumem", 1024)
    assert (advert.action, advert.value_mib) == ("skipped", None)
