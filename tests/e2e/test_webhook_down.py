"""Scenario 7, webhook down: with the webhook process stopped, GPU pods follow the
failurePolicy of manifests/base/mutatingwebhook.yaml, while non-GPU pods (matchConditions)
and kube-system pods (namespaceSelector) are still created, without a call to it."""

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
    webhook_failure_policy,
)

pytestmark = pytest.mark.e2e


def test_webhook_down_follows_failure_policy(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
) -> None:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    vramguard = local_vramguard
    namespace = make_namespace("team")
    system_pod = unique_name("gpu-system")
    failure_policy = webhook_failure_policy()

    vramguard.stop_webhook()
    try:
        if failure_policy == "Fail":
            with pytest.raises(ApiException) as raised:
                core_v1.create_namespaced_pod(namespace, gpu_pod("gpu", namespace=namespace))
            # The API server names the webhook and why it could not be called.
            assert raised.value.status == 500
            assert "pods.vramguard.io" in str(raised.value.body)
            assert not core_v1.list_namespaced_pod(namespace).items
        else:
            core_v1.create_namespaced_pod(namespace, gpu_pod("gpu", namespace=namespace))
            pod = core_v1.read_namespaced_pod("gpu", namespace)
            assert pod.spec.scheduler_name != SCHEDULER_NAME  # admitted unmutated

        # matchConditions: a pod asking for no GPU is not sent to the webhook at all.
        core_v1.create_namespaced_pod(namespace, gpu_pod("cpu", namespace=namespace, gpus=0))
        # namespaceSelector: kube-system is never sent to it, GPU pods included.
        core_v1.create_namespaced_pod("kube-system", gpu_pod(system_pod, namespace="kube-system"))
        assert core_v1.read_namespaced_pod(system_pod, "kube-system").spec.scheduler_name == (
            "default-scheduler"
        )
    finally:
        delete_pod(core_v1, "kube-system", system_pod)
        vramguard.start_webhook()

    # Back up: GPU pods are admitted and mutated again.
    core_v1.create_namespaced_pod(namespace, gpu_pod("gpu-after", namespace=namespace))
    pod = core_v1.read_namespaced_pod("gpu-after", namespace)
    assert pod.spec.scheduler_name == SCHEDULER_NAME
