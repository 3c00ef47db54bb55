"""Scenario 5, burst: 100 GPU pods of random sizes (seeded) created at once across three
nodes. Afterwards no node's declared GPU memory exceeds its capacity or its live free VRAM,
every pod is either bound or Pending with a reason, and no Pending pod would have fit.

The three cards report different usage outside the budgets (0, 4000 and 8000 MiB), so on
two nodes live VRAM, which only the extender checks, is the limit rather than the budgets,
which kube-scheduler counts too: concurrent binds must be kept apart by the extender's
reservations."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest

from .conftest import unique_name
from .harness import SCHEDULER_NAME, ClusterBase, LocalVramguard, gpu_pod, unschedulable_message
from .harness.nodes import GPUMEM_RESOURCE
from .harness.pods import declared_gpumem, placement
from .harness.vramguard import scheduler_queued

pytestmark = pytest.mark.e2e

SEED = 20261122
PODS = 100
CARD_MIB = 15360
CAPACITY_MIB = 14000
USED_OUTSIDE_MIB = (0, 4000, 8000)  # what each card reports in use besides these pods
SIZES_MIB = (256, 512, 1024, 1500, 2000, 3000, 4000, 5000, 6144)
GROUP_LABEL = "e2e.vramguard.io/group"


def test_burst_never_overcommits(
    core_v1: Any,
    control_plane: ClusterBase,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    rng = random.Random(SEED)
    group = unique_name("burst")
    floor = int(local_vramguard.policy["extender"]["floorMiB"])
    live_free = {
        make_vram_node(
            gpumem_mib=CAPACITY_MIB,
            total_mib=CARD_MIB,
            used_mib=used,
            gpu_replicas=PODS,
            labels={GROUP_LABEL: group},
        ): CARD_MIB - used
        for used in USED_OUTSIDE_MIB
    }
    namespace = make_namespace("burst")
    sizes = {f"burst-{i:03d}": rng.choice(SIZES_MIB) for i in range(PODS)}
    assert sum(sizes.values()) > len(live_free) * CAPACITY_MIB, "more demand than room"
    refused_live = local_vramguard.extender_metric(
        "vramguard_extender_nodes_filtered_out_total", reason="live"
    )

    def create(name: str) -> None:
        pod = gpu_pod(name, namespace=namespace, gpumem_mib=sizes[name])
        pod.spec.node_selector = {GROUP_LABEL: group}
        core_v1.create_namespaced_pod(namespace, pod)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(create, sizes))
    pods = wait_until_settled(core_v1, control_plane, namespace, PODS)

    declared = dict.fromkeys(live_free, 0)
    for pod in pods:
        if pod.spec.node_name:
            declared[pod.spec.node_name] += declared_gpumem(pod)
    room = {}
    for node, mib in declared.items():
        # No pod on these nodes runs yet, so each one's whole budget is still to be
        # allocated out of the VRAM that is free now.
        assert mib <= CAPACITY_MIB, f"{node}: {mib} MiB declared > capacity {CAPACITY_MIB}"
        assert mib <= live_free[node] - floor, f"{node}: {mib} MiB > live free - floor"
        assert mib > 0, f"{node} got no pod at all"
        state = local_vramguard.wait_for_node(
            node,
            check=partial(declared_is, mib),
            what=f"with {mib} MiB declared",
        )
        assert state["reservedMiB"] == 0
        room[node] = min(CAPACITY_MIB, live_free[node] - floor) - mib

    for pod in pods:
        if pod.spec.node_name:
            continue
        message = unschedulable_message(pod) or ""
        assert f"Insufficient {GPUMEM_RESOURCE}" in message or "vramguard:" in message, (
            pod.metadata.name,
            message,
        )
        # Nothing is left Pending that would still fit somewhere.
        assert declared_gpumem(pod) > max(room.values()), (pod.metadata.name, room)
    assert (
        local_vramguard.extender_metric(
            "vramguard_extender_nodes_filtered_out_total", reason="live"
        )
        > refused_live
    ), "the live check never refused a node: the burst did not exercise it"


def declared_is(mib: int, state: dict[str, Any]) -> bool:
    return bool(state["declaredMiB"] == mib)


def wait_until_settled(
    core: Any,
    cluster: ClusterBase,
    namespace: str,
    count: int,
    *,
    timeout: float = 180.0,
    quiet: float = 2.0,
) -> list[Any]:
    """Wait until every pod is bound or has been found unschedulable, the
    vramguard-scheduler has nothing left to try (active and backoff queues empty), and
    nothing has changed for ``quiet`` seconds (a bind may be in flight)."""
    deadline = time.monotonic() + timeout
    last: tuple[tuple[str, str], ...] = ()
    stable_since = time.monotonic()
    while True:
        pods, state = placement(core, namespace)
        if state != last:
            last, stable_since = state, time.monotonic()
        metrics = cluster.scheduler_metrics(SCHEDULER_NAME)
        queued = scheduler_queued(metrics)
        decided = len(pods) == count and all(where for _, where in state)
        if decided and not queued and time.monotonic() - stable_since >= quiet:
            return list(pods)
        if time.monotonic() >= deadline:
            undecided = [name for name, where in state if not where]
            raise TimeoutError(
                f"not settled after {timeout:.0f}s: {queued:.0f} pod(s) queued, "
                f"{len(undecided)} neither bound nor refused: {undecided[:10]}"
            )
        time.sleep(0.5)
