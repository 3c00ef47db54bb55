from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from extender.telemetry import Query, QueryPlan, TelemetryPoller, plan_queries, read_telemetry
from extender.telemetry_parse import (
    LabelSet,
    Parsed,
    TelemetryError,
    Unit,
    device_figures,
    parse_vector,
    plausible_reading,
    pod_samples,
    sample_times,
)
from gpumem.policy import Telemetry
from gpumem.state import CardSample, Sample, TelemetryReading
from tests.unit.extender.factories import NOW, make_node, make_pod, make_policy
from tests.unit.extender.prometheus_answers import (
    EVAL,
    MIB,
    NODE_LABELS,
    FakePrometheus,
    answers_for,
    api_response,
    dcgm_series,
    exporter_series,
    labelled,
    on_pod,
    timestamps_of,
)


def node_samples(
    parsed: Parsed,
    node_labels: Sequence[str],
    unit: Unit,
    times: Mapping[LabelSet, float],
    round_up: bool,
) -> tuple[dict[str, Sample], list[str]]:
    """The node-level figures of device_figures, as these tests read them."""
    figures = device_figures(parsed, node_labels, unit, times, round_up)
    return figures.nodes, figures.problems


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


def test_plan_node_agent_preset() -> None:
    plan = plan_queries(Telemetry(preset="node-agent"))
    assert plan.free == Query("vramguard_gpu_memory_free_bytes", "bytes", names_pods=False)
    assert plan.used == Query("vramguard_gpu_memory_used_bytes", "bytes", names_pods=False)
    assert plan.total == Query("vramguard_gpu_memory_total_bytes", "bytes", names_pods=False)
    assert plan.pod_used == Query("gpu_pod_memory_used_bytes", "bytes")
    assert plan.assignment == Query("vramguard_pod_gpu_assignment")
    # A replaced query is in MiB and keeps what the preset knows about its pod labels.
    custom = Telemetry.model_validate(
        {"preset": "node-agent", "queries": {"freeMiB": "f", "podCard": "which_gpu"}}
    )
    assert plan_queries(custom).free == Query("f", names_pods=False)
    assert plan_queries(custom).assignment == Query("which_gpu")
    assert plan_queries(Telemetry()).assignment is None


def test_read_dcgm_two_cards_with_pod_mapping() -> None:
    gpu0, gpu1 = dcgm_series("gpu-1", 0, "6000"), dcgm_series("gpu-1", 1, "6000")
    used0 = {
        "metric": gpu0["metric"] | {"__name__": "DCGM_FI_DEV_FB_USED"},
        "value": [EVAL, "10384"],
    }
    answers = answers_for(
        {
            "DCGM_FI_DEV_FB_FREE": [on_pod(gpu0, "team-a", "a"), on_pod(gpu0, "team-a", "b"), gpu1],
            "DCGM_FI_DEV_FB_USED": [on_pod(used0, "team-a", "a"), on_pod(used0, "team-a", "b")],
        },
        NOW - 3,
    )
    reading, problems = read_telemetry(
        FakePrometheus(answers), plan_queries(Telemetry()), NODE_LABELS, NOW
    )
    uuid0, uuid1 = gpu0["metric"]["UUID"], gpu1["metric"]["UUID"]
    assert reading.free == {"gpu-1": Sample(12000, NOW - 3)}  # not 18000: repeats counted once
    assert reading.used == {"gpu-1": Sample(10384, NOW - 3)}
    assert reading.cards["gpu-1"] == {
        uuid0: CardSample(uuid0, "0", Sample(6000, NOW - 3), Sample(10384, NOW - 3)),
        uuid1: CardSample(uuid1, "1", free=Sample(6000, NOW - 3)),
    }
    # The exporter's own pod labels the card nobody holds: harmless, it requests no GPU.
    assert reading.pod_cards == {
        ("team-a", "a"): uuid0,
        ("team-a", "b"): uuid0,
        ("gpu-operator", "nvidia-dcgm-exporter-7xk2p"): uuid1,
    }
    assert problems == []


def test_read_node_agent() -> None:
    agent_pod = {"namespace": "vramguard", "pod": "vramguard-node-agent-x"}  # target labels
    per_gpu = [
        labelled(str(n * MIB), node="gpu-1", gpu=g, uuid=f"GPU-{g}", **agent_pod)
        for g, n in (("0", 6000), ("1", 6000))
    ]
    usage = [
        exporter_series(
            "vramguard",
            "vramguard-node-agent-x",
            1,
            3000 * MIB,
            exported_namespace="team-a",
            exported_pod="a",
            uuid="GPU-0",
        ),
    ]
    assignment = [
        labelled("1", namespace="team-a", pod="a", container="main", gpu="1", uuid="GPU-1"),
        labelled("1", namespace="team-a", pod="b", container="main", gpu="0", uuid="GPU-0"),
        labelled("1", namespace="team-a", pod="b", container="side", gpu="1", uuid="GPU-1"),
    ]
    answers = answers_for(
        {
            "vramguard_gpu_memory_free_bytes": per_gpu,
            "vramguard_gpu_memory_total_bytes": per_gpu,
            "gpu_pod_memory_used_bytes": usage,
        },
        NOW - 2,
    )
    prometheus = FakePrometheus(answers | {"vramguard_pod_gpu_assignment": assignment})
    plan = plan_queries(Telemetry(preset="node-agent"))
    reading, problems = read_telemetry(prometheus, plan, NODE_LABELS, NOW)
    assert "timestamp(vramguard_pod_gpu_assignment)" not in prometheus.queries
    assert prometheus.queries[-1] == "vramguard_pod_gpu_assignment"
    assert reading.source == "node-agent"
    assert reading.free == {"gpu-1": Sample(12000, NOW - 2)}
    assert reading.cards["gpu-1"]["GPU-1"] == CardSample(
        "GPU-1", "1", free=Sample(6000, NOW - 2), total=Sample(6000, NOW - 2)
    )
    assert reading.pod_used == {("team-a", "a"): Sample(3000, NOW - 2)}
    # The assignment wins over the usage labels; b holds two cards, so its card is unknown;
    # the agent's own pod, on every card's series, claims none.
    assert reading.pod_cards == {("team-a", "a"): "GPU-1"}
    assert problems == [
        "pod team-a/b on 2 GPUs in vramguard_pod_gpu_assignment (GPU-0, GPU-1): "
        "its card is left unknown"
    ]


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


def rejected_count(metrics: ExtenderMetrics, figure: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "vramguard_extender_telemetry_rejected_samples_total",
        {"figure": figure, "reason": reason},
    )
    return value or 0.0


# (A negative series never gets this far: parse_vector skips it as a bad value.)
@pytest.mark.parametrize(("free", "reason"), [("1e308", "above-total"), ("15361", "above-total")])
def test_implausible_free_is_dropped_and_counted(
    free: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17: free 1e308 MiB was trusted, so the node passed every pod's live check."""
    policy = make_policy(staleMode="deny")
    store = ClusterStore(policy, clock=lambda: NOW)
    # A T4 as GPU Feature Discovery labels it: 15360 MiB, one card.
    store.replace_nodes(
        [
            make_node("gpu-1", allocatable_mib=14000, gfd_memory_mib=15360, gfd_count=1),
            make_node("gpu-2", allocatable_mib=14000, gfd_memory_mib=15360, gfd_count=1),
        ]
    )
    store.replace_pods([])
    metrics = ExtenderMetrics()
    prometheus = FakePrometheus(dcgm_answers({"gpu-1": free, "gpu-2": "15360"}))
    poller = TelemetryPoller(prometheus, store, lambda: policy, metrics, clock=lambda: NOW)

    with caplog.at_level(logging.WARNING, logger="extender.telemetry"):
        assert poller.poll_once()

    dropped, kept = store.snapshot().node("gpu-1"), store.snapshot().node("gpu-2")
    assert dropped is not None
    assert kept is not None
    assert kept.live is not None
    assert dropped.live is None  # no live figure: staleMode decides
    assert kept.live.free_mib == 15360  # at the total: plausible
    # The card's series (it carries a UUID) and the node's sum of it.
    assert rejected_count(metrics, "free", reason) == 2
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"gpu-1: free {'1e+308' if free == '1e308' else free} MiB" in logged
    assert "dropped" in logged


def test_card_free_above_its_reported_total_is_dropped() -> None:
    now = NOW
    card = CardSample(
        "GPU-0", "0", free=Sample(99999, now), used=Sample(100, now), total=Sample(15360, now)
    )
    good = CardSample(
        "GPU-1", "1", free=Sample(15000, now), used=Sample(360, now), total=Sample(15360, now)
    )
    reading = TelemetryReading(
        source="dcgm",
        fetched_at=now,
        free={"n": Sample(114999, now)},
        used={"n": Sample(460, now)},
        cards={"n": {"GPU-0": card, "GPU-1": good}},
    )

    vetted, rejections = plausible_reading(reading, {"n": None})

    assert vetted.cards["n"]["GPU-0"].free is None
    assert vetted.cards["n"]["GPU-0"].used == Sample(100, now)
    assert vetted.cards["n"]["GPU-1"] == good
    assert [(r.card, r.figure, r.reason, r.limit_mib) for r in rejections] == [
        ("GPU-0", "free", "above-total", 15360)
    ]
    # Without a node total or GFD labels the node sum has no known limit: kept.
    assert vetted.free == reading.free
    plain = replace(reading, cards={"n": {"GPU-1": good}}, free={})
    assert plausible_reading(plain, {}) == (plain, [])
