"""`vramguard recommend` end to end over fake reads (the API lists, the range query and the
instant read monkeypatched) on the seeds' T4: immich-ml's recycled pod peaked at 10700 MiB on
a 3000 MiB budget; and its arguments, exit statuses and one-line failures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from extender.telemetry import HistoryWindow, plan_queries
from gpumem.policy import Policy, parse_policy
from gpumem.recommend import UsageHistory
from gpumem.state import PodKey, TelemetryReading
from ops import build_parser, main, readings, recommend
from ops.recommend_report import duration_text
from tests.unit.extender.factories import NOW, make_node, make_pod
from tests.unit.ops.test_cli import UNREACHABLE_KUBECONFIG

STEP = 360  # the resolution of a 7-day window
POLICY = """\
excludedNamespaces: ["kube-system"]
defaults: {priorityClassName: tier-2-gpu, gpumemMiB: 1024, maxGpumemMiB: 8192}
namespaces:
  immich: {priorityClassName: tier-1-gpu, gpumemMiB: 3000}
  llama-swap: {priorityClassName: tier-1-gpu, gpumemMiB: 5000}
  frigate: {priorityClassName: tier-1-gpu, gpumemMiB: 2000}
  portal-stt: {gpumemMiB: 1500}
extender:
  telemetry: {preset: pod-exporter}
"""


def pod(name: str, namespace: str, mib: int, owner: tuple[str, str] | None) -> dict[str, Any]:
    raw = make_pod(name, mib, node="t4", namespace=namespace)
    if owner is None:
        del raw["metadata"]["ownerReferences"]
    else:
        raw["metadata"]["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "controller": True}
        ]
    return raw


def template(mib: int | None = None) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": "1"} | ({"vramguard.io/gpumem": str(mib)} if mib else {})
    return {"spec": {"containers": [{"name": "main", "resources": {"limits": limits}}]}}


def controller(
    name: str, namespace: str, owner: tuple[str, str] | None = None, mib: int | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if owner is not None:
        metadata["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {"metadata": metadata, "spec": {"template": template(mib)}}


NODES = [make_node("t4", allocatable_mib=14000, gfd_memory_mib=15360)]
PODS = [
    pod("immich-ml-6b7f9c8d5-k8q2m", "immich", 3000, ("ReplicaSet", "immich-ml-6b7f9c8d5")),
    pod("immich-server-7c9d8-bcdfg", "immich", 1800, ("ReplicaSet", "immich-server-7c9d8")),
    pod("llama-swap-0", "llama-swap", 5000, ("StatefulSet", "llama-swap")),
    pod("frigate-w8z4k", "frigate", 2000, ("DaemonSet", "frigate")),
    pod("portal-stt", "portal-stt", 1500, None),
]
CONTROLLERS = {
    "ReplicaSet": [
        controller("immich-ml-6b7f9c8d5", "immich", ("Deployment", "immich-ml")),
        controller("immich-server-7c9d8", "immich", ("Deployment", "immich-server"), 1800),
    ],
    "Deployment": [
        controller("immich-ml", "immich"),
        controller("immich-server", "immich", mib=1800),
    ],
    "StatefulSet": [controller("llama-swap", "llama-swap")],
    "DaemonSet": [controller("frigate", "frigate")],
    "Job": [],
    "CronJob": [],
}


def steps(*values: int, start: float) -> UsageHistory:
    return UsageHistory(tuple((start + i * STEP, v) for i, v in enumerate(values)))


WEEK_AGO = NOW - 7 * 86400 + STEP
# The pod whose arena grew to 10.7 GB over five days (1200 steps) was recycled; its
# successor has held 2600 MiB for the two days since (480 steps).
ARENA = [2600 + 8100 * i // 1199 for i in range(1200)]
HISTORIES: dict[PodKey, UsageHistory] = {
    ("immich", "immich-ml-6b7f9c8d5-x2x4z"): steps(*ARENA, start=WEEK_AGO),
    ("immich", "immich-ml-6b7f9c8d5-k8q2m"): steps(*[2600] * 480, start=WEEK_AGO + 1200 * STEP),
    ("immich", "immich-server-7c9d8-bcdfg"): steps(*[1200] * 1600, 1500, start=WEEK_AGO),
    ("llama-swap", "llama-swap-0"): steps(*[4700] * 1680, start=WEEK_AGO),
    ("frigate", "frigate-w8z4k"): steps(*[900] * 1680, start=WEEK_AGO),
    # A pod of a controller long gone: left out, and said so.
    ("frigate", "frigate-old-0"): steps(700, start=WEEK_AGO),
}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the command reads; `history` may be set to an error to raise."""
    state: dict[str, Any] = {"history": HISTORIES, "windows": []}

    def read_history(url: str, plan: Any, window: Any) -> dict[PodKey, UsageHistory]:
        state["windows"].append((plan.pod_used.expr, window))
        if isinstance(state["history"], Exception):
            raise state["history"]
        histories: dict[PodKey, UsageHistory] = state["history"]
        return histories

    monkeypatch.setattr(readings, "list_cluster", lambda kubeconfig: (NODES, PODS))
    monkeypatch.setattr(
        readings,
        "read_live",
        lambda url, policy, now: TelemetryReading("pod-exporter", now, pod_used={}),
    )
    monkeypatch.setattr(readings, "now", lambda: NOW)
    monkeypatch.setattr(recommend, "list_controllers", lambda args: CONTROLLERS)
    monkeypatch.setattr(recommend, "read_history", read_history)
    return state


def run(policy: Path, *extra: str) -> list[str]:
    return [
        "recommend",
        "--prometheus-url",
        "http://prometheus:9090",
        "--policy",
        str(policy),
        *extra,
    ]


def columns(line: str) -> list[str]:
    """A table row's cells (separated by two spaces or more)."""
    return [cell for cell in re.split(r"\s{2,}", line.strip()) if cell]


def test_the_table_says_immich_ml_is_over_budget_and_the_t4_cannot_hold_the_budgets(
    cluster: dict[str, Any], policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run(policy_file)) == 1  # a workload over budget
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "History: 7d to 2023-11-14 22:13 UTC of gpu_pod_memory_used_bytes (preset pod-exporter), "
        "one point per 6m, each the peak of its 6m"
    )
    assert lines[1] == (
        "Recommended: peak x 1.2, rounded up to 256 MiB; oversized: declared > 1.5 x recommended"
    )
    rows = {tuple(columns(line)[:2]): columns(line) for line in lines}
    assert rows[("immich", "Deployment/immich-ml")][2:] == [
        "2",
        "7d",
        "10700 MiB",
        "10591 MiB",  # the 17th highest of 1680 points: ARENA[1183]
        "3000 MiB",
        "policy",
        "13056 MiB",
        "over budget",
    ]
    assert rows[("immich", "Deployment/immich-server")][4:] == [
        "1500 MiB",
        "1200 MiB",
        "1800 MiB",
        "template",
        "2048 MiB",
        "ok",
    ]
    assert rows[("llama-swap", "StatefulSet/llama-swap")][-3:] == ["policy", "5888 MiB", "ok"]
    assert rows[("frigate", "DaemonSet/frigate")][-2:] == ["1280 MiB", "oversized"]
    assert rows[("portal-stt", "Pod/portal-stt")][2:] == [
        "0",
        "-",
        "-",
        "-",
        "1500 MiB",
        "pod",
        "-",
        "no data",
    ]
    (t4,) = [columns(line) for line in lines if line.startswith("t4 ")]
    recommended = 13056 + 2048 + 5888 + 1280 + 1500
    assert t4 == [
        "t4",
        "5",
        "14000 MiB",
        "13300 MiB",
        f"{recommended} MiB",
        f"NO ({recommended - 14000} MiB over)",
    ]
    assert lines[-1] == (
        "Left out: 1 pod in the history that are gone from the cluster and match no "
        "controller's pod names: frigate/frigate-old-0"
    )
    # The window asked of Prometheus: the week before now, a point every 6 minutes.
    ((expr, window),) = cluster["windows"]
    assert expr == "gpu_pod_memory_used_bytes"
    assert (window.start, window.end, window.step_seconds) == (NOW - 7 * 86400, NOW, STEP)


def test_json_carries_the_same_figures(
    cluster: dict[str, Any], policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run(policy_file, "-o", "json")) == 1
    document = json.loads(capsys.readouterr().out)
    workloads = {(w["namespace"], w["kind"], w["name"]): w for w in document["workloads"]}
    ml = workloads[("immich", "Deployment", "immich-ml")]
    assert ml | {"coveredSeconds": 0} == {
        "namespace": "immich",
        "kind": "Deployment",
        "name": "immich-ml",
        "podsNow": 1,
        "podsSeen": 2,
        "coveredSeconds": 0,
        "peakMiB": 10700,
        "peakPod": "immich-ml-6b7f9c8d5-x2x4z",
        "p99MiB": 10591,
        "declaredMiB": 3000,
        "budgetSetIn": "policy",
        "recommendedMiB": 13056,
        "verdict": "over budget",
    }
    assert ml["coveredSeconds"] == 1680 * STEP
    assert document["overBudget"] is True
    (t4,) = document["nodes"]
    assert (t4["capacityMiB"], t4["fits"], t4["overMiB"]) == (14000, False, 9772)
    assert document["policy"]["namespaces"]["immich"]["gpumemMiB"] == 13056
    assert document["unmatched"] == ["frigate/frigate-old-0"]
    assert (document["safety"], document["stepMiB"], document["oversizedRatio"]) == (1.2, 256, 1.5)


def comments(text: str) -> list[str]:
    """The YAML's comments, each with its wrapped lines (`#   ...`) joined."""
    found: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#   "):
            found[-1] += " " + stripped[4:]
        elif stripped.startswith("# "):
            found.append(stripped[2:])
    return found


def test_policy_output_is_a_patch_that_loads_into_the_policy(
    cluster: dict[str, Any], policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run(policy_file, "-o", "policy")) == 1
    text = capsys.readouterr().out
    patch = yaml.safe_load(text)
    assert patch == {
        "namespaces": {
            "immich": {
                "priorityClassName": "tier-1-gpu",
                "gpumemMiB": 13056,
                "maxGpumemMiB": 13056,
            },
            "llama-swap": {"priorityClassName": "tier-1-gpu", "gpumemMiB": 5888},
            "frigate": {"priorityClassName": "tier-1-gpu", "gpumemMiB": 1280},
        }
    }
    assert comments(text)[1:] == [
        "frigate: gpumemMiB 2000 -> 1280: DaemonSet/frigate: peak 900, oversized",
        "immich: gpumemMiB 3000 -> 13056: Deployment/immich-ml: peak 10700, over budget",
        "immich: maxGpumemMiB 8192 (from defaults) -> 13056: below a recommended budget, so "
        "the webhook would deny those pods",
        "immich: Deployment/immich-server declares 1800 MiB in its pod template: set "
        "vramguard.io/gpumem to 2048 there (requests and limits); the policy does not change it",
        "llama-swap: gpumemMiB 5000 -> 5888: StatefulSet/llama-swap: peak 4700, ok",
    ]
    current = yaml.safe_load(POLICY)
    merged = parse_policy(
        yaml.safe_dump(current | {"namespaces": current["namespaces"] | patch["namespaces"]})
    )
    assert merged.for_namespace("immich").gpumem_mib == 13056
    assert merged.for_namespace("portal-stt").gpumem_mib == 1500


def test_a_namespace_of_budgets_within_bounds_exits_0(
    cluster: dict[str, Any], policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run(policy_file, "-n", "frigate", "llama-swap", "-o", "json")) == 0
    document = json.loads(capsys.readouterr().out)
    assert {w["namespace"] for w in document["workloads"]} == {"frigate", "llama-swap"}
    # The card they share is shown with every pod on it.
    assert [n["pods"] for n in document["nodes"]] == [5]
    assert document["unmatched"] == ["frigate/frigate-old-0"]
    assert set(document["policy"]["namespaces"]) == {"frigate", "llama-swap"}


def test_safety_step_and_ratio_come_from_the_flags(
    cluster: dict[str, Any], policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ("--safety", "1", "--step", "512", "--oversized-ratio", "3", "-o", "json")
    assert main(run(policy_file, *flags)) == 1
    workloads = {w["name"]: w for w in json.loads(capsys.readouterr().out)["workloads"]}
    assert workloads["immich-ml"]["recommendedMiB"] == 10752  # 21 x 512
    assert (workloads["frigate"]["recommendedMiB"], workloads["frigate"]["verdict"]) == (1024, "ok")


def test_a_window_of_a_day_is_read_a_minute_at_a_time(
    cluster: dict[str, Any], policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run(policy_file, "--window", "1d")) == 1
    ((_, window),) = cluster["windows"]
    assert (window.start, window.step_seconds) == (NOW - 86400, 60)


@pytest.mark.parametrize(
    ("window", "step"), [(3600, 60), (86400, 60), (7 * 86400, 360), (30 * 86400, 1320)]
)
def test_the_step_keeps_a_series_within_2000_points(window: float, step: int) -> None:
    assert recommend.resolution(window) == step
    assert window / step <= recommend.MAX_POINTS


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800), ("12h", 43200), ("1w2d", 777600), ("90m", 5400)]
)
def test_windows_are_prometheus_durations(text: str, seconds: float) -> None:
    assert (
        build_parser().parse_args(["recommend", "--prometheus-url", "u", "--window", text]).window
        == seconds
    )


@pytest.mark.parametrize(
    "bad",
    [
        ["--window", "7x"],
        ["--window", "5m"],  # too short to say anything
        ["--window", "100d"],
        ["--safety", "0.9"],  # below the peak
        ["--safety", "lots"],
        ["--step", "0"],
        ["--oversized-ratio", "1"],
        ["-o", "yaml"],
    ],
)
def test_bad_arguments_are_usage_errors(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["recommend", "--prometheus-url", "u", *bad])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (604800, "7d"),
        (604800 - 3600, "6d 23h"),
        (3 * 3600 + 720, "3h 12m"),
        (2700, "45m"),
        (0, "0m"),
    ],
)
def test_durations_are_two_units(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_prometheus_down_exits_2_with_one_line(
    cluster: dict[str, Any], policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster["history"] = readings.TelemetryUnavailable("history from Prometheus at x unavailable")
    assert main(run(policy_file)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "vramguard recommend: history from Prometheus at x unavailable\n"


def test_an_unreachable_prometheus_is_said_in_one_line() -> None:
    plan = plan_queries(
        Policy.model_validate(
            {"extender": {"telemetry": {"preset": "node-agent"}}}
        ).extender.telemetry
    )
    window = HistoryWindow(NOW - 3600, NOW, 60)
    with pytest.raises(readings.TelemetryUnavailable) as failed:
        recommend.read_history("http://127.0.0.1:1", plan, window)
    message = str(failed.value)
    assert message.startswith("history from Prometheus at http://127.0.0.1:1 unavailable: ")
    assert "\n" not in message


def test_the_dcgm_preset_cannot_recommend(
    cluster: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dcgm = tmp_path / "dcgm.yaml"
    dcgm.write_text("extender: {telemetry: {preset: dcgm}}\n")
    assert main(run(dcgm)) == 2
    error = capsys.readouterr().err
    assert error.startswith("vramguard recommend: telemetry preset dcgm has no per-pod GPU memory")
    assert cluster["windows"] == []  # nothing was asked of Prometheus


def test_an_unreadable_policy_and_an_unreachable_cluster_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(run(tmp_path / "missing.yaml")) == 2
    assert capsys.readouterr().err.startswith("vramguard recommend: ")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    assert main(run(policy, "--kubeconfig", str(kubeconfig))) == 2
    error = capsys.readouterr().err
    assert error.startswith("vramguard recommend: listing nodes: cannot reach the API server")
    assert len(error.splitlines()) == 1
    assert main(run(policy, "--kubeconfig", str(tmp_path / "nope"))) == 2
    assert "no such file" in capsys.readouterr().err
