"""vramguard's promises on a real node: a kubelet (built from the pinned Kubernetes), containerd
and runc run the pods, and the fake NVIDIA device plugin (time-slicing, the real
deviceplugin/v1beta1 API) hands them GPU replicas. What only a kubelet can show:

- the seeds' tenants Running for real on a T4-like node, each with the card's UUID in
  NVIDIA_VISIBLE_DEVICES, and the sixth pod Pending;
- the advertised vramguard.io/gpumem surviving the kubelet's status updates and a restart;
- the kubelet refusing a pod placed over allocatable with spec.nodeName, and vramguard's
  accounting not counting the refused pod;
- a pod that exits (Succeeded) freeing its budget for a Pending one;
- the watchdog's victim terminated by the kubelet, and the Pending pod placed and Running;
- preemption victims terminated by the kubelet within their grace period;
- the node agent (fake NVML only) reading the real PodResources API and the real
  containers' PIDs and cgroups: which card each pod holds and its usage reach the extender.

The node is shared by the session (one kubelet fits a machine); each test gets it empty
(`real_node` fixture) and its card idle in the exporter.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from .conftest import T4_ADVERTISED_MIB, T4_MIB
from .harness import (
    ClusterBase,
    LocalVramguard,
    gpu_pod,
    wait_for_pod_node,
    wait_for_unschedulable_message,
)
from .harness.gpu_exporter import card_uuid
from .harness.images import WORKLOAD_IMAGE
from .harness.nodes import GPU_RESOURCE, GPUMEM_RESOURCE, allocatable_gpumem
from .harness.pods import declared_on_node, wait_for_gone, wait_for_phase
from .harness.process import free_port, wait_until
from .harness.realnode import RealNode
from .harness.tenants import SEEDS, Tenant, namespaces_for, policy_entries
from .test_advertise import SLACK_MIB, advertise, line_for
from .test_watchdog import decision_lines, watchdog

pytestmark = pytest.mark.e2e

DRIVER_MIB = 300
# Prints the GPUs the device plugin gave it (its Allocate env), then holds them.
SHOW_GPUS_AND_SLEEP = ["sh", "-c", 'echo "gpus=$NVIDIA_VISIBLE_DEVICES"; exec sleep 86400']


def real_pod(name: str, namespace: str, node: str, **fields: Any) -> Any:
    """A GPU pod pinned to the real node that runs busybox and holds its GPU."""
    fields.setdefault("command", SHOW_GPUS_AND_SLEEP)
    return gpu_pod(
        name, namespace=namespace, node_name_selector=node, image=WORKLOAD_IMAGE, **fields
    )


def run_on_node(core: Any, namespace: str, pod: Any, node: str, timeout: float = 60.0) -> Any:
    """Create the pod, wait until it is bound to ``node`` and its kubelet runs it."""
    name = pod.metadata.name
    core.create_namespaced_pod(namespace, pod)
    assert wait_for_pod_node(core, namespace, name, timeout=timeout) == node
    return wait_for_phase(core, namespace, name, "Running", timeout=timeout)


def gpus_seen(core: Any, namespace: str, name: str, timeout: float = 20.0) -> str:
    """What the pod's container printed of NVIDIA_VISIBLE_DEVICES (its log, via the kubelet)."""
    seen: list[str] = []

    def printed() -> bool:
        log = core.read_namespaced_pod_log(name, namespace)
        seen[:] = [line.removeprefix("gpus=") for line in log.splitlines() if "gpus=" in line]
        return bool(seen)

    wait_until(f"{namespace}/{name} to print its GPUs", printed, timeout=timeout)
    return seen[0]


# --- 1. the seeds' tenants, really running -------------------------------------------------


def test_seeds_run_on_a_real_t4_and_a_sixth_pod_waits(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    real_node: RealNode,
) -> None:
    vramguard = local_vramguard
    node = real_node.name
    sixth = Tenant("portal-stt", "portal-stt-2", None, 1300)
    namespaces = namespaces_for([t.role for t in (*SEEDS, sixth)], make_namespace)
    vramguard.add_namespaces(policy_entries(namespaces))
    used = DRIVER_MIB
    vramguard.set_card(node, total_mib=T4_MIB, used_mib=used)
    for tenant in SEEDS:
        namespace = namespaces[tenant.role]
        pod = run_on_node(
            core_v1,
            namespace,
            real_pod(tenant.pod, namespace, node, gpumem_mib=tenant.declared_mib),
            node,
        )
        # The kubelet's own report: started containers, the node's address, a pod IP.
        (status,) = pod.status.container_statuses
        assert status.started, status
        assert status.state.running is not None, status
        assert status.container_id.startswith("containerd://"), status.container_id
        assert pod.status.host_ip == real_node.node_ip
        assert pod.status.pod_ip, pod.status
        assert pod.status.pod_ip != real_node.node_ip
        # One time-sliced replica of the node's only GPU, named by its UUID.
        assert gpus_seen(core_v1, namespace, tenant.pod) == card_uuid(node, 0)
        used += tenant.uses_mib
        vramguard.set_card(node, total_mib=T4_MIB, used_mib=used)

    assert declared_on_node(core_v1, node) == 13300
    state = vramguard.wait_for_node(node, check=lambda s: s["declaredMiB"] == 13300)
    assert state["capacityMiB"] == T4_ADVERTISED_MIB
    assert state["liveUsedMiB"] == used

    namespace = namespaces[sixth.role]
    core_v1.create_namespaced_pod(namespace, real_pod(sixth.pod, namespace, node))
    message = wait_for_unschedulable_message(
        core_v1, namespace, sixth.pod, f"Insufficient {GPUMEM_RESOURCE}"
    )
    assert message.startswith("0/"), message
    assert core_v1.read_namespaced_pod(sixth.pod, namespace).status.phase == "Pending"


# --- 2. the advertised capacity and the kubelet ---------------------------------------------


def test_advertised_gpumem_survives_kubelet_status_updates_and_a_restart(
    control_plane: ClusterBase,
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    real_node: RealNode,
) -> None:
    node = real_node.name
    # The GFD labels the kubelet registered with: one 15360 MiB T4, minus the policy's slack.
    advertised = T4_MIB - SLACK_MIB
    line = line_for(advertise(control_plane, "--node", node), node)
    assert line.startswith(
        f"{node}: {T4_MIB} MiB x 1 GPU - {SLACK_MIB} MiB slack = {advertised} MiB "
        f"{GPUMEM_RESOURCE}: set"
    ), line
    assert allocatable_gpumem(core_v1, node) == advertised

    # The kubelet rewrites its status every second: the patched capacity stays.
    heartbeat = _ready_heartbeat(core_v1, node)
    wait_until(
        "three kubelet status updates",
        lambda: _ready_heartbeat(core_v1, node) > heartbeat + datetime.timedelta(seconds=2),
        timeout=30,
    )
    assert allocatable_gpumem(core_v1, node) == advertised

    # A restart: the kubelet registers again (the Node exists), the device plugin sees its
    # directory wiped and registers again, and the extended resource is still there.
    real_node.restart_kubelet()
    assert allocatable_gpumem(core_v1, node) == advertised
    node_status = core_v1.read_node(node).status
    assert node_status.allocatable[GPU_RESOURCE] == str(real_node.replicas)
    local_vramguard.wait_for_node(node, check=lambda s: s["capacityMiB"] == advertised)

    # And the restarted kubelet runs GPU pods again.
    namespace = make_namespace("restart")
    run_on_node(
        core_v1, namespace, real_pod("after-restart", namespace, node, gpumem_mib=1000), node
    )


def _ready_heartbeat(core: Any, node: str) -> datetime.datetime:
    conditions = core.read_node(node).status.conditions or []
    (ready,) = [c for c in conditions if c.type == "Ready"]
    heartbeat: datetime.datetime = ready.last_heartbeat_time
    return heartbeat


# --- 3. the kubelet's own budget check ------------------------------------------------------


def test_kubelet_refuses_a_pod_placed_over_allocatable_and_vramguard_does_not_count_it(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    real_node: RealNode,
) -> None:
    node = real_node.name
    namespace = make_namespace("nodename")
    for name, mib in (("llm", 7000), ("vision", 6000)):  # each under the namespace's cap
        run_on_node(core_v1, namespace, real_pod(name, namespace, node, gpumem_mib=mib), node)
    local_vramguard.wait_for_node(node, check=lambda s: s["declaredMiB"] == 13000)

    # spec.nodeName: no scheduler, no extender; only the kubelet's admission stands between
    # the pod and the card. The webhook denies such GPU pods (allowNodeName false), but not in
    # a namespace excluded from vramguard: there the kubelet's check is all there is.
    # 13000 + 2000 > 14000 allocatable.
    def placed(where: str) -> Any:
        return gpu_pod(
            "placed",
            namespace=where,
            node_name=node,
            gpumem_mib=2000,
            image=WORKLOAD_IMAGE,
            command=SHOW_GPUS_AND_SLEEP,
        )

    with pytest.raises(ApiException) as denied:
        core_v1.create_namespaced_pod(namespace, placed(namespace))
    assert "may not set spec.nodeName" in str(denied.value.body)
    excluded = make_namespace("nodename-excluded")
    local_vramguard.exclude_namespaces([excluded])
    core_v1.create_namespaced_pod(excluded, placed(excluded))
    refused = wait_for_phase(core_v1, excluded, "placed", "Failed", timeout=30)
    assert refused.status.reason == f"OutOf{GPUMEM_RESOURCE}", refused.status
    assert not refused.status.container_statuses or not any(
        s.started for s in refused.status.container_statuses
    )

    # The refused pod holds nothing: vramguard still counts 13000, and 1000 more fit.
    time.sleep(2)  # a few extender refreshes
    state = local_vramguard.wait_for_node(node, check=lambda s: s["declaredMiB"] == 13000)
    assert state["declaredMiB"] == 13000
    assert declared_on_node(core_v1, node) == 13000
    run_on_node(core_v1, namespace, real_pod("small", namespace, node, gpumem_mib=1000), node)
    local_vramguard.wait_for_node(node, check=lambda s: s["declaredMiB"] == 14000)


# --- 4. a pod that finishes ------------------------------------------------------------------


def test_a_pod_that_exits_frees_its_budget_for_a_pending_one(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    real_node: RealNode,
) -> None:
    node = real_node.name
    namespace = make_namespace("job")
    job = real_pod(
        "train", namespace, node, gpumem_mib=8000, command=["sh", "-c", "sleep 4; exit 0"]
    )
    run_on_node(core_v1, namespace, job, node)
    core_v1.create_namespaced_pod(namespace, real_pod("next", namespace, node, gpumem_mib=8000))
    message = wait_for_unschedulable_message(
        core_v1, namespace, "next", f"Insufficient {GPUMEM_RESOURCE}"
    )
    assert message.startswith("0/"), message

    done = wait_for_phase(core_v1, namespace, "train", "Succeeded", timeout=60)
    (status,) = done.status.container_statuses
    assert status.state.terminated.exit_code == 0, status
    # The kubelet's Succeeded is the only signal: kube-scheduler and the extender both let
    # the budget go, and the waiting pod runs.
    assert wait_for_pod_node(core_v1, namespace, "next", timeout=60) == node
    wait_for_phase(core_v1, namespace, "next", "Running", timeout=60)
    local_vramguard.wait_for_node(node, check=lambda s: s["declaredMiB"] == 8000)


# --- 5. the watchdog on a running pod --------------------------------------------------------


def test_watchdog_victim_is_terminated_by_the_kubelet_and_the_pending_pod_runs(
    control_plane: ClusterBase,
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    real_node: RealNode,
) -> None:
    vramguard = local_vramguard
    node = real_node.name
    namespace = make_namespace("wd")
    # arena: 2000 declared, 13300 used (+11300); nvr: 2000 declared, 1500 used. 560 MiB
    # free: below the watchdog's floor (1024), above its emergency floor (512).
    holders = {"arena": (2000, 13300), "nvr": (2000, 1500)}
    with vramguard.extender_settings(telemetry={"preset": "pod-exporter"}):
        for name, (declared, _uses) in holders.items():
            # A grace period the kubelet really waits out: `sleep` as PID 1 ignores SIGTERM.
            pod = real_pod(name, namespace, node, gpumem_mib=declared)
            pod.spec.termination_grace_period_seconds = 3
            run_on_node(core_v1, namespace, pod, node)
        # Both placed, then arena's arena grows.
        for name, (_declared, uses) in holders.items():
            vramguard.exporter.set_pod_usage(namespace, name, uses)
        used = sum(uses for _declared, uses in holders.values())
        vramguard.wait_for_node(node, check=_live_used(used))
        free = T4_MIB - used  # 560

        core_v1.create_namespaced_pod(
            namespace, real_pod("incoming", namespace, node, gpumem_mib=1500)
        )
        message = wait_for_unschedulable_message(core_v1, namespace, "incoming", "vramguard:")
        assert f"live free {free} MiB < need 1500" in message, message

        enforce = watchdog(control_plane, vramguard, node, "--dry-run", "false")
        assert enforce.returncode == 0, enforce.stderr
        (line,) = decision_lines(enforce.stderr)
        assert f" pod={namespace}/arena " in line, line
        assert " result=deleted " in line, line

        # The kubelet stops it (SIGTERM, then SIGKILL after the grace period) and the pod
        # object goes: nothing in the test finishes the deletion.
        wait_for_gone(core_v1, namespace, "arena", timeout=60)
        vramguard.exporter.remove_pod(namespace, "arena")
        assert wait_for_pod_node(core_v1, namespace, "incoming", timeout=60) == node
        wait_for_phase(core_v1, namespace, "incoming", "Running", timeout=60)
        nvr = core_v1.read_namespaced_pod("nvr", namespace)
        assert nvr.metadata.deletion_timestamp is None
        assert nvr.status.phase == "Running"


# --- 6. preemption victims --------------------------------------------------------------------


def test_preemption_victims_are_terminated_by_the_kubelet(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    real_node: RealNode,
) -> None:
    node = real_node.name
    tier1, tier2 = make_namespace("tier1"), make_namespace("tier2")
    local_vramguard.add_namespaces({tier1: {"priorityClassName": "tier-1-gpu"}})
    for name, namespace, mib in (
        ("inference", tier1, 8000),
        ("batch-a", tier2, 3000),
        ("batch-b", tier2, 3000),
    ):
        pod = real_pod(name, namespace, node, gpumem_mib=mib)
        pod.spec.termination_grace_period_seconds = 2
        run_on_node(core_v1, namespace, pod, node)
    assert declared_on_node(core_v1, node) == 14000

    # 14000 + 3000 > 14000: one tier-2 pod has to go; the kubelet terminates it.
    preemptor = real_pod("stt", tier1, node, gpumem_mib=3000)
    core_v1.create_namespaced_pod(tier1, preemptor)

    def gone() -> list[str]:
        return sorted(
            name
            for name in ("batch-a", "batch-b")
            if name not in {p.metadata.name for p in core_v1.list_namespaced_pod(tier2).items}
        )

    wait_until("the kubelet to finish a preemption victim", lambda: bool(gone()), timeout=60)
    assert len(gone()) == 1, gone()
    assert wait_for_pod_node(core_v1, tier1, "stt", timeout=60) == node
    wait_for_phase(core_v1, tier1, "stt", "Running", timeout=60)
    inference = core_v1.read_namespaced_pod("inference", tier1)
    assert inference.metadata.deletion_timestamp is None
    assert declared_on_node(core_v1, node) == 14000


# --- 7. what the kubelet's PodResources API answers -------------------------------------------


def test_pod_resources_api_names_each_containers_gpu_replica(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    real_node: RealNode,
) -> None:
    from kube.podresources import PodResourcesClient  # noqa: PLC0415

    node = real_node.name
    namespace = make_namespace("podres")
    for name in ("a", "b"):
        run_on_node(core_v1, namespace, real_pod(name, namespace, node, gpumem_mib=1000), node)

    client = PodResourcesClient(real_node.pod_resources_socket)
    try:
        allocatable = client.allocatable()
        held = {
            entry.pod: entry.device_ids
            for entry in client.list()
            if entry.namespace == namespace and entry.resource == GPU_RESOURCE
        }
        (one,) = client.get(namespace, "a")
    finally:
        client.close()
    uuid = card_uuid(node, 0)
    # Every replica of the one GPU, named `<uuid>::<replica>` as NVIDIA's plugin names them.
    assert sorted(allocatable[GPU_RESOURCE]) == sorted(
        f"{uuid}::{i}" for i in range(real_node.replicas)
    )
    assert set(held) == {"a", "b"}, held
    assert all(len(ids) == 1 and ids[0].startswith(f"{uuid}::") for ids in held.values()), held
    assert held["a"] != held["b"], "two containers got the same replica"
    assert (one.container, one.resource, one.device_ids) == ("main", GPU_RESOURCE, held["a"])


# --- 8. the node agent against real containers ----------------------------------------------


def test_node_agent_reads_real_pods_and_their_cards_reach_the_extender(
    control_plane: ClusterBase,
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    real_node: RealNode,
) -> None:
    from tests.fakes.nvml_state import FakeGpuState  # noqa: PLC0415

    vramguard = local_vramguard
    node = real_node.name
    namespace = make_namespace("agent")
    # Two GPUs, four replicas each: the device plugin's "distributed" policy gives the first
    # pod GPU 0 and the second GPU 1; the test does not tell anyone which.
    real_node.reconfigure_gpus(2, 4)
    nvml = FakeGpuState(real_node.nvml_state)
    nvml.set_cards(node, 2, total_mib=T4_MIB, base_used_mib=DRIVER_MIB)
    vramguard.exporter.remove_node(node)  # only the node agent reports this node now
    port = free_port()
    agent = control_plane.start_process(real_node.node_agent_process(port=port))
    address = f"127.0.0.1:{port}"
    try:
        vramguard.prometheus.add_target(address)
        with vramguard.extender_settings(telemetry={"preset": "node-agent"}):
            uses = {"first": 4000, "second": 2500}
            uuids = {}
            for name, mib in uses.items():
                pod = run_on_node(
                    core_v1, namespace, real_pod(name, namespace, node, gpumem_mib=5000), node
                )
                uuids[name] = gpus_seen(core_v1, namespace, name)
                (status,) = pod.status.container_statuses
                pid = real_node.container_pid(status.container_id)
                card = [card_uuid(node, i) for i in range(2)].index(uuids[name])
                nvml.set_process(pid, card, mib)
            assert set(uuids.values()) == {card_uuid(node, 0), card_uuid(node, 1)}, uuids

            # What the extender must end up seeing, all from the node agent: each pod on the
            # card the device plugin gave it, with the memory its process holds, and each
            # card's free memory.
            expected = {
                "pods": {name: (uuids[name], mib) for name, mib in uses.items()},
                "free": {uuids[name]: T4_MIB - DRIVER_MIB - mib for name, mib in uses.items()},
            }

            def seen(state: dict[str, Any]) -> dict[str, Any]:
                return {
                    "pods": {
                        pod["name"]: (pod.get("card"), pod.get("usedMiB"))
                        for pod in state.get("pods", [])
                        if pod.get("namespace") == namespace
                    },
                    "free": {card["uuid"]: card["liveFreeMiB"] for card in state["cards"]},
                }

            state = vramguard.wait_for_node(
                node,
                check=lambda state: seen(state) == expected,
                what="with each pod on its card and its usage",
                timeout=60,
            )
            assert seen(state) == expected
    finally:
        vramguard.prometheus.remove_target(address)
        control_plane.stop_process(agent)
        for pod in core_v1.list_namespaced_pod(namespace).items:
            core_v1.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        wait_until(
            "the agent's pods to go",
            lambda: not core_v1.list_namespaced_pod(namespace).items,
            timeout=30,
        )
        real_node.reconfigure_gpus(1, 8)


def _live_used(mib: int) -> Callable[[dict[str, Any]], bool]:
    return lambda state: bool(state["liveUsedMiB"] == mib)
