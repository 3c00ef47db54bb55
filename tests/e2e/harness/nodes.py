"""Fake GPU nodes: Node objects with GPU capacity and GPU Feature Discovery labels but
no kubelet behind them, so pods can be scheduled (bound) onto them but never run."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

# Taints that keep pods off a node until a kubelet / the node lifecycle controller
# report it healthy. The TaintNodesByCondition admission plugin adds the first to every
# new Node; with no kube-controller-manager nothing would ever remove it.
NOT_READY_TAINT_KEYS = frozenset(
    {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.cloudprovider.kubernetes.io/uninitialized",
    }
)
GPU_RESOURCE = "nvidia.com/gpu"
GPUMEM_RESOURCE = "vramguard.io/gpumem"
GFD_MEMORY_LABEL = "nvidia.com/gpu.memory"
GFD_COUNT_LABEL = "nvidia.com/gpu.count"
GFD_PRODUCT_LABEL = "nvidia.com/gpu.product"
GFD_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
GFD_SHARING_LABEL = "nvidia.com/gpu.sharing-strategy"


@dataclass(frozen=True)
class GPUNodeSpec:
    """What a fake GPU node looks like.

    ``gpu_replicas`` is the time-sliced ``nvidia.com/gpu`` count the device plugin would
    advertise for ``gpu_count`` physical GPUs of ``gpu_memory_mib`` MiB each.
    ``gpumem_mib`` advertises vramguard's GPU-memory resource (``vramguard.io/gpumem``,
    integer MiB) in capacity and allocatable, as the seeds' node-status job does.
    ``extended_resources`` adds more capacity, e.g. ``{"example.com/foo": "1"}``.
    """

    name: str
    gpu_count: int = 1
    gpu_replicas: int = 4
    gpu_memory_mib: int = 15360
    gpu_product: str = "Tesla-T4"
    cpu: str = "8"
    memory: str = "32Gi"
    pods: int = 110
    gpumem_mib: int | None = None
    extended_resources: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def node_labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            GFD_MEMORY_LABEL: str(self.gpu_memory_mib),
            GFD_COUNT_LABEL: str(self.gpu_count),
            GFD_PRODUCT_LABEL: self.gpu_product,
        }
        if self.gpu_replicas > self.gpu_count:
            labels[GFD_REPLICAS_LABEL] = str(self.gpu_replicas // max(self.gpu_count, 1))
            labels[GFD_SHARING_LABEL] = "time-slicing"
        labels.update(self.labels)
        return labels

    def capacity(self) -> dict[str, str]:
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
            GPU_RESOURCE: str(self.gpu_replicas),
        }
        if self.gpumem_mib is not None:
            capacity[GPUMEM_RESOURCE] = str(self.gpumem_mib)
        capacity.update(self.extended_resources)
        return capacity


def create_gpu_node(core: Any, spec: GPUNodeSpec) -> Any:
    """Create the Node, give it a Ready status with GPU capacity, and untaint it.

    ``core`` is a ``kubernetes.client.CoreV1Api``. Returns the final V1Node.
    The status has to go through the status subresource: create ignores it.
    """
    from kubernetes import client  # noqa: PLC0415

    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=spec.name, labels=spec.node_labels()),
            spec=client.V1NodeSpec(),
        )
    )
    set_node_status(core, spec)
    return untaint_node(core, spec.name)


def set_node_status(core: Any, spec: GPUNodeSpec) -> Any:
    """Replace the Node's status: capacity = allocatable = ``spec``, Ready, an address."""
    from kubernetes import client  # noqa: PLC0415

    node = core.read_node(spec.name)
    now = datetime.datetime.now(datetime.UTC)
    resources = spec.capacity()
    node.status = client.V1NodeStatus(
        capacity=resources,
        allocatable=dict(resources),
        conditions=[
            client.V1NodeCondition(
                type="Ready",
                status="True",
                reason="KubeletReady",
                message="fake node (vramguard e2e): no kubelet",
                last_heartbeat_time=now,
                last_transition_time=now,
            )
        ],
        addresses=[
            client.V1NodeAddress(type="InternalIP", address="192.0.2.1"),
            client.V1NodeAddress(type="Hostname", address=spec.name),
        ],
        node_info=client.V1NodeSystemInfo(
            architecture="amd64",
            boot_id="",
            container_runtime_version="fake://0",
            kernel_version="",
            kube_proxy_version="",
            kubelet_version="v0.0.0-fake",
            machine_id="",
            operating_system="linux",
            os_image="fake",
            system_uuid="",
        ),
    )
    return core.replace_node_status(spec.name, node)


def untaint_node(core: Any, name: str) -> Any:
    """Remove the not-ready style taints that no controller will remove here."""
    node = core.read_node(name)
    taints = node.spec.taints or []
    kept = [t for t in taints if t.key not in NOT_READY_TAINT_KEYS]
    if len(kept) == len(taints):
        return node
    node.spec.taints = kept
    return core.replace_node(name, node)


def label_node(core: Any, name: str, labels: Mapping[str, str | None]) -> Any:
    """Merge-patch the Node's labels (None removes one). A Node update is also a cluster
    event: kube-scheduler retries the unschedulable pods it might help, among them every
    pod an extender refused (it cannot know what an extender waits for)."""
    return core.patch_node(name, {"metadata": {"labels": dict(labels)}})


def delete_node(core: Any, name: str) -> None:
    """Delete a Node, ignoring one that is already gone."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        core.delete_node(name)
    except ApiException as err:
        if err.status != 404:
            raise


def allocatable_gpumem(core: Any, name: str) -> int | None:
    """The Node's allocatable vramguard.io/gpumem in MiB (None: not advertised). A kubelet
    writes quantities back in its own form: 14000 reads as "14k"."""
    from kubernetes.utils import parse_quantity  # noqa: PLC0415

    parse = cast(Callable[[str], Decimal], parse_quantity)
    allocatable = core.read_node(name).status.allocatable or {}
    value = allocatable.get(GPUMEM_RESOURCE)
    return None if value is None else int(parse(value))


def advertise_gpumem(core: Any, node: str, mib: int, timeout: float = 30.0) -> None:
    """Set the node's vramguard.io/gpumem capacity with a status JSON patch, as the seeds'
    node-status job and `vramguard advertise` do; the kubelet copies it into allocatable
    (and writes it back in its own form: 14000 reads back as "14k")."""
    path = "/status/capacity/" + GPUMEM_RESOURCE.replace("/", "~1")  # JSON pointer escape
    core.patch_node_status(
        node,
        [{"op": "add", "path": path, "value": str(mib)}],
        _content_type="application/json-patch+json",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if allocatable_gpumem(core, node) == mib:
            return
        time.sleep(0.25)
    raise TimeoutError(f"the kubelet did not copy gpumem {mib} into {node}'s allocatable")
