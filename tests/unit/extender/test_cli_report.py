"""extender.report: the preflight answer, status rows and tables, table-driven over snapshots
built the way the extender builds them (ClusterStore)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extender.app import describe_snapshot
from extender.explain import scheduling_pod
from extender.report import (
    RED,
    LiveRead,
    NodeRow,
    PodExplanation,
    PodRow,
    Preflight,
    PreflightLine,
    Status,
    explain_report,
    explanation_json,
    preflight,
    render_explanation,
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
    NAMES,
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
    pod_exporter_reading,
    unschedulable,
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


# --- explain --------------------------------------------------------------------------------

GPUMEM = "vramguard.io/gpumem"
SEEDS = [
    make_pod(name, mib, node="node-a")
    for name, mib in (("immich-ml", 3000), ("llama", 5000), ("frigate", 2000), ("stt", 3300))
]
EXPLAIN_NODES = [
    make_node("node-a", allocatable_mib=14000),
    make_node("node-b", allocatable_mib=14000),
    make_node("node-c", allocatable_mib=4000),
    make_node("cpu-1"),
]
EXPLAIN_READING = dcgm_reading({"node-a": 9000, "node-b": 1900, "node-c": 4000}, age=3)
INCOMING = unschedulable("incoming", 1500)


def explained(
    raw: dict[str, Any] = INCOMING,
    *,
    live: LiveRead = "read",
    reading: Any = EXPLAIN_READING,
    pods: list[dict[str, Any]] | None = None,
    served: str = "vramguard-scheduler",
) -> PodExplanation:
    pods = [*SEEDS, raw] if pods is None else pods
    snapshot = snapshot_of(EXPLAIN_NODES, pods, reading if live == "read" else None)
    return explain_report(
        scheduling_pod(raw, NAMES),
        snapshot,
        POLICY.extender,
        NOW,
        resource=GPUMEM,
        served_scheduler=served,
        live=live,
    )


def test_explain_report_of_a_pending_pod() -> None:
    report = explained()
    assert report.judged
    assert (
        report.summary == "fits on node-c; vramguard would let it in now: what else "
        "stopped the scheduler is in its message"
    )
    assert [
        (r.node, r.verdict, r.live_free_mib, r.declared_mib, r.capacity_mib) for r in report.rows
    ] == [
        ("node-c", "fits", 4000, 0, 4000),
        ("node-b", "refused", 1900, 0, 14000),
        ("node-a", "refused", 9000, 13300, 14000),
        ("cpu-1", "no-gpu", None, 0, None),
    ]
    reasons = [r.reason for r in report.rows]
    assert reasons == [
        "1988 MiB to spare",
        "live free 1900 MiB < need 1500 + floor 512 MiB (dcgm, 3s old)",
        "declared 13300 + 1500 > capacity 14000 MiB",
        "advertises no GPU memory",
    ]
    assert [r.refusal_kind for r in report.rows] == [None, "live", "declared", None]
    assert [r.live_checked for r in report.rows] == [True, True, False, False]


def test_explain_report_when_no_node_fits_is_the_extenders_event_text() -> None:
    report = explained(unschedulable("big", 3600))
    # Best first, as in the extender's GPUMemoryUnavailable Event: the fewest MiB short.
    assert report.summary == (
        f"vramguard: no node fits 3600 MiB of {GPUMEM}: "
        "node-c: live free 4000 MiB < need 3600 + floor 512 MiB (dcgm, 3s old); "
        "node-b: live free 1900 MiB < need 3600 + floor 512 MiB (dcgm, 3s old); "
        "node-a: declared 13300 + 3600 > capacity 14000 MiB"
    )


@pytest.mark.parametrize(
    ("live", "why"),
    [("not-read", "no --prometheus-url"), ("unavailable", "telemetry unavailable")],
)
def test_explain_report_without_telemetry_judges_budgets_and_says_so(
    live: LiveRead, why: str
) -> None:
    report = explained(live=live)
    fits = [r for r in report.rows if r.verdict == "fits"]
    assert [r.node for r in fits] == ["node-b", "node-c"]  # node-a: declared still refuses
    assert fits[0].reason == f"12500 MiB to spare in budgets; live check not evaluated ({why})"
    assert not any(r.live_checked for r in report.rows)
    assert report.summary.startswith(
        "fits on node-b, node-c by the declared budgets (live check not evaluated)"
    )


def test_explain_report_says_why_a_node_was_not_live_checked() -> None:
    stale = dcgm_reading({"node-a": 9000, "node-c": 4000}, age=75)
    report = explained(reading=stale)
    by_node = {r.node: r for r in report.rows}
    assert by_node["node-b"].reason == (
        "12500 MiB to spare in budgets; no live telemetry for the node: live check skipped "
        "(staleMode budget-only)"
    )
    assert by_node["node-c"].reason == (
        "2500 MiB to spare in budgets; live telemetry 75s old > maxAgeSeconds 60: live check "
        "skipped (staleMode budget-only)"
    )


def test_explain_report_of_a_bound_pod() -> None:
    raw = SEEDS[1]
    report = explained(raw, pods=SEEDS)
    assert (report.node, report.summary, report.need_mib) == ("node-a", "bound to node-a", 5000)
    assert report.rows[0].verdict == "bound"
    assert report.rows[0].reason == "runs here: its 5000 MiB are in DECLARED"
    assert report.rows[0].declared_mib == 13300  # counted once
    assert "node-a" not in [r.node for r in report.rows[1:]]


def test_explain_report_of_a_bound_pod_with_per_pod_usage() -> None:
    raw = SEEDS[1]
    reading = pod_exporter_reading({("team-a", "llama"): 4700}, free={"node-a": 9000})
    report = explained(raw, pods=SEEDS, reading=reading)
    assert report.rows[0].reason == "runs here: its 5000 MiB are in DECLARED, it uses 4700 MiB"


@pytest.mark.parametrize(
    ("raw", "summary"),
    [
        (
            make_pod("done", 1500, node="node-a", phase="Succeeded"),
            "Succeeded: it holds no GPU memory and is not scheduled again",
        ),
        (make_pod("plain", None), f"declares no {GPUMEM}: vramguard does not judge it"),
        (make_pod("cpu", None, gpu=False), f"declares no {GPUMEM}: vramguard does not judge it"),
    ],
)
def test_explain_report_of_a_pod_vramguard_does_not_judge(
    raw: dict[str, Any], summary: str
) -> None:
    report = explained(raw)
    assert (report.judged, report.summary, report.rows) == (False, summary, ())
    lines = render_explanation(report)
    assert lines[-1] == f"Summary:   {summary}"
    assert not any(line.startswith("NODE") for line in lines)


def test_explain_report_of_another_schedulers_pod_is_judged_all_the_same() -> None:
    raw = unschedulable("elsewhere", 1500)
    raw["spec"]["schedulerName"] = "default-scheduler"
    report = explained(raw)
    assert report.other_scheduler
    assert report.judged
    assert [r.verdict for r in report.rows][:1] == ["fits"]
    scheduler = [line for line in render_explanation(report) if line.startswith("Scheduler:")]
    assert scheduler == [
        "Scheduler:      default-scheduler (not vramguard-scheduler: vramguard never judges "
        "this pod; the verdicts say what it would)"
    ]


def test_explain_table_is_aligned_with_units() -> None:
    report = explained(unschedulable("big", 3600))
    assert render_explanation(report) == [
        "Pod:            team-a/big",
        "Phase:          Pending, unschedulable",
        "Scheduler:      vramguard-scheduler",
        f"Need:           3600 MiB of {GPUMEM}",
        f"Scheduler says: 0/1 nodes are available: 1 Insufficient {GPUMEM}.",
        f"Summary:        {report.summary}",
        "",
        "NODE    VERDICT  LIVE FREE  DECLARED/CAPACITY  REASON",
        "node-c  refused  4000 MiB   0/4000 MiB         "
        "live free 4000 MiB < need 3600 + floor 512 MiB (dcgm, 3s old)",
        "node-b  refused  1900 MiB   0/14000 MiB        "
        "live free 1900 MiB < need 3600 + floor 512 MiB (dcgm, 3s old)",
        "node-a  refused  9000 MiB   13300/14000 MiB    declared 13300 + 3600 > capacity 14000 MiB",
        "1 node advertises no GPU memory: cpu-1",
    ]


def test_explain_table_of_a_pod_not_tried_yet_without_telemetry() -> None:
    raw = make_pod("new", 1500)
    raw["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node-a"}
    lines = render_explanation(explained(raw, live="not-read"))
    assert lines[:5] == [
        "Pod:       team-a/new",
        "Phase:     Pending, not scheduled yet",
        "Scheduler: vramguard-scheduler",
        f"Need:      1500 MiB of {GPUMEM}",
        "Telemetry: live check not evaluated (no --prometheus-url)",
    ]
    assert [line.split()[:2] for line in lines[8:11]] == [
        ["node-a", "refused"],
        ["node-b", "not"],
        ["node-c", "not"],
    ]
    assert lines[9].split("  ")[-1] == "the pod's nodeSelector or node affinity rules it out"
    assert lines[8].split()[2] == "-"  # no live figure


def test_explain_table_colours_refused_rows_only_on_request() -> None:
    report = explained()
    plain = render_explanation(report)
    assert RED not in "".join(plain)
    coloured = render_explanation(report, colour=True)
    red = [line for line in coloured if RED in line]
    assert [line.split()[0] for line in red] == [f"{RED}node-b", f"{RED}node-a"]
    # Padding first, then colour: the columns line up as without it.
    assert [line.replace(RED, "").replace("\033[0m", "") for line in coloured] == plain


def test_explain_with_only_cpu_nodes_and_with_none() -> None:
    snapshot = snapshot_of([make_node("cpu-1"), make_node("cpu-2")], [INCOMING])
    pod = scheduling_pod(INCOMING, NAMES)
    common: dict[str, Any] = {
        "resource": GPUMEM,
        "served_scheduler": "vramguard-scheduler",
        "live": "read",
    }
    report = explain_report(pod, snapshot, POLICY.extender, NOW, **common)
    assert (
        report.summary == f"vramguard: no node fits 1500 MiB of {GPUMEM}: no node advertises "
        "GPU memory"
    )
    assert render_explanation(report)[-1] == "2 nodes advertise no GPU memory: cpu-1, cpu-2"
    empty = explain_report(pod, snapshot_of([], [INCOMING]), POLICY.extender, NOW, **common)
    assert render_explanation(empty)[-1] == "no nodes"


def test_explain_json_shape() -> None:
    document = json.loads(json.dumps(explanation_json(explained())))
    assert document["pod"] == {
        "namespace": "team-a",
        "name": "incoming",
        "phase": "Pending",
        "node": None,
        "terminating": False,
        "scheduler": "vramguard-scheduler",
        "servedScheduler": "vramguard-scheduler",
        "otherScheduler": False,
        "resource": GPUMEM,
        "needMiB": 1500,
        "schedulerMessage": f"0/1 nodes are available: 1 Insufficient {GPUMEM}.",
    }
    assert (document["judged"], document["live"]) == (True, "read")
    assert document["nodes"][1] == {
        "name": "node-b",
        "verdict": "refused",
        "reason": "live free 1900 MiB < need 1500 + floor 512 MiB (dcgm, 3s old)",
        "refusalKind": "live",
        "headroomMiB": None,
        "liveChecked": True,
        "liveFreeMiB": 1900,
        "telemetryAgeSeconds": 3.0,
        "declaredMiB": 0,
        "capacityMiB": 14000,
    }
    assert [n["verdict"] for n in document["nodes"]] == ["fits", "refused", "refused", "no-gpu"]
    assert document["nodes"][0]["headroomMiB"] == 1988
