"""Real-shaped v1 Pod and Node JSON, policies and telemetry readings for the extender tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from extender.store import ClusterStore
from gpumem.demand import ResourceNames
from gpumem.policy import Policy
from gpumem.state import CardSample, Sample, TelemetryReading

NOW = 1_700_000_000.0
GPUMEM = "vramguard.io/gpumem"
NAMES = ResourceNames(frozenset({"nvidia.com/gpu"}), GPUMEM)


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_policy(**extender: Any) -> Policy:
    """A policy whose extender section is given in YAML spelling (floorMiB, staleMode...)."""
    return Policy.model_validate({"extender": extender})


def make_pod(
    name: str,
    mib: int | None,
    *,
    node: str | None = None,
    namespace: str = "team-a",
    uid: str | None = None,
    phase: str | None = None,
    started_at: float | None = NOW - 3600,
    gpu: bool = True,
) -> dict[str, Any]:
    """A pod as the apiserver returns it. Bound pods are Running with a started container
    (started_at None: still pulling its image); unbound ones are Pending."""
    resources: dict[str, Any] = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {}}
    if gpu:
        resources["limits"]["nvidia.com/gpu"] = "1"
        resources["requests"]["nvidia.com/gpu"] = "1"
    if mib is not None:
        resources["limits"][GPUMEM] = str(mib)
        resources["requests"][GPUMEM] = str(mib)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{namespace}/{name}")),
            "resourceVersion": "4711",
            "creationTimestamp": rfc3339(NOW - 7200),
            "labels": {"app": name},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{name}-5d8f",
                    "uid": "0b7e0c1e-1111-2222-3333-444455556666",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "image": "nvcr.io/nvidia/pytorch:24.05-py3",
                    "command": ["python", "train.py"],
                    "resources": resources,
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "vramguard-scheduler",
            "priorityClassName": "gpu-batch",
            "priority": 1000,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            ],
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }
    if node is not None:
        pod["spec"]["nodeName"] = node
        state: dict[str, Any] = (
            {"running": {"startedAt": rfc3339(started_at)}}
            if started_at is not None
            else {"waiting": {"reason": "ContainerCreating"}}
        )
        pod["status"] = {
            "phase": "Running" if started_at is not None else "Pending",
            "qosClass": "Burstable",
            "hostIP": "10.0.0.7",
            "podIP": "10.244.1.17",
            "startTime": rfc3339(NOW - 7000),
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": rfc3339(NOW - 7000),
                }
            ],
            "containerStatuses": [
                {
                    "name": "trainer",
                    "image": "nvcr.io/nvidia/pytorch:24.05-py3",
                    "imageID": "",
                    "ready": started_at is not None,
                    "restartCount": 0,
                    "started": started_at is not None,
                    "state": state,
                }
            ],
        }
    if phase is not None:
        pod["status"]["phase"] = phase
    return pod


def unschedulable(name: str, mib: int, **kwargs: Any) -> dict[str, Any]:
    """An unbound `make_pod` that kube-scheduler has marked Unschedulable."""
    pod = make_pod(name, mib, **kwargs)
    pod["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient vramguard.io/gpumem.",
        }
    ]
    return pod


def make_node(
    name: str,
    *,
    allocatable_mib: int | None = None,
    gfd_memory_mib: int | None = None,
    gfd_count: int | None = None,
) -> dict[str, Any]:
    """A node as the apiserver returns it, with gpumem advertised and/or GFD labels."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "g5.2xlarge",
    }
    if gfd_memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(gfd_memory_mib)
        labels["nvidia.com/gpu.product"] = "NVIDIA-A10G"
        labels["nvidia.com/gpu.replicas"] = "4"
    if gfd_count is not None:
        labels["nvidia.com/gpu.count"] = str(gfd_count)
    allocatable = {"cpu": "7910m", "memory": "31482Mi", "pods": "110"}
    if allocatable_mib is not None:
        allocatable[GPUMEM] = str(allocatable_mib)
    if gfd_memory_mib is not None:
        allocatable["nvidia.com/gpu"] = "4"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"node/{name}")),
            "resourceVersion": "981",
            "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": "10.244.1.0/24", "providerID": f"aws:///eu-west-1a/{name}"},
        "status": {
            "capacity": dict(allocatable),
            "allocatable": allocatable,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": rfc3339(NOW - 10),
                    "lastTransitionTime": rfc3339(NOW - 86400),
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }
            ],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.7"}],
            "nodeInfo": {
                "kubeletVersion": "v1.31.2",
                "containerRuntimeVersion": "containerd://1.7",
            },
        },
    }


def dcgm_reading(
    free: dict[str, int], *, age: float = 8.0, used: dict[str, int] | None = None
) -> TelemetryReading:
    """A dcgm reading (node free/used, no per-pod usage), `age` seconds old at NOW."""
    at = NOW - age
    return TelemetryReading(
        source="dcgm",
        fetched_at=NOW,
        free={node: Sample(mib, at) for node, mib in free.items()},
        used={node: Sample(mib, at) for node, mib in (used or {}).items()},
    )


def pod_exporter_reading(
    pods: dict[tuple[str, str], int], *, age: float = 3.0, free: dict[str, int] | None = None
) -> TelemetryReading:
    """Per-pod usage; with `free` also node figures (a custom source that has both)."""
    at = NOW - age
    return TelemetryReading(
        source="pod-exporter" if free is None else "custom",
        fetched_at=NOW,
        free={node: Sample(mib, at) for node, mib in (free or {}).items()},
        pod_used={key: Sample(mib, at) for key, mib in pods.items()},
        has_node_usage=free is not None,
    )


def make_store(
    policy: Policy,
    nodes: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    reading: TelemetryReading | None = None,
    now: float = NOW,
) -> ClusterStore:
    store = ClusterStore(policy, clock=lambda: now)
    store.replace_nodes(nodes)
    store.replace_pods(pods)
    if reading is not None:
        store.apply_telemetry(reading)
    return store


def card_uuid(node: str, index: int) -> str:
    """A stable GPU UUID in NVML's form for card `index` of `node`."""
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node}/gpu{index}')}"


def cards_reading(
    free: dict[str, list[int]],
    *,
    age: float = 8.0,
    used: dict[str, list[int]] | None = None,
    pod_cards: dict[tuple[str, str], tuple[str, int]] | None = None,
) -> TelemetryReading:
    """A dcgm reading per card: free (and used) MiB per card index of each node, node sums
    beside them as the parser makes them, and which card each pod holds ((namespace, pod) ->
    (node, card index))."""
    at = NOW - age
    used = used or {}
    cards = {
        node: {
            card_uuid(node, i): CardSample(
                card_uuid(node, i),
                str(i),
                free=Sample(mib, at),
                used=Sample(used[node][i], at) if node in used else None,
            )
            for i, mib in enumerate(mibs)
        }
        for node, mibs in free.items()
    }
    return TelemetryReading(
        source="dcgm",
        fetched_at=NOW,
        free={node: Sample(sum(mibs), at) for node, mibs in free.items()},
        used={node: Sample(sum(mibs), at) for node, mibs in used.items()},
        cards=cards,
        pod_cards={key: card_uuid(*card) for key, card in (pod_cards or {}).items()},
    )


def extender_settings(**extra: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The fit rule's settings in YAML spelling, drawn for property tests; `extra` adds keys."""
    return st.fixed_dictionaries(
        {
            "floorMiB": st.integers(0, 2000),
            "staleMode": st.sampled_from(["budget-only", "deny"]),
            "maxAgeSeconds": st.integers(1, 120),
            "warmupSeconds": st.integers(0, 300),
            **extra,
        }
    )
