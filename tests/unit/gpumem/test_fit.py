"""The fit rule on one node (gpumem.fit); the table of refusals through /filter is in
tests/unit/extender/test_scheduling.py."""

from __future__ import annotations

from typing import Any

import pytest

from gpumem.fit import check_node, is_stale, not_yet_in_use_mib, quick_headroom, staleness_text
from gpumem.state import LiveView, QuickFit, Reservation
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
)

NODE = "gpu-1"


def a10g(**kwargs: Any) -> dict[str, Any]:
    return make_node(NODE, **kwargs)


def on_node(name: str, mib: int, **kwargs: Any) -> dict[str, Any]:
    return make_pod(name, mib, node=NODE, **kwargs)


def test_warmup_ends_with_time() -> None:
    policy = make_policy()
    store = make_store(
        policy,
        [a10g(allocatable_mib=14000)],
        [on_node("a", 3000, started_at=NOW - 30)],
        dcgm_reading({NODE: 6000}),
    )
    node = store.snapshot().node(NODE)
    assert check_node(3000, NODE, node, policy.extender, NOW).refusal is not None
    assert check_node(3000, NODE, node, policy.extender, NOW + 100).refusal is None


def test_staleness_is_older_than_max_age() -> None:
    assert not is_stale(NOW - 60, 60, NOW)
    assert is_stale(NOW - 60.5, 60, NOW)
    assert not is_stale(NOW + 5, 60, NOW)  # a clock ahead on the telemetry side
    live = LiveView(9000, None, NOW - 75.4, "dcgm")
    assert staleness_text(live, 60.0, NOW) == "75s old > maxAgeSeconds 60"
    assert staleness_text(live, 2.5, NOW) == "75s old > maxAgeSeconds 2.5"


def test_not_yet_in_use_counts_warming_budgets_and_reservations() -> None:
    warming = [on_node("a", 3000, started_at=NOW - 30)]
    store = make_store(make_policy(), [a10g(allocatable_mib=14000)], warming, dcgm_reading({}))
    assert not_yet_in_use_mib(store.snapshot().nodes[NODE], NOW) == 3000
    store.reserve(Reservation("r", "x", "y", NODE, 1000, NOW + 60))
    node = store.snapshot().nodes[NODE]
    assert not_yet_in_use_mib(node, NOW) == 4000
    assert not_yet_in_use_mib(node, NOW + 100) == 0  # warmed up; the reservation expired


QUICK = QuickFit(
    room_mib=10000,
    free_mib=9000,
    sampled_at=NOW - 8,
    idle_from=NOW - 100,
    idle_until=NOW + 100,
    idle_mib=1000,
)


@pytest.mark.parametrize(
    ("need", "now", "headroom"),
    [
        (2000, NOW, 5488),  # min(10000 - 2000, 9000 - 1000 - 512 - 2000)
        (7488, NOW, 0),
        (7489, NOW, None),  # short on live VRAM: the full rule says why
        (2000, NOW + 53, None),  # stale (61 s old)
        (2000, NOW + 100, None),  # a warm-up ends: the idle figure changes
        (2000, NOW - 101, None),
    ],
)
def test_quick_headroom(need: int, now: float, headroom: int | None) -> None:
    assert quick_headroom(QUICK, need, 512, 60, now) == headroom
