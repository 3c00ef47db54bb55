"""The GPU demand of a pod: is it a GPU pod, and how much GPU memory does it declare.

Works on the raw pod as the API sends it (camelCase dicts), so the webhook can read a pod
before defaulting and the extender can read pods from a watch with the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gpumem.quantity import QuantityError, parse_mib

ContainerList = Literal["initContainers", "containers"]


@dataclass(frozen=True)
class ResourceNames:
    """The extended resources that make a pod a GPU pod, and the one that counts GPU memory.

    `gpu_prefixes` are the policy's name patterns (`nvidia.com/mig-*` without its `*`): a
    device plugin that renames its resource per profile or sharing mode (MIG's
    `nvidia.com/mig-1g.10gb`, time-slicing's `nvidia.com/gpu.shared`) makes names no list can
    spell in advance.
    """

    gpu: frozenset[str]
    gpumem: str
    gpu_prefixes: tuple[str, ...] = ()

    def is_gpu_resource(self, resource: str) -> bool:
        """A resource that hands out GPUs: named, or matching a pattern."""
        return resource in self.gpu or resource.startswith(self.gpu_prefixes)

    def marks_gpu(self, resource: str) -> bool:
        return resource == self.gpumem or self.is_gpu_resource(resource)


@dataclass(frozen=True)
class ContainerGpumem:
    """One container's GPU-memory declaration, in MiB, before request/limit defaulting."""

    list_name: ContainerList
    index: int
    name: str
    uses_gpu: bool
    request_mib: int | None
    limit_mib: int | None
    sidecar: bool

    @property
    def declared_mib(self) -> int | None:
        """What the scheduler counts: the request, else the limit (extended resources default
        the request to the limit)."""
        return self.request_mib if self.request_mib is not None else self.limit_mib


@dataclass(frozen=True)
class PodDemand:
    """What a pod asks of the GPU."""

    is_gpu: bool
    declared_mib: int | None
    containers: tuple[ContainerGpumem, ...]

    @property
    def first_gpu_container(self) -> ContainerGpumem | None:
        """The app container that should carry an injected budget (init containers last)."""
        ranked = sorted(
            (c for c in self.containers if c.uses_gpu),
            key=lambda c: (c.list_name != "containers", c.index),
        )
        return ranked[0] if ranked else None


class DemandError(ValueError):
    """A pod whose GPU-memory declaration cannot be read."""


def read_demand(pod: Mapping[str, Any], names: ResourceNames) -> PodDemand:
    """Read the GPU demand of a raw pod object.

    declared_mib follows kube-scheduler's effective request: app containers and restartable
    init containers (sidecars) add up, a plain init container counts alone with the sidecars
    started before it, and the larger of the two wins; pod overhead is added on top.
    """
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return PodDemand(is_gpu=False, declared_mib=None, containers=())
    containers = tuple(_containers(spec, "initContainers", names)) + tuple(
        _containers(spec, "containers", names)
    )
    is_gpu = any(c.uses_gpu for c in containers)
    declared = _effective_mib(containers, _overhead_mib(spec, names))
    return PodDemand(is_gpu=is_gpu, declared_mib=declared, containers=containers)


def _containers(
    spec: Mapping[str, Any], list_name: ContainerList, names: ResourceNames
) -> list[ContainerGpumem]:
    items = spec.get(list_name)
    if not isinstance(items, Sequence) or isinstance(items, str):
        return []
    found = []
    for index, container in enumerate(items):
        if not isinstance(container, Mapping):
            continue
        name = str(container.get("name", f"#{index}"))
        resources = container.get("resources")
        requests = _mapping(resources, "requests")
        limits = _mapping(resources, "limits")
        uses_gpu = any(names.marks_gpu(str(key)) for key in (*requests, *limits))
        found.append(
            ContainerGpumem(
                list_name=list_name,
                index=index,
                name=name,
                uses_gpu=uses_gpu,
                request_mib=_read(requests, names.gpumem, name),
                limit_mib=_read(limits, names.gpumem, name),
                sidecar=list_name == "initContainers"
                and container.get("restartPolicy") == "Always",
            )
        )
    return found


def _mapping(resources: object, key: str) -> Mapping[str, Any]:
    if not isinstance(resources, Mapping):
        return {}
    value = resources.get(key)
    return value if isinstance(value, Mapping) else {}


def _read(values: Mapping[str, Any], resource: str, container: str) -> int | None:
    if resource not in values:
        return None
    try:
        return parse_mib(values[resource])
    except QuantityError as err:
        raise DemandError(f"container {container!r}: {resource}: {err}") from err


def _overhead_mib(spec: Mapping[str, Any], names: ResourceNames) -> int | None:
    overhead = spec.get("overhead")
    if not isinstance(overhead, Mapping) or names.gpumem not in overhead:
        return None
    return _read(overhead, names.gpumem, "pod overhead")


def _effective_mib(containers: tuple[ContainerGpumem, ...], overhead: int | None) -> int | None:
    if overhead is None and all(c.declared_mib is None for c in containers):
        return None
    app = sum(c.declared_mib or 0 for c in containers if c.list_name == "containers")
    sidecars = 0
    init_peak = 0
    for c in containers:
        if c.list_name != "initContainers":
            continue
        if c.sidecar:
            sidecars += c.declared_mib or 0
        else:
            init_peak = max(init_peak, sidecars + (c.declared_mib or 0))
    return max(app + sidecars, init_peak) + (overhead or 0)
