"""The watchdog's rule (gpumem.watchdog) on a node with two cards: one decision per card, the
victim the pod most over budget on that card, never an unassigned pod, the cooldown per card,
the Pending pods waiting where the device plugin could give them the card; and the node-wide
rule where the cards have no figures of their own."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from gpumem.state import Sample, Snapshot, TelemetryReading
from gpumem.watchdog import (
    Recycled,
    WatchdogDecision,
    WatchdogLimits,
    cooldown_key,
    decide,
)
from gpumem.watchdog_facts import PodFacts, pod_facts
from tests.unit.extender.factories import (
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

NODE = "gpu-2x"
POLICY = make_policy(telemetry={"preset": "pod-exporter"})
LIMITS = WatchdogLimits(
    floor_mib=1024, emergency_floor_mib=512, cooldown_seconds=300, max_age_seconds=60
)
TWO_T4 = make_node(NODE, gfd_memory_mib=16384, gfd_count=2)
# (name, declared, used, card index or None: unassigned)
TENANTS: list[tuple[str, int, int, int | None]] = [
    ("hog0", 3000, 6000, 0),  # +3000
    ("fine0", 2000, 1500, 0),
    ("hog1", 1000, 5000, 1),  # +4000: more over budget, on the other card
    ("ghost", 1000, 8000, None),  # +7000, but no source says which card it holds
]


def label(index: int) -> str:
    return f"gpu {index} ({card_uuid(NODE, index)[:8]}…)"


def uid(name: str) -> str:
    return str(make_pod(name, 1)["metadata"]["uid"])


def reading_of(
    free: list[int], tenants: list[tuple[str, int, int, int | None]], age: float = 3.0
) -> TelemetryReading:
    assigned = {("team-a", n): (NODE, card) for n, _, _, card in tenants if card is not None}
    reading = cards_reading({NODE: free}, age=age, pod_cards=assigned)
    used = {("team-a", n): Sample(mib, NOW - age) for n, _, mib, _ in tenants}
    return dataclasses.replace(reading, pod_used=used)


def snapshot(
    free: list[int],
    tenants: list[tuple[str, int, int, int | None]] = TENANTS,
    *,
    reading: TelemetryReading | None = None,
    age: float = 3.0,
) -> Snapshot:
    pods = [make_pod(name, declared, node=NODE) for name, declared, _, _ in tenants]
    return make_store(POLICY, [TWO_T4], pods, reading or reading_of(free, tenants, age)).snapshot()


def decisions(
    snap: Snapshot,
    *,
    pending: list[dict[str, Any]] | None = None,
    terminating: frozenset[str] = frozenset(),
    recycled: Mapping[str, Recycled] | None = None,
) -> list[WatchdogDecision]:
    facts = PodFacts(pod_facts(pending or [], POLICY).pending, terminating)
    return decide(snap, LIMITS, POLICY.extender, NOW, facts=facts, recycled=recycled)


def summary(found: list[WatchdogDecision]) -> list[tuple[str | None, str, str]]:
    return [(None if d.card is None else d.card.index, d.reason, d.pod) for d in found]


@pytest.mark.parametrize(
    ("case", "free", "tenants", "expected"),
    [
        (
            "the full card's worst offender, not the node's",
            [400, 9000],
            TENANTS,
            [("0", "over-budget", "team-a/hog0"), ("1", "ok", "")],
        ),
        (
            "each full card its own",
            [400, 300],
            TENANTS,
            [("0", "over-budget", "team-a/hog0"), ("1", "over-budget", "team-a/hog1")],
        ),
        (
            "an unassigned pod is never the victim",
            [400, 9000],
            [t for t in TENANTS if t[0] != "hog0"],
            [("0", "none-over-budget", ""), ("1", "ok", "")],
        ),
        (
            "below the floor, nothing waiting",
            [800, 9000],
            TENANTS,
            [("0", "no-contention", ""), ("1", "ok", "")],
        ),
    ],
)
def test_one_decision_per_card(
    case: str,
    free: list[int],
    tenants: list[tuple[str, int, int, int | None]],
    expected: list[tuple[str | None, str, str]],
) -> None:
    assert summary(decisions(snapshot(free, tenants))) == expected, case


def test_the_decision_names_the_card_in_its_message() -> None:
    first, second = decisions(snapshot([400, 9000]))
    assert first.card is not None
    assert (first.node, first.card.uuid, first.free_mib) == (NODE, card_uuid(NODE, 0), 400)
    assert first.cooldown_key == cooldown_key(NODE, card_uuid(NODE, 0))
    assert first.message == (
        f"{label(0)}: live free 400 MiB < floor 1024 MiB, and < emergency floor 512 MiB; "
        "team-a/hog0 uses 6000 MiB of 3000 declared (+3000), the most over its budget"
    )
    assert second.message == f"{label(1)}: live free 9000 MiB >= floor 1024 MiB"


def test_unassigned_pods_over_budget_are_named_but_not_chosen() -> None:
    tenants = [t for t in TENANTS if t[0] != "hog0"]
    decision = decisions(snapshot([400, 9000], tenants))[0]
    assert decision.message == (
        f"{label(0)}: live free 400 MiB < floor 1024 MiB, and < emergency floor 512 MiB; no "
        "pod known to be on the card uses more than it declared (1 unassigned pod(s) over "
        "budget: their card is not known, so none is recycled for this one)"
    )


def test_the_cooldown_is_per_card() -> None:
    before = Recycled(NODE, uid("other"), "team-a", "other", NOW - 42, card_uuid(NODE, 0))
    found = decisions(snapshot([400, 300]), recycled={before.key: before})
    assert summary(found) == [("0", "cooldown", ""), ("1", "over-budget", "team-a/hog1")]
    # A one-card node's key is the node, as before cards.
    assert cooldown_key("node-a") == Recycled("node-a", "u", "ns", "p", NOW).key == "node-a"


@pytest.mark.parametrize(
    ("terminating", "expected"),
    [
        # hog1 holds gpu 1 only; the unassigned ghost may hold either card.
        ("hog1", [("0", "over-budget", "team-a/hog0"), ("1", "cooldown", "")]),
        ("ghost", [("0", "cooldown", ""), ("1", "cooldown", "")]),
    ],
)
def test_a_terminating_pod_holds_back_the_cards_it_may_be_on(
    terminating: str, expected: list[tuple[str | None, str, str]]
) -> None:
    found = decisions(snapshot([400, 300]), terminating=frozenset({uid(terminating)}))
    assert summary(found) == expected


def test_a_pending_pod_waits_for_the_cards_the_device_plugin_could_give_it() -> None:
    # gpu 0 holds two replicas, gpu 1 one: `distributed` gives the next pod gpu 1 only, so the
    # pod that gpu 1 refuses on live VRAM waits for gpu 1, not for gpu 0.
    tenants = [t for t in TENANTS if t[0] != "ghost"]
    raw = unschedulable("incoming", 2000, namespace="team-b")
    found = decisions(snapshot([800, 900], tenants), pending=[raw])
    assert summary(found) == [("0", "no-contention", ""), ("1", "over-budget", "team-a/hog1")]
    assert "team-b/incoming waits for it" in found[1].message


def test_stale_card_telemetry_is_never_acted_on() -> None:
    found = decisions(snapshot([400, 300], age=75))
    assert summary(found) == [
        ("0", "telemetry-unavailable", ""),
        ("1", "telemetry-unavailable", ""),
    ]
    assert found[0].message == (
        f"{label(0)}: live GPU memory telemetry is 75s old > maxAgeSeconds 60 (dcgm)"
    )


def test_cards_without_figures_of_their_own_keep_the_node_wide_rule() -> None:
    # GPU Feature Discovery says two cards; telemetry has the node's sum and per-pod usage.
    # Free below the floor over the whole node means every card is below it.
    used = {("team-a", n): Sample(mib, NOW - 3) for n, _, mib, _ in TENANTS}
    reading = dataclasses.replace(dcgm_reading({NODE: 400}, age=3), pod_used=used)
    (decision,) = decisions(snapshot([], reading=reading))
    assert decision.card is None
    assert (decision.reason, decision.pod) == ("over-budget", "team-a/ghost")
    assert decision.cooldown_key == NODE
    assert decision.message.startswith("live free 400 MiB < floor 1024 MiB")
