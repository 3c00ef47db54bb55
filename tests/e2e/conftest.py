"""Fixtures for the end-to-end suite.

By default one local control plane (etcd, kube-apiserver, default kube-scheduler;
binaries built on first use by controlplane/build.sh) is shared by the whole session.
Set VRAMGUARD_E2E_KUBECONFIG=/path/to/kubeconfig to run against an existing cluster
instead, and VRAMGUARD_E2E_KEEP=1 to keep the working directory (logs, kubeconfig)
even when everything passes; it is always kept when a test failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .harness import (
    BinariesUnavailable,
    ClusterBase,
    ControlPlaneError,
    GPUNodeSpec,
    ProcessError,
    cluster_from_environment,
    create_gpu_node,
    delete_node,
    delete_pod,
)

_KEPT_DIRS = pytest.StashKey[list[str]]()


def unique_name(prefix: str) -> str:
    """A DNS-1123 name unlikely to collide with leftovers of earlier runs."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ClusterBase]:
    """The cluster under test: a local control plane, or VRAMGUARD_E2E_KUBECONFIG's."""
    cluster = cluster_from_environment()
    problem = None
    try:
        cluster.start()
    except BinariesUnavailable as err:
        problem = f"e2e control-plane binaries unavailable: {err}"
    except (ControlPlaneError, ProcessError) as err:
        where = f" (logs kept in {cluster.kept_workdir})" if cluster.kept_workdir else ""
        problem = f"e2e control plane failed to start{where}: {err}"
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster
    finally:
        failed = request.session.testsfailed > 0
        kept = cluster.stop(keep_logs=True if failed else None)
        if kept is not None:
            request.config.stash.setdefault(_KEPT_DIRS, []).append(
                "\n".join([f"{kept}"] + [f"  {n}: {p}" for n, p in cluster.log_files().items()])
            )


@pytest.fixture(scope="session")
def core_v1(control_plane: ClusterBase) -> Any:
    """``kubernetes.client.CoreV1Api`` with admin rights on the cluster under test."""
    from kubernetes import client  # noqa: PLC0415

    return client.CoreV1Api(control_plane.api_client())


@pytest.fixture
def namespace(core_v1: Any) -> Iterator[str]:
    """A fresh namespace; its pods are force-deleted afterwards.

    (The namespace itself stays Terminating on the local control plane: no
    kube-controller-manager runs to finalize it.)
    """
    from kubernetes import client  # noqa: PLC0415

    name = unique_name("e2e")
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    for pod in core_v1.list_namespaced_pod(name).items:
        delete_pod(core_v1, name, pod.metadata.name)
    core_v1.delete_namespace(name)


@pytest.fixture
def make_gpu_node(core_v1: Any) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_gpu_node(**GPUNodeSpec fields)`` creates a Ready fake GPU node
    (name defaults to a unique one) and deletes it after the test."""
    created: list[str] = []

    def make(**fields: Any) -> Any:
        fields.setdefault("name", unique_name("gpu-node"))
        node = create_gpu_node(core_v1, GPUNodeSpec(**fields))
        created.append(node.metadata.name)
        return node

    yield make
    for name in created:
        delete_node(core_v1, name)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for entry in config.stash.get(_KEPT_DIRS, []):
        terminalreporter.write_line(f"vramguard e2e: kept control-plane logs in {entry}")
