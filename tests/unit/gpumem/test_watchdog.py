"""The watchdog's rule (gpumem.watchdog): every reason, the choice of the victim, and the
pods it must never choose (no declaration, within budget, excluded namespace, terminating)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from gpumem.policy import Policy
from gpumem.state import Snapshot, TelemetryReading
from gpumem.watchdog import (
    NONE_REASONS,
    REASONS,
    RECYCLE_REASONS,
    Recycled,
    WatchdogDecision,
    WatchdogLimits,
    decide,
)
from gpumem.watchdog_facts import PodFacts, pod_facts
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
    pod_exporter_reading,
    unschedulable,
)

CARD = 15360  # GFD memory of the nodes: free = CARD - the pods' usage (pod-exporter preset)
POLICY = make_policy(telemetry={"preset": "pod-exporter"})
LIMITS = WatchdogLimits(
    floor_mib=1024, emergency_floor_mib=512, cooldown_seconds=300, max_age_seconds=60
)
NODE_A = make_node("node-a", allocatable_mib=14000, gfd_memory_mib=CARD)
NODE_B = make_node("node-b", allocatable_mib=14000, gfd_memory_mib=CARD)


def pod(name: str, declared: int | None, *, namespace: str = "team-a", **kw: Any) -> Any:
    return make_pod(name, declared, node=kw.pop("node", "node-a"), namespace=namespace, **kw)


# The seeds' story: immich-ml's arena grew to twice its budget, llama-swap is over too,
# frigate is within, and a pod without a declaration (an excluded namespace) holds some.
TENANTS = [
    pod("immich-ml", 3000),
    pod("llama-swap", 5000),
    pod("frigate", 2000),
    pod("dcgm-probe", None, namespace="kube-system"),
]
# 6100 + 6900 + 1500 + 460 = 14960 used: 400 free, below the emergency floor.
USAGE = {"immich-ml": 6100, "llama-swap": 6900, "frigate": 1500, "dcgm-probe": 460}


def usage(values: Mapping[str, int], namespace: str = "team-a") -> dict[tuple[str, str], int]:
    return {
        ("kube-system" if name == "dcgm-probe" else namespace, name): mib
        for name, mib in values.items()
    }


def snapshot(
    pods: list[dict[str, Any]] | None = None,
    used: Mapping[str, int] | None = None,
    *,
    nodes: list[dict[str, Any]] | None = None,
    reading: TelemetryReading | None = None,
    policy: Policy = POLICY,
    age: float = 3.0,
) -> Snapshot:
    if reading is None:
        reading = pod_exporter_reading(usage(USAGE if used is None else used), age=age)
    store = make_store(
        policy, [NODE_A] if nodes is None else nodes, TENANTS if pods is None else pods, reading
    )
    return store.snapshot()


def one(
    snap: Snapshot,
    *,
    limits: WatchdogLimits = LIMITS,
    pending: list[dict[str, Any]] | None = None,
    terminating: frozenset[str] = frozenset(),
    recycled: Mapping[str, Recycled] | None = None,
    now: float = NOW,
    policy: Policy = POLICY,
) -> WatchdogDecision:
    facts = pod_facts(pending or [], policy)
    facts = PodFacts(facts.pending, terminating)
    decisions = decide(
        snap, limits, policy.extender, now, facts=facts, recycled=recycled, only=["node-a"]
    )
    (decision,) = decisions
    return decision


def pending(need: int = 1500, *, pinned: str | None = "node-a") -> dict[str, Any]:
    raw = unschedulable("incoming", need, namespace="team-b")
    if pinned is not None:
        raw["spec"]["nodeSelector"] = {"kubernetes.io/hostname": pinned}
    return raw


def uid(name: str, namespace: str = "team-a") -> str:
    raw = make_pod(name, 1, namespace=namespace)
    return str(raw["metadata"]["uid"])


# --- recycling ------------------------------------------------------------------------------


def test_below_the_emergency_floor_recycles_the_pod_most_over_budget() -> None:
    decision = one(snapshot())
    assert (decision.action, decision.reason) == ("recycle", "over-budget")
    assert decision.pod == "team-a/immich-ml"
    assert decision.victim is not None
    assert decision.victim.uid == uid("immich-ml")
    assert (decision.free_mib, decision.floor_mib) == (400, 1024)
    assert decision.message == (
        "live free 400 MiB < floor 1024 MiB, and < emergency floor 512 MiB; team-a/immich-ml "
        "uses 6100 MiB of 3000 declared (+3100), the most over its budget"
    )


def test_a_pending_pod_refused_on_live_vram_is_contention() -> None:
    # 700 free: below the floor, above the emergency floor.
    used = {**USAGE, "dcgm-probe": 160}
    assert one(snapshot(used=used)).reason == "no-contention"
    decision = one(snapshot(used=used), pending=[pending(1500)])
    assert (decision.action, decision.pod) == ("recycle", "team-a/immich-ml")
    assert decision.message.startswith(
        "live free 700 MiB < floor 1024 MiB, and team-b/incoming waits for it (Pending, needs "
        "1500 MiB, refused on live VRAM); team-a/immich-ml uses 6100 MiB"
    )


def test_several_waiting_pods_are_counted() -> None:
    used = {**USAGE, "dcgm-probe": 160}
    second = pending(1500)
    second["metadata"]["name"] = "incoming-2"
    second["metadata"]["uid"] = "u-2"
    decision = one(snapshot(used=used), pending=[pending(1500), second])
    assert "team-b/incoming and 1 more waits for it" in decision.message


@pytest.mark.parametrize(
    ("waiting", "why"),
    [
        (pending(4500), "refused on declared budgets: recycling gives a budget back briefly"),
        (pending(1500, pinned=None), "fits on node-b, where the scheduler will place it"),
        (pending(1500, pinned="node-b"), "may not go to node-a"),
        (pending(100), "fits on node-a now"),
    ],
)
def test_pending_pods_that_recycling_would_not_help_are_no_contention(
    waiting: dict[str, Any], why: str
) -> None:
    used = {**USAGE, "dcgm-probe": 160}  # 700 free
    snap = snapshot(used=used, nodes=[NODE_A, NODE_B])
    decision = one(snap, pending=[waiting])
    assert decision.reason == "no-contention", why
    assert decision.message == (
        "live free 700 MiB < floor 1024 MiB, but nothing waits for it: no Pending GPU pod "
        "refused on live VRAM, and free >= emergency floor 512 MiB"
    )


def test_ties_go_to_the_larger_use_then_the_name() -> None:
    pods = [pod("b-pod", 2000), pod("a-pod", 2000), pod("big", 4000), pod("filler", 4000)]
    # Every pod is 1000 over (400 free): big uses the most.
    used = {"b-pod": 3000, "a-pod": 3000, "big": 5000, "filler": 3960}
    decision = one(snapshot(pods, used))
    assert decision.pod == "team-a/big"
    # a-pod and b-pod are alike in everything but the name (15360 - 14960 = 400 free).
    decision = one(snapshot(pods[:2], {"b-pod": 7480, "a-pod": 7480}))
    assert decision.pod == "team-a/a-pod"


# --- the pods never chosen --------------------------------------------------------------------


def test_a_pod_without_a_declaration_is_never_chosen() -> None:
    # The undeclared pod holds the most by far (used - declared would be 9000).
    used = {"immich-ml": 3200, "llama-swap": 2000, "frigate": 1000, "dcgm-probe": 9000}
    decision = one(snapshot(used=used))
    assert decision.pod == "team-a/immich-ml"
    # With nobody else over budget there is no one to choose.
    used = {"immich-ml": 3000, "llama-swap": 2000, "frigate": 1000, "dcgm-probe": 9000}
    decision = one(snapshot(used=used))
    assert (decision.action, decision.reason) == ("none", "none-over-budget")
    assert decision.message == (
        "live free 360 MiB < floor 1024 MiB, and < emergency floor 512 MiB; no pod uses "
        "more than it declared"
    )


def test_pods_within_their_budget_are_never_chosen() -> None:
    used = {"immich-ml": 3000, "llama-swap": 5000, "frigate": 2000, "dcgm-probe": 5000}
    decision = one(snapshot(used=used))
    assert decision.reason == "none-over-budget"


def test_pods_of_excluded_namespaces_are_never_chosen() -> None:
    pods = [pod("system-thing", 1000, namespace="kube-system"), pod("immich-ml", 3000)]
    used = {("kube-system", "system-thing"): 10000, ("team-a", "immich-ml"): 5000}
    reading = pod_exporter_reading(used)
    limits = WatchdogLimits.of(POLICY, floor_mib=1024, cooldown_seconds=300)
    assert "kube-system" in limits.protected_namespaces
    decision = one(snapshot(pods, reading=reading), limits=limits)
    assert decision.pod == "team-a/immich-ml"


def test_a_pod_without_measured_usage_is_never_chosen() -> None:
    used = {"llama-swap": 14900}  # immich-ml reports nothing
    decision = one(snapshot(used=used))
    assert decision.pod == "team-a/llama-swap"


# --- waiting ----------------------------------------------------------------------------------


def test_a_recent_recycle_on_the_node_waits_for_the_cooldown() -> None:
    before = Recycled("node-a", uid("other"), "team-a", "other", NOW - 42)
    decision = one(snapshot(), recycled={"node-a": before})
    assert (decision.action, decision.reason) == ("none", "cooldown")
    assert decision.message.endswith(
        "; team-a/other was recycled 42s ago, waiting 300s for the freed VRAM to show"
    )
    # Another node's recycle does not hold this one back; an old one neither.
    assert one(snapshot(), recycled={"node-b": before}).action == "recycle"
    old = Recycled("node-a", uid("other"), "team-a", "other", NOW - 300)
    assert one(snapshot(), recycled={"node-a": old}).action == "recycle"


def test_a_terminating_pod_still_holding_vram_is_waited_for() -> None:
    decision = one(snapshot(), terminating=frozenset({uid("immich-ml")}))
    assert (decision.action, decision.reason) == ("none", "cooldown")
    assert decision.message.endswith(
        "; waiting for team-a/immich-ml to terminate (it still holds 6100 MiB)"
    )
    # Once telemetry no longer shows its usage, the next pod over budget is chosen; the
    # terminating one never is.
    used = {**USAGE, "immich-ml": 0, "frigate": 7600}
    decision = one(snapshot(used=used), terminating=frozenset({uid("immich-ml")}))
    assert decision.pod == "team-a/frigate"


# --- when the watchdog does nothing ----------------------------------------------------------


def test_free_at_or_above_the_floor_is_ok() -> None:
    used = {**USAGE, "llama-swap": 6900 - 624}  # exactly 1024 free
    decision = one(snapshot(used=used))
    assert (decision.action, decision.reason, decision.free_mib) == ("none", "ok", 1024)
    assert decision.message == "live free 1024 MiB >= floor 1024 MiB"


def test_missing_or_stale_telemetry_does_nothing() -> None:
    empty = TelemetryReading(source="dcgm", fetched_at=NOW)
    decision = one(snapshot(reading=empty))
    assert (decision.action, decision.reason) == ("none", "telemetry-unavailable")
    assert decision.message == "no live GPU memory telemetry"
    decision = one(snapshot(age=61))
    assert (decision.action, decision.reason) == ("none", "telemetry-unavailable")
    assert decision.message == (
        "live GPU memory telemetry is 61s old > maxAgeSeconds 60 (pod-exporter)"
    )


def test_telemetry_without_per_pod_usage_cannot_choose() -> None:
    policy = make_policy()  # dcgm: card free and used, no pods
    reading = dcgm_reading({"node-a": 300}, used={"node-a": 15060})
    decision = one(snapshot(reading=reading, policy=policy), policy=policy)
    assert (decision.action, decision.reason) == ("none", "no-pod-usage")
    assert decision.message == (
        "live free 300 MiB < floor 1024 MiB, and < emergency floor 512 MiB; telemetry "
        "(dcgm) has no per-pod usage, so no pod can be found over its budget"
    )


def test_an_emergency_floor_at_the_floor_is_the_seeds_rule() -> None:
    """The seeds recycled whenever free < floor; an emergency floor equal to (or above) the
    floor does that, with no Pending pod."""
    used = {**USAGE, "dcgm-probe": 160}  # 700 free, nothing Pending
    seeds = WatchdogLimits(1024, 4096, 300, 60)
    assert one(snapshot(used=used), limits=seeds).action == "recycle"
    capped = WatchdogLimits.of(POLICY, emergency_floor_mib=4096, cooldown_seconds=1)
    assert (capped.floor_mib, capped.emergency_floor_mib) == (512, 512)


def test_limits_follow_the_policy_unless_given() -> None:
    policy = make_policy(floorMiB=2000, maxAgeSeconds=30)
    limits = WatchdogLimits.of(policy, cooldown_seconds=120)
    assert limits == WatchdogLimits(
        floor_mib=2000,
        emergency_floor_mib=1000,
        cooldown_seconds=120,
        max_age_seconds=30,
        protected_namespaces=frozenset({"kube-system"}),
    )
    limits = WatchdogLimits.of(policy, floor_mib=800, emergency_floor_mib=100, cooldown_seconds=0)
    assert (limits.floor_mib, limits.emergency_floor_mib) == (800, 100)
    assert WatchdogLimits.of(policy, floor_mib=801, cooldown_seconds=0).emergency_floor_mib == 400


# --- which nodes ------------------------------------------------------------------------------


def test_every_gpu_node_gets_one_decision_in_name_order() -> None:
    cpu = make_node("cpu-1")
    snap = snapshot(nodes=[NODE_B, cpu, NODE_A])
    decisions = decide(snap, LIMITS, POLICY.extender, NOW)
    assert [(d.node, d.action, d.reason) for d in decisions] == [
        ("node-a", "recycle", "over-budget"),
        ("node-b", "none", "ok"),
    ]


def test_only_the_named_nodes_and_unknown_ones_say_so() -> None:
    snap = snapshot(nodes=[NODE_A, NODE_B])
    decisions = decide(snap, LIMITS, POLICY.extender, NOW, only=["node-b", "nope"])
    assert [(d.node, d.reason, d.message) for d in decisions] == [
        ("node-b", "ok", "live free 15360 MiB >= floor 1024 MiB"),
        ("nope", "unknown-node", "nope is not a GPU node vramguard knows"),
    ]


# --- pod facts --------------------------------------------------------------------------------


def test_pod_facts_reads_pending_and_terminating_pods() -> None:
    waiting = pending(1500)
    bound = pod("immich-ml", 3000)
    going = pod("llama-swap", 5000)
    going["metadata"]["deletionTimestamp"] = "2023-11-14T22:13:20Z"
    other_scheduler = unschedulable("elsewhere", 1500)
    other_scheduler["spec"]["schedulerName"] = "default-scheduler"
    facts = pod_facts([waiting, bound, going, other_scheduler], POLICY)
    assert [(p.namespace, p.name, p.need_mib) for p in facts.pending] == [
        ("team-b", "incoming", 1500)
    ]
    assert facts.terminating == frozenset({uid("llama-swap")})
    # A policy with no scheduler name of its own explains no Pending pod.
    unset = Policy.model_validate({"schedulerName": None})
    assert pod_facts([waiting], unset).pending == ()


def test_reason_lists_cover_every_reason() -> None:
    assert set(NONE_REASONS) | set(RECYCLE_REASONS) == set(REASONS)
    assert not set(NONE_REASONS) & set(RECYCLE_REASONS)
