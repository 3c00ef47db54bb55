"""ops.explain_cards through ops.explain_report: on a node with two cards the verdict says
which card refused, and a row per card says whether the device plugin could give the pod
that card, with its figures; one-card nodes have no card rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from gpumem.pending import scheduling_pod
from gpumem.policy import Policy
from ops.explain_report import (
    LiveRead,
    PodExplanation,
    VerdictRow,
    explain_report,
    explanation_json,
    render_explanation,
)
from ops.table import RED
from tests.unit.extender.factories import (
    NAMES,
    NOW,
    card_uuid,
    cards_reading,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
    unschedulable,
)

GPUMEM = "vramguard.io/gpumem"
NODE = "gpu-2x"
TWO_T4 = make_node(NODE, gfd_memory_mib=16384, gfd_count=2)
ONE = make_node("node-a", allocatable_mib=14000)
POLICY = make_policy(floorMiB=512)


def label(index: int) -> str:
    return f"gpu {index} ({card_uuid(NODE, index)[:8]}…)"


def explained(
    need: int,
    free: list[int],
    pods: Sequence[tuple[str, int, int | None]] = (),
    *,
    raw: dict[str, Any] | None = None,
    policy: Policy = POLICY,
    reading: Any = None,
    live: LiveRead = "read",
) -> PodExplanation:
    """The pod (`raw`, else an unschedulable one needing `need`) on NODE, with its cards'
    free MiB and (name, declared, card index or None) pods, and node-a beside it."""
    raw_pods = [make_pod(name, mib, node=NODE) for name, mib, _ in pods]
    assigned = {("team-a", name): (NODE, card) for name, _, card in pods if card is not None}
    if reading is None:
        reading = cards_reading({NODE: free, "node-a": [20000]}, pod_cards=assigned)
    pod = raw or unschedulable("incoming", need)
    store = make_store(policy, [TWO_T4, ONE], [*raw_pods, pod], reading)
    return explain_report(
        scheduling_pod(pod, NAMES),
        store.snapshot(),
        policy.extender,
        NOW,
        resource=GPUMEM,
        served_scheduler="vramguard-scheduler",
        live=live,
    )


def row(report: PodExplanation, node: str = NODE) -> VerdictRow:
    return next(r for r in report.rows if r.node == node)


def cards_of(report: PodExplanation) -> list[tuple[str, bool | None, bool, int | None]]:
    return [(c.index, c.candidate, c.refused, c.live_free_mib) for c in row(report).cards]


DISTRIBUTED = [("a", 3000, 0), ("b", 3000, 0), ("c", 3000, 1)]


@pytest.mark.parametrize(
    ("need", "free", "pods", "settings", "expected"),
    [
        pytest.param(
            10000,
            [6000, 6000],
            [],
            {},
            ("0", [("0", True, True, 6000), ("1", True, False, 6000)]),
            id="issue-two-cards-6000-free",
        ),
        pytest.param(
            5000,
            [2000, 9000],
            DISTRIBUTED,
            {},
            (None, [("0", False, False, 2000), ("1", True, False, 9000)]),
            id="distributed-fewest-replicas",
        ),
        pytest.param(
            5000,
            [2000, 9000],
            DISTRIBUTED,
            {"allocationPolicy": "packed"},
            ("0", [("0", True, True, 2000), ("1", True, False, 9000)]),
            id="packed-every-card",
        ),
        pytest.param(
            5000,
            [9000, 2000],
            [*DISTRIBUTED, ("d", 1000, None)],
            {},
            ("1", [("0", True, False, 9000), ("1", True, True, 2000)]),
            id="unassigned-widens",
        ),
        pytest.param(
            16000,
            [16000, 16000],
            [],
            {},
            # Bigger than every card: no one card refused it.
            (None, [("0", True, False, 16000), ("1", True, False, 16000)]),
            id="too-big",
        ),
    ],
)
def test_the_verdict_names_the_card_that_refused(
    need: int,
    free: list[int],
    pods: list[tuple[str, int, int | None]],
    settings: dict[str, Any],
    expected: tuple[str | None, list[tuple[str, bool | None, bool, int | None]]],
) -> None:
    refused, cards = expected
    report = explained(need, free, pods, policy=make_policy(floorMiB=512, **settings))
    verdict = row(report)
    assert verdict.refused_card == refused
    if refused is not None:
        assert verdict.reason.startswith(f"gpu {refused} (")
    assert cards_of(report) == cards
    assert row(report, "node-a").cards == ()


def test_a_bound_pod_shows_the_card_it_holds() -> None:
    raw = make_pod("a", 3000, node=NODE)
    report = explained(
        0,
        [6000, 9000],
        [("b", 2000, 0)],
        raw=raw,
        reading=cards_reading(
            {NODE: [6000, 9000]}, pod_cards={("team-a", "a"): (NODE, 1), ("team-a", "b"): (NODE, 0)}
        ),
    )
    verdict = row(report)
    assert verdict.verdict == "bound"
    assert [(c.index, c.candidate, c.holds_pod, c.declared_mib) for c in verdict.cards] == [
        ("0", None, False, 2000),
        ("1", None, True, 3000),
    ]


def test_cards_without_live_telemetry_say_why_the_live_check_was_skipped() -> None:
    # Per-node telemetry only: no card has figures of its own, so the cards are judged on
    # their budgets and the node-wide live check applies (12000 - 5000 - floor 512).
    report = explained(5000, [], reading=dcgm_reading({NODE: 12000}))
    verdict = row(report)
    assert verdict.verdict == "fits"
    assert verdict.reason == "6488 MiB to spare"
    stale = explained(5000, [6000, 9000], reading=cards_reading({NODE: [6000, 9000]}, age=75))
    assert row(stale).reason == (
        f"10360 MiB to spare in budgets; live telemetry of {label(0)} 75s old > "
        f"maxAgeSeconds 60; live telemetry of {label(1)} 75s old > maxAgeSeconds 60: live "
        "check skipped (staleMode budget-only)"
    )


def test_explain_table_has_a_row_per_card_under_its_node() -> None:
    report = explained(5000, [2000, 9000], DISTRIBUTED)
    lines = render_explanation(report)
    table = lines[lines.index("") + 1 :]
    assert table == [
        "NODE          VERDICT        LIVE FREE  DECLARED/CAPACITY  REASON",
        "node-a        fits           20000 MiB  0/14000 MiB        9000 MiB to spare",
        "gpu-2x        fits           11000 MiB  9000/31744 MiB     3488 MiB to spare",
        "gpu-2x/gpu 0  not candidate  2000 MiB   6000/15360 MiB     "
        "2 replicas; the device plugin (distributed) gives the pod a card with fewer",
        "gpu-2x/gpu 1  candidate      9000 MiB   3000/15360 MiB     1 replica",
    ]


def test_explain_table_colours_the_refusing_card() -> None:
    report = explained(10000, [6000, 6000])
    coloured = render_explanation(report, colour=True)
    red = [line.replace(RED, "").split()[0] for line in coloured if RED in line]
    assert red == [NODE, f"{NODE}/gpu"]
    refused = next(line for line in render_explanation(report) if line.startswith(f"{NODE}/"))
    assert refused.split()[2] == "refused"
    assert refused.endswith("0 replicas; the card that refused the pod (reason above)")


def test_explain_json_of_a_two_card_node() -> None:
    document = json.loads(json.dumps(explanation_json(explained(10000, [6000, 6000]))))
    nodes = {n["name"]: n for n in document["nodes"]}
    assert nodes[NODE]["refusedCard"] == "0"
    assert nodes[NODE]["cards"][0] == {
        "index": "0",
        "uuid": card_uuid(NODE, 0),
        "replicas": 0,
        "candidate": True,
        "refused": True,
        "holdsPod": False,
        "liveFreeMiB": 6000,
        "telemetryAgeSeconds": 8.0,
        "declaredMiB": 0,
        "capacityMiB": 15360,
    }
    assert "cards" not in nodes["node-a"]
    assert "refusedCard" not in nodes["node-a"]
