"""`vramguard preflight` and `vramguard status` end to end over fake reads (ops.readings
monkeypatched), and their errors over an unreachable API, Prometheus and extender."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extender.debug import describe_snapshot
from gpumem.state import TelemetryReading
from ops import build_parser, main, readings
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
)
from tests.unit.ops.test_cli import UNREACHABLE_KUBECONFIG

NODES = [
    make_node("node-a", allocatable_mib=14000, gfd_memory_mib=15360),
    make_node("node-b", allocatable_mib=14000, gfd_memory_mib=15360),
]
PODS = [
    make_pod("train", 4000, node="node-a")
    | {"spec": {**make_pod("train", 4000, node="node-a")["spec"], "priorityClassName": "gpu-high"}}
]
UNREACHABLE_PROMETHEUS = "http://127.0.0.1:1"


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The commands read NODES and PODS, and `reading` (a TelemetryReading or an error)."""
    state: dict[str, Any] = {"reading": dcgm_reading({"node-a": 2100, "node-b": 9000})}

    def read_live(url: str, policy: Any, now: float) -> TelemetryReading:
        if isinstance(state["reading"], Exception):
            raise state["reading"]
        reading: TelemetryReading = state["reading"]
        return reading

    monkeypatch.setattr(readings, "list_cluster", lambda kubeconfig: (NODES, PODS))
    monkeypatch.setattr(readings, "read_live", read_live)
    monkeypatch.setattr(readings, "now", lambda: NOW)
    return state


def preflight_args(*extra: str) -> list[str]:
    return ["preflight", "--prometheus-url", "http://prometheus:9090", *extra]


def test_parser_reads_preflight_and_status_options() -> None:
    args = build_parser().parse_args(
        preflight_args("--need", "6144", "--node", "a", "--floor", "0")
    )
    assert (args.need, args.node, args.floor) == (6144, "a", 0)
    args = build_parser().parse_args(["status", "-o", "json", "--extender-url", "http://e:8888"])
    assert (args.output, args.extender_url, args.prometheus_url) == ("json", "http://e:8888", None)


@pytest.mark.parametrize("bad", ["-1", "6Gi", "lots"])
def test_preflight_need_must_be_whole_mib(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(preflight_args("--need", bad))
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("extra", "status", "lines"),
    [
        (
            ["--need", "3000"],
            0,
            [
                "node-a: live free 2100 MiB - 0 not yet in use = 2100 MiB; "
                "need 3000 + floor 512: NO",
                "node-b: live free 9000 MiB - 0 not yet in use = 9000 MiB; "
                "need 3000 + floor 512: yes",
            ],
        ),
        (
            ["--need", "3000", "--node", "node-a"],
            1,
            ["node-a: live free 2100 MiB - 0 not yet in use = 2100 MiB; need 3000 + floor 512: NO"],
        ),
        (
            ["--need", "2000", "--node", "node-a", "--floor", "100"],
            0,
            [
                "node-a: live free 2100 MiB - 0 not yet in use = 2100 MiB; "
                "need 2000 + floor 100: yes"
            ],
        ),
        (["--need", "1", "--node", "nope"], 1, ["node nope not found"]),
    ],
)
def test_preflight_answers_with_the_numbers(
    cluster: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    status: int,
    lines: list[str],
) -> None:
    assert main(preflight_args(*extra)) == status
    assert capsys.readouterr().out.splitlines() == lines


def test_preflight_floor_defaults_to_the_policys(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("extender:\n  floorMiB: 0\n")
    assert main(preflight_args("--need", "2100", "--node", "node-a", "--policy", str(policy))) == 0
    assert "need 2100 + floor 0: yes" in capsys.readouterr().out


def test_preflight_with_stale_telemetry_cannot_tell(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster["reading"] = dcgm_reading({"node-a": 9000}, age=600)
    assert main(preflight_args("--need", "3000", "--node", "node-a")) == 2
    assert "STALE" in capsys.readouterr().out


def test_preflight_with_prometheus_down_says_so_in_one_line(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster["reading"] = readings.TelemetryUnavailable("telemetry from Prometheus unavailable")
    assert main(preflight_args("--need", "3000")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "vramguard preflight: telemetry from Prometheus unavailable\n"


def test_preflight_with_an_unreadable_policy_is_a_usage_error(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(preflight_args("--need", "1", "--policy", str(tmp_path / "none.yaml"))) == 2
    assert capsys.readouterr().err.startswith("vramguard preflight: ")


def test_preflight_against_an_unreachable_cluster_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    status = main(
        [
            "preflight",
            "--need",
            "1",
            "--prometheus-url",
            UNREACHABLE_PROMETHEUS,
            "--kubeconfig",
            str(kubeconfig),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("vramguard preflight: listing nodes: cannot reach the API server at ")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_read_live_from_an_unreachable_prometheus_is_telemetry_unavailable() -> None:
    with pytest.raises(readings.TelemetryUnavailable, match="unavailable"):
        readings.read_live(UNREACHABLE_PROMETHEUS, make_policy(), NOW)


def test_status_table_from_the_api(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--prometheus-url", "http://prometheus:9090"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "NODE",
        "CAPACITY",
        "DECLARED",
        "RESERVED",
        "LIVE",
        "USED",
        "FREE",
        "AGE",
    ]
    assert out[1].split() == ["node-a", "13.7", "GiB", "4000", "MiB", "-", "-", "2100", "MiB", "8s"]
    assert out[-1].split() == ["team-a", "train", "node-a", "gpu-high", "4000", "MiB", "-", "-"]


def test_status_json_from_the_api(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "-o", "json"]) == 0  # no Prometheus: live figures are null
    document = json.loads(capsys.readouterr().out)
    assert document["source"] == "api"
    assert [
        (n["name"], n["capacityMiB"], n["declaredMiB"], n["liveFreeMiB"]) for n in document["nodes"]
    ] == [("node-a", 14000, 4000, None), ("node-b", 14000, 0, None)]
    assert document["pods"][0]["class"] == "gpu-high"


def test_status_with_prometheus_down_prints_declared_figures_and_exits_2(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster["reading"] = readings.TelemetryUnavailable("telemetry unavailable")
    assert main(["status", "--prometheus-url", "http://prometheus:9090", "-o", "json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["nodes"][0]["declaredMiB"] == 4000
    assert "telemetry unavailable; showing declared figures only" in captured.err


def test_status_from_the_extender(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store(make_policy(), NODES, PODS, dcgm_reading({"node-a": 2100}))
    described = json.loads(json.dumps(describe_snapshot(store.snapshot(), NOW)))
    monkeypatch.setattr(readings, "fetch_extender_snapshot", lambda url: described)
    assert main(["status", "--extender-url", "http://extender:8888", "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["source"] == "extender"
    assert document["nodes"][0]["reservedMiB"] == 0


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (readings.ReadError("cannot reach the extender at http://e"), "cannot reach the extender"),
        ({"nodes": []}, "no 'nodes' object"),
    ],
)
def test_status_extender_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answer: object,
    message: str,
) -> None:
    def fetch(url: str) -> object:
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(readings, "fetch_extender_snapshot", fetch)
    assert main(["status", "--extender-url", "http://e"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vramguard status: ")
    assert message in err


def test_fetch_from_an_unreachable_extender_is_a_read_error() -> None:
    with pytest.raises(
        readings.ReadError, match=r"cannot reach the extender at http://127\.0\.0\.1:1"
    ):
        readings.fetch_extender_snapshot("http://127.0.0.1:1")


def test_status_against_a_missing_kubeconfig(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["status", "--kubeconfig", "/nonexistent/kubeconfig"]) == 2
    )  # a usage error in every command
    assert capsys.readouterr().err == (
        "vramguard status: kubeconfig /nonexistent/kubeconfig: no such file\n"
    )


def test_pod_classes_reads_priority_class_names() -> None:
    plain = make_pod("plain", 1)
    del plain["spec"]["priorityClassName"]
    assert readings.pod_classes([*PODS, plain, make_pod("batch", 1), {"spec": None}]) == {
        ("team-a", "train"): "gpu-high",
        ("team-a", "batch"): "gpu-batch",
    }
