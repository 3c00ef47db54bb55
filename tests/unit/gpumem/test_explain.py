from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from gpumem.explain import (
    MESSAGE_LIMIT,
    NodeVerdict,
    compose,
    explain_pod,
    explain_verdicts,
    judge_nodes,
)
from gpumem.fit import check_node
from gpumem.pending import PendingPod
from gpumem.state import Sample, TelemetryReading
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
)

GPUMEM = "vramguard.io/gpumem"
HEAD = f"vramguard: no node fits 1500 MiB of {GPUMEM}: "


def incoming(need: int = 1500, **fields: Any) -> PendingPod:
    return PendingPod(uid="u-1", namespace="team-a", name="incoming", need_mib=need, **fields)


@dataclass
class Case:
    nodes: list[dict[str, Any]]
    pods: list[dict[str, Any]] = field(default_factory=list)
    reading: TelemetryReading | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    pod: PendingPod = field(default_factory=incoming)
    message: str = ""
    fits_on: tuple[str, ...] = ()


def resident(name: str, mib: int, node: str) -> dict[str, Any]:
    return make_pod(name, mib, node=node)


SEEDS_NODE = [
    resident("immich-ml", 3000, "node-a"),
    resident("llama-swap", 5000, "node-a"),
    resident("frigate", 2000, "node-a"),
    resident("immich-server", 1800, "node-a"),
    resident("portal-stt", 1500, "node-a"),
]

CASES = {
    "declared-refusal": Case(
        nodes=[make_node("node-a", allocatable_mib=14000)],
        pods=SEEDS_NODE,
        reading=dcgm_reading({"node-a": 9000}, age=3),
        message=HEAD + "node-a: declared 13300 + 1500 > capacity 14000 MiB",
    ),
    "live-refusal": Case(
        nodes=[make_node("node-b", allocatable_mib=14000)],
        reading=dcgm_reading({"node-b": 1900}, age=3),
        message=HEAD + "node-b: live free 1900 MiB < need 1500 + floor 512 MiB (dcgm, 3s old)",
    ),
    "declared-and-live-best-first": Case(
        nodes=[
            make_node("node-a", allocatable_mib=14000),
            make_node("node-b", allocatable_mib=14000),
        ],
        pods=SEEDS_NODE,
        reading=dcgm_reading({"node-a": 9000, "node-b": 1900}, age=3),
        # node-b is 112 MiB short, node-a 800: node-b first.
        message=HEAD + "node-b: live free 1900 MiB < need 1500 + floor 512 MiB (dcgm, 3s old); "
        "node-a: declared 13300 + 1500 > capacity 14000 MiB",
    ),
    "stale-deny": Case(
        nodes=[make_node("node-a", allocatable_mib=14000)],
        reading=dcgm_reading({"node-a": 14000}, age=75),
        settings={"staleMode": "deny"},
        message=HEAD + "node-a: live GPU memory telemetry is 75s old > maxAgeSeconds 60 "
        "(dcgm); staleMode deny",
    ),
    "stale-budget-only-fits-on-budgets": Case(
        nodes=[make_node("node-a", allocatable_mib=14000)],
        reading=dcgm_reading({"node-a": 100}, age=75),
        fits_on=("node-a",),
    ),
    "no-gpu-nodes": Case(
        nodes=[make_node("cpu-1"), make_node("cpu-2")],
        message=HEAD + "no node advertises GPU memory",
    ),
    "no-nodes-at-all": Case(nodes=[], message=HEAD + "no node advertises GPU memory"),
    "fits-somewhere-says-nothing": Case(
        nodes=[
            make_node("node-a", allocatable_mib=14000),
            make_node("node-c", allocatable_mib=4000),
        ],
        pods=SEEDS_NODE,
        reading=dcgm_reading({"node-a": 9000, "node-c": 4000}),
        fits_on=("node-c",),
    ),
    "too-big-for-any-card": Case(
        nodes=[make_node("node-c", allocatable_mib=4000)],
        reading=dcgm_reading({"node-c": 4000}),
        pod=incoming(6000),
        message=f"vramguard: no node fits 6000 MiB of {GPUMEM}: node-c: need 6000 > capacity "
        "4000 MiB",
    ),
    "gfd-capacity-counts": Case(
        nodes=[make_node("node-g", gfd_memory_mib=16384, gfd_count=1)],
        pods=[resident("big", 14000, "node-g")],
        reading=dcgm_reading({"node-g": 2000}),
        message=HEAD + "node-g: declared 14000 + 1500 > capacity 15360 MiB",
    ),
    "node-selector-rules-out-the-node-with-room": Case(
        nodes=[
            make_node("node-a", allocatable_mib=14000),
            make_node("node-c", allocatable_mib=4000),
        ],
        pods=SEEDS_NODE,
        reading=dcgm_reading({"node-a": 9000, "node-c": 4000}),
        pod=incoming(node_selector={"kubernetes.io/hostname": "node-a"}),
        message=HEAD + "node-a: declared 13300 + 1500 > capacity 14000 MiB",
    ),
    "node-affinity-rules-out-the-node-with-room": Case(
        nodes=[
            make_node("node-a", allocatable_mib=14000),
            make_node("node-c", allocatable_mib=4000),
        ],
        pods=SEEDS_NODE,
        reading=dcgm_reading({"node-a": 9000, "node-c": 4000}),
        pod=incoming(
            affinity_terms=(
                {
                    "matchFields": [
                        {"key": "metadata.name", "operator": "NotIn", "values": ["node-c"]}
                    ]
                },
            )
        ),
        message=HEAD + "node-a: declared 13300 + 1500 > capacity 14000 MiB",
    ),
    "no-gpu-node-matches-the-selector": Case(
        nodes=[
            make_node("node-a", allocatable_mib=14000),
            make_node("node-c", allocatable_mib=4000),
        ],
        reading=dcgm_reading({"node-a": 9000, "node-c": 4000}),
        pod=incoming(node_selector={"pool": "a100"}),
        message=HEAD + "none of the 2 GPU nodes matches the pod's nodeSelector or node affinity",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_explain_pod(case: Case) -> None:
    store = make_store(make_policy(**case.settings), case.nodes, case.pods, case.reading)
    policy = store.policy
    explanation = explain_pod(
        case.pod, store.snapshot().nodes, policy.extender, NOW, resource=GPUMEM
    )
    assert explanation.message == case.message
    assert explanation.explains == bool(case.message)
    assert explanation.fits_on == case.fits_on
    if case.fits_on:
        assert explanation.refused == ()


def many_nodes(count: int, name: str = "node-{i}") -> Case:
    """count nodes of 14000 MiB, node i with 13000 + 100 i declared: i MiB... short."""
    nodes = [make_node(name.format(i=i), allocatable_mib=14000) for i in range(count)]
    pods = [resident(f"r{i}", 13000 + 100 * i, name.format(i=i)) for i in range(count)]
    reading = dcgm_reading({name.format(i=i): 14000 for i in range(count)})
    return Case(nodes=nodes, pods=pods, reading=reading)


def explain(case: Case, **options: Any) -> Any:
    store = make_store(make_policy(), case.nodes, case.pods, case.reading)
    return explain_pod(
        case.pod, store.snapshot().nodes, store.policy.extender, NOW, resource=GPUMEM, **options
    )


def test_at_most_five_nodes_best_first_then_how_many_more() -> None:
    explanation = explain(many_nodes(8))
    listed = re.findall(r"(node-\d): declared", explanation.message)
    assert listed == ["node-0", "node-1", "node-2", "node-3", "node-4"]
    assert explanation.message.endswith("; and 3 more")
    assert [name for name, _ in explanation.refused][:3] == ["node-0", "node-1", "node-2"]
    assert [r.short_mib for _, r in explanation.refused] == [500 + 100 * i for i in range(8)]


def test_refusals_without_a_shortfall_come_last() -> None:
    case = Case(
        nodes=[
            make_node("fresh", allocatable_mib=14000),
            make_node("stale", allocatable_mib=14000),
        ],
        pods=[resident("r", 13000, "fresh")],
        reading=TelemetryReading(
            source="dcgm",
            fetched_at=NOW,
            free={"fresh": Sample(14000, NOW - 1)},
        ),
    )
    store = make_store(make_policy(staleMode="deny"), case.nodes, case.pods, case.reading)
    explanation = explain_pod(
        incoming(), store.snapshot().nodes, store.policy.extender, NOW, resource=GPUMEM
    )
    assert [name for name, _ in explanation.refused] == ["fresh", "stale"]
    assert "stale: no live GPU memory telemetry for the node (dcgm); staleMode deny" in (
        explanation.message
    )


@pytest.mark.parametrize("limit", [200, 300, 1024])
def test_message_never_exceeds_the_event_limit(limit: int) -> None:
    long_name = "gpu-node-with-a-very-long-name-{i}-" + "x" * 180
    explanation = explain(many_nodes(12, long_name), limit=limit)
    assert len(explanation.message) <= limit
    assert explanation.message.startswith(HEAD)
    # As many whole nodes as fit, then how many were left out.
    assert re.search(r"; and \d+ more$", explanation.message)


def test_default_limit_is_the_event_api_cap() -> None:
    explanation = explain(many_nodes(40, "n{i}-" + "y" * 240))
    assert MESSAGE_LIMIT == 1024
    assert len(explanation.message) <= 1024


def test_compose_cuts_one_part_too_long_for_the_limit() -> None:
    head = "vramguard: no node fits 1 MiB of x: "
    message = compose(head, ["a" * 500, "b: short"], max_nodes=5, limit=100)
    assert len(message) == 100
    assert message.startswith(head + "aaa")
    assert message.endswith("...; and 1 more")
    assert compose(head, ["a: 1", "b: 2"], max_nodes=5, limit=1024) == head + "a: 1; b: 2"
    assert compose(head, ["a: 1", "b: 2"], max_nodes=1, limit=1024) == head + "a: 1; and 1 more"


def test_key_ignores_telemetry_ages() -> None:
    case = CASES["live-refusal"]
    store = make_store(make_policy(), case.nodes, case.pods, case.reading)
    nodes = store.snapshot().nodes
    settings = store.policy.extender
    now = explain_pod(incoming(), nodes, settings, NOW, resource=GPUMEM)
    later = explain_pod(incoming(), nodes, settings, NOW + 5, resource=GPUMEM)
    assert now.message != later.message  # 3s old, then 8s old
    assert now.key == later.key


# --- node by node ---------------------------------------------------------------------------

JUDGED_NODES = [
    make_node("node-a", allocatable_mib=14000),  # declared 13300: 800 MiB short
    make_node("node-b", allocatable_mib=14000),  # live free 1900: 112 MiB short
    make_node("node-c", allocatable_mib=4000),  # fits, 1988 MiB to spare
    make_node("node-d", allocatable_mib=8000),  # fits, 2988 MiB to spare (live 5000)
    make_node("node-e", allocatable_mib=14000),  # no telemetry: budget-only fits
    make_node("cpu-1"),
    make_node("cpu-0"),
]
JUDGED_READING = dcgm_reading({"node-a": 9000, "node-b": 1900, "node-c": 4000, "node-d": 5000})


def judged(
    pod: Any = None,
    settings: dict[str, Any] | None = None,
    bound_to: str | None = None,
) -> tuple[NodeVerdict, ...]:
    store = make_store(make_policy(**(settings or {})), JUDGED_NODES, SEEDS_NODE, JUDGED_READING)
    return judge_nodes(
        pod or incoming(), store.snapshot().nodes, store.policy.extender, NOW, bound_to=bound_to
    )


def test_judge_nodes_gives_every_known_node_one_verdict_best_first() -> None:
    verdicts = judged()
    assert [(v.node, v.verdict) for v in verdicts] == [
        ("node-e", "fits"),  # 14000 - 1500 in budgets, no live check
        ("node-d", "fits"),
        ("node-c", "fits"),
        ("node-b", "refused"),
        ("node-a", "refused"),
        ("cpu-0", "no-gpu"),
        ("cpu-1", "no-gpu"),
    ]
    by_node = {v.node: v for v in verdicts}
    assert (by_node["node-e"].headroom_mib, by_node["node-e"].live_skipped) == (12500, True)
    assert (by_node["node-d"].headroom_mib, by_node["node-d"].live_skipped) == (2988, False)
    assert by_node["node-c"].headroom_mib == 1988
    refusal = by_node["node-b"].refusal
    assert refusal is not None
    assert (refusal.kind, refusal.short_mib) == ("live", 112)
    assert refusal.message == (
        "vramguard: live free 1900 MiB < need 1500 + floor 512 MiB (dcgm, 8s old)"
    )
    refusal = by_node["node-a"].refusal
    assert refusal is not None
    assert refusal.message == "vramguard: declared 13300 + 1500 > capacity 14000 MiB"
    assert all(v.refusal is None and v.headroom_mib is None for v in verdicts[5:])


def test_judge_nodes_says_what_the_fit_rule_says() -> None:
    store = make_store(make_policy(), JUDGED_NODES, SEEDS_NODE, JUDGED_READING)
    nodes, settings = store.snapshot().nodes, store.policy.extender
    for verdict in judge_nodes(incoming(), nodes, settings, NOW):
        if verdict.verdict in ("fits", "refused"):
            fit = check_node(1500, verdict.node, nodes[verdict.node], settings, NOW)
            assert (verdict.refusal, verdict.live_skipped) == (fit.refusal, fit.live_skipped)
            if fit.fits:
                assert verdict.headroom_mib == fit.headroom_mib


def test_judge_nodes_rules_out_nodes_the_selectors_do_not_admit() -> None:
    pod = incoming(node_selector={"kubernetes.io/hostname": "node-b"})
    assert [(v.node, v.verdict) for v in judged(pod)] == [
        ("node-b", "refused"),
        ("node-a", "not-admitted"),
        ("node-c", "not-admitted"),
        ("node-d", "not-admitted"),
        ("node-e", "not-admitted"),
        ("cpu-0", "no-gpu"),
        ("cpu-1", "no-gpu"),
    ]


def test_judge_nodes_with_stale_deny_refuses_without_telemetry_after_the_shortfalls() -> None:
    verdicts = judged(settings={"staleMode": "deny"})
    assert [(v.node, v.verdict) for v in verdicts][:5] == [
        ("node-d", "fits"),
        ("node-c", "fits"),
        ("node-b", "refused"),
        ("node-a", "refused"),
        ("node-e", "refused"),  # no shortfall: no amount of memory would do
    ]
    refusal = verdicts[4].refusal
    assert refusal is not None
    assert refusal.kind == "stale"


def test_judge_nodes_shows_the_bound_node_without_judging_it() -> None:
    verdicts = judged(incoming(5000), bound_to="node-a")
    assert verdicts[0] == NodeVerdict("node-a", "bound")
    assert [v.node for v in verdicts if v.verdict == "fits"] == ["node-e"]
    assert "node-a" not in [n for n, _ in explain_verdicts(5000, verdicts, resource=GPUMEM).refused]


def test_judge_nodes_skips_nodes_only_pods_mention() -> None:
    store = make_store(make_policy(), [], [resident("r", 1000, "ghost")])
    assert judge_nodes(incoming(), store.snapshot().nodes, store.policy.extender, NOW) == ()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_explain_pod_is_explain_verdicts_of_judge_nodes(case: Case) -> None:
    store = make_store(make_policy(**case.settings), case.nodes, case.pods, case.reading)
    nodes, settings = store.snapshot().nodes, store.policy.extender
    verdicts = judge_nodes(case.pod, nodes, settings, NOW)
    assert explain_verdicts(case.pod.need_mib, verdicts, resource=GPUMEM) == explain_pod(
        case.pod, nodes, settings, NOW, resource=GPUMEM
    )
