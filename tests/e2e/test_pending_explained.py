"""A Pending GPU pod is explained in vramguard's numbers.

kube-scheduler counts vramguard.io/gpumem itself (managedResources ignoredByScheduler: false),
so on the seeds' card a sixth pod is refused by NodeResourcesFit before the extender is asked:
its FailedScheduling event says only "Insufficient vramguard.io/gpumem" (test_seeds_cluster).
The extender, watching pods, sees it Pending as unschedulable and adds a Warning event
GPUMemoryUnavailable with the numbers, once, where `kubectl describe pod` shows it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from .harness import LocalVramguard, gpu_pod, wait_for_unschedulable_message
from .harness.nodes import GPUMEM_RESOURCE
from .harness.tenants import SEEDS, Tenant, TenantCard, namespaces_for, policy_entries

pytestmark = pytest.mark.e2e

SIXTH = Tenant("portal-stt", "portal-stt-2", None, 1300)
CARD_MIB = 15360
ADVERTISED_MIB = 14000
DRIVER_MIB = 300
REASON = "GPUMemoryUnavailable"


def describe_events(core: Any, pod: Any) -> list[Any]:
    """The pod's events as `kubectl describe pod` selects them."""
    meta = pod.metadata
    selector = ",".join(
        [
            "involvedObject.kind=Pod",
            f"involvedObject.name={meta.name}",
            f"involvedObject.namespace={meta.namespace}",
            f"involvedObject.uid={meta.uid}",
        ]
    )
    return list(core.list_namespaced_event(meta.namespace, field_selector=selector).items)


def wait_for_explanation(core: Any, pod: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        events = [e for e in describe_events(core, pod) if e.reason == REASON]
        if events:
            return events[0]
        if time.monotonic() >= deadline:
            seen = [f"{e.reason}: {e.message}" for e in describe_events(core, pod)]
            raise TimeoutError(f"no {REASON} event on the pod after {timeout:.0f}s; seen: {seen}")
        time.sleep(0.25)


def test_a_pod_refused_for_gpu_memory_gets_vramguards_numbers(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    vramguard = local_vramguard
    node = make_vram_node(gpumem_mib=ADVERTISED_MIB, total_mib=CARD_MIB, used_mib=DRIVER_MIB)
    card = TenantCard(core_v1, vramguard, node, total_mib=CARD_MIB, driver_mib=DRIVER_MIB)
    namespaces = namespaces_for([t.role for t in (*SEEDS, SIXTH)], make_namespace)
    vramguard.add_namespaces(policy_entries(namespaces))
    for tenant in SEEDS:
        card.run(tenant, namespaces[tenant.role])
    vramguard.wait_for_node(node, check=lambda s: s["declaredMiB"] == 13300)

    namespace = namespaces[SIXTH.role]
    created_before = vramguard.extender_metric(
        "vramguard_extender_explanations_total", result="created"
    )
    core_v1.create_namespaced_pod(
        namespace, gpu_pod(SIXTH.pod, namespace=namespace, node_name_selector=node)
    )
    # kube-scheduler's own reason has no numbers...
    wait_for_unschedulable_message(core_v1, namespace, SIXTH.pod, f"Insufficient {GPUMEM_RESOURCE}")
    pod = core_v1.read_namespaced_pod(SIXTH.pod, namespace)

    # ...vramguard's has them.
    event = wait_for_explanation(core_v1, pod)
    assert event.type == "Warning"
    assert event.message == (
        f"vramguard: no node fits 1500 MiB of {GPUMEM_RESOURCE}: "
        f"{node}: declared 13300 + 1500 > capacity {ADVERTISED_MIB} MiB"
    )
    assert event.source.component == "vramguard-extender"
    assert event.involved_object.uid == pod.metadata.uid
    assert event.count == 1
    assert len(event.message) <= 1024
    assert (
        vramguard.extender_metric("vramguard_extender_explanations_total", result="created")
        == created_before + 1
    )

    # Once: the scheduler retrying, and the extender re-evaluating, add no second event.
    time.sleep(6)
    explanations = [e for e in describe_events(core_v1, pod) if e.reason == REASON]
    assert [e.metadata.name for e in explanations] == [event.metadata.name]
    assert explanations[0].count == 1
    assert vramguard.extender_metric("vramguard_extender_explanations_total", result="error") == 0
