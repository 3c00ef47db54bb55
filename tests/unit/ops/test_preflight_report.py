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
    dcgm_reading,
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
