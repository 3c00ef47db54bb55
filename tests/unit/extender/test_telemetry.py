from __future__ import annotations

import logging
from typing import Any

import pytest

from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from extender.telemetry import (
    Query,
    QueryPlan,
    TelemetryError,
    TelemetryPoller,
    node_samples,
    parse_vector,
    plan_queries,
    pod_samples,
    read_telemetry,
    sample_times,
)
from gpumem.policy import Telemetry
from gpumem.state import Sample
from tests.unit.extender.factories import NOW, make_node, make_pod, make_policy

NODE_LABELS = ("Hostname", "hostname", "node", "kubernetes_node", "instance")
EVAL = NOW  # instant queries answer with the evaluation time


def dcgm_series(hostname: str, gpu: int, value: str, label: str = "Hostname") -> dict[str, Any]:
    """One DCGM_FI_DEV_FB_FREE series as dcgm-exporter labels it."""
    return {
        "metric": {
            "__name__": "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DRIVER_VERSION": "535.104.05",
            label: hostname,
            "UUID": f"GPU-6f5e{gpu}c2a-93b1-4e8e-8f3c-0b1c2d3e4f5a",
            "device": f"nvidia{gpu}",
            "gpu": str(gpu),
            "instance": "10.244.1.5:9400",
            "job": "gpu-metrics",
            "modelName": "NVIDIA A10G",
            # dcgm-exporter's own pod: not the workload's.
            "namespace": "gpu-operator",
            "pod": "nvidia-dcgm-exporter-7xk2p",
            "pci_bus_id": f"00000000:00:1{gpu}.0",
        },
        "value": [EVAL, value],
    }


def api_response(result: list[Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def timestamps_of(result: list[dict[str, Any]], scraped_at: float) -> list[dict[str, Any]]:
    """The answer of timestamp(<query>): the same series without __name__, valued by the
    scrape time."""
    return [
        {
            "metric": {k: v for k, v in s["metric"].items() if k != "__name__"},
            "value": [EVAL, str(scraped_at)],
        }
        for s in result
    ]


def test_dcgm_multi_gpu_node_sums_free_and_keeps_the_oldest_sample() -> None:
    result = [
        dcgm_series("gpu-1", 0, "14000"),
        dcgm_series("gpu-1", 1, "9000.7"),
        dcgm_series("gpu-2", 0, "22000"),
    ]
    times = timestamps_of(result, NOW - 5)
    times[1]["value"][1] = str(NOW - 20)  # GPU 1 of gpu-1 was scraped earlier

    samples, problems = node_samples(
        parse_vector(api_response(result)),
        NODE_LABELS,
        "MiB",
        sample_times(parse_vector(api_response(times))),
        round_up=False,
    )

    assert samples == {"gpu-1": Sample(23000, NOW - 20), "gpu-2": Sample(22000, NOW - 5)}
    assert problems == []


def test_without_timestamp_query_the_evaluation_time_is_the_sample_time() -> None:
    samples, _ = node_samples(
        parse_vector([dcgm_series("gpu-1", 0, "100")]), NODE_LABELS, "MiB", {}, round_up=False
    )
    assert samples["gpu-1"].sampled_at == EVAL


@pytest.mark.parametrize(
    ("label", "value", "node"),
    [
        ("Hostname", "gpu-1", "gpu-1"),
        ("hostname", "gpu-1", "gpu-1"),
        ("node", "gpu-1", "gpu-1"),
        ("kubernetes_node", "gpu-1", "gpu-1"),
    ],
)
def test_node_label_variants(label: str, value: str, node: str) -> None:
    series = dcgm_series(value, 0, "100", label=label)
    samples, problems = node_samples(parse_vector([series]), NODE_LABELS, "MiB", {}, False)
    assert list(samples) == [node]
    assert problems == []


def test_instance_label_is_a_last_resort_without_its_port() -> None:
    series = {"metric": {"instance": "gpu-1:9400"}, "value": [EVAL, "100"]}
    samples, _ = node_samples(parse_vector([series]), NODE_LABELS, "MiB", {}, False)
    assert list(samples) == ["gpu-1"]


def test_series_without_node_label_is_reported() -> None:
    series = {"metric": {"gpu": "0"}, "value": [EVAL, "100"]}
    samples, problems = node_samples(parse_vector([series]), ("Hostname",), "MiB", {}, False)
    assert samples == {}
    assert "no node label (Hostname)" in problems[0]


def exporter_series(namespace: str, pod: str, pid: int, used_bytes: int, **extra: str) -> Any:
    return {
        "metric": {
            "__name__": "gpu_pod_memory_used_bytes",
            "namespace": namespace,
            "pod": pod,
            "pid": str(pid),
            "gpu": "0",
            "instance": "10.0.0.7:9835",
            **extra,
        },
        "value": [EVAL, str(used_bytes)],
    }


def test_pod_exporter_sums_processes_by_pod_in_mib() -> None:
    mib = 1 << 20
    result = [
        exporter_series("team-a", "trainer-0", 101, 3000 * mib),
        exporter_series("team-a", "trainer-0", 102, 1000 * mib + 1),  # rounds up
        exporter_series("team-b", "infer", 7, 512 * mib),
    ]
    samples, problems = pod_samples(
        parse_vector(api_response(result)), "bytes", sample_times(parse_vector([]))
    )
    assert samples == {
        ("team-a", "trainer-0"): Sample(4001, EVAL),
        ("team-b", "infer"): Sample(512, EVAL),
    }
    assert problems == []


def test_pod_exporter_prefers_exported_labels() -> None:
    # Prometheus renamed the exporter's namespace/pod to exported_* because the scrape target's
    # own namespace/pod labels took the plain names.
    series = exporter_series(
        "monitoring",
        "gpu-exporter-abc",
        1,
        1 << 30,
        exported_namespace="team-a",
        exported_pod="trainer-0",
    )
    samples, _ = pod_samples(parse_vector([series]), "bytes", {})
    assert list(samples) == [("team-a", "trainer-0")]


@pytest.mark.parametrize(
    "bad",
    [
        {"metric": {"Hostname": "gpu-1"}, "value": [EVAL, "NaN"]},
        {"metric": {"Hostname": "gpu-1"}, "value": [EVAL, "+Inf"]},
        {"metric": {"Hostname": "gpu-1"}, "value": [EVAL, "-5"]},
        {"metric": {"Hostname": "gpu-1"}, "value": [EVAL, "lots"]},
        {"metric": {"Hostname": "gpu-1"}, "value": [EVAL]},
        {"metric": {"Hostname": "gpu-1"}, "value": "14000"},
        {"metric": {"Hostname": "gpu-1"}, "values": [[EVAL, "1"]]},  # a range vector
        {"metric": "gpu-1", "value": [EVAL, "1"]},
        "garbage",
        None,
    ],
)
def test_garbage_series_are_skipped_with_a_problem(bad: Any) -> None:
    good = dcgm_series("gpu-2", 0, "100")
    parsed = parse_vector([bad, good])
    assert len(parsed.series) == 1
    assert len(parsed.problems) == 1


@pytest.mark.parametrize(
    "answer",
    [
        "<html>502 Bad Gateway</html>",
        {"status": "error", "errorType": "bad_data", "error": "parse error"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        {"status": "success", "data": {"resultType": "scalar", "result": [EVAL, "1"]}},
        42,
        None,
    ],
)
def test_answers_that_are_not_vectors_fail(answer: Any) -> None:
    with pytest.raises(TelemetryError):
        parse_vector(answer)


def test_plan_presets_and_overrides() -> None:
    assert plan_queries(Telemetry()).free == Query("DCGM_FI_DEV_FB_FREE")
    exporter = plan_queries(Telemetry(preset="pod-exporter"))
    assert exporter.pod_used == Query("gpu_pod_memory_used_bytes", "bytes")
    assert exporter.free is None
    custom = plan_queries(
        Telemetry.model_validate(
            {"preset": "custom", "queries": {"usedMiB": "sum by (node) (x)", "totalMiB": "y"}}
        )
    )
    assert custom == QueryPlan("custom", used=Query("sum by (node) (x)"), total=Query("y"))
    with_pods = plan_queries(Telemetry.model_validate({"queries": {"podUsedMiB": "z"}}))
    assert with_pods.free == Query("DCGM_FI_DEV_FB_FREE")
    assert with_pods.pod_used == Query("z")


class FakePrometheus:
    """Answers instant queries from a dict, as custom_query does (the result list)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.queries: list[str] = []

    def __call__(self, expr: str) -> object:
        self.queries.append(expr)
        answer = self.answers.get(expr, [])
        if isinstance(answer, Exception):
            raise answer
        return answer


def dcgm_answers(free: dict[str, str], scraped_at: float = NOW - 8) -> dict[str, Any]:
    series = [dcgm_series(node, 0, value) for node, value in free.items()]
    return {
        "DCGM_FI_DEV_FB_FREE": series,
        "timestamp(DCGM_FI_DEV_FB_FREE)": timestamps_of(series, scraped_at),
    }


def test_read_telemetry_runs_each_query_with_its_timestamp() -> None:
    prometheus = FakePrometheus(dcgm_answers({"gpu-1": "14000"}))
    reading, problems = read_telemetry(prometheus, plan_queries(Telemetry()), NODE_LABELS, NOW)
    assert prometheus.queries == [
        "DCGM_FI_DEV_FB_FREE",
        "timestamp(DCGM_FI_DEV_FB_FREE)",
        "DCGM_FI_DEV_FB_USED",
        "timestamp(DCGM_FI_DEV_FB_USED)",
    ]
    assert reading.free == {"gpu-1": Sample(14000, NOW - 8)}
    assert reading.pod_used is None
    assert reading.source == "dcgm"
    assert problems == []


@pytest.mark.parametrize(
    "failure",
    [ConnectionError("connection refused"), TimeoutError("read timed out"), ValueError("json")],
)
def test_read_telemetry_wraps_client_failures(failure: Exception) -> None:
    prometheus = FakePrometheus({"DCGM_FI_DEV_FB_FREE": failure})
    with pytest.raises(TelemetryError, match="DCGM_FI_DEV_FB_FREE"):
        read_telemetry(prometheus, plan_queries(Telemetry()), NODE_LABELS, NOW)


def make_poller(prometheus: FakePrometheus, **extender: Any) -> tuple[TelemetryPoller, Any]:
    policy = make_policy(**extender)
    store = ClusterStore(policy, clock=lambda: NOW)
    store.replace_nodes([make_node("gpu-1", allocatable_mib=14000)])
    store.replace_pods([])
    metrics = ExtenderMetrics()
    return TelemetryPoller(prometheus, store, lambda: policy, metrics, clock=lambda: NOW), store


def test_poller_feeds_the_store() -> None:
    poller, store = make_poller(FakePrometheus(dcgm_answers({"gpu-1": "9000"})))
    assert poller.poll_once()
    node = store.snapshot().node("gpu-1")
    assert node.live.free_mib == 9000
    assert node.live.age(NOW) == 8
    assert store.telemetry_status.fetched_at == NOW


def test_poller_logs_once_per_state_change_and_keeps_last_reading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prometheus = FakePrometheus(dcgm_answers({"gpu-1": "9000"}))
    poller, store = make_poller(prometheus)
    assert poller.poll_once()
    prometheus.answers["DCGM_FI_DEV_FB_FREE"] = ConnectionError("connection refused")

    with caplog.at_level(logging.INFO, logger="extender.telemetry"):
        assert not poller.poll_once()
        assert not poller.poll_once()
        assert not poller.poll_once()
        prometheus.answers.update(dcgm_answers({"gpu-1": "8000"}))
        assert poller.poll_once()
        assert poller.poll_once()

    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "failing" in messages[0]
    assert "connection refused" in messages[0]
    assert "back" in messages[1]
    assert store.snapshot().node("gpu-1").live.free_mib == 8000


def test_failure_keeps_samples_that_then_age(caplog: pytest.LogCaptureFixture) -> None:
    prometheus = FakePrometheus(dcgm_answers({"gpu-1": "9000"}))
    poller, store = make_poller(prometheus)
    poller.poll_once()
    prometheus.answers["DCGM_FI_DEV_FB_FREE"] = {"status": "error", "error": "overloaded"}
    with caplog.at_level(logging.WARNING):
        poller.poll_once()
    status = store.telemetry_status
    assert status.failing
    assert "overloaded" in (status.error or "")
    assert store.snapshot().node("gpu-1").live.free_mib == 9000


def test_garbage_series_are_logged_once() -> None:
    answers = dcgm_answers({"gpu-1": "9000"})
    answers["DCGM_FI_DEV_FB_FREE"].append({"metric": {"Hostname": "gpu-2"}, "value": [EVAL, "x"]})
    poller, store = make_poller(FakePrometheus(answers))
    assert poller.poll_once()
    assert store.snapshot().node("gpu-1").live.free_mib == 9000


def test_pod_exporter_node_usage_from_its_pods() -> None:
    mib = 1 << 20
    series = [
        exporter_series("team-a", "a", 1, 3000 * mib),
        exporter_series("team-a", "cpu-only", 2, 500 * mib),  # GPU use without a GPU request
        exporter_series("team-a", "elsewhere", 3, 9000 * mib),
    ]
    prometheus = FakePrometheus(
        {
            "gpu_pod_memory_used_bytes": series,
            "timestamp(gpu_pod_memory_used_bytes)": timestamps_of(series, NOW - 4),
        }
    )
    poller, store = make_poller(prometheus, telemetry={"preset": "pod-exporter"})
    store.replace_nodes([make_node("gpu-1", gfd_memory_mib=16384, gfd_count=1)])
    store.replace_pods(
        [
            make_pod("a", 4000, node="gpu-1"),
            make_pod("cpu-only", None, node="gpu-1", gpu=False),
            make_pod("elsewhere", 9000, node="gpu-2"),
        ]
    )
    assert poller.poll_once()
    node = store.snapshot().node("gpu-1")
    # total from GFD (16384, no slack: that is the card) - used by its pods (3000 + 500)
    assert node.live.free_mib == 16384 - 3500
    assert node.live.used_mib == 3500
    assert node.live.sampled_at == NOW - 4
    assert node.pods[0].used_mib == 3000
    assert node.per_pod_usage


def test_pod_exporter_node_without_gpu_processes_is_fresh_and_unused() -> None:
    prometheus = FakePrometheus({})
    poller, store = make_poller(
        prometheus, telemetry={"preset": "pod-exporter", "nodeTotalMiB": 24000}
    )
    assert poller.poll_once()
    node = store.snapshot().node("gpu-1")
    assert node.live.free_mib == 24000
    assert node.live.age(NOW) == 0
