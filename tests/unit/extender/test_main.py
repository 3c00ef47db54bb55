from __future__ import annotations

from pathlib import Path

import pytest

from extender.__main__ import build_deps, load_settings, main
from extender.pending import PendingExplainer
from extender.telemetry import TelemetryPoller
from extender.watches import ResourceWatch
from gpumem.policy_file import PolicyFile
from kube.binder import KubernetesBinder

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: test
  user: {token: not-a-real-token}
contexts:
- name: test
  context: {cluster: test, user: test}
current-context: test
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("extender:\n  floorMiB: 256\n")
    return path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "POLICY",
        "PROMETHEUS_URL",
        "PORT",
        "HOST",
        "TLS_CERT",
        "TLS_KEY",
        "EXPLAIN_PENDING",
        "SCHEDULER_NAME",
    ):
        monkeypatch.delenv(f"VRAMGUARD_EXTENDER_{name}", raising=False)


def test_command_line(policy: Path) -> None:
    settings = load_settings(
        ["--policy", str(policy), "--prometheus-url", "http://prometheus:9090", "--port", "9443"]
    )
    assert settings.policy == policy
    assert settings.prometheus_url == "http://prometheus:9090"
    assert settings.port == 9443
    assert settings.host == "127.0.0.1"
    assert not settings.tls_enabled


def test_environment_and_command_line_wins(policy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRAMGUARD_EXTENDER_POLICY", str(policy))
    monkeypatch.setenv("VRAMGUARD_EXTENDER_PROMETHEUS_URL", "http://from-env:9090")
    monkeypatch.setenv("VRAMGUARD_EXTENDER_PORT", "7000")
    assert load_settings([]).port == 7000
    settings = load_settings(["--port", "7001"])
    assert settings.port == 7001
    assert settings.prometheus_url == "http://from-env:9090"


@pytest.mark.parametrize(
    "extra",
    [
        ["--tls-cert", "tls.crt"],
        ["--client-ca", "ca.crt"],
        ["--port", "70000"],
    ],
)
def test_invalid_settings_exit_2(policy: Path, extra: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_settings(["--policy", str(policy), "--prometheus-url", "http://p", *extra])
    assert exit_info.value.code == 2


def test_missing_required_settings_exit_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_settings([])
    assert exit_info.value.code == 2


def test_plain_http_off_loopback_is_refused(
    policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--policy", str(policy), "--prometheus-url", "http://p", "--host", "0.0.0.0"])
    assert code == 2
    assert "refusing to serve plain HTTP on '0.0.0.0'" in capsys.readouterr().err


def test_broken_policy_is_refused_at_startup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("extender:\n  floorMiB: lots\n")
    assert main(["--policy", str(broken), "--prometheus-url", "http://p"]) == 2
    assert "extender.floorMiB" in capsys.readouterr().err


def kubeconfig_args(policy: Path, tmp_path: Path) -> list[str]:
    """The required flags, with a kubeconfig for a cluster that is never contacted."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    return [
        "--policy",
        str(policy),
        "--prometheus-url",
        "http://p",
        "--kubeconfig",
        str(kubeconfig),
    ]


def test_production_wiring_from_a_kubeconfig(policy: Path, tmp_path: Path) -> None:
    settings = load_settings(kubeconfig_args(policy, tmp_path))
    deps = build_deps(settings, PolicyFile(policy))
    assert isinstance(deps.binder, KubernetesBinder)
    assert [w.resource for w in deps.watches if isinstance(w, ResourceWatch)] == ["pods", "nodes"]
    assert isinstance(deps.telemetry, TelemetryPoller)
    assert deps.store.policy.extender.floor_mib == 256
    # Explaining Pending pods is on by default, fed by the pod watch.
    assert [type(s) for s in deps.services] == [PendingExplainer]
    assert settings.scheduler_name == "vramguard-scheduler"


def test_explain_pending_can_be_turned_off(
    policy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = kubeconfig_args(policy, tmp_path)
    settings = load_settings([*base, "--no-explain-pending"])
    assert not settings.explain_pending
    assert build_deps(settings, PolicyFile(policy)).services == []

    monkeypatch.setenv("VRAMGUARD_EXTENDER_EXPLAIN_PENDING", "false")
    monkeypatch.setenv("VRAMGUARD_EXTENDER_SCHEDULER_NAME", "gpu-scheduler")
    settings = load_settings(base)
    assert (settings.explain_pending, settings.scheduler_name) == (False, "gpu-scheduler")
    # The command line wins over the environment.
    settings = load_settings([*base, "--explain-pending", "--scheduler-name", "other"])
    assert (settings.explain_pending, settings.scheduler_name) == (True, "other")


def test_metrics_listener_options(policy: Path, tmp_path: Path) -> None:
    base = kubeconfig_args(policy, tmp_path)
    defaults = load_settings(base)
    assert (defaults.metrics_port, defaults.metrics_host) == (None, "0.0.0.0")
    settings = load_settings([*base, "--metrics-port", "8889"])
    assert (settings.metrics_port, settings.metrics_host) == (8889, "0.0.0.0")
    deps = build_deps(settings, PolicyFile(policy))
    # One advertiser, `vramguard advertise`: the extender runs no advertising thread.
    assert [type(s) for s in deps.services] == [PendingExplainer]


def test_the_removed_advertise_interval_says_what_to_run_instead(
    policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_settings(["--policy", str(policy), "--advertise-interval", "60"])
    assert exit_info.value.code == 2
    assert "run `vramguard advertise`" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        ["--metrics-port", "8888"],
        ["--metrics-port", "0"],
    ],
    ids=["metrics-on-the-verbs-port", "metrics-port-0"],
)
def test_invalid_metrics_options_exit_2(policy: Path, extra: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_settings(["--policy", str(policy), "--prometheus-url", "http://p", *extra])
    assert exit_info.value.code == 2
