"""The benchmark table's arithmetic and formatting (tests.bench.table): no timing here."""

from __future__ import annotations

import math

import pytest

from tests.bench.table import (
    HEADERS,
    NOT_APPLICABLE,
    Row,
    Target,
    cells,
    format_quantity,
    markdown_table,
    ratio,
)


@pytest.mark.parametrize(
    ("value", "baseline", "expected"),
    [
        (6.0, 5.0, 1.2),
        (5.0, 5.0, 1.0),
        (None, 5.0, None),
        (5.0, None, None),
        (5.0, 0.0, None),
        (math.nan, 5.0, None),
        (5.0, math.nan, None),
    ],
)
def test_ratio_is_value_over_baseline_when_both_are_measured(
    value: float | None, baseline: float | None, expected: float | None
) -> None:
    assert ratio(value, baseline) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("target", "value", "ratio_", "met"),
    [
        (Target("value", "<", 2.0), 1.99, None, True),
        (Target("value", "<", 2.0), 2.0, None, False),
        (Target("ratio", "<=", 1.25), 9.0, 1.25, True),
        (Target("ratio", "<=", 1.25), 1.0, 1.26, False),
        (Target("ratio", ">=", 0.5), 1.0, 0.5, True),
        (Target("ratio", ">=", 0.5), 1.0, 0.11, False),
        (Target("ratio", ">=", 0.5), 1.0, None, None),
        (Target("value", "<", 5.0), math.nan, None, None),
    ],
)
def test_target_judges_the_number_it_is_about(
    target: Target, value: float, ratio_: float | None, met: bool | None
) -> None:
    assert target.met(value, ratio_) is met


def test_row_met_uses_its_own_ratio() -> None:
    row = Row(
        "sched",
        "500 nodes",
        value=40.0,
        unit="pods/s",
        baseline=100.0,
        baseline_label="plain",
        target=Target("ratio", ">=", 0.5),
    )
    assert row.ratio == pytest.approx(0.4)
    assert row.met is False
    assert Row("rss", "idle", 80.0, "MiB", 60.0).met is None


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.5432, "ms", "0.54 ms"),
        (12.345, "ms", "12.3 ms"),
        (1234.5, "pods/s", "1,234 pods/s"),
        (2.0, "ms", "2 ms"),
        (None, "ms", NOT_APPLICABLE),
        (math.nan, "ms", NOT_APPLICABLE),
        (math.inf, "ms", "∞ ms"),
    ],
)
def test_quantities_keep_a_readable_precision(value: float | None, unit: str, text: str) -> None:
    assert format_quantity(value, unit) == text


def test_cells_show_baseline_ratio_target_and_verdict() -> None:
    row = Row(
        "pod CREATE p50, GPU pod",
        "webhook registered",
        value=6.0,
        unit="ms",
        baseline=5.0,
        baseline_label="not registered",
        target=Target("ratio", "<=", 1.25),
    )
    assert cells(row) == (
        "pod CREATE p50, GPU pod",
        "webhook registered",
        "5 ms (not registered)",
        NOT_APPLICABLE,
        "6 ms",
        "1.20\u00d7",
        NOT_APPLICABLE,
        "<= 1.25\u00d7",
        "yes",
    )


def test_a_floor_gets_its_own_ratio_and_targets_on_it() -> None:
    row = Row(
        "pod CREATE p50, GPU pod",
        "vramguard registered",
        value=6.0,
        unit="ms",
        baseline=4.0,
        baseline_label="not registered",
        floor=5.0,
        floor_label="no-op webhook",
        target=(Target("ratio", "<=", 1.5), Target("floor_ratio", "<=", 1.15)),
    )
    assert row.floor_ratio == pytest.approx(1.2)
    assert row.met is False  # 1.5x the plain baseline is met, 1.2x the floor is not
    assert cells(row) == (
        "pod CREATE p50, GPU pod",
        "vramguard registered",
        "4 ms (not registered)",
        "5 ms (no-op webhook)",
        "6 ms",
        "1.50\u00d7",
        "1.20\u00d7",
        "<= 1.50\u00d7, <= 1.15\u00d7 floor",
        "**no**",
    )
    assert Row("x", "", 5.5, "ms", 4.0, floor=5.0, target=row.target).met is True


def test_a_floor_target_without_a_floor_is_not_measured() -> None:
    row = Row("x", "", 5.0, "ms", 4.0, target=Target("floor_ratio", "<=", 1.15))
    assert row.met is None
    assert cells(row)[-1] == "not measured"


def test_a_row_without_a_value_shows_its_note_and_no_verdict() -> None:
    row = Row("memory", "", None, "", note="failed: TimeoutError", target=Target("value", "<", 1))
    values = cells(row)
    assert values[4] == "failed: TimeoutError"
    assert values[5] == NOT_APPLICABLE
    assert values[-1] == "not measured"


def test_markdown_table_has_a_header_a_separator_and_aligned_rows() -> None:
    rows = [
        Row("a", "x", 1.0, "ms", baseline=2.0, target=Target("value", "<", 2.0)),
        Row("a much longer measure", "y", 3.0, "ms", target=Target("value", "<", 2.0)),
    ]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == list(HEADERS)
    assert set(lines[1]) <= {"|", "-"}
    assert len({len(line) for line in lines}) == 1  # padded: also reads as plain text
    assert lines[2].rstrip("| ").endswith("yes")
    assert lines[3].rstrip("| ").endswith("**no**")


# --- the floors' servers (tests.bench.floors): what they answer, not how fast ---------------


def test_floor_webhook_allows_with_no_patch_or_the_fixed_one_and_counts_calls() -> None:
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    from starlette.testclient import TestClient  # noqa: PLC0415

    from tests.bench.floors import webhook_app  # noqa: PLC0415

    patch = b'[{"op":"add","path":"/spec/schedulerName","value":"vramguard-scheduler"}]'
    review = {"request": {"uid": "u-1", "object": {"kind": "Pod"}}}
    with TestClient(webhook_app(patch)) as client:
        noop = client.post("/noop", content=json.dumps(review)).json()["response"]
        fixed = client.post("/patch", content=json.dumps(review)).json()["response"]
        client.post("/patch", content=json.dumps(review))
        calls = client.get("/calls").json()
    assert noop == {"uid": "u-1", "allowed": True}
    assert fixed["uid"] == "u-1"
    assert fixed["allowed"] is True
    assert fixed["patchType"] == "JSONPatch"
    assert base64.b64decode(fixed["patch"]) == patch
    assert calls == {"noop": 1, "patch": 2}


def test_floor_extender_passes_every_node_scores_zero_and_binds_through_the_binder() -> None:
    from starlette.testclient import TestClient  # noqa: PLC0415

    from kube.errors import BindError  # noqa: PLC0415
    from tests.bench.floors import extender_app  # noqa: PLC0415

    class Binder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str, str, str]] = []

        def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
            self.calls.append((namespace, name, uid, node))
            if node == "broken":
                raise BindError("binding ns/p to broken: 409 conflict")

    binder = Binder()
    names = ["gpu-1", "gpu-2"]
    with TestClient(extender_app(binder)) as client:
        filtered = client.post("/filter", json={"Pod": {}, "NodeNames": names}).json()
        nodes = {"items": [{"metadata": {"name": "gpu-3"}}]}
        by_object = client.post("/filter", json={"Pod": {}, "Nodes": nodes}).json()
        scores = client.post("/prioritize", json={"Pod": {}, "NodeNames": names}).json()
        bind = {"PodName": "p", "PodNamespace": "ns", "PodUID": "u", "Node": "gpu-1"}
        bound = client.post("/bind", json=bind).json()
        failed = client.post("/bind", json={**bind, "Node": "broken"}).json()
    assert filtered["NodeNames"] == names
    assert filtered["FailedNodes"] == {}
    assert by_object["Nodes"] == nodes
    assert scores == [{"Host": "gpu-1", "Score": 0}, {"Host": "gpu-2", "Score": 0}]
    assert bound == {"Error": ""}
    assert "409 conflict" in failed["Error"]
    assert binder.calls == [("ns", "p", "u", "gpu-1"), ("ns", "p", "u", "broken")]
