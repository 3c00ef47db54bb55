"""Fixtures for the end-to-end suite.

By default one local control plane (etcd, kube-apiserver, default kube-scheduler;
binaries built on first use by controlplane/build.sh) is shared by the whole session, and
so is vramguard next to it: GPU exporter, Prometheus, webhook, extender and the
vramguard-scheduler, all local processes (``harness.LocalVramguard``).

Set VRAMGUARD_E2E_KUBECONFIG=/path/to/kubeconfig to run against an existing cluster
instead; vramguard is then the one deployed there (manifests applied) and tests that need
the local pieces (exporter, policy file, stopping processes) are skipped.
VRAMGUARD_E2E_KEEP=1 keeps the working directory (logs, kubeconfig) even when everything
passes; it is always kept, and every process's log path printed, when a test failed.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from .harness import (
    BinariesUnavailable,
    ClusterBase,
    ControlPlaneError,
    GPUNodeSpec,
    LocalVramguard,
    ProcessError,
    PrometheusUnavailable,
    Vramguard,
    cluster_from_environment,
    create_gpu_node,
    delete_node,
    delete_pod,
    vramguard_for,
)
from .harness.controlplane import ControlPlane
from .harness.nodes import advertise_gpumem
from .harness.realnode import RealNode, RealNodeUnavailable
from .harness.tenants import Tenant, TenantCard, namespaces_for, policy_entries

_KEPT_DIRS = pytest.StashKey[list[str]]()
_CLUSTER = pytest.StashKey[ClusterBase]()

# The seeds' card: a 16 GiB T4 (15360 MiB as GPU Feature Discovery reports it) whose node
# advertises 14000 MiB of vramguard.io/gpumem.
T4_MIB = 15360
T4_ADVERTISED_MIB = 14000
# The one real node (a kubelet, containerd, the fake device plugin): one card, 8 replicas.
REAL_NODE_NAME = "real-gpu-node"
REAL_NODE_REPLICAS = 8


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM ends the run as Ctrl-C does, so the fixtures' teardown still runs: the real
    node's containers, mounts and bridge go, not only the processes the harness started."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
    request.config.stash[_CLUSTER] = cluster
    try:
        yield cluster
    finally:
        del request.config.stash[_CLUSTER]
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


@pytest.fixture(scope="session")
def vramguard(control_plane: ClusterBase) -> Iterator[Vramguard]:
    """vramguard in the cluster under test: started locally next to a local control plane
    (exporter, Prometheus, webhook, extender, vramguard-scheduler), else the deployed one."""
    stack = vramguard_for(control_plane)
    try:
        stack.start()
    except (PrometheusUnavailable, ControlPlaneError, ProcessError, OSError) as err:
        stack.stop()
        pytest.fail(f"vramguard failed to start next to the control plane: {err}", pytrace=False)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def local_vramguard(vramguard: Vramguard) -> Iterator[LocalVramguard]:
    """The local stack, for tests that set GPU telemetry, rewrite the policy or stop
    processes; skipped against a deployed vramguard. The exporter reports nothing again
    afterwards."""
    if not isinstance(vramguard, LocalVramguard):
        pytest.skip("needs the local vramguard stack (exporter, policy file, processes)")
    yield vramguard
    vramguard.exporter.clear()


@pytest.fixture
def make_namespace(core_v1: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``make_namespace(prefix, labels=None)`` creates a fresh namespace and
    returns its name; its pods are force-deleted afterwards.

    (Namespaces stay Terminating on the local control plane: no kube-controller-manager
    runs to finalize them, which is why every test uses fresh ones.)
    """
    created: list[str] = []

    def make(prefix: str = "e2e", labels: Mapping[str, str] | None = None) -> str:
        name = unique_name(prefix)
        core_v1.create_namespace({"metadata": {"name": name, "labels": dict(labels or {}) or None}})
        created.append(name)
        return name

    yield make
    for name in created:
        _empty_and_delete_namespace(core_v1, name)


@pytest.fixture
def namespace(make_namespace: Callable[..., str]) -> str:
    """A fresh namespace; its pods are force-deleted afterwards."""
    return make_namespace("e2e")


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


@pytest.fixture
def make_vram_node(
    local_vramguard: LocalVramguard, make_gpu_node: Callable[..., Any]
) -> Callable[..., str]:
    """Factory: ``make_vram_node(gpumem_mib=14000, total_mib=15360, used_mib=0, **spec)``
    creates a fake node with one time-sliced card that advertises ``gpumem_mib``, makes
    the exporter report ``used_mib`` of ``total_mib`` in use on it, and waits until the
    extender knows the node with fresh live telemetry. Returns the node name."""

    def make(
        *,
        gpumem_mib: int | None = T4_ADVERTISED_MIB,
        total_mib: int = T4_MIB,
        used_mib: int = 0,
        **spec: Any,
    ) -> str:
        spec.setdefault("gpu_replicas", 8)
        node = make_gpu_node(gpumem_mib=gpumem_mib, gpu_memory_mib=total_mib, **spec)
        name = str(node.metadata.name)
        local_vramguard.set_card(name, total_mib=total_mib, used_mib=used_mib)
        return name

    return make


@pytest.fixture(scope="session")
def real_node_session(control_plane: ClusterBase) -> Iterator[RealNode]:
    """The real node, started at the first test that asks for it and kept for the session.
    Skipped on an existing cluster (its nodes have no fake device plugin to drive) and
    where a piece is missing; under VRAMGUARD_REQUIRE_TOOLS=1 (`make test`) a missing piece
    fails instead."""
    if not isinstance(control_plane, ControlPlane):
        pytest.skip("the real-node scenarios need the local control plane (fake device plugin)")
    node = RealNode(control_plane, name=REAL_NODE_NAME, gpus=1, replicas=REAL_NODE_REPLICAS)
    control_plane.add_cleanup(node.stop)  # also when the session ends on a failure
    try:
        node.start()
    except RealNodeUnavailable as err:
        if os.environ.get("VRAMGUARD_REQUIRE_TOOLS") == "1":
            pytest.fail(f"real node unavailable: {err}", pytrace=False)
        pytest.skip(f"real node unavailable: {err}")
    except (ProcessError, ControlPlaneError, TimeoutError) as err:
        pytest.fail(f"the real node failed to start: {err}", pytrace=False)
    try:
        yield node
    finally:
        node.stop()
    left = node.leftovers()
    assert not left, f"the real node left things behind: {left}"


@pytest.fixture
def real_node(
    core_v1: Any, local_vramguard: LocalVramguard, real_node_session: RealNode
) -> Iterator[RealNode]:
    """The real node, with no pod left on it from an earlier test, advertising the T4's
    14000 MiB, and its card (nothing in use) known to the extender. Its pods are
    force-deleted afterwards, and the test waits until the kubelet has stopped them."""
    node = real_node_session
    _wait_node_empty(core_v1, node.name)
    advertise_gpumem(core_v1, node.name, T4_ADVERTISED_MIB)
    local_vramguard.set_card(node.name, total_mib=T4_MIB, used_mib=0)
    yield node
    for pod in core_v1.list_pod_for_all_namespaces(
        field_selector=f"spec.nodeName={node.name}"
    ).items:
        delete_pod(core_v1, pod.metadata.namespace, pod.metadata.name)


def _wait_node_empty(core: Any, node: str, timeout: float = 60.0) -> None:
    """Until no pod is bound to the node (the previous test's are force-deleted; the kubelet
    stops their containers on its own)."""
    deadline = time.monotonic() + timeout
    while True:
        pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        if not pods:
            return
        if time.monotonic() >= deadline:
            names = [f"{p.metadata.namespace}/{p.metadata.name}" for p in pods]
            raise TimeoutError(f"pods still on {node} after {timeout:.0f}s: {names}")
        for pod in pods:
            delete_pod(core, pod.metadata.namespace, pod.metadata.name)
        time.sleep(0.5)


@pytest.fixture
def seat_tenants(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> Callable[..., tuple[TenantCard, dict[str, str]]]:
    """Factory: ``seat_tenants(running, waiting=(), total_mib=T4_MIB, driver_mib=300,
    gpumem_mib=T4_ADVERTISED_MIB)`` makes a node with one card, a namespace per tenant role
    (running and waiting) with the tenants' policy entries, and runs the ``running`` tenants
    on the card. Returns the card and the namespaces by role."""

    def seat(
        running: Sequence[Tenant],
        waiting: Sequence[Tenant] = (),
        *,
        total_mib: int = T4_MIB,
        driver_mib: int = 300,
        gpumem_mib: int = T4_ADVERTISED_MIB,
    ) -> tuple[TenantCard, dict[str, str]]:
        node = make_vram_node(gpumem_mib=gpumem_mib, total_mib=total_mib, used_mib=driver_mib)
        card = TenantCard(
            core_v1, local_vramguard, node, total_mib=total_mib, driver_mib=driver_mib
        )
        namespaces = namespaces_for([t.role for t in (*running, *waiting)], make_namespace)
        local_vramguard.add_namespaces(policy_entries(namespaces))
        for tenant in running:
            card.run(tenant, namespaces[tenant.role])
        return card, namespaces

    return seat


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that do not use vramguard run first: once the session's vramguard is up, its
    webhook sends every GPU pod to the vramguard-scheduler."""
    items.sort(key=lambda item: "vramguard" in getattr(item, "fixturenames", ()))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failed e2e test, say where every process's log is."""
    report = yield
    cluster = item.config.stash.get(_CLUSTER, None)
    if report.failed and cluster is not None and cluster.log_files():
        lines = [f"{name}: {path}" for name, path in cluster.log_files().items()]
        report.sections.append(("vramguard e2e process logs", "\n".join(lines)))
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for entry in config.stash.get(_KEPT_DIRS, []):
        terminalreporter.write_line(f"vramguard e2e: kept control-plane logs in {entry}")


def _empty_and_delete_namespace(core: Any, name: str) -> None:
    for pod in core.list_namespaced_pod(name).items:
        delete_pod(core, name, pod.metadata.name)
    core.delete_namespace(name)
