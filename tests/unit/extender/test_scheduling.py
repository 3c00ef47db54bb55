"""/filter, /prioritize and preemption vetting over a snapshot (extender.scheduling)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.scheduling import filter_nodes, score_nodes, vet_preemption
from gpumem.demand import read_demand
from gpumem.state import Reservation, Snapshot, TelemetryReading
from tests.unit.extender.factories import (
    NAMES,
    NOW,
    dcgm_reading,
    extender_settings,
    make_node,
    make_pod,
    make_policy,
    make_store,
    pod_exporter_reading,
)

NODE = "gpu-1"


def demand(mib: int | None, gpu: bool = True) -> Any:
    return read_demand(make_pod("incoming", mib, gpu=gpu), NAMES)


def a10g(**kwargs: Any) -> dict[str, Any]:
    return make_node(NODE, **kwargs)


@dataclass
class Case:
    need: int
    expect: str  # pass, failed (resolvable by preemption), unresolvable
    message: str | None = None
    node: dict[str, Any] | None = field(default_factory=lambda: a10g(allocatable_mib=14000))
    pods: list[dict[str, Any]] = field(default_factory=list)
    reading: TelemetryReading | None = field(default_factory=lambda: dcgm_reading({NODE: 14000}))
    settings: dict[str, Any] = field(default_factory=dict)
    reservations: list[tuple[int, float]] = field(default_factory=list)  # (MiB, expires in)


def on_node(name: str, mib: int, **kwargs: Any) -> dict[str, Any]:
    return make_pod(name, mib, node=NODE, **kwargs)


CASES = {
    "declared-and-live-fit": Case(
        need=4000,
        pods=[on_node("a", 8000)],
        reading=dcgm_reading({NODE: 6000}),
        expect="pass",
    ),
    "declared-over-capacity": Case(
        need=1500,
        pods=[on_node("a", 8000), on_node("b", 5300)],
        expect="failed",
        message="vramguard: declared 13300 + 1500 > capacity 14000 MiB",
    ),
    "declared-exactly-capacity": Case(need=700, pods=[on_node("a", 13300)], expect="pass"),
    "reservation-counts": Case(
        need=1500,
        pods=[on_node("a", 12300)],
        reservations=[(1000, 30)],
        expect="failed",
        message="vramguard: declared 12300 + reserved 1000 + 1500 > capacity 14000 MiB",
    ),
    "expired-reservation-ignored": Case(
        need=1500, pods=[on_node("a", 12300)], reservations=[(1000, -1)], expect="pass"
    ),
    "bigger-than-the-card": Case(
        need=20000, expect="unresolvable", message="vramguard: need 20000 > capacity 14000 MiB"
    ),
    "live-short": Case(
        need=3000,
        reading=dcgm_reading({NODE: 2100}, age=8),
        expect="failed",
        message="vramguard: live free 2100 MiB < need 3000 + floor 512 MiB (dcgm, 8s old)",
    ),
    "live-floor-is-kept": Case(need=3000, reading=dcgm_reading({NODE: 3511}), expect="failed"),
    "live-exactly-need-plus-floor": Case(
        need=3000, reading=dcgm_reading({NODE: 3512}), expect="pass"
    ),
    "custom-floor": Case(
        need=3000, reading=dcgm_reading({NODE: 3100}), settings={"floorMiB": 0}, expect="pass"
    ),
    "warming-pod-counts-whole-budget": Case(
        need=3000,
        pods=[on_node("a", 3000, started_at=NOW - 30)],
        reading=dcgm_reading({NODE: 6000}),
        expect="failed",
        message="vramguard: live free 6000 - 3000 not yet in use = 3000 MiB < need 3000 + "
        "floor 512 MiB (dcgm, 8s old)",
    ),
    "pod-past-warmup-is-in-live-free": Case(
        need=3000,
        pods=[on_node("a", 3000, started_at=NOW - 300)],
        reading=dcgm_reading({NODE: 6000}),
        expect="pass",
    ),
    "custom-warmup-window": Case(
        need=3000,
        pods=[on_node("a", 3000, started_at=NOW - 300)],
        reading=dcgm_reading({NODE: 6000}),
        settings={"warmupSeconds": 600},
        expect="failed",
    ),
    "pod-not-started-counts-whole-budget": Case(
        need=3000,
        pods=[on_node("a", 3000, started_at=None)],
        reading=dcgm_reading({NODE: 6000}),
        expect="failed",
    ),
    "per-pod-usage-absent-pod-counts-whole-budget": Case(
        need=3000,
        pods=[on_node("a", 3000, started_at=NOW - 3600)],
        reading=pod_exporter_reading({}, free={NODE: 6000}),
        expect="failed",
        message="vramguard: live free 6000 - 3000 not yet in use = 3000 MiB < need 3000 + "
        "floor 512 MiB (custom, 3s old)",
    ),
    "per-pod-usage-warming-pod-counts-the-rest": Case(
        need=3000,
        pods=[on_node("a", 3000, started_at=NOW - 30)],
        reading=pod_exporter_reading({("team-a", "a"): 2000}, free={NODE: 4600}),
        expect="pass",  # 4600 - (3000 - 2000) = 3600 >= 3512
    ),
    "per-pod-usage-warming-pod-over-budget-counts-zero": Case(
        need=3000,
        pods=[on_node("a", 3000, started_at=NOW - 30)],
        reading=pod_exporter_reading({("team-a", "a"): 3500}, free={NODE: 3512}),
        expect="pass",
    ),
    "per-pod-usage-known-pod-past-warmup-counts-zero": Case(
        need=3000,
        pods=[on_node("a", 3000)],
        reading=pod_exporter_reading({("team-a", "a"): 100}, free={NODE: 3512}),
        expect="pass",
    ),
    "stale-budget-only-skips-live": Case(
        need=3000, reading=dcgm_reading({NODE: 100}, age=61), expect="pass"
    ),
    "stale-budget-only-still-checks-declared": Case(
        need=3000,
        pods=[on_node("a", 12000)],
        reading=dcgm_reading({NODE: 100}, age=61),
        expect="failed",
        message="vramguard: declared 12000 + 3000 > capacity 14000 MiB",
    ),
    "stale-deny": Case(
        need=3000,
        reading=dcgm_reading({NODE: 9000}, age=75),
        settings={"staleMode": "deny"},
        expect="unresolvable",
        message="vramguard: live GPU memory telemetry is 75s old > maxAgeSeconds 60 (dcgm); "
        "staleMode deny",
    ),
    "fresh-under-deny": Case(
        need=3000,
        reading=dcgm_reading({NODE: 9000}, age=59),
        settings={"staleMode": "deny"},
        expect="pass",
    ),
    "missing-telemetry-budget-only": Case(need=3000, reading=None, expect="pass"),
    "node-missing-from-telemetry-deny": Case(
        need=3000,
        reading=dcgm_reading({"other-node": 9000}),
        settings={"staleMode": "deny"},
        expect="unresolvable",
        message="vramguard: no live GPU memory telemetry for the node (dcgm); staleMode deny",
    ),
    "capacity-from-gfd-minus-slack": Case(
        need=15000,
        node=a10g(gfd_memory_mib=16384, gfd_count=1),
        pods=[on_node("a", 500)],
        reading=dcgm_reading({NODE: 16000}),
        expect="failed",
        message="vramguard: declared 500 + 15000 > capacity 15360 MiB",
    ),
    # Two 16 GiB cards are 32 GiB on the node (GFD memory x count), but a time-sliced pod runs
    # on one card: before cards were the unit this pod passed, and then ran out of memory.
    "two-cards-a-pod-no-card-can-hold": Case(
        need=30000,
        node=a10g(gfd_memory_mib=16384, gfd_count=2),
        reading=dcgm_reading({NODE: 32000}),
        settings={"capacitySlackMiB": 0},
        expect="unresolvable",
        message="vramguard: need 30000 > capacity 16384 MiB of the largest card (gpu 0)",
    ),
    "allocatable-wins-over-gfd": Case(
        need=15000,
        node=a10g(allocatable_mib=14000, gfd_memory_mib=16384, gfd_count=1),
        expect="unresolvable",
        message="vramguard: need 15000 > capacity 14000 MiB",
    ),
    "no-gpu-capacity": Case(
        need=1000,
        node=make_node(NODE),
        expect="unresolvable",
        message="vramguard: node advertises no GPU memory (no allocatable gpumem, no GPU Feature "
        "Discovery memory label)",
    ),
    "unknown-node": Case(
        need=1000,
        node=None,
        expect="unresolvable",
        message="vramguard: node is not in vramguard's node cache yet",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_filter_rule(case: Case) -> None:
    policy = make_policy(**case.settings)
    store = make_store(policy, [case.node] if case.node else [], case.pods, case.reading)
    for index, (mib, expires_in) in enumerate(case.reservations):
        store.reserve(Reservation(f"r{index}", "team-b", f"r{index}", NODE, mib, NOW + expires_in))

    result = filter_nodes(demand(case.need), [NODE], store.snapshot(), policy.extender, NOW)

    outcome = (
        "pass" if NODE in result.passed else "failed" if NODE in result.failed else "unresolvable"
    )
    assert outcome == case.expect, result
    if case.message is not None:
        assert {**result.failed, **result.unresolvable}[NODE] == case.message


def test_pod_without_gpu_demand_passes_every_node_untouched() -> None:
    policy = make_policy(staleMode="deny")
    store = make_store(policy, [make_node("cpu-1")], [])
    names = ["cpu-1", "unknown"]
    result = filter_nodes(demand(None, gpu=False), names, store.snapshot(), policy.extender, NOW)
    assert result.passed == tuple(names)
    assert not result.failed
    assert not result.unresolvable


@pytest.mark.parametrize("declared", [None, 0])
def test_gpu_pod_without_a_budget_is_refused_on_every_node(declared: int | None) -> None:
    """Issue 17: a GPU pod that declares 0 (or no) GPU memory used to pass every node, so a
    pod that got around the webhook took a card's memory uncounted."""
    policy = make_policy()
    nodes = [make_node(f"n{i}", allocatable_mib=14000) for i in range(3)]
    store = make_store(policy, nodes, [], dcgm_reading({f"n{i}": 14000 for i in range(3)}))
    names = ["n0", "n1", "n2", "unknown"]
    pod_demand = demand(declared, gpu=True)

    result = filter_nodes(pod_demand, names, store.snapshot(), policy.extender, NOW)

    assert result.passed == ()
    assert not result.failed  # not resolvable: preempting nobody gives it a budget
    assert set(result.unresolvable) == set(names)
    assert (
        "declares no GPU memory (vramguard.io/gpumem is 0 or missing)"
        in (result.unresolvable["n0"])
    )
    assert dict(result.refusals_by_kind) == {"no-budget": 4}
    scores = score_nodes(pod_demand, names, store.snapshot(), policy.extender, NOW)
    assert {score for _, score in scores} == {0}
    vetting = vet_preemption(
        pod_demand, {"n0": [], "n1": ["some-uid"]}, store.snapshot(), policy.extender, NOW
    )
    assert vetting.kept == ()
    assert set(vetting.refused) == {"n0", "n1"}


def test_filter_counts_refusals_by_kind_and_budget_only_passes() -> None:
    policy = make_policy()
    nodes = [make_node(f"n{i}", allocatable_mib=10000) for i in range(4)] + [make_node("cpu")]
    pods = [make_pod("big", 9000, node="n0")]
    reading = dcgm_reading({"n0": 9000, "n1": 1000, "n2": 9000})  # n3: no telemetry
    store = make_store(policy, nodes, pods, reading)

    result = filter_nodes(
        demand(2000), ["n0", "n1", "n2", "n3", "cpu"], store.snapshot(), policy.extender, NOW
    )

    assert result.passed == ("n2", "n3")
    assert dict(result.refusals_by_kind) == {"declared": 1, "live": 1, "no-capacity": 1}
    assert result.live_skipped == 1
    assert set(result.failed) == {"n0", "n1"}
    assert set(result.unresolvable) == {"cpu"}


# --- scoring ---------------------------------------------------------------------------------


def scoring_store(policy: Any) -> Any:
    nodes = [make_node(n, allocatable_mib=16000) for n in ("tight", "medium", "empty", "full")]
    pods = [
        make_pod("t", 10000, node="tight"),
        make_pod("m", 5000, node="medium"),
        make_pod("f", 15000, node="full"),
    ]
    reading = dcgm_reading({"tight": 6000, "medium": 11000, "empty": 16000, "full": 1000})
    return make_store(policy, nodes, pods, reading)


@pytest.mark.parametrize(
    ("scoring", "expected"),
    [
        # Headroom after a 2000 MiB pod, the tighter of declared and live - need - floor:
        # tight 3488, medium 8488, empty 13488; full does not fit. Fitting nodes score
        # 1 + 9 x (share of the largest headroom), or of its complement for binpack.
        ("binpack", {"tight": 8, "medium": 4, "empty": 1, "full": 0}),
        ("spread", {"tight": 3, "medium": 7, "empty": 10, "full": 0}),
    ],
)
def test_scoring(scoring: str, expected: dict[str, int]) -> None:
    policy = make_policy(scoring=scoring)
    scores = score_nodes(
        demand(2000), list(expected), scoring_store(policy).snapshot(), policy.extender, NOW
    )
    assert dict(scores) == expected
    assert all(0 <= score <= 10 for _, score in scores)


def test_binpack_prefers_tightest_fit() -> None:
    policy = make_policy()
    scores = dict(
        score_nodes(
            demand(2000),
            ["empty", "medium", "tight"],
            scoring_store(policy).snapshot(),
            policy.extender,
            NOW,
        )
    )
    assert scores["tight"] > scores["medium"] > scores["empty"]


def test_scores_of_non_gpu_pod_are_neutral() -> None:
    policy = make_policy()
    snapshot = scoring_store(policy).snapshot()
    scores = score_nodes(demand(None, gpu=False), ["tight", "x"], snapshot, policy.extender, NOW)
    assert scores == [("tight", 0), ("x", 0)]


# --- preemption ------------------------------------------------------------------------------


def uid(name: str) -> str:
    return str(make_pod(name, 1)["metadata"]["uid"])


@dataclass
class PreemptCase:
    need: int
    pods: list[dict[str, Any]]
    victims: list[str]
    reading: TelemetryReading
    kept: bool
    message: str | None = None


PREEMPT_CASES = {
    "evicting-frees-declared": PreemptCase(
        need=4000,
        pods=[on_node("low", 6000), on_node("other", 6000)],
        victims=["low"],
        reading=dcgm_reading({NODE: 9000}),
        kept=True,
    ),
    "victims-too-small": PreemptCase(
        need=4000,
        pods=[on_node("low", 1000), on_node("other", 11000)],
        victims=["low"],
        reading=dcgm_reading({NODE: 9000}),
        kept=False,
        message="vramguard: after evicting 1 GPU pod(s): declared 11000 + 4000 > capacity "
        "14000 MiB",
    ),
    "unknown-victim-frees-nothing": PreemptCase(
        need=4000,
        pods=[on_node("low", 6000), on_node("other", 6000)],
        victims=["not-on-this-node"],
        reading=dcgm_reading({NODE: 9000}),
        kept=False,
    ),
    "live-freed-by-measured-usage": PreemptCase(
        need=4000,
        pods=[on_node("low", 6000), on_node("other", 4000)],
        victims=["low"],
        reading=pod_exporter_reading(
            {("team-a", "low"): 5000, ("team-a", "other"): 4000}, free={NODE: 1000}
        ),
        kept=True,  # 1000 + 5000 >= 4512
    ),
    "live-still-short-after-eviction": PreemptCase(
        need=4000,
        pods=[on_node("low", 6000), on_node("other", 4000)],
        victims=["low"],
        reading=pod_exporter_reading(
            {("team-a", "low"): 2000, ("team-a", "other"): 4000}, free={NODE: 1000}
        ),
        kept=False,
        message="vramguard: after evicting 1 GPU pod(s): live free 3000 MiB < need 4000 + "
        "floor 512 MiB (custom, 3s old)",
    ),
    "without-per-pod-usage-estimate-capped-by-node-usage": PreemptCase(
        need=4000,
        pods=[on_node("low", 6000), on_node("other", 2000)],
        victims=["low"],
        # The victim declares 6000 but the whole card only uses 3000: evicting it frees at
        # most 3000, and 1000 + 3000 < 4000 + 512.
        reading=dcgm_reading({NODE: 1000}, used={NODE: 3000}),
        kept=False,
    ),
    "without-per-pod-usage-victim-past-warmup-holds-its-budget": PreemptCase(
        need=4000,
        pods=[on_node("low", 6000), on_node("other", 2000)],
        victims=["low"],
        reading=dcgm_reading({NODE: 1000}, used={NODE: 8000}),
        kept=True,
    ),
    "warming-victim-frees-its-unused-budget": PreemptCase(
        need=4000,
        pods=[on_node("low", 6000, started_at=NOW - 10), on_node("other", 2000)],
        victims=["low"],
        reading=dcgm_reading({NODE: 5000}),
        kept=True,  # before: 5000 - 6000 < 4512; after: 5000 >= 4512
    ),
}


@pytest.mark.parametrize("case", PREEMPT_CASES.values(), ids=PREEMPT_CASES.keys())
def test_vet_preemption(case: PreemptCase) -> None:
    policy = make_policy()
    store = make_store(policy, [a10g(allocatable_mib=14000)], case.pods, case.reading)
    vetting = vet_preemption(
        demand(case.need),
        {NODE: [uid(name) for name in case.victims]},
        store.snapshot(),
        policy.extender,
        NOW,
    )
    assert (vetting.kept == (NODE,)) is case.kept, vetting
    if case.message is not None:
        assert vetting.refused[NODE] == case.message


def test_vet_preemption_non_gpu_pod_keeps_every_node() -> None:
    policy = make_policy()
    store = make_store(policy, [], [])
    vetting = vet_preemption(
        demand(None, gpu=False), {"a": ["x"], "b": []}, store.snapshot(), policy.extender, NOW
    )
    assert vetting.kept == ("a", "b")


# --- the fast path agrees with the full rule ----------------------------------------------------


def without_fast_path(snapshot: Snapshot) -> Snapshot:
    return replace(
        snapshot,
        nodes=MappingProxyType({k: replace(v, quick=None) for k, v in snapshot.nodes.items()}),
    )


node_setups = st.fixed_dictionaries(
    {
        "capacity": st.one_of(st.none(), st.integers(0, 20000)),
        "pods": st.lists(
            st.tuples(st.integers(0, 8000), st.one_of(st.none(), st.integers(-400, 0))),
            max_size=4,
        ),
        "free": st.one_of(st.none(), st.integers(0, 20000)),
        "age": st.integers(0, 200),
        "reservations": st.lists(st.tuples(st.integers(0, 4000), st.integers(-50, 50)), max_size=2),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    setups=st.lists(node_setups, min_size=1, max_size=5),
    need=st.integers(0, 12000),
    later=st.integers(-100, 400),
    extender=extender_settings(scoring=st.sampled_from(["binpack", "spread"])),
)
def test_fast_path_agrees_with_the_full_rule(
    setups: list[dict[str, Any]], need: int, later: int, extender: dict[str, Any]
) -> None:
    policy = make_policy(**extender)
    nodes, pods, free = [], [], {}
    for n, setup in enumerate(setups):
        name = f"n{n}"
        nodes.append(make_node(name, allocatable_mib=setup["capacity"]))
        for p, (mib, started) in enumerate(setup["pods"]):
            started_at = None if started is None else NOW + started
            pods.append(make_pod(f"{name}-{p}", mib, node=name, started_at=started_at))
        if setup["free"] is not None:
            free[name] = setup["free"]
    store = make_store(policy, nodes, pods)
    for n, setup in enumerate(setups):
        store.apply_telemetry(dcgm_reading(free, age=setup["age"]))
        for r, (mib, expires) in enumerate(setup["reservations"]):
            store.reserve(Reservation(f"r{n}-{r}", "x", "y", f"n{n}", mib, NOW + expires))
    fast = store.snapshot()
    slow = without_fast_path(fast)
    names = [f"n{n}" for n in range(len(setups))]
    now = NOW + later
    pod_demand = demand(need)

    assert filter_nodes(pod_demand, names, fast, policy.extender, now) == filter_nodes(
        pod_demand, names, slow, policy.extender, now
    )
    assert score_nodes(pod_demand, names, fast, policy.extender, now) == score_nodes(
        pod_demand, names, slow, policy.extender, now
    )
