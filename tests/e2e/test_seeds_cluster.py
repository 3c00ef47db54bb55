"""Scenario 1, the seeds' cluster: five always-on tenants (13300 MiB of budgets) fit on one
16 GiB T4 that advertises 14000 MiB; a sixth GPU pod of 1500 MiB does not, and stays
Pending with the reason, and vramguard's numbers, in its events."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from .harness import (
    LocalVramguard,
    failed_scheduling_events,
    gpu_pod,
    pod_events,
    wait_for_pod_event,
    wait_for_unschedulable_message,
)
from .harness.nodes import GPUMEM_RESOURCE
from .harness.pods import declared_on_node
from .harness.tenants import SEEDS, Tenant

pytestmark = pytest.mark.e2e

SIXTH = Tenant("portal-stt", "portal-stt-2", None, 1300)
CARD_MIB = 15360
ADVERTISED_MIB = 14000
DRIVER_MIB = 300


def test_seeds_fit_and_a_sixth_pod_stays_pending(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    seat_tenants: Callable[..., Any],
) -> None:
    vramguard = local_vramguard
    card, namespaces = seat_tenants(
        SEEDS, [SIXTH], total_mib=CARD_MIB, driver_mib=DRIVER_MIB, gpumem_mib=ADVERTISED_MIB
    )
    node = card.node

    assert sum(t.budget_mib(vramguard.policy) for t in SEEDS) == 13300
    assert declared_on_node(core_v1, node) == 13300
    state = vramguard.wait_for_node(node, check=lambda s: s["declaredMiB"] == 13300)
    assert state["capacityMiB"] == ADVERTISED_MIB
    assert state["capacitySource"] == "allocatable"
    assert state["liveUsedMiB"] == card.used_mib

    namespace = namespaces[SIXTH.role]
    filters = vramguard.extender_metric("vramguard_extender_requests_total", verb="filter")
    core_v1.create_namespaced_pod(
        namespace, gpu_pod(SIXTH.pod, namespace=namespace, node_name_selector=node)
    )
    # 13300 + 1500 > 14000. The scheduler config has kube-scheduler count
    # vramguard.io/gpumem itself (managedResources ignoredByScheduler: false, which
    # preemption needs), so its NodeResourcesFit refuses the node before the extender is
    # asked: kube-scheduler's condition and FailedScheduling event only say "Insufficient
    # vramguard.io/gpumem". The extender, watching Pending pods, adds an event of its own
    # with the numbers.
    message = wait_for_unschedulable_message(
        core_v1, namespace, SIXTH.pod, f"Insufficient {GPUMEM_RESOURCE}"
    )
    assert message.startswith("0/"), message
    assert (
        vramguard.extender_metric("vramguard_extender_requests_total", verb="filter") == filters
    ), "the extender was asked after all"
    events = failed_scheduling_events(core_v1, namespace, SIXTH.pod)
    assert any(f"Insufficient {GPUMEM_RESOURCE}" in e for e in events), events
    explained = wait_for_pod_event(core_v1, namespace, SIXTH.pod, "GPUMemoryUnavailable")
    assert explained == (
        f"vramguard: no node fits 1500 MiB of {GPUMEM_RESOURCE}: "
        f"{node}: declared 13300 + 1500 > capacity {ADVERTISED_MIB} MiB"
    )
    # Once: the scheduler retrying and the extender re-evaluating add no second event.
    time.sleep(6)
    assert pod_events(core_v1, namespace, SIXTH.pod, "GPUMemoryUnavailable") == [explained]
    assert vramguard.extender_metric("vramguard_extender_explanations_total", result="error") == 0
    # Nothing was evicted for it: it is tier-2, as low as any tenant.
    assert declared_on_node(core_v1, node) == 13300
