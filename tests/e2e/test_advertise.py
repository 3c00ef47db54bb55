"""`vramguard advertise` against a real kube-apiserver: a GFD-labelled GPU node that does not
advertise vramguard.io/gpumem refuses GPU pods; one pass sets GFD memory x count - slack in
its status (capacity and allocatable, which kube-scheduler reads), after which the pod is
scheduled; a second pass changes nothing; nodes without GFD labels are never touched.

The command runs as a subprocess (`python -m ops`, what the `vramguard` console
script calls), with the shipped policy, against the cluster's admin kubeconfig.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import T4_MIB, unique_name
from .harness import (
    ClusterBase,
    ManagedProcess,
    delete_node,
    delete_pod,
    free_port,
    gpu_pod,
    wait_for_pod_node,
    wait_for_unschedulable,
)
from .harness.nodes import GPUMEM_RESOURCE
from .harness.process import url_ok

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "manifests" / "base" / "policy.yaml"
SLACK_MIB = 1024  # manifests/base/policy.yaml: extender.capacitySlackMiB
ADVERTISED_MIB = T4_MIB - SLACK_MIB  # 15360 - 1024 = 14336


def advertise(cluster: ClusterBase, *args: str) -> subprocess.CompletedProcess[str]:
    """One pass of `vramguard advertise --once` with the shipped policy; fails on a non-zero
    exit, showing what it printed."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops",
            "advertise",
            "--once",
            "--policy",
            str(POLICY),
            "--kubeconfig",
            str(cluster.kubeconfig),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def line_for(result: subprocess.CompletedProcess[str], node: str) -> str:
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(f"{node}: ")]
    return line


@pytest.fixture
def cpu_node(core_v1: Any) -> Iterator[str]:
    """A Ready-looking node without GPU Feature Discovery labels."""
    name = unique_name("cpu-node")
    core_v1.create_node(
        {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {}}
    )
    node = core_v1.read_node(name)
    node.status.capacity = {"cpu": "4", "memory": "8Gi", "pods": "110"}
    node.status.allocatable = dict(node.status.capacity)
    core_v1.replace_node_status(name, node)
    yield name
    delete_node(core_v1, name)


def test_advertise_sets_gfd_memory_minus_slack_once(
    control_plane: ClusterBase,
    core_v1: Any,
    namespace: str,
    make_gpu_node: Callable[..., Any],
    cpu_node: str,
) -> None:
    gpu = make_gpu_node(gpumem_mib=None, gpu_memory_mib=T4_MIB, gpu_count=1).metadata.name
    assert GPUMEM_RESOURCE not in core_v1.read_node(gpu).status.allocatable
    cpu_version = core_v1.read_node(cpu_node).metadata.resource_version

    # Without it, kube-scheduler refuses every GPU pod on the node.
    pod = gpu_pod("needs-vram", namespace=namespace, node_name_selector=gpu, gpumem_mib=8000)
    core_v1.create_namespaced_pod(namespace, pod)
    try:
        message = wait_for_unschedulable(core_v1, namespace, "needs-vram")
        assert f"Insufficient {GPUMEM_RESOURCE}" in message

        first = advertise(control_plane, "--node", gpu, "--node", cpu_node)

        assert line_for(first, gpu) == (
            f"{gpu}: {T4_MIB} MiB x 1 GPU - {SLACK_MIB} MiB slack = {ADVERTISED_MIB} MiB "
            f"{GPUMEM_RESOURCE}: set, was unset"
        )
        assert line_for(first, cpu_node) == (
            f"{cpu_node}: skipped (no nvidia.com/gpu.memory label: not a GPU node)"
        )
        node = core_v1.read_node(gpu)
        assert node.status.capacity[GPUMEM_RESOURCE] == str(ADVERTISED_MIB)
        # What kube-scheduler reads (with no kubelet here, nothing copies capacity to it).
        assert node.status.allocatable[GPUMEM_RESOURCE] == str(ADVERTISED_MIB)
        # Everything else in the status is as the node had it.
        assert node.status.allocatable["nvidia.com/gpu"] == "4"
        assert [c.type for c in node.status.conditions] == ["Ready"]
        # ...and the scheduler now places the pod that was waiting for it.
        assert wait_for_pod_node(core_v1, namespace, "needs-vram", timeout=60) == gpu

        version = core_v1.read_node(gpu).metadata.resource_version
        second = advertise(control_plane, "--node", gpu, "--node", cpu_node)

        assert line_for(second, gpu).endswith(": unchanged")
        assert core_v1.read_node(gpu).metadata.resource_version == version, "no write at all"
        cpu = core_v1.read_node(cpu_node)
        assert cpu.metadata.resource_version == cpu_version, "a non-GPU node is never written"
        assert GPUMEM_RESOURCE not in cpu.status.capacity
        assert GPUMEM_RESOURCE not in cpu.status.allocatable
    finally:
        delete_pod(core_v1, namespace, "needs-vram")


def test_dry_run_writes_nothing(
    control_plane: ClusterBase, core_v1: Any, make_gpu_node: Callable[..., Any]
) -> None:
    gpu = make_gpu_node(gpumem_mib=14000, gpu_memory_mib=T4_MIB).metadata.name
    version = core_v1.read_node(gpu).metadata.resource_version

    result = advertise(control_plane, "--node", gpu, "--dry-run")

    # (The API server keeps 14000 as "14k": the same quantity.)
    assert line_for(result, gpu).endswith(": would set (dry run), was 14k")
    node = core_v1.read_node(gpu)
    assert node.metadata.resource_version == version
    assert node.status.allocatable[GPUMEM_RESOURCE] == "14k"


def test_a_pass_over_the_cluster_touches_gpu_nodes_only(
    control_plane: ClusterBase, core_v1: Any, make_gpu_node: Callable[..., Any], cpu_node: str
) -> None:
    """Without --node: every GFD-labelled node. Only on the local control plane: on an
    existing cluster this would rewrite its real GPU nodes."""
    if not control_plane.is_local:
        pytest.skip("would patch every GPU node of an existing cluster")
    # 2 x 12012 - 1024 = 23000, which the API server stores as "23k": a second pass must
    # still see it as done.
    gpu = make_gpu_node(gpumem_mib=None, gpu_memory_mib=12012, gpu_count=2).metadata.name
    cpu_version = core_v1.read_node(cpu_node).metadata.resource_version

    result = advertise(control_plane)

    assert line_for(result, gpu).endswith(f"= 23000 MiB {GPUMEM_RESOURCE}: set, was unset")
    assert cpu_node not in result.stdout, "non-GPU nodes are not even listed"
    node = core_v1.read_node(gpu)
    assert node.status.allocatable[GPUMEM_RESOURCE] == "23k"
    assert core_v1.read_node(cpu_node).metadata.resource_version == cpu_version

    again = advertise(control_plane)

    assert line_for(again, gpu).endswith(": unchanged")
    assert core_v1.read_node(gpu).metadata.resource_version == node.metadata.resource_version


def test_extender_serves_metrics_apart(control_plane: ClusterBase, tmp_path: Path) -> None:
    """`python -m extender --metrics-port P`: /metrics, /readyz (and nothing else) on the
    second listener. (The extender advertises nothing: `vramguard advertise` is the one
    advertiser.)"""
    port, metrics_port = free_port(), free_port()
    metrics = f"http://127.0.0.1:{metrics_port}"
    extender = ManagedProcess(
        "extender[metrics]",
        [
            sys.executable,
            "-m",
            "extender",
            "--policy",
            str(POLICY),
            "--prometheus-url",
            "http://127.0.0.1:1",  # no telemetry (budget-only): irrelevant here
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            "--metrics-host",
            "127.0.0.1",
        ],
        tmp_path / "extender.log",
        cwd=REPO,
    )
    control_plane.start_process(
        extender, ready=lambda: url_ok(f"{metrics}/readyz"), what="the extender's /readyz"
    )
    try:
        assert url_ok(f"{metrics}/metrics")
        assert not url_ok(f"{metrics}/debug/snapshot"), "only metrics and health out there"
        assert url_ok(f"http://127.0.0.1:{port}/debug/snapshot")
    finally:
        control_plane.stop_process(extender)
    assert "Traceback" not in extender.log_path.read_text()
