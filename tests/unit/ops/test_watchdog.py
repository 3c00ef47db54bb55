"""`vramguard watchdog` over fake reads (ops.readings monkeypatched) and a fake pod
deleter: a dry run never deletes, enforcing deletes exactly the chosen pod by UID, Prometheus
or the API down does nothing, DRY_RUN and the flags, --once exit statuses, one log line per
decision, the metrics, and the Kubernetes calls themselves over a fake CoreV1Api."""

from __future__ import annotations

import logging
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from gpumem.policy import Policy
from gpumem.state import PodView, TelemetryReading
from kube.pods import EVENT_REASON, KubernetesPods
from kube.pods import recycled_event as event_body
from ops import main, readings
from ops import watchdog as watchdog_cli
from ops.watchdog_loop import Options, Watchdog
from ops.watchdog_metrics import MetricsServer, RecycleResult, WatchdogMetrics
from tests.unit.extender.factories import NOW, make_node, make_pod, pod_exporter_reading

URL = "http://prometheus:9090"
LOGGER = "ops.watchdog"
NODES = [
    make_node("node-a", allocatable_mib=14000, gfd_memory_mib=15360),
    make_node("node-b", allocatable_mib=14000, gfd_memory_mib=15360),
]
PODS = [
    make_pod("immich-ml", 3000, node="node-a"),
    make_pod("llama-swap", 5000, node="node-a"),
    make_pod("frigate", 2000, node="node-a"),
    make_pod("dcgm-probe", None, node="node-a", namespace="kube-system"),
]
# node-a has 400 MiB free: below --floor 1024 and its default emergency floor, 512; its
# undeclared kube-system pod is never a candidate. node-b is empty.
USAGE = {
    ("team-a", "immich-ml"): 6100,
    ("team-a", "llama-swap"): 6900,
    ("team-a", "frigate"): 1500,
    ("kube-system", "dcgm-probe"): 460,
}
IMMICH_UID = str(PODS[0]["metadata"]["uid"])


class FakePods:
    """watchdog_cli.Pods that records what it is asked to do."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, str, str]] = []
        self.result: tuple[RecycleResult, str] = ("deleted", "")
        self.event_problem: str | None = None

    def delete(self, victim: PodView) -> tuple[RecycleResult, str]:
        self.deleted.append((victim.namespace, victim.name, victim.uid))
        return self.result

    def record_event(self, victim: PodView, message: str, now: float) -> str | None:
        self.events.append((victim.namespace, victim.name, message))
        return self.event_problem


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The command reads NODES and PODS and `reading` (or raises `cluster_error` and
    `reading` when they are exceptions); deletions go to `pods`."""
    state: dict[str, Any] = {
        "reading": pod_exporter_reading(USAGE),
        "cluster_error": None,
        "pods": FakePods(),
        "lists": 0,
    }

    def list_cluster(kubeconfig: Path | None) -> tuple[list[Any], list[Any]]:
        state["lists"] += 1
        if state["cluster_error"] is not None:
            raise state["cluster_error"]
        return NODES, PODS

    def read_live(url: str, policy: Policy, now: float) -> TelemetryReading:
        if isinstance(state["reading"], Exception):
            raise state["reading"]
        reading: TelemetryReading = state["reading"]
        return reading

    monkeypatch.setattr(readings, "list_cluster", list_cluster)
    monkeypatch.setattr(readings, "read_live", read_live)
    monkeypatch.setattr(readings, "now", lambda: NOW)
    monkeypatch.setattr(watchdog_cli, "kubernetes_pods", lambda kubeconfig: state["pods"])
    monkeypatch.delenv("DRY_RUN", raising=False)
    return state


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def decision_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [line for line in lines(caplog, level) if line.startswith("node=")]


def options(**changes: Any) -> Options:
    fields: dict[str, Any] = {
        "prometheus_url": URL,
        "kubeconfig": None,
        "interval": 30.0,
        "floor_mib": 1024,
        "emergency_floor_mib": None,
        "cooldown_seconds": 300.0,
        "nodes": (),
        "dry_run": True,
    }
    fields.update(changes)
    return Options(**fields)


def make_watchdog(pods: FakePods, **changes: Any) -> Watchdog:
    opts = options(**changes)
    return Watchdog(opts, pods, WatchdogMetrics(dry_run=opts.dry_run), Policy)


def sample(metrics: WatchdogMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def once(*extra: str) -> int:
    return main(["watchdog", "--prometheus-url", URL, "--once", "--floor", "1024", *extra])


# --- dry run and enforcing ----------------------------------------------------------------------


def test_a_dry_run_logs_the_victim_and_deletes_nothing(
    cluster: dict[str, Any], logs: pytest.LogCaptureFixture
) -> None:
    assert once() == 0
    assert cluster["pods"].deleted == []
    assert cluster["pods"].events == []
    (line,) = decision_lines(logs)
    assert line == (
        f"node=node-a action=recycle reason=over-budget dry_run=true free=400 floor=1024 "
        f"pod=team-a/immich-ml uid={IMMICH_UID} used=6100 declared=3000 result=dry-run "
        'msg="live free 400 MiB < floor 1024 MiB, and < emergency floor 512 MiB; '
        'team-a/immich-ml uses 6100 MiB of 3000 declared (+3100), the most over its budget"'
    )
    (record,) = [r for r in logs.records if r.getMessage().startswith("node=")]
    assert record.levelno == logging.WARNING
    assert any("DRY RUN" in line for line in lines(logs))


def test_enforcing_deletes_exactly_the_chosen_pod_by_uid(
    cluster: dict[str, Any], logs: pytest.LogCaptureFixture
) -> None:
    assert once("--dry-run", "false") == 0
    assert cluster["pods"].deleted == [("team-a", "immich-ml", IMMICH_UID)]
    ((namespace, name, message),) = cluster["pods"].events
    assert (namespace, name) == ("team-a", "immich-ml")
    assert "team-a/immich-ml uses 6100 MiB of 3000 declared (+3100)" in message
    (line,) = decision_lines(logs)
    assert "action=recycle" in line
    assert "dry_run=false" in line
    assert "result=deleted" in line
    assert any("ENFORCING" in line for line in lines(logs))


@pytest.mark.parametrize(
    ("environment", "flag", "deletes"),
    [
        (None, [], False),
        ("true", [], False),
        ("false", [], True),
        ("FALSE", [], True),
        ("0", [], True),
        ("", [], False),
        ("false", ["--dry-run", "true"], False),  # the flag wins
        ("true", ["--dry-run", "false"], True),
    ],
)
def test_dry_run_comes_from_the_flag_else_the_environment(
    cluster: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    environment: str | None,
    flag: list[str],
    deletes: bool,
) -> None:
    if environment is not None:
        monkeypatch.setenv("DRY_RUN", environment)
    assert once(*flag) == 0
    assert bool(cluster["pods"].deleted) is deletes


def test_an_unreadable_dry_run_environment_is_a_usage_error(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRY_RUN", "maybe")
    assert once() == 2
    assert capsys.readouterr().err == ("vramguard watchdog: DRY_RUN='maybe': not true or false\n")
    assert cluster["lists"] == 0
    assert cluster["pods"].deleted == []


@pytest.mark.parametrize(
    "bad",
    [
        ["--dry-run", "maybe"],
        ["--interval", "0"],
        ["--interval", "often"],
        ["--cooldown", "-1"],
        ["--floor", "1Gi"],
        ["--emergency-floor", "-5"],
        ["--metrics-port", "70000"],
    ],
)
def test_bad_arguments_exit_2(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str], bad: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        once(*bad)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_an_emergency_floor_above_the_floor_is_a_usage_error(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert once("--emergency-floor", "2000") == 2
    assert capsys.readouterr().err == (
        "vramguard watchdog: --emergency-floor 2000 is above --floor 1024\n"
    )


def test_setup_errors_are_one_line(
    cluster: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    assert once("--kubeconfig", str(tmp_path / "nope")) == 2
    assert capsys.readouterr().err == (
        f"vramguard watchdog: kubeconfig {tmp_path / 'nope'}: no such file\n"
    )
    broken = tmp_path / "policy.yaml"
    broken.write_text("extender: [\n")
    assert once("--policy", str(broken)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vramguard watchdog: {broken}: not valid YAML")
    assert "Traceback" not in err

    def no_credentials(kubeconfig: Path | None) -> Any:
        raise RuntimeError("Service host/port is not set.")

    monkeypatch.setattr(watchdog_cli, "kubernetes_pods", no_credentials)
    assert once() == 2
    assert capsys.readouterr().err == (
        "vramguard watchdog: cannot load Kubernetes credentials: Service host/port is not set.\n"
    )


# --- nothing read, nothing done -----------------------------------------------------------------


def test_prometheus_down_does_nothing_and_counts(
    cluster: dict[str, Any], logs: pytest.LogCaptureFixture
) -> None:
    cluster["reading"] = readings.TelemetryUnavailable(
        "telemetry from Prometheus at http://prometheus:9090 unavailable: Connection refused"
    )
    assert once("--dry-run", "false") == 2
    assert cluster["pods"].deleted == []
    assert decision_lines(logs) == []
    (line,) = lines(logs, logging.WARNING)
    assert line == (
        'cycle_error=telemetry action=none msg="telemetry from Prometheus at '
        'http://prometheus:9090 unavailable: Connection refused"'
    )

    pods = FakePods()
    watchdog = make_watchdog(pods, dry_run=False)
    assert watchdog.cycle() == 2
    assert sample(watchdog.metrics, "vramguard_watchdog_cycle_errors_total", kind="telemetry") == 1
    assert sample(watchdog.metrics, "vramguard_watchdog_last_success_timestamp_seconds") == 0
    assert pods.deleted == []


def test_an_unreachable_cluster_does_nothing_and_counts(
    cluster: dict[str, Any], logs: pytest.LogCaptureFixture
) -> None:
    cluster["cluster_error"] = readings.ReadError(
        "listing nodes: cannot reach the API server at https://127.0.0.1:1: Connection refused"
    )
    assert once("--dry-run", "false") == 2
    assert cluster["pods"].deleted == []
    assert [line.split(" ")[0] for line in lines(logs, logging.WARNING)] == ["cycle_error=cluster"]
    watchdog = make_watchdog(FakePods())
    assert watchdog.cycle() == 2
    assert sample(watchdog.metrics, "vramguard_watchdog_cycle_errors_total", kind="cluster") == 1


# --- one cycle ----------------------------------------------------------------------------------


def test_one_log_line_per_decision_that_is_not_ok(
    cluster: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    watchdog = make_watchdog(FakePods())
    assert watchdog.cycle() == 0
    assert [line.split(" ")[:3] for line in decision_lines(caplog, logging.DEBUG)] == [
        ["node=node-a", "action=recycle", "reason=over-budget"],
        ["node=node-b", "action=none", "reason=ok"],
    ]
    ok = [r for r in caplog.records if "reason=ok" in r.getMessage()]
    assert [r.levelno for r in ok] == [logging.DEBUG]
    summary = [line for line in lines(caplog, logging.DEBUG) if line.startswith("cycle ")]
    assert len(summary) == 1
    assert summary[0].startswith("cycle nodes=2 recycle=1 none=1 took=")


def test_metrics_count_decisions_and_recycles(cluster: dict[str, Any]) -> None:
    pods = FakePods()
    watchdog = make_watchdog(pods, dry_run=False)
    assert watchdog.cycle() == 0
    metrics = watchdog.metrics
    decided = "vramguard_watchdog_decisions_total"
    assert sample(metrics, decided, action="recycle", reason="over-budget", dry_run="false") == 1
    assert sample(metrics, decided, action="none", reason="ok", dry_run="false") == 1
    assert sample(metrics, "vramguard_watchdog_recycles_total", result="deleted") == 1
    assert sample(metrics, "vramguard_watchdog_recycles_total", result="dry-run") == 0
    assert sample(metrics, "vramguard_watchdog_last_success_timestamp_seconds") == NOW
    assert sample(metrics, "vramguard_watchdog_dry_run") == 0
    assert WatchdogMetrics(dry_run=True).registry.get_sample_value(
        "vramguard_watchdog_dry_run"
    ) == (1)


def test_the_next_cycle_waits_for_the_cooldown(
    cluster: dict[str, Any], logs: pytest.LogCaptureFixture
) -> None:
    pods = FakePods()
    watchdog = make_watchdog(pods, dry_run=True)
    watchdog.cycle()
    watchdog.cycle()
    assert [line.split(" ")[2] for line in decision_lines(logs)] == [
        "reason=over-budget",
        "reason=cooldown",
    ]
    assert pods.deleted == []


@pytest.mark.parametrize(
    ("result", "status", "remembered"),
    [
        (("gone", "the pod is already gone"), 0, True),
        (("conflict", "the name belongs to another pod now (UID precondition)"), 0, True),
        (("error", "403 pods is forbidden"), 1, False),
    ],
)
def test_delete_results(
    cluster: dict[str, Any],
    logs: pytest.LogCaptureFixture,
    result: tuple[RecycleResult, str],
    status: int,
    remembered: bool,
) -> None:
    pods = FakePods()
    pods.result = result
    watchdog = make_watchdog(pods, dry_run=False)
    assert watchdog.cycle() == status
    assert pods.events == []  # an Event only for a pod this watchdog deleted
    (line,) = decision_lines(logs)
    assert f"result={result[0]}" in line
    if result[0] == "error":
        assert 'error="403 pods is forbidden"' in line
        (record,) = [r for r in logs.records if r.getMessage().startswith("node=")]
        assert record.levelno == logging.ERROR
    watchdog.cycle()
    # A failed delete is tried again at the next cycle; a done one waits for the cooldown.
    assert len(pods.deleted) == (1 if remembered else 2)


def test_an_event_that_cannot_be_recorded_is_logged(
    cluster: dict[str, Any], logs: pytest.LogCaptureFixture
) -> None:
    pods = FakePods()
    pods.event_problem = "recording an event: 403 events is forbidden"
    assert make_watchdog(pods, dry_run=False).cycle() == 0
    assert (
        'node=node-a pod=team-a/immich-ml event_error="recording an event: 403 events is forbidden"'
    ) in lines(logs, logging.WARNING)


def test_only_the_named_nodes(cluster: dict[str, Any], logs: pytest.LogCaptureFixture) -> None:
    pods = FakePods()
    assert make_watchdog(pods, dry_run=False, nodes=("node-b",)).cycle() == 0
    assert pods.deleted == []
    assert decision_lines(logs) == []  # node-b is ok


# --- the loop -----------------------------------------------------------------------------------


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_sigterm_stops_the_loop_cleanly(
    cluster: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    restore_signals: None,
) -> None:
    listed = readings.list_cluster
    cycles = []

    def list_then_stop(kubeconfig: Path | None) -> tuple[list[Any], list[Any]]:
        cycles.append(1)
        if len(cycles) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return listed(kubeconfig)

    monkeypatch.setattr(readings, "list_cluster", list_then_stop)
    status = main(
        ["watchdog", "--prometheus-url", URL, "--interval", "0.01", "--metrics-port", "0"]
    )
    assert status == 0
    assert len(cycles) == 2
    assert lines(logs)[-1] == "stopped"


def test_an_unexpected_error_is_counted_and_the_loop_goes_on(
    cluster: dict[str, Any], monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    calls = []

    def broken(kubeconfig: Path | None) -> Any:
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        raise KeyError("a bug")

    monkeypatch.setattr(readings, "list_cluster", broken)
    watchdog = make_watchdog(FakePods(), interval=0.01)
    watchdog.loop(stop)
    assert len(calls) == 3
    assert sample(watchdog.metrics, "vramguard_watchdog_cycle_errors_total", kind="internal") == 3
    assert watchdog.last_cycle_ended is not None


def test_the_metrics_server_serves_metrics_and_probes(cluster: dict[str, Any]) -> None:
    watchdog = make_watchdog(FakePods())
    server = MetricsServer(watchdog, 0, stale_after=60)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as err:
                return err.code, err.read().decode()

        watchdog.cycle()
        status, text = get("/metrics")
        assert status == 200
        assert 'vramguard_watchdog_recycles_total{result="dry-run"} 1.0' in text
        assert get("/healthz") == (200, "ok\n")
        assert get("/readyz") == (200, "ok\n")
        assert get("/nope")[0] == 404
        watchdog.last_cycle_ended = -1e9  # long ago: the loop is stuck
        assert get("/healthz")[0] == 503
        assert get("/readyz") == (200, "ok\n")  # still scraped
    finally:
        server.stop()


# --- the Kubernetes calls -----------------------------------------------------------------------


class FakeCore:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def delete_namespaced_pod(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("delete", args, kwargs))
        if self.error is not None:
            raise self.error

    def create_namespaced_event(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("event", args, kwargs))
        if self.error is not None:
            raise self.error


VICTIM = PodView("u-123", "team-a", "immich-ml", 3000, 6100, 0.0)


def api_error(status: int, message: str) -> ApiException:
    err = ApiException(status=status, reason="Reason")
    err.body = f'{{"kind":"Status","message":"{message}"}}'
    return err


def test_delete_carries_the_uid_precondition() -> None:
    core = FakeCore()
    assert KubernetesPods(core, "host").delete(VICTIM) == ("deleted", "")
    ((verb, args, kwargs),) = core.calls
    assert (verb, args) == ("delete", ("immich-ml", "team-a"))
    assert kwargs["body"].preconditions.uid == "u-123"
    assert kwargs["body"].grace_period_seconds is None  # the pod's own grace period


@pytest.mark.parametrize(
    ("error", "result"),
    [
        (api_error(404, "not found"), ("gone", "the pod is already gone")),
        (
            api_error(409, "Precondition failed: UID in precondition: u-123"),
            ("conflict", "the name belongs to another pod now (UID precondition)"),
        ),
        (api_error(403, "pods is forbidden"), ("error", "403 pods is forbidden")),
        (
            ConnectionRefusedError(111, "Connection refused"),
            ("error", "[Errno 111] Connection refused"),
        ),
    ],
)
def test_delete_failures(error: Exception, result: tuple[str, str]) -> None:
    assert KubernetesPods(FakeCore(error), "host").delete(VICTIM) == result


def test_the_event_names_the_pod_and_says_why() -> None:
    core = FakeCore()
    assert KubernetesPods(core, "watchdog-7d9f").record_event(VICTIM, "why", NOW) is None
    ((verb, args, _),) = core.calls
    namespace, body = args
    assert (verb, namespace) == ("event", "team-a")
    assert body == event_body(VICTIM, "why", NOW, instance="watchdog-7d9f")
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "team-a",
        "name": "immich-ml",
        "uid": "u-123",
    }
    assert (body["type"], body["reason"], body["message"]) == ("Warning", EVENT_REASON, "why")
    assert body["metadata"] == {"generateName": "immich-ml.", "namespace": "team-a"}
    assert body["firstTimestamp"] == "2023-11-14T22:13:20Z"
    problem = KubernetesPods(FakeCore(api_error(403, "events is forbidden")), "h").record_event(
        VICTIM, "why", NOW
    )
    assert problem == "recording an event: 403 events is forbidden"
