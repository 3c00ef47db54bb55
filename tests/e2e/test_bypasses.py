"""The bypasses of issue 17 through the real kube-apiserver: a GPU pod that declares a zero
budget, names a node, names its own scheduler or PriorityClass, or gives a sidecar every card
through NVIDIA_VISIBLE_DEVICES. Every create is a server-side dry run: the API server runs
admission (this webhook included) and stores nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .harness import SCHEDULER_NAME, LocalVramguard, gpu_pod

pytestmark = pytest.mark.e2e


def _denied(core_v1: Any, namespace: str, pod: Any) -> str:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    with pytest.raises(ApiException) as raised:
        core_v1.create_namespaced_pod(namespace, pod, dry_run="All")
    assert raised.value.status == 403, raised.value.body
    return str(raised.value.body)


def test_bypasses_are_denied_or_corrected(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
) -> None:
    from kubernetes import client  # noqa: PLC0415

    namespace = make_namespace("tenant")
    policy = local_vramguard.policy

    zero = gpu_pod("zero", namespace=namespace, gpumem_mib=0)
    assert "below the minimum of 1 MiB (minGpumemMiB)" in _denied(core_v1, namespace, zero)

    placed = gpu_pod("placed", namespace=namespace, node_name="some-node", gpumem_mib=1000)
    assert "may not set spec.nodeName (some-node)" in _denied(core_v1, namespace, placed)

    sidecar = gpu_pod("sidecar", namespace=namespace)
    sidecar.spec.containers.append(
        client.V1Container(
            name="side",
            image=sidecar.spec.containers[0].image,
            env=[client.V1EnvVar(name="NVIDIA_VISIBLE_DEVICES", value="all")],
        )
    )
    assert "container side sets NVIDIA_VISIBLE_DEVICES=all without requesting a GPU" in (
        _denied(core_v1, namespace, sidecar)
    )

    own = gpu_pod("own", namespace=namespace, priority_class_name="system-node-critical")
    own.spec.scheduler_name = "my-scheduler"
    admitted = core_v1.create_namespaced_pod(namespace, own, dry_run="All")
    assert admitted.spec.priority_class_name == policy["defaults"]["priorityClassName"]
    assert admitted.spec.priority < 2000001000
    assert admitted.spec.scheduler_name == SCHEDULER_NAME


def test_a_pod_without_a_gpu_request_cannot_take_the_cards_by_env(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
) -> None:
    """The webhook's matchConditions send it pods that name a device variable with no GPU
    request at all (not only GPU pods with such a sidecar), so the API server refuses them;
    `void` is sent too and admitted, and a CPU pod is never sent."""
    from kubernetes import client  # noqa: PLC0415

    del local_vramguard  # registered: that is all this test needs of it
    namespace = make_namespace("tenant")

    def cpu_pod(name: str, env: list[Any] | None) -> Any:
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="app", image="pause", env=env)]
            ),
        )

    every_card = cpu_pod(
        "every-card", [client.V1EnvVar(name="NVIDIA_VISIBLE_DEVICES", value="all")]
    )
    assert "container app sets NVIDIA_VISIBLE_DEVICES=all without requesting a GPU" in (
        _denied(core_v1, namespace, every_card)
    )
    void = cpu_pod("void", [client.V1EnvVar(name="NVIDIA_VISIBLE_DEVICES", value="void")])
    assert core_v1.create_namespaced_pod(namespace, void, dry_run="All").spec.scheduler_name != (
        SCHEDULER_NAME
    )
    plain = cpu_pod("plain", None)
    assert core_v1.create_namespaced_pod(namespace, plain, dry_run="All").metadata.name == "plain"
