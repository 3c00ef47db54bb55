"""Scenario 2, priority: GPU pods get the PriorityClass their namespace's policy names, and
the API server computes spec.priority from it. Pods in excluded namespaces and non-GPU pods
are left alone, and a non-GPU pod never reaches the extender."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .conftest import unique_name
from .harness import (
    SCHEDULER_NAME,
    LocalVramguard,
    delete_pod,
    gpu_pod,
    wait_for_pod_node,
)
from .harness.pods import declared_gpumem
from .harness.tenants import base_policy

pytestmark = pytest.mark.e2e

DEFAULT_SCHEDULER = "default-scheduler"


def class_value(scheduling: Any, name: str) -> int:
    return int(scheduling.read_priority_class(name).value)


def test_gpu_pods_get_their_namespace_class_and_priority(
    core_v1: Any,
    control_plane: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    from kubernetes import client  # noqa: PLC0415

    scheduling = client.SchedulingV1Api(control_plane.api_client())
    node = make_vram_node()
    policy = base_policy()
    tier1 = make_namespace("llama-swap")  # the policy's llama-swap entry: tier-1-gpu, 5000
    plain = make_namespace("team")  # no entry: the defaults, tier-2-gpu, 1024
    labelled = make_namespace("monitoring", labels={"tier": "1"})  # namespaceLabels
    local_vramguard.add_namespaces({tier1: policy["namespaces"]["llama-swap"]})

    expected = {
        tier1: ("tier-1-gpu", 5000),
        plain: (policy["defaults"]["priorityClassName"], policy["defaults"]["gpumemMiB"]),
        labelled: (policy["namespaceLabels"]["tier"]["1"], policy["defaults"]["gpumemMiB"]),
    }
    for namespace, (class_name, gpumem) in expected.items():
        calls = local_vramguard.webhook_metric("vramguard_webhook_requests_total")
        core_v1.create_namespaced_pod(
            namespace, gpu_pod("gpu", namespace=namespace, node_name_selector=node)
        )
        # One call per create: the webhook sets the class's priority and preemptionPolicy
        # itself, so the Priority plugin, run again after it, changes nothing and the API
        # server does not reinvoke it (reinvocationPolicy IfNeeded).
        assert local_vramguard.webhook_metric("vramguard_webhook_requests_total") == calls + 1
        pod = core_v1.read_namespaced_pod("gpu", namespace)
        assert pod.spec.priority_class_name == class_name, namespace
        assert pod.spec.priority == class_value(scheduling, class_name), namespace
        assert pod.spec.scheduler_name == SCHEDULER_NAME
        assert declared_gpumem(pod) == gpumem
        assert wait_for_pod_node(core_v1, namespace, "gpu") == node
    assert {v for v, _ in expected.values()} >= {"tier-1-gpu", "tier-2-gpu"}


def test_excluded_namespaces_are_left_alone(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    node = make_vram_node()
    # Excluded by the policy: the API server calls the webhook, which changes nothing.
    opted_out = make_namespace("opted-out")
    local_vramguard.exclude_namespaces([opted_out])
    # kube-system: excluded by the webhook's namespaceSelector, the API server never calls.
    system_pod = unique_name("gpu-system")
    try:
        for namespace, name in ((opted_out, "gpu"), ("kube-system", system_pod)):
            core_v1.create_namespaced_pod(
                namespace, gpu_pod(name, namespace=namespace, node_name_selector=node)
            )
            pod = core_v1.read_namespaced_pod(name, namespace)
            assert pod.spec.priority_class_name is None, namespace
            assert pod.spec.priority == 0, namespace
            assert pod.spec.scheduler_name == DEFAULT_SCHEDULER, namespace
            assert declared_gpumem(pod) == 0, namespace
            assert not pod.metadata.annotations, namespace
    finally:
        delete_pod(core_v1, "kube-system", system_pod)


def test_non_gpu_pod_is_untouched_and_never_reaches_the_extender(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    node = make_vram_node()
    namespace = make_namespace("llama-swap")
    local_vramguard.add_namespaces({namespace: base_policy()["namespaces"]["llama-swap"]})

    core_v1.create_namespaced_pod(
        namespace, gpu_pod("cpu", namespace=namespace, gpus=0, node_name_selector=node)
    )
    pod = core_v1.read_namespaced_pod("cpu", namespace)
    assert pod.spec.priority_class_name is None
    assert pod.spec.scheduler_name == DEFAULT_SCHEDULER
    assert declared_gpumem(pod) == 0

    # Even a non-GPU pod sent to the vramguard-scheduler on purpose is scheduled without a
    # call to the extender (managedResources).
    def requests(verb: str) -> float:
        return local_vramguard.extender_metric("vramguard_extender_requests_total", verb=verb)

    filters, binds = requests("filter"), requests("bind")
    core_v1.create_namespaced_pod(
        namespace,
        gpu_pod(
            "cpu-on-vramguard",
            namespace=namespace,
            gpus=0,
            node_name_selector=node,
            scheduler_name=SCHEDULER_NAME,
        ),
    )
    assert wait_for_pod_node(core_v1, namespace, "cpu-on-vramguard") == node
    pod = core_v1.read_namespaced_pod("cpu-on-vramguard", namespace)
    assert pod.spec.priority_class_name is None
    assert requests("filter") == filters
    assert requests("bind") == binds
    assert not local_vramguard.log_mentions(local_vramguard.extender_process, "cpu-on-vramguard")

    # A GPU pod in the same namespace does reach it.
    core_v1.create_namespaced_pod(
        namespace, gpu_pod("gpu", namespace=namespace, node_name_selector=node)
    )
    assert wait_for_pod_node(core_v1, namespace, "gpu") == node
    assert requests("filter") > filters
    assert local_vramguard.log_mentions(local_vramguard.extender_process, f"{namespace}/gpu")
