"""Scenario 3, live VRAM: the budgets fit, but one tenant's arena has grown to 10.7 GB, so
the card is nearly full. A new pod stays Pending with vramguard's live reason, and is
scheduled on the scheduler's next try once the usage drops."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from .harness import (
    LocalVramguard,
    gpu_pod,
    wait_for_pod_node,
    wait_for_unschedulable_message,
)
from .harness.tenants import Tenant, deploy, namespaces_for, policy_entries

pytestmark = pytest.mark.e2e

TENANTS = (
    Tenant("immich", "immich-ml", None, 2600),  # 3000 declared
    Tenant("llama-swap", "llama-swap", None, 4700),  # 5000 declared
    Tenant("frigate", "frigate", None, 1700),  # 2000 declared
)
NEWCOMER = Tenant("portal-stt", "portal-stt", None, 1300)  # 1500 declared
CARD_MIB = 15360
DRIVER_MIB = 300
# llama.cpp's arena after loading a big model: 10.7 GB, far above its 5000 MiB budget.
ARENA_MIB = round(10.7e9 / (1 << 20))  # 10204 MiB


def test_pod_waits_for_live_vram_then_schedules(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    seat_tenants: Callable[..., Any],
) -> None:
    vramguard = local_vramguard
    card, namespaces = seat_tenants(
        TENANTS, [NEWCOMER], total_mib=CARD_MIB, driver_mib=DRIVER_MIB, gpumem_mib=14000
    )
    node = card.node
    floor = int(vramguard.policy["extender"]["floorMiB"])

    # The arena grows: the card reports 10.7 GB in use by llama-swap alone.
    llama = TENANTS[1]
    card.set_usage(llama.pod, ARENA_MIB)
    live_free = card.free_mib
    need = 1500
    assert 10000 + need <= 14000, "the budgets fit"
    assert live_free < need + floor, "live VRAM does not"

    namespace = namespaces[NEWCOMER.role]
    core_v1.create_namespaced_pod(
        namespace, gpu_pod(NEWCOMER.pod, namespace=namespace, node_name_selector=node)
    )
    message = wait_for_unschedulable_message(core_v1, namespace, NEWCOMER.pod, "vramguard:")
    # e.g. "0/1 nodes are available: 1 vramguard: live free 956 MiB < need 1500 + floor
    # 512 MiB (dcgm, 1s old)."
    expected = (
        rf"vramguard: live free {live_free} MiB < need {need} \+ floor {floor} MiB "
        rf"\(dcgm, \d+s old\)"
    )
    assert re.search(expected, message), message

    # The model is unloaded: usage is back to normal.
    card.set_usage(llama.pod, llama.uses_mib)
    # Nothing in the cluster changed but the VRAM: kube-scheduler keeps the pod until a
    # cluster event might help it, or podMaxInUnschedulablePodsDuration (5 min). The
    # extender sees the pod fits now and sets its vramguard.io/GPUMemoryFits condition, a
    # pod update that requeues it (retried after its backoff); no other nudge here.
    assert wait_for_pod_node(core_v1, namespace, NEWCOMER.pod, timeout=60) == node
    conditions = core_v1.read_namespaced_pod(NEWCOMER.pod, namespace).status.conditions
    fits = [c for c in conditions if c.type == "vramguard.io/GPUMemoryFits"]
    assert [(c.status, c.reason) for c in fits] == [("True", "FitsNow")], conditions


def test_per_pod_usage_from_a_pod_exporter(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    """The same story with per-pod usage (preset pod-exporter: bytes per process, labelled
    namespace and pod) instead of dcgm's per-card figures: the card's use is the sum of
    the pods on it, out of the GPU Feature Discovery card size."""
    vramguard = local_vramguard
    exporter = vramguard.exporter
    node = make_vram_node(gpumem_mib=14000, total_mib=CARD_MIB, used_mib=0)
    namespaces = namespaces_for([t.role for t in (*TENANTS, NEWCOMER)], make_namespace)
    vramguard.add_namespaces(policy_entries(namespaces))
    floor = int(vramguard.policy["extender"]["floorMiB"])
    usage: dict[str, int] = {}

    def report(tenant: Tenant, mib: int) -> None:
        usage[tenant.pod] = mib
        exporter.set_pod_usage(namespaces[tenant.role], tenant.pod, mib)
        used = sum(usage.values())
        vramguard.wait_for_node(
            node,
            check=lambda s: s["liveUsedMiB"] == used and s["liveFreeMiB"] == CARD_MIB - used,
            what=f"with {used} MiB used by its pods",
        )

    with vramguard.extender_settings(telemetry={"preset": "pod-exporter"}):
        for tenant in TENANTS:
            deploy(core_v1, tenant, namespaces[tenant.role], node)
            report(tenant, tenant.uses_mib)
        llama = TENANTS[1]
        report(llama, ARENA_MIB)
        live_free = CARD_MIB - sum(usage.values())
        assert live_free < 1500 + floor

        namespace = namespaces[NEWCOMER.role]
        core_v1.create_namespaced_pod(
            namespace, gpu_pod(NEWCOMER.pod, namespace=namespace, node_name_selector=node)
        )
        message = wait_for_unschedulable_message(core_v1, namespace, NEWCOMER.pod, "vramguard:")
        assert f"live free {live_free} MiB < need 1500 + floor {floor} MiB (pod-exporter" in (
            message
        ), message

        report(llama, llama.uses_mib)
        # No nudge: the extender's GPUMemoryFits condition requeues it (see the test above).
        assert wait_for_pod_node(core_v1, namespace, NEWCOMER.pod, timeout=60) == node
