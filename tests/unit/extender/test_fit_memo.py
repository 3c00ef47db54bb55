"""/prioritize reusing /filter's headrooms (extender.fit_memo): the same scores as scoring
from scratch, whatever changed in between."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.fit_memo import MEMO_SECONDS, RECENT_FITS, FitMemo, RecentFits
from extender.scheduling import filter_nodes, score_nodes
from gpumem.demand import read_demand
from gpumem.fit import Limits
from gpumem.state import Reservation, Snapshot
from tests.unit.extender.factories import (
    NAMES,
    NOW,
    dcgm_reading,
    extender_settings,
    make_node,
    make_pod,
    make_policy,
    make_store,
)


def demand(mib: int | None) -> Any:
    return read_demand(make_pod("incoming", mib), NAMES)


def memo_of(need: int, snapshot: Snapshot, extender: Any, now: float) -> FitMemo:
    """What the app keeps after /filter."""
    result = filter_nodes(demand(need), sorted(snapshot.nodes), snapshot, extender, now)
    return FitMemo(need, Limits.of(extender), now, snapshot.nodes, result.headrooms)


def three_node_store(policy: Any, free: dict[str, int]) -> Any:
    nodes = [make_node(name, allocatable_mib=16000) for name in ("a", "b", "c")]
    pods = [make_pod("on-a", 6000, node="a"), make_pod("on-b", 2000, node="b")]
    return make_store(policy, nodes, pods, dcgm_reading(free))


def test_filter_reports_the_headroom_prioritize_scores() -> None:
    policy = make_policy()
    store = three_node_store(policy, {"a": 9000, "b": 14000, "c": 1000})
    result = filter_nodes(demand(2000), ["a", "b", "c"], store.snapshot(), policy.extender, NOW)
    # a: declared 16000 - 6000 - 2000 = 8000, live 9000 - 2000 - floor 512 = 6488: the tighter.
    assert result.passed == ("a", "b")
    assert result.headrooms == {"a": 6488, "b": 11488}


def test_unchanged_snapshot_scores_from_the_memo() -> None:
    policy = make_policy()
    snapshot = three_node_store(policy, {"a": 9000, "b": 14000, "c": 1000}).snapshot()
    memo = memo_of(2000, snapshot, policy.extender, NOW)
    fresh = score_nodes(demand(2000), ["a", "b", "c"], snapshot, policy.extender, NOW)
    reused = score_nodes(demand(2000), ["a", "b", "c"], snapshot, policy.extender, NOW, memo=memo)
    assert reused == fresh
    # A memo with made-up headrooms shows they are what is read.
    lying = FitMemo(2000, memo.limits, NOW, snapshot.nodes, {"a": 1, "b": 100, "c": 50})
    assert dict(
        score_nodes(demand(2000), ["a", "b", "c"], snapshot, policy.extender, NOW, memo=lying)
    ) == {"a": 10, "b": 1, "c": 5}


def test_a_node_changed_since_filter_is_checked_again() -> None:
    policy = make_policy()
    store = three_node_store(policy, {"a": 9000, "b": 14000, "c": 1000})
    before = store.snapshot()
    memo = memo_of(2000, before, policy.extender, NOW)
    store.reserve(Reservation("r", "ns", "other", "b", 13000, NOW + 30))  # b is now full
    after = store.snapshot()
    assert after.nodes["a"] is before.nodes["a"]
    assert after.nodes["b"] is not before.nodes["b"]
    scores = score_nodes(demand(2000), ["a", "b"], after, policy.extender, NOW, memo=memo)
    assert scores == score_nodes(demand(2000), ["a", "b"], after, policy.extender, NOW)
    assert dict(scores)["b"] == 0


def test_memo_of_another_demand_policy_or_time_is_not_used() -> None:
    policy = make_policy()
    snapshot = three_node_store(policy, {"a": 9000, "b": 14000, "c": 1000}).snapshot()
    wrong = FitMemo(2000, Limits.of(policy.extender), NOW, snapshot.nodes, {"a": 1, "b": 100})
    fresh = score_nodes(demand(3000), ["a", "b"], snapshot, policy.extender, NOW)
    assert score_nodes(demand(3000), ["a", "b"], snapshot, policy.extender, NOW, memo=wrong) == (
        fresh
    )
    spread = make_policy(floor_mib=1024)
    assert score_nodes(
        demand(2000), ["a", "b"], snapshot, spread.extender, NOW, memo=wrong
    ) == score_nodes(demand(2000), ["a", "b"], snapshot, spread.extender, NOW)
    late = NOW + MEMO_SECONDS + 0.01
    assert score_nodes(
        demand(2000), ["a", "b"], snapshot, policy.extender, late, memo=wrong
    ) == score_nodes(demand(2000), ["a", "b"], snapshot, policy.extender, late)
    early = NOW - 0.01  # a clock that stepped back
    assert score_nodes(
        demand(2000), ["a", "b"], snapshot, policy.extender, early, memo=wrong
    ) == score_nodes(demand(2000), ["a", "b"], snapshot, policy.extender, early)


# Mostly nodes the pod fits on, so that a change since /filter moves the scores.
node_setups = st.fixed_dictionaries(
    {
        "capacity": st.one_of(st.none(), st.integers(2000, 20000)),
        "pods": st.lists(st.integers(0, 4000), max_size=3),
        "free": st.one_of(st.none(), st.integers(2000, 20000)),
        "reserve": st.one_of(st.none(), st.integers(500, 8000)),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    setups=st.lists(node_setups, min_size=1, max_size=5),
    need=st.integers(1, 6000),
    changed=st.sets(st.integers(0, 4)),
    extender=extender_settings(scoring=st.sampled_from(["binpack", "spread"])),
)
def test_scores_with_the_memo_equal_scores_from_scratch(
    setups: list[dict[str, Any]], need: int, changed: set[int], extender: dict[str, Any]
) -> None:
    """Whatever /filter saw and whichever nodes changed since, /prioritize at the same time
    gives the scores it would give without the memo."""
    policy = make_policy(**extender)
    names = [f"n{n}" for n in range(len(setups))]
    nodes = [
        make_node(name, allocatable_mib=s["capacity"])
        for name, s in zip(names, setups, strict=True)
    ]
    pods = [
        make_pod(f"{name}-{p}", mib, node=name)
        for name, setup in zip(names, setups, strict=True)
        for p, mib in enumerate(setup["pods"])
    ]
    free = {name: s["free"] for name, s in zip(names, setups, strict=True) if s["free"] is not None}
    store = make_store(policy, nodes, pods, dcgm_reading(free))
    memo = memo_of(need, store.snapshot(), policy.extender, NOW)
    for n in sorted(changed):
        if n < len(setups) and setups[n]["reserve"] is not None:
            store.reserve(
                Reservation(f"r{n}", "ns", f"p{n}", names[n], setups[n]["reserve"], NOW + 9)
            )
    snapshot = store.snapshot()
    assert score_nodes(
        demand(need), names, snapshot, policy.extender, NOW, memo=memo
    ) == score_nodes(demand(need), names, snapshot, policy.extender, NOW)


def test_recent_fits_keeps_the_latest_few() -> None:
    fits = RecentFits()
    memos = [
        FitMemo(1, Limits(512, 60, False, "dcgm"), NOW, {}, {}) for _ in range(RECENT_FITS + 2)
    ]
    for i, memo in enumerate(memos):
        fits.keep(f"uid-{i}", memo)
    assert len(fits) == RECENT_FITS
    assert fits.get("uid-0") is None
    assert fits.get(f"uid-{RECENT_FITS + 1}") is memos[-1]
    fits.keep("", memos[0])  # a pod without a UID is not kept
    assert fits.get("") is None
    assert len(fits) == RECENT_FITS


def test_recent_fits_drops_memos_too_old_to_use() -> None:
    fits = RecentFits()
    limits = Limits(512, 60, False, "dcgm")
    fits.keep("old", FitMemo(1, limits, NOW, {}, {}))
    fits.keep("new", FitMemo(1, limits, NOW + MEMO_SECONDS + 1, {}, {}))
    assert fits.get("old") is None
    assert fits.get("new") is not None
