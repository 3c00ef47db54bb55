"""The fit rule on nodes with several cards (gpumem.cards, gpumem.fit): the pod fits when every
card the device plugin could give it has room."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from extender.scheduling import filter_nodes, score_nodes, vet_preemption
from gpumem.cards import candidate_cards
from gpumem.demand import PodDemand
from gpumem.fit import check_node
from gpumem.policy import AllocationPolicy
from gpumem.state import CardState, NodeState, PodGroup, PodView
from tests.unit.extender.factories import (
    NOW,
    card_uuid,
    cards_reading,
    dcgm_reading,
    extender_settings,
    make_node,
    make_pod,
    make_policy,
    make_store,
)

NODE = "gpu-2x"
TWO_T4 = {"gfd_memory_mib": 16384, "gfd_count": 2}  # per card: 16384 - 1024 slack


def node_state(
    pods: Sequence[tuple[str, int, int | None]],
    free: list[int],
    *,
    node: dict[str, Any] | None = None,
    **settings: Any,
) -> NodeState:
    """NODE with its cards' free MiB and (name, declared MiB, card index or None) pods."""
    raw_pods = [make_pod(name, mib, node=NODE) for name, mib, _ in pods]
    assigned = {("team-a", name): (NODE, card) for name, _, card in pods if card is not None}
    store = make_store(
        make_policy(**settings),
        [node or make_node(NODE, **TWO_T4)],
        raw_pods,
        cards_reading({NODE: free}, pod_cards=assigned),
    )
    state = store.snapshot().node(NODE)
    assert state is not None
    return state


def label(index: int) -> str:
    return f"gpu {index} ({card_uuid(NODE, index)[:8]}…)"


def refusal_of(state: NodeState, need: int, **settings: Any) -> str | None:
    fit = check_node(need, NODE, state, make_policy(**settings).extender, NOW)
    return fit.refusal.message if fit.refusal is not None else None


def test_two_cards_with_6000_free_each_do_not_add_up_to_a_10000_mib_pod() -> None:
    # The new user: the node has 12000 MiB free in all, no card has 10000.
    state = node_state([], [6000, 6000])
    assert [card.capacity_mib for card in state.cards] == [15360, 15360]
    assert refusal_of(state, 10000) == (
        f"vramguard: {label(0)}: live free 6000 MiB < need 10000 + floor 512 MiB (dcgm, 8s old)"
    )
    assert refusal_of(state, 5000) is None
    fit = check_node(10000, NODE, state, make_policy().extender, NOW)
    assert fit.refusal is not None
    assert fit.refusal.card == 0  # the card that refused, for explain


def test_a_node_with_one_card_keeps_the_node_wide_rule() -> None:
    state = node_state([], [6000], node=make_node(NODE, gfd_memory_mib=16384, gfd_count=1))
    assert state.cards == ()
    assert state.quick is not None  # and its fast path
    assert refusal_of(state, 10000) == (
        "vramguard: live free 6000 MiB < need 10000 + floor 512 MiB (dcgm, 8s old)"
    )


def test_distributed_checks_only_the_card_with_the_fewest_replicas() -> None:
    # gpu 0 holds two pods and has little free; the plugin gives the next replica gpu 1.
    pods = [("a", 3000, 0), ("b", 3000, 0), ("c", 3000, 1)]
    state = node_state(pods, [2000, 9000])
    assert [card.replicas for card in state.cards] == [2, 1]
    assert refusal_of(state, 5000) is None
    # Under packed the fullest card may be the one: it is checked too.
    assert refusal_of(state, 5000, allocationPolicy="packed") == (
        f"vramguard: {label(0)}: live free 2000 MiB < need 5000 + floor 512 MiB (dcgm, 8s old)"
    )


def test_an_unassigned_pod_widens_the_candidates_and_counts_on_every_card() -> None:
    # d is bound but no source has said which card it got: it may take gpu 1 first, so the
    # new pod may land on gpu 0; and d's budget counts against both cards.
    pods = [("a", 3000, 0), ("b", 3000, 0), ("c", 3000, 1), ("d", 4000, None)]
    state = node_state(pods, [9000, 9000])
    assert [pod.name for pod in state.unassigned] == ["d"]
    assert refusal_of(state, 9000) == (
        f"vramguard: {label(0)}: declared 6000 + unassigned 4000 + 9000 > capacity 15360 MiB"
    )
    assert refusal_of(state, 5000) is None


def test_a_pod_bigger_than_every_card_is_unresolvable() -> None:
    fit = check_node(16000, NODE, node_state([], [16000, 16000]), make_policy().extender, NOW)
    assert fit.refusal is not None
    assert (fit.refusal.kind, fit.refusal.resolvable) == ("too-big", False)
    assert fit.refusal.message == (
        f"vramguard: need 16000 > capacity 15360 MiB of the largest card ({label(0)})"
    )


def test_cards_known_only_from_gfd_keep_the_node_wide_live_check() -> None:
    # Without per-GPU telemetry the node-wide free is a sum over cards, never a card's: the
    # cards are judged on their budgets, and the node-wide live check still applies.
    def state(free: int) -> NodeState:
        store = make_store(
            make_policy(), [make_node(NODE, **TWO_T4)], [], dcgm_reading({NODE: free})
        )
        node = store.snapshot().node(NODE)
        assert node is not None
        return node

    roomy = state(12000)
    assert [(card.index, card.uuid, card.live) for card in roomy.cards] == [
        ("0", None, None),
        ("1", None, None),
    ]
    assert refusal_of(roomy, 5000) is None
    assert refusal_of(state(4000), 5000) == (
        "vramguard: live free 4000 MiB < need 5000 + floor 512 MiB (dcgm, 8s old)"
    )
    # The budgets are still per card: 16000 fits the node's 30720, no card's 15360.
    assert refusal_of(roomy, 16000) == (
        "vramguard: need 16000 > capacity 15360 MiB of the largest card (gpu 0)"
    )


def test_a_card_gfd_counts_and_the_telemetry_does_not_show_gets_an_index_of_its_own() -> None:
    node = make_node(NODE, gfd_memory_mib=16384, gfd_count=3)
    reading = cards_reading({NODE: [6000, 6000]})
    shown = dict(reading.cards[NODE])
    # The exporter shows cards 1 and 2 only (card 0 has lost its exporter series).
    renamed = {
        uuid: dataclasses.replace(sample, index=str(int(sample.index or 0) + 1))
        for uuid, sample in shown.items()
    }
    store = make_store(
        make_policy(), [node], [], dataclasses.replace(reading, cards={NODE: renamed})
    )
    state = store.snapshot().node(NODE)
    assert state is not None
    assert [card.index for card in state.cards] == ["1", "2", "0"]
    assert state.cards[2].live is None  # budget-only: judged on budgets alone


def test_a_card_is_never_given_more_than_its_telemetry_reports() -> None:
    # A 16 GB and a 24 GB card: GFD labels the node with one memory figure; the telemetry
    # says what each card has.
    node = make_node(NODE, allocatable_mib=38000, gfd_memory_mib=24576, gfd_count=2)
    reading = cards_reading({NODE: [15000, 23000]}, used={NODE: [1000, 1000]})
    store = make_store(make_policy(), [node], [], reading)
    state = store.snapshot().node(NODE)
    assert state is not None
    assert [card.total_mib for card in state.cards] == [16000, 24000]
    assert [card.capacity_mib for card in state.cards] == [16000, 19000]


def test_advertised_gpumem_is_split_across_the_cards() -> None:
    node = make_node(NODE, allocatable_mib=30000, **TWO_T4)
    state = node_state([], [16000, 16000], node=node)
    assert [card.capacity_mib for card in state.cards] == [15000, 15000]


def test_prioritize_scores_by_the_tightest_candidate_card() -> None:
    # Both nodes have 12000 MiB free in all.
    other = "gpu-b"
    store = make_store(
        make_policy(),
        [make_node(NODE, **TWO_T4), make_node(other, **TWO_T4)],
        [],
        cards_reading({NODE: [6000, 6000], other: [10000, 2000]}),
    )
    demand = PodDemand(is_gpu=True, declared_mib=1000, containers=())
    scores = dict(score_nodes(demand, [NODE, other], store.snapshot(), make_policy().extender, NOW))
    # gpu-b's candidates are both cards (no replicas yet): the plugin may give it the one with
    # 2000 free, which leaves 488 above the floor, against 4488 on either card of gpu-2x. Its
    # node-wide free says nothing of that; binpack ranks the tighter fit first.
    assert scores[other] > scores[NODE] > 0
    tight = dict(
        score_nodes(
            PodDemand(is_gpu=True, declared_mib=1600, containers=()),
            [NODE, other],
            store.snapshot(),
            make_policy().extender,
            NOW,
        )
    )
    assert tight[other] == 0  # 2000 - 1600 < floor 512 on a card it may get: does not fit


def test_preemption_is_vetted_on_every_card() -> None:
    pods = [("victim", 10000, 0), ("c", 4000, 1)]
    store = make_store(
        make_policy(),
        [make_node(NODE, **TWO_T4)],
        [make_pod(name, mib, node=NODE) for name, mib, _ in pods],
        cards_reading(
            {NODE: [15000, 15000]},
            pod_cards={("team-a", "victim"): (NODE, 0), ("team-a", "c"): (NODE, 1)},
        ),
    )
    snapshot = store.snapshot()
    state = snapshot.node(NODE)
    assert state is not None
    victim = next(pod.uid for pod in state.pods if pod.name == "victim")
    demand = PodDemand(is_gpu=True, declared_mib=11000, containers=())
    settings = make_policy().extender
    kept = vet_preemption(demand, {NODE: [victim]}, snapshot, settings, NOW)
    assert kept.kept == (NODE,)
    # Without the victim's eviction, gpu 0 cannot take the pod (and gpu 1 neither).
    refused = vet_preemption(demand, {NODE: []}, snapshot, settings, NOW)
    assert refused.kept == ()


@pytest.mark.parametrize(
    ("replicas", "ahead", "policy", "expected"),
    [
        ([2, 1, 1], 0, "distributed", [1, 2]),  # ties widen
        ([2, 1, 0], 1, "distributed", [1, 2]),
        ([2, 1, 0], 2, "distributed", [0, 1, 2]),
        ([3, 3], 0, "distributed", [0, 1]),
        ([5, 0], 0, "packed", [0, 1]),
    ],
)
def test_candidate_cards(
    replicas: list[int], ahead: int, policy: AllocationPolicy, expected: list[int]
) -> None:
    def pods(card: int, count: int) -> PodGroup:
        views = tuple(PodView(f"{card}-{n}", "ns", f"p{n}", 1000, None, 0.0) for n in range(count))
        return PodGroup(views)

    cards = [
        CardState(i, str(i), f"GPU-{i}", 15360, 16384, None, pods(i, n))
        for i, n in enumerate(replicas)
    ]
    assert [card.position for card in candidate_cards(cards, ahead, policy)] == expected


# --- the fast path on several cards agrees with the full rule -----------------------------------

card_node_setups = st.fixed_dictionaries(
    {
        # Up to more than a card holds, so that budgets, not free VRAM, often decide.
        "free": st.lists(st.integers(0, 24000), min_size=2, max_size=4),
        # (declared MiB, started seconds before NOW or None, card index or None)
        "pods": st.lists(
            st.tuples(
                st.integers(0, 8000),
                # Not started, warming up, or long past its warm-up (using its budget).
                st.one_of(st.none(), st.integers(-400, 0), st.just(-3600)),
                st.one_of(st.none(), st.integers(0, 3)),
            ),
            max_size=5,
        ),
        "age": st.integers(0, 200),
        "advertised": st.one_of(st.none(), st.integers(0, 60000)),
    }
)


# Budgets decide, with an unassigned pod past its warm-up: its budget counts on every card.
@example(
    setups=[{"free": [24000, 24000], "pods": [(8000, -3600, None)], "age": 0, "advertised": None}],
    need=10000,
    later=0,
    extender={
        "floorMiB": 512,
        "staleMode": "budget-only",
        "maxAgeSeconds": 60,
        "warmupSeconds": 0,
        "allocationPolicy": "distributed",
    },
)
@settings(max_examples=300, deadline=None)
@given(
    setups=st.lists(card_node_setups, min_size=1, max_size=4),
    need=st.integers(1, 16000),
    later=st.integers(-100, 400),
    extender=extender_settings(allocationPolicy=st.sampled_from(["distributed", "packed"])),
)
def test_the_card_fast_path_agrees_with_the_full_rule(
    setups: list[dict[str, Any]], need: int, later: int, extender: dict[str, Any]
) -> None:
    policy = make_policy(**extender)
    store = make_store(policy, [], [])
    for n, setup in enumerate(setups):
        name = f"n{n}"
        count = len(setup["free"])
        node = make_node(
            name, allocatable_mib=setup["advertised"], gfd_memory_mib=16384, gfd_count=count
        )
        pods = []
        for p, (mib, started, _) in enumerate(setup["pods"]):
            started_at = None if started is None else NOW + started
            pods.append(make_pod(f"{name}-{p}", mib, node=name, started_at=started_at))
        store.apply_node_event("ADDED", node)
        for pod in pods:
            store.apply_pod_event("ADDED", pod)
    # One reading for all nodes: the store keeps the last one.
    free = {f"n{n}": setup["free"] for n, setup in enumerate(setups)}
    assigned_all = {
        ("team-a", f"n{n}-{p}"): (f"n{n}", card)
        for n, setup in enumerate(setups)
        for p, (_, _, card) in enumerate(setup["pods"])
        if card is not None and card < len(setup["free"])
    }
    store.apply_telemetry(cards_reading(free, age=setups[0]["age"], pod_cards=assigned_all))
    fast = store.snapshot()
    slow = dataclasses.replace(
        fast,
        nodes=MappingProxyType(
            {k: dataclasses.replace(v, quick_cards=None) for k, v in fast.nodes.items()}
        ),
    )
    names = [f"n{n}" for n in range(len(setups))]
    now = NOW + later
    pod_demand = PodDemand(is_gpu=True, declared_mib=need, containers=())
    assert filter_nodes(pod_demand, names, fast, policy.extender, now) == filter_nodes(
        pod_demand, names, slow, policy.extender, now
    )
    assert score_nodes(pod_demand, names, fast, policy.extender, now) == score_nodes(
        pod_demand, names, slow, policy.extender, now
    )
