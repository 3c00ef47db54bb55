"""ops.explain_report: one pod judged on every node, its summary, JSON and table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpumem.pending import scheduling_pod
from ops.explain_report import (
    LiveRead,
    PodExplanation,
    explain_report,
    explanation_json,
    render_explanation,
)
from ops.table import RED
from tests.unit.extender.factories import (
    NAMES,
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    pod_exporter_reading,
    unschedulable,
)
from tests.unit.ops.reports import POLICY, snapshot_of

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
