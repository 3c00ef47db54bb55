#!/usr/bin/env python3
"""``make demo``: vramguard on a real (local) Kubernetes control plane, told as a short story.

On a fresh machine it first builds what it needs (the Kubernetes binaries and the kubelet with
tests/e2e/controlplane/build.sh; Prometheus, containerd, runc and the CNI plugins with
tests/e2e/install-deps.sh), then starts etcd, kube-apiserver, kube-scheduler, Prometheus with
a fake GPU exporter, the vramguard webhook and extender and the vramguard-scheduler, all on
127.0.0.1, and one real node (a kubelet with containerd and a fake GPU device plugin) whose
pods really run. It plays three scenes, the first on the real node, and stops everything
again, on Ctrl-C too. Without root or containerd, scene 1 runs on an API-only node.

    .venv/bin/python -m tests.demo.demo [--hold]

Everything comes from the e2e harness (tests/e2e/harness); this file only tells the story.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.harness import (  # noqa: E402 - needs the repository root on sys.path
    BinariesUnavailable,
    ControlPlane,
    GPUNodeSpec,
    LocalVramguard,
    create_gpu_node,
    ensure_binaries,
    gpu_pod,
    kubernetes_version,
    mark_running,
    pod_events,
    unschedulable_message,
    wait_for_pod_event,
    wait_for_pod_node,
    wait_for_unschedulable_message,
)
from tests.e2e.harness.binaries import BUILD_SCRIPT  # noqa: E402
from tests.e2e.harness.gpu_exporter import CardReading  # noqa: E402
from tests.e2e.harness.nodes import advertise_gpumem  # noqa: E402
from tests.e2e.harness.pods import declared_gpumem  # noqa: E402
from tests.e2e.harness.realnode import RealNode, RealNodeUnavailable  # noqa: E402
from tests.e2e.harness.tenants import (  # noqa: E402
    SEEDS,
    Tenant,
    TenantCard,
    namespaces_for,
    policy_entries,
)

INSTALL_DEPS = REPO_ROOT / "tests" / "e2e" / "install-deps.sh"
CARD_MIB = 15360  # a 16 GiB Tesla T4 as GPU Feature Discovery reports it
ADVERTISED_MIB = 14000  # what the node advertises as vramguard.io/gpumem
DRIVER_MIB = 300  # the driver and CUDA contexts
ARENA_MIB = round(10.7e9 / (1 << 20))  # llama.cpp's arena with a big model: 10.7 GB
TWO_CARD_MIB = 16384  # scene 3: a node with two 16 GiB GPUs
TWO_CARD_CAPACITY_MIB = 15360  # what each of its cards holds in budgets (advertised: 2x this)


class Demo:
    """The story, told against a started cluster and vramguard."""

    def __init__(
        self, cluster: ControlPlane, vramguard: LocalVramguard, real_node: RealNode | None
    ) -> None:
        from kubernetes import client  # noqa: PLC0415

        self.core: Any = client.CoreV1Api(cluster.api_client())
        self.vramguard = vramguard
        self.real_node = real_node
        self.namespaces: dict[str, str] = {}
        self.shown_nodes: list[str] = []

    def play(self) -> None:
        self.seeds_cluster()
        self.live_vram()
        self.two_cards()

    # -- scene 1 -------------------------------------------------------------------------

    def seeds_cluster(self) -> None:
        title("Scene 1: the seeds' cluster")
        sixth = Tenant("portal-stt", "portal-stt-2", None, 1300)
        roles = [t.role for t in (*SEEDS, sixth)]
        self.namespaces = namespaces_for(roles, self.make_namespace)
        self.vramguard.add_namespaces(policy_entries(self.namespaces))
        real = self.real_node is not None
        node_a = self.add_real_node() if self.real_node is not None else self.add_node("node-a")
        where = (
            "a real kubelet runs its pods (containerd, runc; a fake NVIDIA device plugin hands "
            "out the GPU's time-sliced replicas)"
            if real
            else "no kubelet runs here, so the demo reports the pods running itself"
        )
        say(
            f"{node_a} has one Tesla T4 ({CARD_MIB} MiB) and advertises {ADVERTISED_MIB} MiB of "
            f"vramguard.io/gpumem; {where}. The five always-on tenants arrive one by one; each "
            "pod asks only for nvidia.com/gpu: 1, and the webhook adds its namespace's "
            "GPU-memory budget, priority class and scheduler."
        )
        card = TenantCard(
            self.core,
            self.vramguard,
            node_a,
            total_mib=CARD_MIB,
            driver_mib=DRIVER_MIB,
            real_node=real,
        )
        for tenant in SEEDS:
            card.run(tenant, self.namespaces[tenant.role])
        self.show()

        say(
            "A sixth GPU pod, portal-stt-2, wants 1500 MiB: 13300 + 1500 > 14000. It stays "
            "Pending. kube-scheduler's own event says only \"Insufficient "
            'vramguard.io/gpumem"; vramguard adds one with the numbers:'
        )
        self.create(sixth, node_a)
        namespace = self.namespaces[sixth.role]
        wait_for_unschedulable_message(self.core, namespace, sixth.pod, "Insufficient")
        wait_for_pod_event(self.core, namespace, sixth.pod, "GPUMemoryUnavailable")
        self.show()

    # -- scene 2 -------------------------------------------------------------------------

    def live_vram(self) -> None:
        title("Scene 2: what budgets cannot see")
        node_b = self.add_node("node-b")
        card = TenantCard(
            self.core, self.vramguard, node_b, total_mib=CARD_MIB, driver_mib=DRIVER_MIB
        )
        tenants = [
            Tenant("immich", "immich-ml-b", None, 2600),
            Tenant("llama-swap", "llama-swap-b", None, 4700),
            Tenant("frigate", "frigate-b", None, 1700),
        ]
        say("node-b, a second T4, runs a replica of immich-ml, llama-swap and frigate.")
        for tenant in tenants:
            card.run(tenant, self.namespaces[tenant.role])
        llama = tenants[1]
        card.set_usage(llama.pod, ARENA_MIB)
        say(
            f"llama-swap-b loads a bigger model: its arena grows to 10.7 GB ({ARENA_MIB} MiB), "
            "far above its 5000 MiB budget. The budgets look fine, the card is nearly full."
        )
        self.show(nodes_only=True)

        newcomer = Tenant("portal-stt", "portal-stt-b", None, 1300)
        say(
            "portal-stt-b (1500 MiB) fits the budgets (10000 + 1500 <= 14000) but not the "
            "VRAM that is actually free, so vramguard keeps it Pending:"
        )
        self.create(newcomer, node_b)
        wait_for_unschedulable_message(
            self.core, self.namespaces[newcomer.role], newcomer.pod, "vramguard:"
        )
        self.show()

        card.set_usage(llama.pod, llama.uses_mib)
        say(
            "The big model is unloaded and the arena shrinks back. vramguard sees portal-stt-b "
            "fits now and marks it (condition vramguard.io/GPUMemoryFits), which makes the "
            "scheduler try again: portal-stt-b is placed."
        )
        wait_for_pod_node(self.core, self.namespaces[newcomer.role], newcomer.pod, timeout=60)
        mark_running(self.core, self.namespaces[newcomer.role], newcomer.pod)
        card.set_usage(newcomer.pod, newcomer.uses_mib)
        self.show()

    # -- scene 3 -------------------------------------------------------------------------

    def two_cards(self) -> None:
        title("Scene 3: two GPUs are not one big one")
        node = "node-c"
        namespace = self.make_namespace("training")
        self.vramguard.add_namespaces({namespace: {"maxGpumemMiB": TWO_CARD_CAPACITY_MIB}})
        spec = GPUNodeSpec(
            name=node,
            gpu_count=2,
            gpu_replicas=8,
            gpu_memory_mib=TWO_CARD_MIB,
            gpumem_mib=2 * TWO_CARD_CAPACITY_MIB,
        )
        create_gpu_node(self.core, spec)
        busy = CardReading(TWO_CARD_MIB, TWO_CARD_MIB - 6000)
        self.set_cards(node, [busy, busy])
        say(
            f"node-c has two {TWO_CARD_MIB} MiB GPUs, each with 6000 MiB free: 12000 MiB in "
            "all. But a time-sliced pod runs on one card, and the device plugin picks which "
            "one only after the pod is placed, so vramguard checks every card it could get."
        )
        self.show_cards(node, namespace, [])

        say(
            "trainer asks for 10000 MiB. The node's sum would take it; neither card can, so it "
            "stays Pending, and the reason names the card:"
        )
        self.core.create_namespaced_pod(
            namespace,
            gpu_pod("trainer", namespace=namespace, node_name_selector=node, gpumem_mib=10000),
        )
        wait_for_unschedulable_message(self.core, namespace, "trainer", "vramguard:")
        wait_for_pod_event(self.core, namespace, "trainer", "GPUMemoryUnavailable")
        self.show_cards(node, namespace, ["trainer"])

        say(
            "notebook asks for 5000 MiB: it fits whichever card the device plugin gives it, and "
            "is placed. Until the node agent says which card it got, its budget counts against "
            "both (the unassigned row)."
        )
        self.core.create_namespaced_pod(
            namespace,
            gpu_pod("notebook", namespace=namespace, node_name_selector=node, gpumem_mib=5000),
        )
        wait_for_pod_node(self.core, namespace, "notebook")
        self.vramguard.wait_for_node(
            node, check=lambda state: state["declaredMiB"] == 5000, what="with 5000 MiB declared"
        )
        self.show_cards(node, namespace, ["trainer", "notebook"])

    def set_cards(self, node: str, cards: Sequence[CardReading]) -> None:
        """Make the exporter report the node's cards; wait until the extender sees them."""
        self.vramguard.exporter.set_cards(node, cards)
        free = [card.free_mib for card in cards]
        self.vramguard.wait_for_node(
            node,
            check=lambda state: [c["liveFreeMiB"] for c in state.get("cards") or []] == free,
            what=f"with cards free {free}",
        )

    def show_cards(self, node: str, namespace: str, pods: Sequence[str]) -> None:
        """The scene's pods in the order they came, then a row per card of the node (and the
        budgets of its pods whose card is not known yet)."""
        rows = sorted(
            (row for row in self.pod_rows([namespace]) if row[1] in pods),
            key=lambda row: pods.index(row[1]),
        )
        if rows:
            print_table(
                ["NAMESPACE", "POD", "CLASS", "GPUMEM", "PHASE", "NODE / PENDING REASON"],
                rows,
                numeric={3},
            )
        state = self.vramguard.extender_node(node) or {}
        cards = state.get("cards") or []
        table = [
            [
                f"{node}/gpu {card['index']}",
                mib(card.get("totalMiB")),
                mib(card.get("capacityMiB")),
                mib(card.get("declaredMiB")),
                mib(card.get("liveUsedMiB")),
                mib(card.get("liveFreeMiB")),
            ]
            for card in cards
        ]
        unassigned = int(state.get("declaredMiB") or 0) - sum(c["declaredMiB"] for c in cards)
        if unassigned:
            table.append([f"{node}/unassigned", "", "", mib(unassigned), "", ""])
        print_table(
            ["NODE / GPU", "CARD", "CAPACITY", "DECLARED", "LIVE USED", "FREE"],
            table,
            numeric={1, 2, 3, 4, 5},
        )

    # -- helpers -------------------------------------------------------------------------

    def make_namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def add_real_node(self) -> str:
        """The real node, advertising like node-a would, its card known to the extender."""
        assert self.real_node is not None
        name = self.real_node.name
        advertise_gpumem(self.core, name, ADVERTISED_MIB)
        self.vramguard.set_card(name, total_mib=CARD_MIB, used_mib=DRIVER_MIB)
        self.shown_nodes.append(name)
        return name

    def add_node(self, name: str) -> str:
        spec = GPUNodeSpec(
            name=name, gpu_replicas=8, gpu_memory_mib=CARD_MIB, gpumem_mib=ADVERTISED_MIB
        )
        create_gpu_node(self.core, spec)
        self.vramguard.set_card(name, total_mib=CARD_MIB, used_mib=DRIVER_MIB)
        self.shown_nodes.append(name)
        return name

    def create(self, tenant: Tenant, node: str) -> None:
        namespace = self.namespaces[tenant.role]
        self.core.create_namespaced_pod(
            namespace,
            gpu_pod(
                tenant.pod,
                namespace=namespace,
                node_name_selector=node,
                gpumem_mib=tenant.declared_mib,
            ),
        )

    def show(self, *, nodes_only: bool = False) -> None:
        if not nodes_only:
            print_table(
                ["NAMESPACE", "POD", "CLASS", "GPUMEM", "PHASE", "NODE / PENDING REASON"],
                list(self.pod_rows()),
                numeric={3},
            )
        print_table(
            ["NODE", "CARD", "CAPACITY", "DECLARED", "LIVE USED", "FREE"],
            [self.node_row(name) for name in self.shown_nodes],
            numeric={1, 2, 3, 4, 5},
        )

    def pod_rows(self, namespaces: Iterable[str] | None = None) -> Iterator[list[str]]:
        if namespaces is None:
            namespaces = self.namespaces.values()
        for namespace in dict.fromkeys(namespaces):
            pods = self.core.list_namespaced_pod(namespace).items
            for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
                where = pod.spec.node_name or "Pending: " + self.pending_reason(pod)
                yield [
                    namespace,
                    pod.metadata.name,
                    pod.spec.priority_class_name or "-",
                    f"{declared_gpumem(pod)} MiB",
                    phase(pod),
                    where,
                ]

    def pending_reason(self, pod: Any) -> str:
        """vramguard's explanation when it gave one (an Event), else kube-scheduler's."""
        explained = pod_events(
            self.core, pod.metadata.namespace, pod.metadata.name, "GPUMemoryUnavailable"
        )
        if explained:
            return short_reason(explained[-1])
        return short_reason(unschedulable_message(pod) or "not tried yet")

    def node_row(self, name: str) -> list[str]:
        state = self.vramguard.extender_node(name) or {}
        card = self.vramguard.exporter.nodes().get(name)
        return [
            name,
            mib(card.total_mib if card else None),
            mib(state.get("capacityMiB")),
            mib(state.get("declaredMiB")),
            mib(state.get("liveUsedMiB")),
            mib(state.get("liveFreeMiB")),
        ]


# -- presentation ------------------------------------------------------------------------------


def title(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def say(text: str, width: int = 88) -> None:
    words, line = text.split(), ""
    print()
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            print(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    print(line, flush=True)


def step(text: str) -> None:
    print(f"-> {text}", flush=True)


def phase(pod: Any) -> str:
    """The pod's phase as its kubelet reported it; "bound" for one placed on an API-only node
    that no kubelet (nor the demo) has reported on."""
    value = str(pod.status.phase or "-")
    return "bound" if value == "Pending" and pod.spec.node_name else value


def mib(value: object) -> str:
    return "-" if value is None else f"{value} MiB"


def short_reason(message: str) -> str:
    """The part of a scheduling message that matters for a pod pinned to one node."""
    found = re.search(r"no node fits \d+ MiB of [^:]+: [^:]+: (.*?)(?:; and \d+ more)?$", message)
    if found:  # vramguard's GPUMemoryUnavailable event
        return f"vramguard: {found.group(1)}"
    found = re.search(r"vramguard: .*?\)(?=\.|,|$)", message)
    if found:
        return found.group(0)
    found = re.search(r"Insufficient [A-Za-z0-9./-]*[A-Za-z0-9]", message)
    if found:
        return f"{found.group(0)} (kube-scheduler)"
    return message.split(". ", maxsplit=1)[0]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(cell).rjust(width) if index in numeric else str(cell).ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    print()
    print(line(headers))
    for row in rows:
        print(line(row))
    sys.stdout.flush()


# -- setting up and tearing down ---------------------------------------------------------------


def prepare() -> None:
    """Build the Kubernetes binaries (first run only, with build.sh's progress) and install
    Prometheus (install-deps.sh is idempotent)."""
    try:
        ensure_binaries(build=False)
    except BinariesUnavailable:
        step(f"building Kubernetes {kubernetes_version()} binaries (first run: several minutes)")
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdin=subprocess.DEVNULL)
    subprocess.run(["bash", str(INSTALL_DEPS)], check=True, stdin=subprocess.DEVNULL)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start_real_node(cluster: ControlPlane) -> RealNode | None:
    """The real node for scene 1, or None (and why) where this machine cannot run one."""
    step("starting a real node: containerd, a kubelet and a fake GPU device plugin")
    node = RealNode(cluster, name="node-a", gpus=1, replicas=8, gpu_memory_mib=CARD_MIB)
    cluster.add_cleanup(node.stop)
    try:
        node.start()
    except RealNodeUnavailable as err:
        step(f"no real node ({err}): scene 1 runs on an API-only node")
        return None
    return node


def run(hold: bool, say_done: Callable[[str], None] = step) -> int:
    cluster = ControlPlane(keep_logs=False)
    vramguard: LocalVramguard | None = None
    failed = False
    try:
        step(f"starting etcd, kube-apiserver and kube-scheduler {kubernetes_version()}")
        cluster.start()
        step("starting Prometheus + GPU exporter, vramguard webhook, extender and scheduler")
        vramguard = LocalVramguard(cluster)
        vramguard.start()
        Demo(cluster, vramguard, start_real_node(cluster)).play()
        if hold:
            say(
                f"Everything keeps running: KUBECONFIG={cluster.kubeconfig} kubectl get pods -A. "
                "Ctrl-C stops it all."
            )
            signal.pause()
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 130
    except Exception:
        failed = True
        raise
    finally:
        # A second Ctrl-C must not cut the shutdown short (children would then only go
        # with this process, by the harness's parent-death signal).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            say_done("stopping everything")
        finally:  # also when the output is gone (a closed pipe): the real node must go
            if vramguard is not None:
                vramguard.stop()
            kept = cluster.stop(keep_logs=failed)
        if kept is None:
            say_done("stopped; nothing left running")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--hold", action="store_true", help="keep everything running at the end until Ctrl-C"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        prepare()
    except KeyboardInterrupt:
        return 130
    except subprocess.CalledProcessError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    return run(args.hold)


if __name__ == "__main__":
    sys.exit(main())
