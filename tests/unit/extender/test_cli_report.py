"""extender.report: the preflight answer, status rows and tables, table-driven over snapshots
built the way the extender builds them (ClusterStore)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extender.app import describe_snapshot
from extender.report import (
    RED,
    NodeRow,
    PodRow,
    Preflight,
    PreflightLine,
    Status,
    preflight,
    render_preflight,
    render_preflight_line,
    render_status,
    render_table,
    status_from_debug,
    status_from_snapshot,
    status_json,
)
from extender.snapshot import Reservation, Snapshot
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
    pod_exporter_reading,
)

POLICY = make_policy(floorMiB=512, warmupSeconds=120)


def snapshot_of(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], reading: Any = None
) -> Snapshot:
    return make_store(POLICY, nodes, pods, reading).snapshot()


# --- preflight ----------------------------------------------------------------------------------

A = make_node("node-a", allocatable_mib=14000, gfd_memory_mib=15360)
B = make_node("node-b", allocatable_mib=14000, gfd_memory_mib=15360)
CPU = make_node("cpu-1")
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


# --- status -------------------------------------------------------------------------------------


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


STATUS = Status(
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
    assert render_status(Status((), (), "api"))[-1] == "no GPU pods"


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


@pytest.mark.parametrize(
    ("headers", "rows", "expected"),
    [
        (("A", "B"), [], ["A  B"]),
        (("A", "LONG"), [("xyz", "1")], ["A    LONG", "xyz  1"]),
    ],
)
def test_render_table(
    headers: tuple[str, ...], rows: list[tuple[str, ...]], expected: list[str]
) -> None:
    assert render_table(headers, rows) == expected
