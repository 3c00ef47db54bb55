"""The extender down: the scheduler config marks it not ignorable, so GPU pods wait with
the error in their status instead of being placed blind; pods without a managed resource
are still scheduled by the vramguard-scheduler. Once the extender is back, the waiting
pod is placed on the scheduler's next try, without any other event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .harness import (
    SCHEDULER_NAME,
    LocalVramguard,
    gpu_pod,
    wait_for_pod_node,
    wait_for_unschedulable_message,
)

pytestmark = pytest.mark.e2e


def test_gpu_pods_wait_while_the_extender_is_down(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    vramguard = local_vramguard
    node = make_vram_node()
    namespace = make_namespace("team")

    vramguard.stop_extender()
    try:
        core_v1.create_namespaced_pod(
            namespace, gpu_pod("gpu", namespace=namespace, node_name_selector=node)
        )
        message = wait_for_unschedulable_message(core_v1, namespace, "gpu", vramguard.extender_url)
        assert "connection refused" in message, message

        # managedResources: a pod asking for no GPU does not need the extender.
        core_v1.create_namespaced_pod(
            namespace,
            gpu_pod(
                "cpu",
                namespace=namespace,
                gpus=0,
                scheduler_name=SCHEDULER_NAME,
                node_name_selector=node,
            ),
        )
        assert wait_for_pod_node(core_v1, namespace, "cpu") == node
        assert not core_v1.read_namespaced_pod("gpu", namespace).spec.node_name
    finally:
        vramguard.start_extender()
    vramguard.wait_for_node(node)
    # A scheduling error (not "unschedulable") puts the pod in the backoff queue: it is
    # retried after at most podMaxBackoffSeconds (10 s) with no cluster event needed.
    assert wait_for_pod_node(core_v1, namespace, "gpu", timeout=60) == node
