"""Budgets from history: the rules of gpumem.recommend, table by table, on the seeds' tenants
(immich-ml's arena at 10700 MiB on a 3000 MiB budget)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from gpumem.policy import Policy
from gpumem.recommend import (
    Recommendation,
    RecommendSettings,
    UsageHistory,
    WorkloadUsage,
    fit_budgets,
    gather,
    judge,
    percentile,
    policy_patch,
    recommend,
    recommended_budget,
)
from gpumem.workloads import WorkloadKey, Workloads, controllers_from
from tests.unit.extender.factories import NOW, make_node, make_pod, make_store

SETTINGS = RecommendSettings(resolution_seconds=360.0)
SEEDS_POLICY = Policy.model_validate(
    {
        "excludedNamespaces": ["kube-system"],
        "defaults": {"gpumemMiB": 1024, "maxGpumemMiB": 8192},
        "namespaces": {
            "immich": {"priorityClassName": "tier-1-gpu", "gpumemMiB": 3000},
            "llama-swap": {"priorityClassName": "tier-1-gpu", "gpumemMiB": 5000},
            "frigate": {"gpumemMiB": 2000},
        },
    }
)


def history(*values: int, start: float = NOW - 86400, step: float = 360.0) -> UsageHistory:
    return UsageHistory(tuple((start + i * step, v) for i, v in enumerate(values)))


# --- The arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peak", "safety", "step", "expected"),
    [
        (10700, Fraction(6, 5), 256, 13056),  # 12840 -> 51 steps of 256
        (2560, Fraction(6, 5), 256, 3072),  # 3072 exactly: not one step more
        (2560, Fraction(1), 256, 2560),
        (2561, Fraction(1), 256, 2816),
        (4700, Fraction(11, 10), 512, 5632),  # 5170 -> 11 steps of 512
        (0, Fraction(6, 5), 256, 256),  # never a budget of 0
        (1, Fraction(6, 5), 1, 2),  # 1.2 rounds up
    ],
)
def test_recommended_budget_is_peak_times_safety_rounded_up_to_the_step(
    peak: int, safety: Fraction, step: int, expected: int
) -> None:
    assert recommended_budget(peak, safety, step) == expected


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5], 99, 5),
        (list(range(1, 101)), 99, 99),
        (list(range(1, 101)), 50, 50),
        (list(range(1, 201)), 99, 198),
        ([3, 1, 2], 99, 3),  # unsorted; rank 3 of 3
        ([10] * 99 + [9000], 99, 10),  # one spike in a hundred is above the p99
        ([10] * 98 + [9000] * 2, 99, 9000),
    ],
)
def test_p99_is_the_nearest_rank(values: list[int], q: int, expected: int) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(
    ("peak", "declared", "recommended", "verdict"),
    [
        (10700, 3000, 13056, "over budget"),  # the seeds' immich-ml
        (3001, 3000, 3840, "over budget"),
        (3000, 3000, 3840, "ok"),  # at its budget, not above it
        (900, 2000, 1280, "oversized"),  # 2000 > 1.5 x 1280 = 1920
        (1000, 1920, 1280, "ok"),  # 1920 is 1.5 x 1280: not more
        (1200, 1800, 1536, "ok"),
        (0, 0, 256, "ok"),
    ],
)
def test_verdicts(peak: int, declared: int, recommended: int, verdict: str) -> None:
    assert judge(peak, declared, recommended, Fraction(3, 2)) == verdict


def usage(
    declared: int, histories: dict[str, UsageHistory], source: str = "policy"
) -> WorkloadUsage:
    return WorkloadUsage(
        WorkloadKey("immich", "Deployment", "immich-ml"),
        declared,
        source,  # type: ignore[arg-type]
        tuple(histories)[-1:],
        histories,
    )


def test_replicas_are_not_added_up_the_peak_is_one_pods_and_the_p99_pools_them() -> None:
    # Two replicas at the same steps: 6000 + 5000 together, but a budget is per pod.
    rec = recommend(
        usage(
            3000,
            {
                "immich-ml-6b7f9c8d5-x2x4z": history(2600, 6000, 2600),
                "immich-ml-6b7f9c8d5-k8q2m": history(2600, 5000, 2600),
            },
        ),
        SETTINGS,
    )
    assert (rec.peak_mib, rec.peak_pod, rec.p99_mib) == (6000, "immich-ml-6b7f9c8d5-x2x4z", 6000)
    assert rec.recommended_mib == recommended_budget(6000, Fraction(6, 5), 256) == 7424
    assert rec.verdict == "over budget"
    assert (rec.pods_seen, rec.pods_now) == (2, 1)
    # Three steps of 6 minutes are covered, by either pod.
    assert rec.covered_seconds == 3 * 360


def test_a_recycled_pods_peak_counts_for_its_workload() -> None:
    """The seeds' immich-ml: the pod that grew to 10700 MiB is gone (recycled), its
    successor holds 2600; the peak is the gone pod's."""
    old = history(*([2600] * 50 + [10700]), start=NOW - 5 * 86400)
    new = history(*([2600] * 100), start=NOW - 86400)
    rec = recommend(
        usage(3000, {"immich-ml-6b7f9c8d5-x2x4z": old, "immich-ml-5c4d-k8q2m": new}), SETTINGS
    )
    assert (rec.peak_mib, rec.recommended_mib, rec.verdict) == (10700, 13056, "over budget")
    assert rec.p99_mib == 2600  # one point in 151 is above the p99
    assert rec.budget_mib == 13056


def test_no_samples_is_no_data_and_the_fit_keeps_the_declared_budget() -> None:
    rec = recommend(usage(1500, {"gone": UsageHistory(())}), SETTINGS)
    assert rec.verdict == "no data"
    assert (rec.peak_mib, rec.p99_mib, rec.recommended_mib, rec.pods_seen) == (None, None, None, 0)
    assert rec.budget_mib == 1500


def test_the_settings_change_the_recommendation() -> None:
    tight = RecommendSettings(safety=Fraction(1), step_mib=100, oversized_ratio=Fraction(2))
    rec = recommend(usage(2000, {"p": history(900)}), tight)
    assert (rec.recommended_mib, rec.verdict) == (900, "oversized")  # 2000 > 2 x 900
    rec = recommend(usage(2000, {"p": history(1000)}), tight)
    assert (rec.recommended_mib, rec.verdict) == (1000, "ok")


# --- Pods, controllers and histories to workloads ---------------------------------------------


def owned_pod(
    name: str,
    mib: int | None,
    owner: tuple[str, str] | None,
    *,
    namespace: str = "immich",
    node: str | None = "t4",
    phase: str | None = None,
    gpu: bool = True,
) -> dict[str, Any]:
    raw = make_pod(name, mib, node=node, namespace=namespace, phase=phase, gpu=gpu)
    if owner is None:
        del raw["metadata"]["ownerReferences"]
    else:
        kind, owner_name = owner
        raw["metadata"]["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": kind, "name": owner_name, "controller": True}
        ]
    return raw


def template(mib: int | None = None, *, gpu: bool = True) -> dict[str, Any]:
    limits: dict[str, str] = {"nvidia.com/gpu": "1"} if gpu else {}
    if mib is not None:
        limits["vramguard.io/gpumem"] = str(mib)
    return {"spec": {"containers": [{"name": "main", "resources": {"limits": limits}}]}}


def controller(
    kind: str,
    name: str,
    *,
    namespace: str = "immich",
    owner: tuple[str, str] | None = None,
    pod_template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if owner is not None:
        metadata["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    spec: dict[str, Any] = {}
    if pod_template is not None:
        spec = (
            {"jobTemplate": {"spec": {"template": pod_template}}}
            if kind == "CronJob"
            else {"template": pod_template}
        )
    return {"metadata": metadata, "spec": spec}


CONTROLLERS = Workloads(
    controllers_from(
        {
            "ReplicaSet": [
                controller("ReplicaSet", "immich-ml-6b7f9c8d5", owner=("Deployment", "immich-ml")),
                controller(
                    "ReplicaSet", "immich-server-7c9d", owner=("Deployment", "immich-server")
                ),
            ],
            "Deployment": [
                controller("Deployment", "immich-ml", pod_template=template()),
                controller("Deployment", "immich-server", pod_template=template(1800)),
                controller("Deployment", "cpu-only", pod_template=template(gpu=False)),
                controller(
                    "Deployment", "system", namespace="kube-system", pod_template=template()
                ),
            ],
            "CronJob": [
                controller("CronJob", "chatterbox-bake", namespace="tts", pod_template=template())
            ],
        }
    )
)


def test_gather_finds_each_workloads_budget_and_where_it_is_set() -> None:
    pods = [
        owned_pod("immich-ml-6b7f9c8d5-k8q2m", 3000, ("ReplicaSet", "immich-ml-6b7f9c8d5")),
        owned_pod("immich-server-7c9d-bcdfg", 1800, ("ReplicaSet", "immich-server-7c9d")),
        owned_pod("portal-stt", 1500, None, namespace="portal-stt"),
        owned_pod("cpu-only-5d8f-bcdfg", None, ("Deployment", "cpu-only"), gpu=False),
        # A CronJob run that finished: its history counts, it holds nothing now.
        owned_pod(
            "chatterbox-bake-29000060-q7w2n",
            6144,
            ("Job", "chatterbox-bake-29000060"),
            namespace="tts",
            phase="Succeeded",
        ),
    ]
    histories = {
        ("immich", "immich-ml-6b7f9c8d5-x2x4z"): history(10700),  # recycled, gone
        ("immich", "immich-ml-6b7f9c8d5-k8q2m"): history(2600),
        ("immich", "cpu-only-5d8f-bcdfg"): history(400),  # uses a GPU it did not ask for
        ("tts", "chatterbox-bake-29000060-q7w2n"): history(5200),
        ("tts", "chatterbox-bake-28999980-zz9x2"): history(5300),  # its Job cleaned up
        ("immich", "someone-else"): history(100),
    }
    # The Job itself is gone from the lists: its pod still names it, and the Job's name is
    # a CronJob's run.
    gathered = gather(pods, CONTROLLERS, histories, SEEDS_POLICY)
    found = {
        (u.key.namespace, u.key.label): (
            u.declared_mib,
            u.budget_source,
            u.pods_now,
            sorted(u.histories),
        )
        for u in gathered.workloads
    }
    assert found == {
        ("immich", "Deployment/immich-ml"): (
            3000,
            "policy",
            ("immich-ml-6b7f9c8d5-k8q2m",),
            ["immich-ml-6b7f9c8d5-k8q2m", "immich-ml-6b7f9c8d5-x2x4z"],
        ),
        ("immich", "Deployment/immich-server"): (
            1800,
            "template",
            ("immich-server-7c9d-bcdfg",),
            [],
        ),
        ("immich", "Deployment/cpu-only"): (
            0,
            "none",
            ("cpu-only-5d8f-bcdfg",),
            ["cpu-only-5d8f-bcdfg"],
        ),
        ("portal-stt", "Pod/portal-stt"): (1500, "pod", ("portal-stt",), []),
        ("tts", "Job/chatterbox-bake-29000060"): (
            0,
            "unknown",
            (),
            ["chatterbox-bake-29000060-q7w2n"],
        ),
        ("tts", "CronJob/chatterbox-bake"): (
            # No pod now: what its template gets from the policy (tts has no entry: defaults).
            1024,
            "policy",
            (),
            ["chatterbox-bake-28999980-zz9x2"],
        ),
    }
    assert gathered.unmatched == (("immich", "someone-else"),)


def test_a_workload_without_pods_now_gets_what_its_template_would() -> None:
    histories = {
        ("immich", "immich-server-7c9d-bcdfg"): history(1200),
        ("immich", "immich-ml-6b7f9c8d5-x2x4z"): history(2600),
        ("kube-system", "system-5d8f7c9b4-bcdfg"): history(300),
    }
    gathered = gather([], CONTROLLERS, histories, SEEDS_POLICY)
    found = {u.key.label: (u.declared_mib, u.budget_source) for u in gathered.workloads}
    assert found == {
        "Deployment/immich-server": (1800, "template"),
        "Deployment/immich-ml": (3000, "policy"),
        # The webhook never mutates an excluded namespace: nothing gives it a budget.
        "Deployment/system": (0, "none"),
    }


def test_declared_is_the_largest_of_a_rollouts_pods() -> None:
    pods = [
        owned_pod("immich-ml-6b7f9c8d5-k8q2m", 3000, ("ReplicaSet", "immich-ml-6b7f9c8d5")),
        owned_pod("immich-ml-6b7f9c8d5-x2x4z", 12800, ("ReplicaSet", "immich-ml-6b7f9c8d5")),
    ]
    (found,) = gather(pods, CONTROLLERS, {}, SEEDS_POLICY).workloads
    assert (found.declared_mib, len(found.pods_now)) == (12800, 2)


# --- Do the recommended budgets fit? ----------------------------------------------------------


def test_the_seeds_t4_does_not_hold_the_recommended_budgets() -> None:
    nodes = [make_node("t4", allocatable_mib=14000, gfd_memory_mib=15360)]
    pods = [
        make_pod("immich-ml", 3000, node="t4", namespace="immich"),
        make_pod("llama-swap", 5000, node="t4", namespace="llama-swap"),
        make_pod("frigate", 2000, node="t4", namespace="frigate"),
        make_pod("immich-server", 1800, node="t4", namespace="immich"),
        make_pod("portal-stt", 1500, node="t4", namespace="portal-stt"),
    ]
    snapshot = make_store(SEEDS_POLICY, nodes, pods).snapshot()
    recommended = {"immich-ml": 13056, "llama-swap": 5888, "frigate": 1280, "immich-server": 2048}
    (row,) = fit_budgets(
        snapshot.nodes.values(), lambda pod: recommended.get(pod.name, pod.declared_mib)
    )
    assert (row.label, row.capacity_mib, row.declared_mib, row.pods) == ("t4", 14000, 13300, 5)
    assert row.recommended_mib == 13056 + 5888 + 1280 + 2048 + 1500
    assert (row.fits, row.over_mib) == (False, row.recommended_mib - 14000)


def test_on_a_node_with_two_cards_each_card_counts_its_pods_and_the_unassigned() -> None:
    nodes = [make_node("gpu-2x", allocatable_mib=28000, gfd_memory_mib=16384, gfd_count=2)]
    pods = [
        make_pod("bake", 6144, node="gpu-2x", namespace="tts"),
        make_pod("trainer-0", 8000, node="gpu-2x", namespace="research"),
    ]
    snapshot = make_store(SEEDS_POLICY, nodes, pods).snapshot()
    budgets = {"bake": 6400, "trainer-0": 14592}
    rows = fit_budgets(snapshot.nodes.values(), lambda pod: budgets[pod.name])
    # GFD alone names no card a pod holds: both pods count against both cards.
    assert [(r.label, r.capacity_mib, r.declared_mib, r.recommended_mib, r.fits) for r in rows] == [
        ("gpu-2x", 28000, 14144, 20992, True),
        ("gpu-2x/gpu 0", 14000, 14144, 20992, False),
        ("gpu-2x/gpu 1", 14000, 14144, 20992, False),
    ]


def test_nodes_without_capacity_or_pods_are_left_out_and_unknown_capacity_says_so() -> None:
    nodes = [make_node("cpu-1"), make_node("mystery")]
    pods = [make_pod("stray", 1000, node="mystery")]
    snapshot = make_store(SEEDS_POLICY, nodes, pods).snapshot()
    (row,) = fit_budgets(snapshot.nodes.values(), lambda pod: pod.declared_mib)
    assert (row.node, row.capacity_mib, row.fits, row.over_mib) == ("mystery", None, None, 0)
    assert fit_budgets(snapshot.nodes.values(), lambda pod: 0, lambda node: False) == ()


# --- The policy entries -------------------------------------------------------------------------


def rec(
    namespace: str,
    name: str,
    declared: int,
    source: str,
    peak: int | None,
    *,
    kind: str = "Deployment",
) -> Recommendation:
    usage = WorkloadUsage(
        WorkloadKey(namespace, kind, name),
        declared,
        source,  # type: ignore[arg-type]
        (),
        {"p": history(peak)} if peak is not None else {},
    )
    return recommend(usage, SETTINGS)


def merged(policy: Policy, patches: list[Any]) -> Policy:
    """The policy with the patch's entries replacing its own: it must still load."""
    document = policy.model_dump(by_alias=True, exclude_unset=True)
    namespaces = dict(document.get("namespaces", {}))
    namespaces.update({p.namespace: dict(p.entry) for p in patches if p.entry is not None})
    return Policy.model_validate({**document, "namespaces": namespaces})


def test_immich_ml_over_budget_raises_the_namespace_budget_and_the_cap_from_defaults() -> None:
    recs = [
        rec("immich", "immich-ml", 3000, "policy", 10700),
        rec("immich", "immich-server", 1800, "template", 1500),
    ]
    (patch,) = policy_patch(recs, SEEDS_POLICY)
    assert patch.entry == {
        "priorityClassName": "tier-1-gpu",
        "gpumemMiB": 13056,
        "maxGpumemMiB": 13056,
    }
    assert patch.changes == (
        "gpumemMiB 3000 -> 13056: Deployment/immich-ml: peak 10700, over budget",
        "maxGpumemMiB 8192 (from defaults) -> 13056: below a recommended budget, so the webhook "
        "would deny those pods",
    )
    assert patch.notes == (
        "Deployment/immich-server declares 1800 MiB in its pod template: set "
        "vramguard.io/gpumem to 2048 there (requests and limits); the policy does not change it",
    )
    rules = merged(SEEDS_POLICY, [patch]).for_namespace("immich")
    assert (rules.gpumem_mib, rules.max_gpumem_mib, rules.priority_class_name) == (
        13056,
        13056,
        "tier-1-gpu",
    )


def test_one_budget_for_a_namespaces_policy_workloads_is_the_largest_and_says_who_gets_more() -> (
    None
):
    recs = [
        rec("llama-swap", "llama-swap", 5000, "policy", 4700, kind="StatefulSet"),
        rec("llama-swap", "embedder", 5000, "policy", 700),
    ]
    (patch,) = policy_patch(recs, SEEDS_POLICY)
    assert patch.entry == {"priorityClassName": "tier-1-gpu", "gpumemMiB": 5888}
    (change,) = patch.changes
    assert change.startswith("gpumemMiB 5000 -> 5888: StatefulSet/llama-swap: peak 4700, ok; ")
    assert "Deployment/embedder (recommended 1024) would get more than it needs" in change


def test_an_oversized_budget_is_lowered_in_a_new_entry() -> None:
    policy = Policy.model_validate({"defaults": {"gpumemMiB": 4096}})
    (patch,) = policy_patch([rec("frigate", "frigate", 4096, "policy", 900)], policy)
    assert patch.entry == {"gpumemMiB": 1280}
    assert merged(policy, [patch]).for_namespace("frigate").gpumem_mib == 1280


def test_a_workload_without_data_keeps_the_namespace_budget_from_going_down() -> None:
    recs = [
        rec("frigate", "frigate", 2000, "policy", 900),
        rec("frigate", "idle", 2000, "policy", None),
    ]
    assert policy_patch(recs, SEEDS_POLICY) == []


def test_nothing_to_change_gives_no_entry_and_excluded_namespaces_are_never_patched() -> None:
    settled = Policy.model_validate({"namespaces": {"frigate": {"gpumemMiB": 2048}}})
    assert policy_patch([rec("frigate", "frigate", 2048, "policy", 1700)], settled) == []
    (patch,) = policy_patch([rec("kube-system", "dns", 0, "none", 300)], SEEDS_POLICY)
    assert patch.entry is None
    assert patch.notes[0].startswith("excluded from the webhook")


def test_budgets_the_policy_cannot_set_are_notes_and_raise_the_cap_they_need() -> None:
    recs = [
        rec("portal-stt", "portal-stt", 1500, "pod", 9000, kind="Pod"),
        rec("portal-stt", "sidecar", 0, "none", 200),
    ]
    (patch,) = policy_patch(recs, SEEDS_POLICY)
    # Raising the cap is the policy's part: a pod of 11008 MiB is denied under 8192.
    assert patch.entry == {"maxGpumemMiB": 11008}
    assert patch.notes == (
        "pod portal-stt has no controller: recreate it declaring 11008 MiB",
        "Deployment/sidecar: nothing vramguard reads sets its budget (it asks for no GPU "
        "resource); give its pods 256 MiB",
    )
    assert merged(SEEDS_POLICY, [patch]).for_namespace("portal-stt").max_gpumem_mib == 11008
