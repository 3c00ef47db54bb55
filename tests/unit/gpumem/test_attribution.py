"""gpumem.attribution: the join of PodResources, NVML and the processes' cgroups with the
node's pods."""

from __future__ import annotations

from typing import Any

from gpumem.attribution import (
    Assignment,
    PodIdentity,
    PodUsage,
    Unattributed,
    attribute,
    by_uid,
    pod_identity,
)
from gpumem.cgroup import ContainerRef
from gpumem.devices import ContainerDevices
from gpumem.gpus import GpuProcess, GpuReading

GPU0 = "GPU-00000000-0000-0000-0000-000000000000"
GPU1 = "GPU-11111111-1111-1111-1111-111111111111"
MIB = 1024 * 1024


def gpu(index: int, uuid: str, *processes: GpuProcess, read: bool = True) -> GpuReading:
    return GpuReading(index, uuid, "T4", 16 * 1024 * MIB, 0, 16 * 1024 * MIB, processes, read)


def raw_pod(
    uid: str, namespace: str, name: str, containers: dict[str, str], **extra: Any
) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "namespace": namespace, "name": name, **extra},
        "spec": {"containers": [{"name": n} for n in containers]},
        "status": {
            "containerStatuses": [
                {"name": n, "containerID": f"containerd://{cid}"}
                for n, cid in containers.items()
                if cid
            ]
        },
    }


def identity(raw: dict[str, Any]) -> PodIdentity:
    pod = pod_identity(raw)
    assert pod is not None
    return pod


ML = identity(raw_pod("uid-ml", "immich", "immich-ml", {"ml": "c-ml", "sidecar": "c-side"}))
LLM = identity(raw_pod("uid-llm", "ai", "llama", {"server": "c-llm"}))
PODS = by_uid([ML, LLM])
HELD = (
    ContainerDevices("immich", "immich-ml", "ml", "nvidia.com/gpu", (f"{GPU0}::1",)),
    ContainerDevices("ai", "llama", "server", "nvidia.com/gpu", (f"{GPU1}::0", f"{GPU1}::4")),
)


def test_pod_identity_reads_names_container_ids_and_the_static_pod_uid() -> None:
    raw = raw_pod(
        "mirror-uid",
        "kube-system",
        "gpu-static",
        {"main": "abc"},
        annotations={"kubernetes.io/config.mirror": "7e8f3c2a9b1d4e5f6a7b8c9d0e1f2a3b"},
    )
    raw["spec"]["initContainers"] = [{"name": "warm"}]
    raw["status"]["initContainerStatuses"] = [{"name": "warm", "containerID": "cri-o://def"}]
    pod = identity(raw)
    assert pod == PodIdentity(
        "mirror-uid",
        "kube-system",
        "gpu-static",
        {"abc": "main", "def": "warm"},
        ("warm", "main"),
        "7e8f3c2a9b1d4e5f6a7b8c9d0e1f2a3b",
    )
    assert set(by_uid([pod])) == {"mirror-uid", "7e8f3c2a9b1d4e5f6a7b8c9d0e1f2a3b"}
    assert pod_identity({"metadata": {"name": "no-uid", "namespace": "x"}}) is None
    assert pod_identity({"metadata": "garbage"}) is None


def test_each_process_is_its_containers_and_replicas_are_one_assignment() -> None:
    gpus = [
        gpu(0, GPU0, GpuProcess(100, 3000 * MIB), GpuProcess(101, 500 * MIB)),
        gpu(1, GPU1, GpuProcess(200, 5000 * MIB)),
    ]
    containers = {
        100: ContainerRef("uid-ml", "c-ml"),
        101: ContainerRef("uid-ml", "c-ml"),
        200: ContainerRef("uid-llm", "c-llm"),
    }
    result = attribute(gpus, HELD, containers, PODS)
    assert result.assignments == (
        Assignment("ai", "llama", "server", GPU1, 1),
        Assignment("immich", "immich-ml", "ml", GPU0, 0),
    )
    assert result.pod_usage == (
        PodUsage("ai", "llama", "server", 1, GPU1, 5000 * MIB, 1),
        PodUsage("immich", "immich-ml", "ml", 0, GPU0, 3500 * MIB, 2),
    )
    assert result.unattributed == ()
    assert result.unmapped_devices == {}


def test_processes_of_nobody_known_are_unattributed_and_exited_ones_left_out() -> None:
    gpus = [
        gpu(
            0,
            GPU0,
            GpuProcess(1, 100 * MIB),  # a host daemon
            GpuProcess(2, 200 * MIB),  # a pod the API does not know (yet)
            GpuProcess(3, 999 * MIB),  # exited before its cgroup was read
            GpuProcess(4, None),  # a pod's process whose usage NVML cannot tell
        )
    ]
    containers: dict[int, ContainerRef | None] = {
        1: None,
        2: ContainerRef("uid-unknown", "c"),
        4: ContainerRef("uid-llm", "c-llm"),
    }
    result = attribute(gpus, (), containers, PODS)
    assert result.unattributed == (Unattributed(0, GPU0, 2, 300 * MIB),)
    # Only an unknown figure for llama's container: no series rather than a false 0.
    assert result.pod_usage == ()


def test_without_the_pod_watch_every_process_is_unattributed() -> None:
    gpus = [gpu(0, GPU0, GpuProcess(100, 3000 * MIB))]
    result = attribute(gpus, HELD, {100: ContainerRef("uid-ml", "c-ml")}, None)
    assert result.pod_usage == ()
    assert result.unattributed == (Unattributed(0, GPU0, 1, 3000 * MIB),)
    assert Assignment("immich", "immich-ml", "ml", GPU0, 0) in result.assignments


def test_a_container_not_yet_in_the_status_is_the_one_holding_the_gpu() -> None:
    gpus = [gpu(0, GPU0, GpuProcess(100, 64 * MIB))]
    fresh = ContainerRef("uid-ml", "c-new")  # restarted: its new ID is not in the status yet
    result = attribute(gpus, HELD, {100: fresh}, PODS)
    assert result.pod_usage == (PodUsage("immich", "immich-ml", "ml", 0, GPU0, 64 * MIB, 1),)
    # Two containers and no PodResources to tell which: nobody's rather than a guess.
    assert attribute(gpus, (), {100: fresh}, PODS).pod_usage == ()
    # A pod of one container needs neither.
    llm_fresh = ContainerRef("uid-llm", None)
    assert attribute(gpus, (), {100: llm_fresh}, PODS).pod_usage == (
        PodUsage("ai", "llama", "server", 0, GPU0, 64 * MIB, 1),
    )


def test_a_process_is_its_pods_even_without_a_gpu_from_podresources() -> None:
    gpus = [gpu(1, GPU1, GpuProcess(100, 700 * MIB))]
    result = attribute(gpus, HELD, {100: ContainerRef("uid-ml", "c-side")}, PODS)
    assert result.pod_usage == (PodUsage("immich", "immich-ml", "sidecar", 1, GPU1, 700 * MIB, 1),)


def test_device_ids_by_index_mig_and_unknown_cards() -> None:
    held = [
        ContainerDevices("a", "by-index", "c", "nvidia.com/gpu", ("1", "1::2")),
        ContainerDevices("a", "gone-index", "c", "nvidia.com/gpu", ("7",)),
        ContainerDevices("a", "mig", "c", "nvidia.com/mig-1g.10gb", ("MIG-x", "MIG-y")),
        ContainerDevices(
            "a", "unread", "c", "nvidia.com/gpu", ("GPU-22222222-2222-2222-2222-222222222222",)
        ),
        ContainerDevices("a", "nic", "c", "example.com/nic", ("0", "1")),
    ]
    result = attribute([gpu(0, GPU0), gpu(1, GPU1)], held, {}, PODS)
    assert result.assignments == (
        Assignment("a", "by-index", "c", GPU1, 1),
        Assignment("a", "unread", "c", "GPU-22222222-2222-2222-2222-222222222222", None),
    )
    assert result.unmapped_devices == {"unresolved": 1, "mig": 2}


def test_without_nvml_assignments_by_uuid_remain() -> None:
    result = attribute([], HELD, {}, PODS)
    assert result.assignments == (
        Assignment("ai", "llama", "server", GPU1, None),
        Assignment("immich", "immich-ml", "ml", GPU0, None),
    )
    assert attribute([], None, {}, PODS).assignments == ()
