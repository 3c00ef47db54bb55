"""`vramguard` (ops): the argument parser, and `advertise` end to end over a fake API
or an unreachable one."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kube.errors import NodeAPIError
from ops import advertise, build_parser, common, main
from ops.advertise import HealthServer
from ops.advertiser import Advertiser
from tests.unit.extender.factories import GPUMEM, make_node, make_policy
from tests.unit.gpumem.test_advertise import gpu_node
from tests.unit.ops.test_advertiser import FakeNodes

UNREACHABLE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: nobody
  user: {token: not-a-real-token}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: nobody}
current-context: nowhere
"""


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> FakeNodes:
    """`advertise` talks to a FakeNodes instead of a cluster."""
    client = FakeNodes(gpu_node("gpu-1"), gpu_node("gpu-2", advertised="14336"), make_node("cpu"))
    monkeypatch.setattr(advertise, "core_api", lambda kubeconfig, pool_size: object())
    monkeypatch.setattr(advertise, "KubernetesNodes", lambda core: client)
    return client


def test_parser_reads_every_advertise_option() -> None:
    args = build_parser().parse_args(
        [
            "advertise",
            "--policy",
            "p.yaml",
            "--kubeconfig",
            "kc",
            "--node",
            "a",
            "--node",
            "b",
            "--interval",
            "5",
            "--once",
            "--dry-run",
        ]
    )
    assert (args.command, args.policy, args.kubeconfig) == ("advertise", Path("p.yaml"), Path("kc"))
    assert (args.nodes, args.interval, args.once, args.dry_run) == (["a", "b"], 5.0, True, True)
    defaults = build_parser().parse_args(["advertise"])
    assert (defaults.policy, defaults.nodes, defaults.interval) == (None, [], 60.0)
    assert (defaults.once, defaults.dry_run) == (False, False)


@pytest.mark.parametrize(
    "argv",
    [[], ["nonsense"], ["advertise", "--interval", "0"], ["advertise", "--interval", "x"]],
    ids=["no-command", "unknown-command", "zero-interval", "bad-interval"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: vramguard" in capsys.readouterr().err


def test_once_prints_one_line_per_node(
    fake_api: FakeNodes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["advertise", "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "advertising vramguard.io/gpumem on every GPU node: nvidia.com/gpu.memory x "
        "nvidia.com/gpu.count - 1024 MiB slack",
        "gpu-1: 15360 MiB x 1 GPU - 1024 MiB slack = 14336 MiB vramguard.io/gpumem: set, was unset",
        "gpu-2: 15360 MiB x 1 GPU - 1024 MiB slack = 14336 MiB vramguard.io/gpumem: unchanged",
    ]
    assert fake_api.nodes["gpu-1"]["status"]["allocatable"][GPUMEM] == "14336"


def test_policy_file_slack_and_named_nodes(
    fake_api: FakeNodes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("extender:\n  capacitySlackMiB: 2048\n")
    argv = ["advertise", "--once", "--policy", str(policy), "--node", "cpu", "--node", "gpu-2"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "cpu: skipped (no nvidia.com/gpu.memory label: not a GPU node)",
        "gpu-2: 15360 MiB x 1 GPU - 2048 MiB slack = 13312 MiB vramguard.io/gpumem: set, was 14336",
    ]
    assert [name for name, _ in fake_api.patches] == ["gpu-2"]


def test_dry_run_patches_nothing(fake_api: FakeNodes, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advertise", "--once", "--dry-run"]) == 0
    assert (
        "gpu-1: 15360 MiB x 1 GPU - 1024 MiB slack = 14336 MiB vramguard.io/gpumem: would set"
        in (capsys.readouterr().out)
    )
    assert fake_api.patches == []


def test_a_failed_node_fails_the_run(
    fake_api: FakeNodes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["advertise", "--once", "--node", "gpu-1", "--node", "gone"]) == 1
    assert "gone: failed (no such node)" in capsys.readouterr().out


def test_the_loop_runs_after_a_first_pass(
    fake_api: FakeNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    looped: list[tuple[float, bool]] = []

    def loop(self: Any, interval: float, stop: threading.Event, *, first_pass_done: bool) -> None:
        looped.append((interval, first_pass_done))

    monkeypatch.setattr(Advertiser, "loop", loop)
    monkeypatch.setattr(common, "stop_on_signals", lambda stop: None)
    assert main(["advertise", "--interval", "7"]) == 0
    assert looped == [(7.0, True)]
    assert fake_api.patches, "the first pass ran before the loop"


def test_unreachable_cluster_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    assert main(["advertise", "--kubeconfig", str(kubeconfig)]) == 1
    err = capsys.readouterr().err
    assert err == (
        "vramguard advertise: listing nodes: cannot reach the API server at "
        "https://127.0.0.1:1: Failed to establish a new connection: "
        "[Errno 111] Connection refused\n"
    )
    assert "Traceback" not in err


def test_missing_kubeconfig_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["advertise", "--once", "--kubeconfig", str(tmp_path / "absent")]) == 2
    )  # a usage error in every command
    err = capsys.readouterr().err
    assert err == f"vramguard advertise: kubeconfig {tmp_path / 'absent'}: no such file\n"


def test_broken_policy_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("extender: {capacitySlackMiB: lots}\n")
    assert main(["advertise", "--once", "--policy", str(policy)]) == 2
    assert "capacitySlackMiB" in capsys.readouterr().err


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ops", "advertise", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--interval SECONDS" in result.stdout


def test_health_server_answers_for_the_loop() -> None:
    client = FakeNodes(gpu_node("gpu-1"))
    adv = Advertiser(client, make_policy, emit=lambda _: None)
    health = HealthServer(adv, 0, stale_after=60)
    health.start()
    try:
        url = f"http://127.0.0.1:{health.port}"
        assert health.answer("/healthz") == (200, "ok"), "alive while the first pass runs"
        assert health.answer("/readyz") == (503, "no pass yet")
        adv.run_once()
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            assert response.read() == b"ok\n"
        client.unreachable = True
        with pytest.raises(NodeAPIError):
            adv.run_once()
        assert health.answer("/readyz") == (503, "the last pass could not read the nodes")
        assert health.answer("/healthz") == (200, "ok"), "a failing API is no reason to restart"
        adv.last_pass_ended = time.monotonic() - 61
        assert health.answer("/healthz") == (503, "no pass ended in the last 60 s")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/metrics", timeout=5)
        assert missing.value.code == 404
    finally:
        health.stop()
