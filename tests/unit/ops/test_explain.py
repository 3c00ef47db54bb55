"""`vramguard explain` end to end over fake reads (ops.readings monkeypatched): the
verdicts it prints, its exit status and its one-line errors over an unreachable API and
Prometheus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpumem.state import TelemetryReading
from ops import build_parser, common, main, readings
from ops.explain import find_pod
from ops.table import RED
from tests.unit.extender.factories import (
    GPUMEM,
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    unschedulable,
)
from tests.unit.ops.test_cli import UNREACHABLE_KUBECONFIG

NODES = [
    make_node("node-a", allocatable_mib=14000),
    make_node("node-b", allocatable_mib=14000),
    make_node("cpu-1"),
]
RESIDENTS = [make_pod("llama", 5000, node="node-a"), make_pod("immich", 8300, node="node-a")]
PROMETHEUS = "http://prometheus:9090"


def pod_with(raw: dict[str, Any], **spec: Any) -> dict[str, Any]:
    raw["spec"].update(spec)
    return raw


PODS = [
    *RESIDENTS,
    unschedulable("incoming", 1500),
    pod_with(unschedulable("pinned", 1500), nodeSelector={"kubernetes.io/hostname": "node-a"}),
    pod_with(make_pod("elsewhere", 1500), schedulerName="default-scheduler"),
    make_pod("no-budget", None),
    make_pod("done", 1500, node="node-b", phase="Succeeded"),
    make_pod("incoming", 1500, namespace="team-b", node="node-b"),
]


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The command reads NODES and PODS, and `reading` (a TelemetryReading or an error);
    `reads` counts the telemetry reads."""
    state: dict[str, Any] = {"reading": dcgm_reading({"node-a": 9000, "node-b": 1900}), "reads": 0}

    def read_live(url: str, policy: Any, now: float) -> TelemetryReading:
        state["reads"] += 1
        if isinstance(state["reading"], Exception):
            raise state["reading"]
        reading: TelemetryReading = state["reading"]
        return reading

    monkeypatch.setattr(readings, "list_cluster", lambda kubeconfig: (NODES, PODS))
    monkeypatch.setattr(readings, "read_live", read_live)
    monkeypatch.setattr(readings, "now", lambda: NOW)
    return state


def explain(*args: str) -> list[str]:
    return ["explain", *args]


def rows(out: str) -> dict[str, list[str]]:
    """The table's rows by node: their cells (split on two or more spaces)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NODE "))
    table = {}
    for line in lines[start + 1 :]:
        if not line.startswith("node-"):
            break
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        table[cells[0]] = cells[1:]
    return table


def test_parser_reads_explain_options() -> None:
    args = build_parser().parse_args(
        explain("p", "-n", "ns", "--prometheus-url", PROMETHEUS, "-o", "json")
    )
    assert (args.pod, args.namespace, args.prometheus_url, args.output) == (
        "p",
        "ns",
        PROMETHEUS,
        "json",
    )
    args = build_parser().parse_args(explain("p"))
    assert (args.namespace, args.scheduler_name, args.output) == ("default", None, "table")


def test_explain_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["explain"])
    assert exited.value.code == 2
    assert "POD" in capsys.readouterr().err


def test_a_pending_pod_node_by_node(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(explain("incoming", "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 0
    out = capsys.readouterr().out
    assert "Summary:        vramguard: no node fits 1500 MiB of vramguard.io/gpumem: " in out
    assert rows(out) == {
        "node-b": [
            "refused",
            "1900 MiB",
            "1500/14000 MiB",
            "live free 1900 MiB < need 1500 + floor 512 MiB (dcgm, 8s old)",
        ],
        "node-a": [
            "refused",
            "9000 MiB",
            "13300/14000 MiB",
            "declared 13300 + 1500 > capacity 14000 MiB",
        ],
    }
    assert out.splitlines()[-1] == "1 node advertises no GPU memory: cpu-1"
    assert RED not in out  # not a terminal
    assert cluster["reads"] == 1


def test_where_it_would_fit_once_the_vram_is_free(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster["reading"] = dcgm_reading({"node-a": 9000, "node-b": 9000})
    assert main(explain("incoming", "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 0
    out = capsys.readouterr().out
    assert rows(out)["node-b"] == ["fits", "9000 MiB", "1500/14000 MiB", "6988 MiB to spare"]
    assert "Summary:        fits on node-b; vramguard would let it in now" in out


def test_selectors_rule_nodes_out(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(explain("pinned", "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 0
    table = rows(capsys.readouterr().out)
    assert [cells[0] for cells in table.values()] == ["refused", "not admitted"]


def test_without_prometheus_the_live_check_is_not_evaluated(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(explain("incoming", "-n", "team-a")) == 0
    out = capsys.readouterr().out
    assert cluster["reads"] == 0
    assert "Telemetry:      live check not evaluated (no --prometheus-url)" in out
    assert rows(out)["node-b"] == [
        "fits",
        "-",
        "1500/14000 MiB",
        "11000 MiB to spare in budgets; live check not evaluated (no --prometheus-url)",
    ]


def test_prometheus_down_prints_declared_verdicts_and_exits_2(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster["reading"] = readings.TelemetryUnavailable(
        "telemetry from Prometheus at http://prometheus:9090 unavailable: Connection refused"
    )
    assert main(explain("incoming", "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "vramguard explain: telemetry from Prometheus at http://prometheus:9090 unavailable: "
        "Connection refused; judging on the declared budgets alone\n"
    )
    assert rows(captured.out)["node-b"][0] == "fits"
    assert "live check not evaluated (telemetry unavailable)" in captured.out


def test_a_bound_pod_says_where(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(explain("llama", "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 0
    out = capsys.readouterr().out
    assert "Node:      node-a\n" in out
    assert "Summary:   bound to node-a\n" in out
    assert rows(out)["node-a"] == [
        "bound",
        "9000 MiB",
        "13300/14000 MiB",
        "runs here: its 5000 MiB are in DECLARED",
    ]


def test_the_namespace_picks_the_pod(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(explain("incoming", "-n", "team-b", "-o", "json")) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["pod"]["namespace"], document["pod"]["node"]) == ("team-b", "node-b")
    assert document["summary"] == "bound to node-b"


def test_another_schedulers_pod_is_judged_and_says_so(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(explain("elsewhere", "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 0
    out = capsys.readouterr().out
    assert "default-scheduler (not vramguard-scheduler: vramguard never judges this pod" in out
    assert "Phase:     Pending, not scheduled yet\n" in out
    assert rows(out)


def test_the_served_scheduler_can_be_named(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    args = explain("elsewhere", "-n", "team-a", "--scheduler-name", "default-scheduler")
    assert main([*args, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["pod"]["otherScheduler"] is False


@pytest.mark.parametrize(
    ("pod", "summary"),
    [
        ("no-budget", f"declares no {GPUMEM}: vramguard does not judge it"),
        ("done", "Succeeded: it holds no GPU memory and is not scheduled again"),
    ],
)
def test_pods_vramguard_does_not_judge_exit_0(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str], pod: str, summary: str
) -> None:
    assert main(explain(pod, "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"Summary:   {summary}"
    assert "NODE" not in out
    assert cluster["reads"] == 0  # nothing to judge: Prometheus is not asked


def test_json_output(cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(explain("incoming", "-n", "team-a", "--prometheus-url", PROMETHEUS, "-o", "json")) == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"pod", "judged", "summary", "live", "nodes"}
    assert [(n["name"], n["verdict"], n["refusalKind"]) for n in document["nodes"]] == [
        ("node-b", "refused", "live"),
        ("node-a", "refused", "declared"),
        ("cpu-1", "no-gpu", None),
    ]
    assert document["pod"]["needMiB"] == 1500
    assert document["live"] == "read"


def test_colour_only_on_a_terminal(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(explain("incoming", "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 0
    red = [line for line in capsys.readouterr().out.splitlines() if RED in line]
    assert [line.removeprefix(RED).split()[0] for line in red] == ["node-b", "node-a"]


def test_an_unreadable_declaration_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = unschedulable("odd", 1500)
    for kind in ("limits", "requests"):
        raw["spec"]["containers"][0]["resources"][kind][GPUMEM] = "lots"
    monkeypatch.setattr(readings, "list_cluster", lambda kubeconfig: (NODES, [raw]))
    assert main(explain("odd", "-n", "team-a")) == 2
    assert "Summary:        its GPU memory declaration cannot be read: " in capsys.readouterr().out


def test_a_missing_pod_is_one_line_and_exit_1(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(explain("nope", "-n", "team-a", "--prometheus-url", PROMETHEUS)) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "vramguard explain: pod team-a/nope not found\n")
    assert cluster["reads"] == 0


def test_an_unreadable_policy_exits_2(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(explain("incoming", "-n", "team-a", "--policy", str(tmp_path / "none.yaml"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("vramguard explain: ")
    assert len(err.strip().splitlines()) == 1


def test_a_policy_file_sets_the_floor(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("extender:\n  floorMiB: 0\n")
    args = explain("incoming", "-n", "team-a", "--prometheus-url", PROMETHEUS)
    assert main([*args, "--policy", str(policy)]) == 0
    assert rows(capsys.readouterr().out)["node-b"] == [
        "fits",
        "1900 MiB",
        "1500/14000 MiB",
        "400 MiB to spare",
    ]


def test_an_unreachable_cluster_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    assert main(explain("p", "-n", "ns", "--kubeconfig", str(kubeconfig))) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "vramguard explain: listing nodes: cannot reach the API server at "
    )
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_a_missing_kubeconfig_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(explain("p", "--kubeconfig", "/nonexistent/kubeconfig")) == 2
    )  # a usage error in every command
    assert capsys.readouterr().err == (
        "vramguard explain: kubeconfig /nonexistent/kubeconfig: no such file\n"
    )


def test_find_pod_by_namespace_and_name() -> None:
    assert find_pod(PODS, "team-b", "incoming") is PODS[-1]
    assert find_pod(PODS, "team-c", "incoming") is None
    assert find_pod([{"metadata": None}, {}], "team-a", "incoming") is None


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert common.colour()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not common.colour()
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert not common.colour()
