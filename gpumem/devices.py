"""The devices the kubelet gave each container (its PodResources API), and which physical GPU
a device ID names.

NVIDIA's device plugin names a GPU by its UUID (`GPU-8f3c...`, the default
--device-id-strategy=uuid) or by its index (`0`, with --device-id-strategy=index). With
time-slicing (or MPS) each GPU is advertised as several replicas, `<id>::<n>`: the part
before `::` is the GPU. A MIG instance (`MIG-<uuid>`, or the older `MIG-GPU-<uuid>/<gi>/<ci>`)
is a slice of a card with memory of its own, which per-card accounting does not describe: it
is counted, not mapped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

REPLICA_SEPARATOR = "::"
# NVIDIA's resources (nvidia.com/gpu, a renamed nvidia.com/gpu.shared, nvidia.com/mig-1g.10gb):
# only there is a bare number a GPU index rather than some other plugin's device.
NVIDIA_RESOURCE_PREFIX = "nvidia.com/"
_GPU_UUID = re.compile(r"^GPU-[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")

DeviceKind = Literal["uuid", "index", "mig", "other"]


@dataclass(frozen=True)
class ContainerDevices:
    """One container's devices of one resource, as PodResources lists them."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class DeviceRef:
    """What a device ID names: a GPU by UUID (`value` the UUID) or by index (`value` the
    number), a MIG instance, or something that is not a GPU at all (`other`)."""

    kind: DeviceKind
    value: str


def device_ref(device_id: str, resource: str) -> DeviceRef:
    """The GPU a device ID of `resource` names, its replica suffix dropped."""
    base = device_id.split(REPLICA_SEPARATOR, 1)[0].strip()
    if base.startswith("MIG-"):
        return DeviceRef("mig", base)
    if _GPU_UUID.match(base):
        return DeviceRef("uuid", base)
    if resource.startswith(NVIDIA_RESOURCE_PREFIX):
        if resource.startswith(NVIDIA_RESOURCE_PREFIX + "mig-"):
            return DeviceRef("mig", base)
        if base.isdigit():
            return DeviceRef("index", str(int(base)))
    return DeviceRef("other", base)


__all__ = [
    "NVIDIA_RESOURCE_PREFIX",
    "REPLICA_SEPARATOR",
    "ContainerDevices",
    "DeviceKind",
    "DeviceRef",
    "device_ref",
]
