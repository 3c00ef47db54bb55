"""Harness for the end-to-end suite: a local Kubernetes control plane (or an existing
cluster), fake GPU nodes, and pod helpers. Importing it starts nothing."""

from .binaries import Binaries, BinariesUnavailable, ensure_binaries, kubernetes_version
from .controlplane import (
    ClusterBase,
    ControlPlane,
    ControlPlaneError,
    ExistingCluster,
    cluster_from_environment,
)
from .nodes import GPUNodeSpec, create_gpu_node, delete_node, set_node_status, untaint_node
from .pods import (
    delete_pod,
    gpu_pod,
    pod_stays_unscheduled,
    wait_for_pod_node,
    wait_for_unschedulable,
)
from .process import ManagedProcess, ProcessError, free_port

__all__ = [
    "Binaries",
    "BinariesUnavailable",
    "ClusterBase",
    "ControlPlane",
    "ControlPlaneError",
    "ExistingCluster",
    "GPUNodeSpec",
    "ManagedProcess",
    "ProcessError",
    "cluster_from_environment",
    "create_gpu_node",
    "delete_node",
    "delete_pod",
    "ensure_binaries",
    "free_port",
    "gpu_pod",
    "kubernetes_version",
    "pod_stays_unscheduled",
    "set_node_status",
    "untaint_node",
    "wait_for_pod_node",
    "wait_for_unschedulable",
]
