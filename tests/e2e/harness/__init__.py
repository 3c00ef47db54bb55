"""Harness for the end-to-end suite: a local Kubernetes control plane (or an existing
cluster), fake GPU nodes, pod helpers, a fake kubelet's chores, a GPU exporter, Prometheus,
and vramguard itself (webhook, extender, vramguard-scheduler). Importing it starts nothing."""

from .binaries import Binaries, BinariesUnavailable, ensure_binaries, kubernetes_version
from .controlplane import (
    ClusterBase,
    ControlPlane,
    ControlPlaneError,
    ExistingCluster,
    cluster_from_environment,
)
from .gpu_exporter import GPUExporter
from .kubelet import finish_terminating, mark_running, terminating_pods, wait_for_terminating
from .nodes import (
    GPUNodeSpec,
    create_gpu_node,
    delete_node,
    label_node,
    set_node_status,
    untaint_node,
)
from .pods import (
    delete_pod,
    failed_scheduling_events,
    gpu_pod,
    pod_events,
    pod_stays_unscheduled,
    unschedulable_message,
    wait_for_pod_event,
    wait_for_pod_node,
    wait_for_unschedulable,
    wait_for_unschedulable_message,
)
from .process import ManagedProcess, ProcessError, free_port
from .prometheus import Prometheus, PrometheusUnavailable
from .vramguard import (
    SCHEDULER_NAME,
    DeployedVramguard,
    LocalVramguard,
    Vramguard,
    vramguard_for,
    webhook_failure_policy,
)

__all__ = [
    "SCHEDULER_NAME",
    "Binaries",
    "BinariesUnavailable",
    "ClusterBase",
    "ControlPlane",
    "ControlPlaneError",
    "DeployedVramguard",
    "ExistingCluster",
    "GPUExporter",
    "GPUNodeSpec",
    "LocalVramguard",
    "ManagedProcess",
    "ProcessError",
    "Prometheus",
    "PrometheusUnavailable",
    "Vramguard",
    "cluster_from_environment",
    "create_gpu_node",
    "delete_node",
    "delete_pod",
    "ensure_binaries",
    "failed_scheduling_events",
    "finish_terminating",
    "free_port",
    "gpu_pod",
    "kubernetes_version",
    "label_node",
    "mark_running",
    "pod_events",
    "pod_stays_unscheduled",
    "set_node_status",
    "terminating_pods",
    "unschedulable_message",
    "untaint_node",
    "vramguard_for",
    "wait_for_pod_event",
    "wait_for_pod_node",
    "wait_for_terminating",
    "wait_for_unschedulable",
    "wait_for_unschedulable_message",
    "webhook_failure_policy",
]
