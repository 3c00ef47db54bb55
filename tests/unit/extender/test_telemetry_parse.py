"""Cards from per-GPU series, and which card each pod holds (extender.telemetry_parse)."""

from __future__ import annotations

from typing import Any

import pytest

from extender.telemetry_parse import (
    CardFigure,
    TelemetryError,
    card_claims,
    device_figures,
    parse_vector,
    pod_cards,
    sample_times,
)
from gpumem.state import Sample
from tests.unit.extender.prometheus_answers import (
    EVAL,
    MIB,
    NODE_LABELS,
    at,
    dcgm_series,
    labelled,
    on_pod,
    timestamps_of,
)

GPU0 = dcgm_series("gpu-1", 0, "6000")
GPU1 = dcgm_series("gpu-1", 1, "6000")
UUID0 = GPU0["metric"]["UUID"]
UUID1 = GPU1["metric"]["UUID"]


def card(mib: int, index: str | None, when: float = EVAL) -> CardFigure:
    return CardFigure(Sample(mib, when), index)


# (case, series, round_up, expected cards, expected node samples)
CARD_CASES: list[tuple[str, list[Any], bool, dict[tuple[str, str], CardFigure], dict[str, int]]] = [
    (
        "two cards on a node: each its own, the node their sum",
        [GPU0, GPU1],
        False,
        {("gpu-1", UUID0): card(6000, "0"), ("gpu-1", UUID1): card(6000, "1")},
        {"gpu-1": 12000},
    ),
    (
        "a card repeated once per pod on it is one card, never a sum",
        [on_pod(GPU0, "team-a", "a"), on_pod(GPU0, "team-a", "b"), on_pod(GPU0, "team-b", "c")],
        False,
        {("gpu-1", UUID0): card(6000, "0")},
        {"gpu-1": 6000},
    ),
    (
        "repeats on one card and a card nobody holds",
        [on_pod(GPU0, "team-a", "a"), on_pod(GPU0, "team-a", "b"), GPU1],
        False,
        {("gpu-1", UUID0): card(6000, "0"), ("gpu-1", UUID1): card(6000, "1")},
        {"gpu-1": 12000},
    ),
    (
        # dcgm-exporter's per-pod FB_USED beside the card's own: the card's is the largest.
        "used: the card's own figure wins over per-pod parts of it",
        [at(GPU0, "10384"), at(on_pod(GPU0, "team-a", "a"), "3000"), at(GPU1, "1000")],
        True,
        {("gpu-1", UUID0): card(10384, "0"), ("gpu-1", UUID1): card(1000, "1")},
        {"gpu-1": 11384},
    ),
    (
        "free: among equally new repeats the least free wins",
        [at(GPU0, "6000"), at(on_pod(GPU0, "team-a", "a"), "5990")],
        False,
        {("gpu-1", UUID0): card(5990, "0")},
        {"gpu-1": 5990},
    ),
    (
        "the newest series of a card wins, however large",
        [at(GPU0, "5000", EVAL - 30), at(on_pod(GPU0, "team-a", "a"), "7000", EVAL - 5)],
        False,
        {("gpu-1", UUID0): card(7000, "0", EVAL - 5)},
        {"gpu-1": 7000},
    ),
    (
        "series without a UUID are summed per node as before, beside the cards",
        [GPU0, labelled("1000", node="gpu-1"), labelled("500.5", node="gpu-1")],
        False,
        {("gpu-1", UUID0): card(6000, "0")},
        {"gpu-1": 7500},
    ),
    (
        "the node agent's lowercase uuid, and a card without an index",
        [
            labelled("100", node="gpu-1", uuid="GPU-a", gpu="3"),
            labelled("50", node="gpu-1", uuid="GPU-b"),
        ],
        False,
        {("gpu-1", "GPU-a"): card(100, "3"), ("gpu-1", "GPU-b"): card(50, None)},
        {"gpu-1": 150},
    ),
    (
        "one UUID under two nodes (a relabelling slip) is two cards",
        [GPU0, dcgm_series("gpu-2", 0, "4000")],
        False,
        {("gpu-1", UUID0): card(6000, "0"), ("gpu-2", UUID0): card(4000, "0")},
        {"gpu-1": 6000, "gpu-2": 4000},
    ),
    (
        # MIG instances share their parent's UUID with values of their own: not repeats.
        "MIG instances are summed per node, not taken for one card",
        [at(GPU0, "1000") | {"metric": GPU0["metric"] | {"GPU_I_ID": str(i)}} for i in (1, 2)],
        False,
        {},
        {"gpu-1": 2000},
    ),
]


@pytest.mark.parametrize(
    ("series", "round_up", "cards", "nodes"),
    [case[1:] for case in CARD_CASES],
    ids=[case[0] for case in CARD_CASES],
)
def test_cards_and_node_sums(
    series: list[Any],
    round_up: bool,
    cards: dict[tuple[str, str], CardFigure],
    nodes: dict[str, int],
) -> None:
    figures = device_figures(parse_vector(series), NODE_LABELS, "MiB", {}, round_up)
    assert figures.cards == cards
    assert {node: sample.mib for node, sample in figures.nodes.items()} == nodes
    assert figures.problems == []


def test_a_node_is_as_old_as_its_oldest_card_and_stale_repeats_do_not_age_it() -> None:
    series = [GPU0, on_pod(GPU0, "team-a", "a"), GPU1]
    times = timestamps_of(series, EVAL - 5)
    times[0]["value"][1] = str(EVAL - 40)  # a repeat left from an older scrape
    times[2]["value"][1] = str(EVAL - 12)
    figures = device_figures(
        parse_vector(series), NODE_LABELS, "MiB", sample_times(parse_vector(times)), False
    )
    assert figures.cards[("gpu-1", UUID0)].sample.sampled_at == EVAL - 5
    assert figures.nodes["gpu-1"] == Sample(12000, EVAL - 12)


def test_bytes_round_down_for_free_and_up_for_used_per_card() -> None:
    series = [labelled(str(6000 * MIB + 1), node="n", uuid="GPU-a")]
    free = device_figures(parse_vector(series), NODE_LABELS, "bytes", {}, round_up=False)
    used = device_figures(parse_vector(series), NODE_LABELS, "bytes", {}, round_up=True)
    assert (free.cards[("n", "GPU-a")].sample.mib, used.cards[("n", "GPU-a")].sample.mib) == (
        6000,
        6001,
    )


def test_a_card_series_without_a_node_is_a_problem() -> None:
    figures = device_figures(
        parse_vector([labelled("1", uuid="GPU-a")]), ("node",), "MiB", {}, False
    )
    assert figures.cards == {}
    assert "no node label (node)" in figures.problems[0]


# --- answers that are not usable ----------------------------------------------------------------


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


# --- which card a pod holds --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "claims"),
    [
        # dcgm-exporter's mapping, renamed by Prometheus: the exported_* pair names the pod.
        (on_pod(GPU0, "team-a", "a")["metric"], {("team-a", "a"): {UUID0}}),
        # Without exported_* labels the plain pair is the pod (a scrape without target pods).
        ({"namespace": "team-a", "pod": "a", "uuid": "GPU-a"}, {("team-a", "a"): {"GPU-a"}}),
        # The seeds' per-pod exporter: a gpu index but no UUID, so no card.
        ({"namespace": "team-a", "pod": "a", "gpu": "0"}, {}),
        # A card's series with no pod on it.
        ({"Hostname": "gpu-1", "UUID": "GPU-a"}, {}),
    ],
)
def test_card_claims_from_labels(labels: dict[str, str], claims: Any) -> None:
    assert card_claims(parse_vector([labelled("1", **labels)]).series) == claims


A, B, C = ("team-a", "a"), ("team-a", "b"), ("team-a", "c")

# (case, from pod labels, from the assignment query, expected cards, problems)
POD_CARD_CASES: list[tuple[str, Any, Any, dict[tuple[str, str], str], int]] = [
    ("exporter labels alone", {A: {"GPU-0"}}, {}, {A: "GPU-0"}, 0),
    ("the assignment query alone", {}, {A: {"GPU-1"}}, {A: "GPU-1"}, 0),
    ("both agree", {A: {"GPU-1"}}, {A: {"GPU-1"}}, {A: "GPU-1"}, 0),
    ("they disagree: the assignment query wins", {A: {"GPU-0"}}, {A: {"GPU-1"}}, {A: "GPU-1"}, 0),
    (
        "labels name two cards: left out, a problem",
        {A: {"GPU-0", "GPU-1"}, B: {"GPU-1"}},
        {},
        {B: "GPU-1"},
        1,
    ),
    (
        "the assignment names two: left out, labels do not fill in",
        {A: {"GPU-0"}},
        {A: {"GPU-0", "GPU-1"}, C: {"GPU-0"}},
        {C: "GPU-0"},
        1,
    ),
    (
        "the assignment settles what labels left ambiguous",
        {A: {"GPU-0", "GPU-1"}},
        {A: {"GPU-1"}},
        {A: "GPU-1"},
        0,
    ),
]


@pytest.mark.parametrize(
    ("from_labels", "assigned", "cards", "problems"),
    [case[1:] for case in POD_CARD_CASES],
    ids=[case[0] for case in POD_CARD_CASES],
)
def test_pod_cards(from_labels: Any, assigned: Any, cards: Any, problems: int) -> None:
    held, ambiguous = pod_cards(from_labels, assigned, "vramguard_pod_gpu_assignment")
    assert held == cards
    assert len(ambiguous) == problems
    for problem in ambiguous:
        assert "team-a/a on 2 GPUs" in problem
        assert "GPU-0, GPU-1" in problem
