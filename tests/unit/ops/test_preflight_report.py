"""ops.preflight_report: the preflight answer and its lines, table-driven over snapshots built
the way the extender builds them (ClusterStore)."""

from __future__ import annotations

from typing import Any

import pytest

from gpumem.state import Reservation
from ops.preflight_report import (
    Preflight,
    PreflightLine,
    preflight,
    render_preflight,
    render_preflight_line,
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
from tests.unit.ops.reports import CPU, POLICY, A, B, snapshot_of

WARMING = make_pod("warming", 2000, node="node-a", started_at=NOW - 10)
SETTLED = make_pod("settled", 4000, node="node-a")


@pytest.mark.parametrize(
    ("case", "nodes", "pods", "reading", "need", "node", "answer", "free", "idle"),
    [
        ("fits", [A], [], dcgm_reading({"node-a": 4000}), 3000, None, "yes", 4000, 0),
        (
            "exactly need + floor",
            [A],
            [],
            dcgm_reading({"node-a": 3512}),
            3000,
            None,
            "yes",
            3512,
            0,
        ),
        ("one short", [A], [], dcgm_reading({"node-a": 3511}), 3000, None, "no", 3511, 0),
        (
            "warming pod's budget not in use yet",
            [A],
            [WARMING],
            dcgm_reading({"node-a": 5000}),
            3000,
            None,
            "no",
            5000,
            2000,
        ),
        (
            "settled pod already in the free figure",
            [A],
            [SETTLED],
            dcgm_reading({"node-a": 5000}),
            3000,
            None,
            "yes",
            5000,
            0,
        ),
        (
            "per-pod usage: the unused part of a warming pod's budget",
            [A],
            [WARMING],
            pod_exporter_reading({("team-a", "warming"): 500}, free={"node-a": 5000}),
            3000,
            None,
            "no",
            5000,
            1500,
        ),
        (
            "stale telemetry",
            [A],
            [],
            dcgm_reading({"node-a": 9000}, age=600),
            3000,
            None,
            "stale",
            None,
            0,
        ),
        ("no telemetry for the node", [A], [], dcgm_reading({}), 3000, None, "stale", None, 0),
        (
            "named node too small, other fits",
            [A, B],
            [],
            dcgm_reading({"node-a": 1000, "node-b": 9000}),
            3000,
            "node-a",
            "no",
            1000,
            0,
        ),
    ],
)
def test_preflight_answer(  # noqa: PLR0917 (one parameter per table column)
    case: str,
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    reading: Any,
    need: int,
    node: str | None,
    answer: str,
    free: int | None,
    idle: int,
) -> None:
    result = preflight(
        snapshot_of(nodes, pods, reading),
        need,
        floor_mib=512,
        max_age_seconds=60,
        now=NOW,
        node=node,
    )
    assert result.answer == answer, case
    assert result.exit_status == {"yes": 0, "no": 1, "stale": 2}[answer]
    line = result.lines[0]
    assert (line.free_mib, line.not_yet_using_mib) == (free, idle), case


def test_preflight_any_node_fits_and_cpu_nodes_are_not_candidates() -> None:
    snapshot = snapshot_of([A, B, CPU], [], dcgm_reading({"node-a": 1000, "node-b": 9000}))
    result = preflight(snapshot, 3000, floor_mib=512, max_age_seconds=60, now=NOW)
    assert result.answer == "yes"
    assert [line.node for line in result.lines] == ["node-a", "node-b"]
    assert [line.fits for line in result.lines] == [False, True]


def test_preflight_a_fresh_no_and_a_stale_node_cannot_tell() -> None:
    snapshot = snapshot_of([A, B], [], dcgm_reading({"node-a": 1000}))
    assert preflight(snapshot, 3000, floor_mib=0, max_age_seconds=60, now=NOW).answer == "stale"


def test_preflight_counts_reservations_as_not_yet_in_use() -> None:
    store = make_store(POLICY, [A], [], dcgm_reading({"node-a": 5000}))
    store.reserve(Reservation("u1", "team-a", "p", "node-a", 2000, NOW + 30))
    result = preflight(store.snapshot(), 3000, floor_mib=512, max_age_seconds=60, now=NOW)
    assert (result.answer, result.lines[0].not_yet_using_mib) == ("no", 2000)


@pytest.mark.parametrize(
    ("nodes", "node", "problem"),
    [
        ([A], "missing", "node missing not found"),
        ([A, CPU], "cpu-1", "node cpu-1 advertises no GPU memory"),
        ([CPU], None, "no node advertises GPU memory"),
    ],
)
def test_preflight_without_candidates_says_no(
    nodes: list[dict[str, Any]], node: str | None, problem: str
) -> None:
    result = preflight(
        snapshot_of(nodes, [], dcgm_reading({})),
        1,
        floor_mib=0,
        max_age_seconds=60,
        now=NOW,
        node=node,
    )
    assert (result.answer, result.problem, result.lines) == ("no", problem, ())
    assert render_preflight(result) == [problem]


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (
            PreflightLine("node-a", 3000, 512, 2100, 0),
            "node-a: live free 2100 MiB - 0 not yet in use = 2100 MiB; need 3000 + floor 512: NO",
        ),
        (
            PreflightLine("node-a", 3000, 512, 6000, 2000),
            "node-a: live free 6000 MiB - 2000 not yet in use = 4000 MiB; "
            "need 3000 + floor 512: yes",
        ),
        (
            PreflightLine("node-a", 3000, 512, stale_reason="no live telemetry"),
            "node-a: no live telemetry; need 3000 + floor 512: STALE",
        ),
    ],
)
def test_preflight_line_says_the_arithmetic(line: PreflightLine, text: str) -> None:
    assert render_preflight_line(line) == text


def test_preflight_colours_no_only_on_request() -> None:
    line = PreflightLine("node-a", 3000, 512, 2100, 0)
    assert render_preflight_line(line, colour=True).endswith(f"{RED}NO\033[0m")
    assert RED not in render_preflight(Preflight("no", (line,)))[0]


# --- nodes with several cards: a card with need + floor MiB free ---------------------------------

NODE_2X = make_node("gpu-2x", gfd_memory_mib=16384, gfd_count=2)


def two_cards(
    free: list[int],
    pods: list[tuple[str, int, int | None]] | None = None,
    *,
    age: float = 8.0,
    need: int = 5000,
) -> Preflight:
    """gpu-2x with its cards' free MiB and (name, declared, card index or None) pods that
    started 10s ago (warming: their budgets not in use yet)."""
    pods = pods or []
    raw = [make_pod(name, mib, node="gpu-2x", started_at=NOW - 10) for name, mib, _ in pods]
    assigned = {("team-a", name): ("gpu-2x", card) for name, _, card in pods if card is not None}
    reading = cards_reading({"gpu-2x": free}, age=age, pod_cards=assigned)
    snapshot = snapshot_of([NODE_2X], raw, reading)
    return preflight(snapshot, need, floor_mib=512, max_age_seconds=60, now=NOW)


@pytest.mark.parametrize(
    ("case", "free", "pods", "age", "answer", "cards"),
    [
        # The node: 12000 MiB free in all, no card has 10000 (here: need 5000 of 4000).
        ("no card has it", [4000, 4000], [], 8.0, "no", [False, False]),
        ("one card has it", [4000, 6000], [], 8.0, "yes", [False, True]),
        ("every card has it", [6000, 6000], [], 8.0, "yes", [True, True]),
        (
            "an unassigned pod counts on every card",
            [9000, 9000],
            [("d", 4000, None)],
            8.0,
            "no",
            [False, False],
        ),
        (
            "an assigned pod only on its card",
            [9000, 9000],
            [("d", 4000, 0)],
            8.0,
            "yes",
            [False, True],
        ),
        ("stale cards cannot tell", [9000, 9000], [], 75.0, "stale", [None, None]),
    ],
)
def test_preflight_on_a_two_card_node_is_per_card(  # noqa: PLR0917 (one per table column)
    case: str,
    free: list[int],
    pods: list[tuple[str, int, int | None]],
    age: float,
    answer: str,
    cards: list[bool | None],
) -> None:
    result = two_cards(free, pods, age=age)
    assert result.answer == answer, case
    assert result.exit_status == {"yes": 0, "no": 1, "stale": 2}[answer]
    (line,) = result.lines
    assert [card.fits for card in line.cards] == cards, case


def test_preflight_card_lines_say_which_cards_qualify() -> None:
    gpu = [f"gpu {i} ({card_uuid('gpu-2x', i)[:8]}…)" for i in (0, 1)]
    assert render_preflight(two_cards([9000, 9000], [("d", 4000, 0)])) == [
        "gpu-2x: need 5000 + floor 512 on one card: yes on gpu 1 of 2 cards; the device "
        "plugin picks the card (distributed), so vramguard cannot promise the job one of these",
        f"  {gpu[0]}: live free 9000 MiB - 4000 not yet in use = 5000 MiB; "
        "need 5000 + floor 512: NO",
        f"  {gpu[1]}: live free 9000 MiB - 0 not yet in use = 9000 MiB; need 5000 + floor 512: yes",
    ]
    assert render_preflight(two_cards([6000, 6000]))[0] == (
        "gpu-2x: need 5000 + floor 512 on one card: yes, on every card (2)"
    )
    assert render_preflight(two_cards([4000, 4000]))[0] == (
        "gpu-2x: need 5000 + floor 512 on one card: NO (none of 2 cards has it)"
    )
    stale = render_preflight(two_cards([9000, 9000], age=75))
    assert stale[0] == (
        "gpu-2x: need 5000 + floor 512 on one card: STALE (no card has it; some cannot tell)"
    )
    assert stale[1] == (
        f"  {gpu[0]}: live telemetry 75s old > maxAgeSeconds 60; need 5000 + floor 512: STALE"
    )


def test_preflight_of_cards_without_per_card_telemetry_cannot_tell() -> None:
    # The node-wide 12000 MiB free is a sum over its cards, never a card's.
    snapshot = snapshot_of([NODE_2X], [], dcgm_reading({"gpu-2x": 12000}))
    result = preflight(snapshot, 5000, floor_mib=512, max_age_seconds=60, now=NOW)
    assert result.answer == "stale"
    assert [card.stale_reason for card in result.lines[0].cards] == ["no live telemetry"] * 2


def test_preflight_names_the_policy_the_device_plugin_follows() -> None:
    snapshot = snapshot_of([NODE_2X], [], cards_reading({"gpu-2x": [4000, 6000]}))
    result = preflight(
        snapshot, 5000, floor_mib=512, max_age_seconds=60, now=NOW, allocation_policy="packed"
    )
    assert "the device plugin picks the card (packed)" in render_preflight(result)[0]
