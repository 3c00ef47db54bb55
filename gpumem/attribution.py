"""Whose GPU memory is whose on one node: the node agent's join of its three readings.

- PodResources (the kubelet) says which container holds which GPU, by namespace, pod and
  container name and device ID, from the moment the container is admitted: the assignment.
- NVML says which processes use how much memory on each GPU, by host PID.
- /proc/<pid>/cgroup says which pod (by UID) and container (by runtime ID) a PID runs in.

PodResources names pods but gives neither UIDs nor container IDs, so the cgroup's UID and ID
are joined with the pods of the node as the API lists them (uid, namespace, name, and
containerStatuses[].containerID), as dcgm-exporter maps processes to pods. A process is the
pod's even where PodResources gives that pod no GPU (one that set NVIDIA_VISIBLE_DEVICES
itself): its memory is real, and the watchdog should see it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpumem.cgroup import ContainerRef, runtime_container_id
from gpumem.devices import ContainerDevices, device_ref
from gpumem.gpus import GpuReading
from gpumem.objects import mapping, metadata, metadata_text, sequence

# The annotation a static pod's mirror carries: the static pod's own UID (the hash its
# cgroup is named after), which differs from the mirror's metadata.uid.
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class PodIdentity:
    """What the agent needs of a pod from the API: its names, and its containers by runtime
    ID (from containerStatuses, so only those that have started) and by name (from the spec)."""

    uid: str
    namespace: str
    name: str
    container_ids: Mapping[str, str] = field(default_factory=dict)  # runtime ID -> name
    container_names: tuple[str, ...] = ()
    static_uid: str = ""


@dataclass(frozen=True, order=True)
class Assignment:
    """A container holds (a replica of) this GPU. `gpu` is None when NVML did not read it."""

    namespace: str
    pod: str
    container: str
    uuid: str
    gpu: int | None


@dataclass(frozen=True, order=True)
class PodUsage:
    """GPU memory one container's processes use on one GPU, summed over its processes."""

    namespace: str
    pod: str
    container: str
    gpu: int
    uuid: str
    used_bytes: int
    processes: int


@dataclass(frozen=True, order=True)
class Unattributed:
    """Processes on a GPU that belong to no known pod: host processes, pods the agent cannot
    name (the API unreachable, or a pod started since its last event)."""

    gpu: int
    uuid: str
    processes: int
    used_bytes: int


@dataclass(frozen=True)
class Attribution:
    assignments: tuple[Assignment, ...] = ()
    pod_usage: tuple[PodUsage, ...] = ()
    unattributed: tuple[Unattributed, ...] = ()
    # Device IDs of GPU resources that name no card here: "mig" (a MIG instance) and
    # "unresolved" (a GPU index NVML did not read).
    unmapped_devices: Mapping[str, int] = field(default_factory=dict)


def pod_identity(raw: Mapping[str, Any]) -> PodIdentity | None:
    """A pod's identity from its raw API object; None without a UID, namespace or name."""
    uid = metadata_text(raw, "uid")
    namespace = metadata_text(raw, "namespace")
    name = metadata_text(raw, "name")
    if not (uid and namespace and name):
        return None
    spec = mapping(raw.get("spec"))
    status = mapping(raw.get("status"))
    names = []
    for key in ("initContainers", "containers"):
        names += [
            n for c in sequence(spec.get(key)) if isinstance(n := mapping(c).get("name"), str)
        ]
    ids: dict[str, str] = {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for entry in sequence(status.get(key)):
            container = mapping(entry)
            runtime_id, cname = container.get("containerID"), container.get("name")
            if isinstance(runtime_id, str) and runtime_id and isinstance(cname, str):
                ids[runtime_container_id(runtime_id)] = cname
    static = mapping(metadata(raw).get("annotations")).get(MIRROR_ANNOTATION)
    return PodIdentity(
        uid, namespace, name, ids, tuple(names), static if isinstance(static, str) else ""
    )


def by_uid(pods: Iterable[PodIdentity]) -> dict[str, PodIdentity]:
    """Pods by the UIDs their cgroups may carry: the API's, and a static pod's own."""
    index: dict[str, PodIdentity] = {}
    for pod in pods:
        index[pod.uid] = pod
        if pod.static_uid:
            index[pod.static_uid] = pod
    return index


def attribute(
    gpus: Sequence[GpuReading],
    allocations: Sequence[ContainerDevices] | None,
    containers: Mapping[int, ContainerRef | None],
    pods: Mapping[str, PodIdentity] | None,
) -> Attribution:
    """Join one scan's readings. `allocations` is None when PodResources could not be read;
    `containers` maps each GPU process's PID to its cgroup's pod (None: in no pod), and a PID
    missing from it exited before its cgroup was read, so it is left out (its memory is being
    freed); `pods` (by UID, see by_uid) is None when the node's pods are not known."""
    assignments, unmapped = _assignments(gpus, allocations or ())
    usage: dict[tuple[str, str, str, int, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    strays: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    for gpu in gpus:
        for process in gpu.processes:
            if process.pid not in containers:
                continue
            holder = _holder(containers[process.pid], gpu.uuid, pods, assignments)
            if holder is None:
                stray = strays[(gpu.index, gpu.uuid)]
                stray[0] += 1
                stray[1] += process.used_bytes or 0
                continue
            known = usage[(*holder, gpu.index, gpu.uuid)]
            known[2] += 1
            if process.used_bytes is not None:
                known[0] += process.used_bytes
                known[1] += 1
    return Attribution(
        assignments=tuple(sorted(assignments)),
        pod_usage=tuple(
            sorted(
                PodUsage(ns, pod, container, gpu, uuid, used, count)
                for (ns, pod, container, gpu, uuid), (used, known, count) in usage.items()
                if known  # every process's usage unknown: no figure rather than a false 0
            )
        ),
        unattributed=tuple(
            sorted(Unattributed(g, u, n, used) for (g, u), (n, used) in strays.items())
        ),
        unmapped_devices=dict(unmapped),
    )


def _assignments(
    gpus: Sequence[GpuReading], allocations: Iterable[ContainerDevices]
) -> tuple[set[Assignment], Counter[str]]:
    by_uuid = {g.uuid: g for g in gpus}
    by_index = {g.index: g for g in gpus}
    assignments: set[Assignment] = set()
    unmapped: Counter[str] = Counter()
    for held in allocations:
        for device_id in held.device_ids:
            ref = device_ref(device_id, held.resource)
            if ref.kind == "other":
                continue
            if ref.kind == "mig":
                unmapped["mig"] += 1
                continue
            if ref.kind == "uuid":
                card = by_uuid.get(ref.value)
                uuid, index = ref.value, (card.index if card else None)
            else:
                found = by_index.get(int(ref.value))
                if found is None:
                    unmapped["unresolved"] += 1
                    continue
                uuid, index = found.uuid, found.index
            assignments.add(Assignment(held.namespace, held.pod, held.container, uuid, index))
    return assignments, unmapped


def _holder(
    ref: ContainerRef | None,
    uuid: str,
    pods: Mapping[str, PodIdentity] | None,
    assignments: Iterable[Assignment],
) -> tuple[str, str, str] | None:
    """(namespace, pod, container) of a process's cgroup, or None when nobody known."""
    if ref is None or pods is None:
        return None
    pod = pods.get(ref.pod_uid)
    if pod is None:
        return None
    name = pod.container_ids.get(ref.container_id) if ref.container_id else None
    if name is None:
        # A container started since the pod's last status update has no ID there yet: the
        # one container of the pod that holds this GPU, or the pod's only container, is it.
        holding = {
            a.container
            for a in assignments
            if (a.namespace, a.pod, a.uuid) == (pod.namespace, pod.name, uuid)
        }
        if len(holding) == 1:
            name = next(iter(holding))
        elif len(pod.container_names) == 1:
            name = pod.container_names[0]
        else:
            return None
    return pod.namespace, pod.name, name


__all__ = [
    "MIRROR_ANNOTATION",
    "Assignment",
    "Attribution",
    "PodIdentity",
    "PodUsage",
    "Unattributed",
    "attribute",
    "by_uid",
    "pod_identity",
]
