"""The harness itself works: fake GPU nodes are schedulable, the default scheduler binds
GPU pods, and an extra scheduler started with its own configuration binds its pods."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from .harness import (
    ClusterBase,
    gpu_pod,
    wait_for_pod_node,
    wait_for_unschedulable,
)
from .harness.nodes import GFD_COUNT_LABEL, GFD_MEMORY_LABEL, GFD_PRODUCT_LABEL, GPU_RESOURCE

pytestmark = pytest.mark.e2e

SECOND_SCHEDULER = "second-scheduler"
SECOND_SCHEDULER_CONFIG = f"""\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
  - schedulerName: {SECOND_SCHEDULER}
"""


def test_fake_gpu_node_is_ready_and_untainted(make_gpu_node: Callable[..., Any]) -> None:
    node = make_gpu_node(gpu_replicas=4, extended_resources={"vramguard.io/gpumem": "15360"})

    assert not node.spec.taints
    assert node.metadata.labels[GFD_MEMORY_LABEL] == "15360"
    assert node.metadata.labels[GFD_COUNT_LABEL] == "1"
    assert node.metadata.labels[GFD_PRODUCT_LABEL]
    assert node.status.allocatable[GPU_RESOURCE] == "4"
    assert node.status.allocatable["vramguard.io/gpumem"] == "15360"
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert [c.status for c in ready] == ["True"]


def test_default_scheduler_binds_gpu_pod(
    core_v1: Any, namespace: str, make_gpu_node: Callable[..., Any]
) -> None:
    node = make_gpu_node()
    name = node.metadata.name
    core_v1.create_namespaced_pod(
        namespace, gpu_pod("gpu-pod", namespace=namespace, node_name_selector=name)
    )

    assert wait_for_pod_node(core_v1, namespace, "gpu-pod") == name


def test_default_scheduler_respects_gpu_capacity(
    core_v1: Any, namespace: str, make_gpu_node: Callable[..., Any]
) -> None:
    node = make_gpu_node(gpu_replicas=2)
    pod = gpu_pod(
        "too-many-gpus", namespace=namespace, gpus=3, node_name_selector=node.metadata.name
    )
    core_v1.create_namespaced_pod(namespace, pod)

    message = wait_for_unschedulable(core_v1, namespace, "too-many-gpus")
    assert GPU_RESOURCE in message


def test_second_scheduler_binds_its_pods(
    control_plane: ClusterBase,
    core_v1: Any,
    namespace: str,
    make_gpu_node: Callable[..., Any],
) -> None:
    node = make_gpu_node()
    name = node.metadata.name
    control_plane.start_scheduler(SECOND_SCHEDULER, SECOND_SCHEDULER_CONFIG)
    try:
        pod = gpu_pod(
            "second-pod",
            namespace=namespace,
            scheduler_name=SECOND_SCHEDULER,
            node_name_selector=name,
        )
        core_v1.create_namespaced_pod(namespace, pod)

        assert wait_for_pod_node(core_v1, namespace, "second-pod") == name
        assert _scheduled_by(core_v1, namespace, "second-pod") == {SECOND_SCHEDULER}
    finally:
        control_plane.stop_scheduler(SECOND_SCHEDULER)


def _scheduled_by(core_v1: Any, namespace: str, pod: str, timeout: float = 10.0) -> set[str]:
    """Which schedulers reported binding the pod (their Scheduled events arrive shortly
    after the binding itself)."""
    deadline = time.monotonic() + timeout
    while True:
        events = core_v1.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={pod},reason=Scheduled"
        ).items
        if events or time.monotonic() >= deadline:
            return {e.reporting_component or e.source.component for e in events}
        time.sleep(0.2)
