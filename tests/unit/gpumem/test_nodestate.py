"""Building a NodeState (gpumem.nodestate)."""

from __future__ import annotations

import math
from typing import Any

from gpumem.state import Reservation
from tests.unit.extender.factories import NOW, dcgm_reading, make_node, make_policy, make_store

NODE = "gpu-1"


def a10g(**kwargs: Any) -> dict[str, Any]:
    return make_node(NODE, **kwargs)


def test_fast_path_is_taken_where_it_applies() -> None:
    policy = make_policy()
    store = make_store(policy, [a10g(allocatable_mib=14000)], [], dcgm_reading({NODE: 9000}))
    node = store.snapshot().node(NODE)
    assert node is not None
    assert node.quick == (14000, 9000, NOW - 8, -math.inf, math.inf, 0)
    store.reserve(Reservation("r", "x", "y", NODE, 100, NOW + 60))
    node = store.snapshot().node(NODE)
    assert node is not None
    assert node.quick is None  # reservations: the full rule
