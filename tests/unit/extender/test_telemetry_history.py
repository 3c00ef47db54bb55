"""Range queries of the presets' per-pod series (`vramguard recommend`): the expression, the
matrix parsing, the per-pod sums step by step, and that instant queries are unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from extender.telemetry import (
    HistoryWindow,
    Query,
    QueryPlan,
    history_expr,
    plan_queries,
    read_pod_history,
)
from extender.telemetry_parse import TelemetryError, parse_matrix, parse_vector, pod_histories
from gpumem.policy import Telemetry, TelemetryQueries
from gpumem.recommend import UsageHistory
from tests.unit.extender.factories import NOW

MIB = 1 << 20
STEP = 360


def matrix(*series: tuple[dict[str, str], list[tuple[float, str]]]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": labels, "values": [[t, v] for t, v in points]}
                for labels, points in series
            ],
        },
    }


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("pod-exporter", f"max_over_time(gpu_pod_memory_used_bytes[{STEP}s])"),
        ("node-agent", f"max_over_time(gpu_pod_memory_used_bytes[{STEP}s])"),
    ],
)
def test_the_presets_per_pod_series_is_read_as_the_peak_of_each_step(
    preset: str, expected: str
) -> None:
    plan = plan_queries(Telemetry.model_validate({"preset": preset}))
    assert plan.pod_used is not None
    assert history_expr(plan.pod_used, STEP) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('gpu_mem{job="x",a=~"b.*"}', f'max_over_time(gpu_mem{{job="x",a=~"b.*"}}[{STEP}s])'),
        # Anything but a plain selector needs a subquery.
        (
            "sum by (namespace, pod) (x) / 1048576",
            f"max_over_time((sum by (namespace, pod) (x) / 1048576)[{STEP}s:])",
        ),
        ("  rate(x[5m])  ", f"max_over_time((rate(x[5m]))[{STEP}s:])"),
    ],
)
def test_custom_queries_are_wrapped_as_a_selector_or_a_subquery(expr: str, expected: str) -> None:
    assert history_expr(Query(expr), STEP) == expected


def test_a_custom_pod_query_replaces_the_presets() -> None:
    telemetry = Telemetry(
        preset="dcgm", queries=TelemetryQueries(pod_used_mib="my_pod_mib", free_mib="x")
    )
    plan = plan_queries(telemetry)
    assert plan.pod_used == Query("my_pod_mib")


def test_pod_series_are_summed_per_pod_at_each_step_in_mib_rounded_up() -> None:
    answer = matrix(
        (
            {"namespace": "immich", "pod": "immich-ml-0", "pid": "1"},
            [(NOW, str(2000 * MIB)), (NOW + STEP, str(10000 * MIB))],
        ),
        (
            {"namespace": "immich", "pod": "immich-ml-0", "pid": "2"},
            [(NOW, str(600 * MIB)), (NOW + STEP, str(700 * MIB + 1))],
        ),
        # Scraped without honorLabels: the workload's labels are exported_*.
        (
            {
                "namespace": "gpu-operator",
                "pod": "exporter-x",
                "exported_namespace": "frigate",
                "exported_pod": "frigate-0",
            },
            [(NOW + STEP, str(900 * MIB))],
        ),
    )
    histories, problems = pod_histories(parse_matrix(answer), "bytes")
    assert histories == {
        ("immich", "immich-ml-0"): UsageHistory(((NOW, 2600), (NOW + STEP, 10701))),
        ("frigate", "frigate-0"): UsageHistory(((NOW + STEP, 900),)),
    }
    assert problems == []


def test_bad_points_and_series_without_pod_labels_are_skipped_and_said() -> None:
    answer = matrix(
        ({"namespace": "a", "pod": "p"}, [(NOW, "NaN"), (NOW + STEP, "512"), (NOW, "-1")]),
        ({"node": "gpu-1"}, [(NOW, "5")]),
    )
    parsed = parse_matrix(answer)
    (problem,) = parsed.problems
    assert problem.startswith("unusable point")
    histories, problems = pod_histories(parsed, "MiB")
    assert histories == {("a", "p"): UsageHistory(((NOW + STEP, 512),))}
    assert problems == ["no namespace/pod labels in {'node': 'gpu-1'}"]
    assert parse_matrix([{"metric": {}, "values": "x"}]).problems


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "error", "error": "bad_data: parse error"},
        {"status": "success", "data": {"resultType": "vector", "result": []}},
        {"status": "success", "data": {"resultType": "matrix", "result": "nope"}},
    ],
)
def test_an_answer_that_is_no_matrix_is_a_telemetry_error(answer: object) -> None:
    with pytest.raises(TelemetryError):
        parse_matrix(answer)


def test_instant_queries_still_refuse_a_matrix() -> None:
    with pytest.raises(TelemetryError, match="instant vector"):
        parse_vector(matrix())
    assert parse_vector({"status": "success", "data": {"resultType": "vector", "result": []}})


class FakeRange:
    def __init__(self, answer: object = None, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, float, float, int]] = []
        self._answer = answer
        self._error = error

    def __call__(self, expr: str, start: float, end: float, step_seconds: int) -> object:
        self.calls.append((expr, start, end, step_seconds))
        if self._error is not None:
            raise self._error
        return self._answer


def test_read_pod_history_asks_for_the_window_one_step_in() -> None:
    answer = matrix(({"namespace": "a", "pod": "p"}, [(NOW, str(MIB))]), ({}, [(NOW, "1")]))
    fake = FakeRange(answer)
    plan = plan_queries(Telemetry(preset="node-agent"))
    window = HistoryWindow(NOW - 7 * 86400, NOW, STEP)
    histories, problems = read_pod_history(fake, plan, window)
    assert fake.calls == [
        (f"max_over_time(gpu_pod_memory_used_bytes[{STEP}s])", window.start + STEP, NOW, STEP)
    ]
    assert histories == {("a", "p"): UsageHistory(((NOW, 1),))}
    assert problems == ["no namespace/pod labels in {}"]


def test_read_pod_history_needs_a_per_pod_query_and_wraps_failures() -> None:
    window = HistoryWindow(NOW - 3600, NOW, 60)
    with pytest.raises(TelemetryError, match="preset dcgm has no per-pod GPU memory series"):
        read_pod_history(FakeRange(), plan_queries(Telemetry(preset="dcgm")), window)
    plan = QueryPlan("custom", pod_used=Query("x"))
    with pytest.raises(TelemetryError, match="ConnectionError: refused"):
        read_pod_history(FakeRange(error=ConnectionError("refused")), plan, window)
