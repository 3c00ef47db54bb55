"""Cards, not nodes: the fit rule on nodes with several GPUs, end to end.

A time-sliced pod runs on one card, which the NVIDIA device plugin picks after the pod is bound
(`distributed`, its default: the card with the fewest allocated replicas). The fake exporter
reports each card on its own (dcgm's per-GPU series, by UUID) and, once a test publishes it,
which card each pod holds (the node agent's ``vramguard_pod_gpu_assignment`` series, which the
dcgm preset does not query, so the tests set ``telemetry.queries.podCard``; or dcgm-exporter's
pod labels on its per-GPU series).

- two cards with 6000 MiB free each: a 10000 MiB pod stays Pending, the reason naming the
  card; a 5000 MiB pod binds (the node-wide sum, 12000 MiB, would have taken both);
- a pod that fits only the emptier card stays Pending while the existing pods' cards are
  unknown (they count against every card) and binds once the assignments are published;
- a burst on 1-, 2- and 4-GPU nodes, the test playing the device plugin as each pod binds:
  no card over its capacity or its free VRAM, no pod Pending that the plugin's card would take;
- `vramguard watchdog --once` on a two-GPU node (node-agent preset: per-card and per-pod
  figures, and the assignments): it recycles the pod most over budget on the full card, not
  the one further over budget on the other card.
"""

from __future__ import annotations

import contextlib
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from .conftest import unique_name
from .harness import (
    SCHEDULER_NAME,
    ClusterBase,
    LocalVramguard,
    gpu_pod,
    mark_running,
    pod_events,
    unschedulable_message,
    wait_for_pod_event,
    wait_for_pod_node,
    wait_for_unschedulable_message,
)
from .harness.gpu_exporter import CardReading, card_uuid
from .harness.nodes import GPUMEM_RESOURCE
from .harness.pods import declared_gpumem, placement
from .harness.process import ProcessError
from .harness.tenants import Tenant, deploy
from .harness.vramguard import scheduler_queued
from .test_watchdog import FLOOR_MIB, decision_lines, pods_present, watchdog

pytestmark = pytest.mark.e2e

CARD_MIB = 16384  # GPU Feature Discovery's nvidia.com/gpu.memory per card
CARD_CAPACITY_MIB = 15360  # what each card holds in budgets: the node advertises count x this
DRIVER_MIB = 300
ASSIGNMENT_SERIES = "vramguard_pod_gpu_assignment"
# The e2e policy's dcgm preset, plus the node agent's assignment series.
WITH_ASSIGNMENTS: Mapping[str, Any] = {
    "preset": "dcgm",
    "queries": {"podCard": ASSIGNMENT_SERIES},
}
BIG_POD_POLICY: Mapping[str, Any] = {"maxGpumemMiB": CARD_CAPACITY_MIB}
GROUP_LABEL = "e2e.vramguard.io/group"
FITS_CONDITION = "vramguard.io/GPUMemoryFits"


def card_label(node: str, index: int) -> str:
    """How vramguard's reasons name a card: `gpu 1 (GPU-8f3c…)`."""
    return f"gpu {index} ({card_uuid(node, index)[:8]}…)"


@pytest.fixture
def make_cards_node(
    local_vramguard: LocalVramguard, make_gpu_node: Callable[..., Any]
) -> Callable[..., str]:
    """Factory: ``make_cards_node(cards, replicas_per_card=4, **spec)`` creates a fake node
    with ``len(cards)`` GPUs of CARD_MIB (GFD labels) advertising CARD_CAPACITY_MIB of gpumem
    per card, makes the exporter report ``cards``, and waits until the extender sees each
    card's free VRAM. Returns the node name."""

    def make(cards: Sequence[CardReading], *, replicas_per_card: int = 4, **spec: Any) -> str:
        node = make_gpu_node(
            gpu_count=len(cards),
            gpu_memory_mib=CARD_MIB,
            gpu_replicas=replicas_per_card * len(cards),
            gpumem_mib=CARD_CAPACITY_MIB * len(cards),
            **spec,
        )
        name = str(node.metadata.name)
        local_vramguard.exporter.set_cards(name, cards)
        wait_for_cards(local_vramguard, name, [card.free_mib for card in cards])
        return name

    return make


def wait_for_cards(
    vramguard: LocalVramguard,
    node: str,
    free_mib: Sequence[int],
    holders: Sequence[set[str]] | None = None,
    *,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Wait until the extender sees each card of ``node`` with ``free_mib[i]`` live free and,
    with ``holders``, card i held by exactly those pods (``namespace/name``); a one-card node
    has no card list, only its node's figures."""

    def check(state: dict[str, Any]) -> bool:
        if len(free_mib) == 1:
            return bool(state["liveFreeMiB"] == free_mib[0])
        cards = state.get("cards") or []
        if [card["liveFreeMiB"] for card in cards] != list(free_mib):
            return False
        return holders is None or [set(card["pods"]) for card in cards] == list(holders)

    what = f"with cards free {list(free_mib)}" + (f", held by {holders}" if holders else "")
    return vramguard.wait_for_node(node, check=check, what=what, timeout=timeout)


# --- 1. two cards with 6000 MiB free each -----------------------------------------------------


def test_pod_bigger_than_any_cards_free_vram_waits_with_the_cards_reason(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_cards_node: Callable[..., str],
) -> None:
    vramguard = local_vramguard
    used = CARD_MIB - 6000
    node = make_cards_node([CardReading(CARD_MIB, used), CardReading(CARD_MIB, used)])
    namespace = make_namespace("cards")
    vramguard.add_namespaces({namespace: dict(BIG_POD_POLICY)})
    floor = int(vramguard.policy["extender"]["floorMiB"])

    # The node-wide sum (12000 MiB free) would take it; neither card can.
    core_v1.create_namespaced_pod(
        namespace,
        gpu_pod("trainer", namespace=namespace, node_name_selector=node, gpumem_mib=10000),
    )
    message = wait_for_unschedulable_message(core_v1, namespace, "trainer", "vramguard:")
    reason = (
        r"gpu (?P<index>[01]) \((?P<uuid>GPU-[0-9a-f]{4})…\): live free 6000 MiB < need 10000 "
        rf"\+ floor {floor} MiB \(dcgm, \d+s old\)"
    )
    found = re.search(rf"vramguard: {reason}", message)
    assert found, message
    assert found["uuid"] == card_uuid(node, int(found["index"]))[:8], message
    event = wait_for_pod_event(core_v1, namespace, "trainer", "GPUMemoryUnavailable")
    assert re.search(rf"no node fits 10000 MiB of {GPUMEM_RESOURCE}: {node}: {reason}", event), (
        event
    )

    core_v1.create_namespaced_pod(
        namespace,
        gpu_pod("notebook", namespace=namespace, node_name_selector=node, gpumem_mib=5000),
    )
    assert wait_for_pod_node(core_v1, namespace, "notebook") == node
    assert not core_v1.read_namespaced_pod("trainer", namespace).spec.node_name


# --- 2. known assignments tighten the rule ----------------------------------------------------

# Card 0 holds two pods (10000 MiB), card 1 one (3000 MiB): the device plugin gives the next
# pod card 1, where 8000 MiB fit. While the three pods' cards are unknown each counts against
# both cards: 13000 + 8000 > 15360 on either.
HELD = {"arena": (5000, 0), "llm": (5000, 0), "nvr": (3000, 1)}
NEWCOMER_MIB = 8000


@pytest.mark.parametrize("source", ["assignment-series", "dcgm-pod-labels"])
def test_pod_fits_the_emptier_card_once_assignments_are_known(
    source: str,
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_cards_node: Callable[..., str],
) -> None:
    vramguard = local_vramguard
    exporter = vramguard.exporter
    idle = CardReading(CARD_MIB, DRIVER_MIB)
    node = make_cards_node([idle, idle])
    namespace = make_namespace("cards")
    floor = int(vramguard.policy["extender"]["floorMiB"])

    with _telemetry_for(vramguard, source):
        for pod, (mib, _) in HELD.items():
            core_v1.create_namespaced_pod(
                namespace,
                gpu_pod(pod, namespace=namespace, node_name_selector=node, gpumem_mib=mib),
            )
            assert wait_for_pod_node(core_v1, namespace, pod) == node
        # They run and hold their budgets on the cards the device plugin gave them, which
        # nobody has published yet.
        used = [DRIVER_MIB, DRIVER_MIB]
        for mib, index in HELD.values():
            used[index] += mib
        cards = [CardReading(CARD_MIB, mib) for mib in used]
        exporter.set_cards(node, cards)
        for pod in HELD:
            mark_running(core_v1, namespace, pod)
        free = [card.free_mib for card in cards]
        wait_for_cards(vramguard, node, free)
        assert free[1] >= NEWCOMER_MIB + floor > free[0], "only the emptier card fits"

        core_v1.create_namespaced_pod(
            namespace,
            gpu_pod(
                "incoming", namespace=namespace, node_name_selector=node, gpumem_mib=NEWCOMER_MIB
            ),
        )
        message = wait_for_unschedulable_message(core_v1, namespace, "incoming", "vramguard:")
        unassigned = sum(mib for mib, _ in HELD.values())
        assert re.search(
            rf"vramguard: gpu [01] \(GPU-[0-9a-f]{{4}}…\): declared 0 \+ unassigned {unassigned} "
            rf"\+ {NEWCOMER_MIB} > capacity {CARD_CAPACITY_MIB} MiB",
            message,
        ), message

        # The kubelet's PodResources, published: which card each pod holds.
        for pod, (_, index) in HELD.items():
            exporter.assign(namespace, pod, node, index)
        holders = [
            {f"{namespace}/{p}" for p, (_, i) in HELD.items() if i == index} for index in (0, 1)
        ]
        wait_for_cards(vramguard, node, free, holders)
        # Nothing else changed in the cluster: the extender's GPUMemoryFits condition requeues
        # the pod (see test_live_vram.py).
        assert wait_for_pod_node(core_v1, namespace, "incoming", timeout=90) == node
        conditions = core_v1.read_namespaced_pod("incoming", namespace).status.conditions
        fits = [c for c in conditions if c.type == FITS_CONDITION]
        assert [(c.status, c.reason) for c in fits] == [("True", "FitsNow")], conditions


@contextlib.contextmanager
def _telemetry_for(vramguard: LocalVramguard, source: str) -> Iterator[None]:
    """Where the assignments come from: the node agent's series (queries.podCard) or
    dcgm-exporter's pod labels (the e2e policy's dcgm preset as it is)."""
    if source == "assignment-series":
        with vramguard.extender_settings(telemetry=dict(WITH_ASSIGNMENTS)):
            yield
        return
    vramguard.exporter.set_dcgm_pod_labels(True)
    try:
        yield
    finally:
        vramguard.exporter.set_dcgm_pod_labels(False)


# --- 3. a burst, with the test as the device plugin ------------------------------------------

SEED = 20260311
PODS = 40
SIZES_MIB = (1024, 1500, 2000, 3000, 4000, 5000, 6144)
# Per node, what each card reports in use besides the burst's pods (driver, other tenants).
OUTSIDE_MIB: tuple[tuple[int, ...], ...] = ((4000,), (0, 5000), (0, 2000, 6000, 8000))
REPLICAS_PER_CARD = 16


@dataclass
class ModelCard:
    """One card as the test's device plugin sees it."""

    index: int
    outside_mib: int
    pods: dict[str, int] = field(default_factory=dict)  # pod name -> declared MiB
    lowest_free_mib: int = CARD_MIB

    @property
    def declared_mib(self) -> int:
        return sum(self.pods.values())

    @property
    def free_mib(self) -> int:
        """What the card has free once its pods hold their budgets (may go below 0 here)."""
        return CARD_MIB - self.outside_mib - self.declared_mib

    def reading(self) -> CardReading:
        return CardReading(CARD_MIB, min(CARD_MIB, self.outside_mib + self.declared_mib))


@dataclass
class ModelNode:
    name: str
    cards: list[ModelCard]

    @property
    def capacity_mib(self) -> int:
        return CARD_CAPACITY_MIB * len(self.cards)

    @property
    def declared_mib(self) -> int:
        return sum(card.declared_mib for card in self.cards)

    @property
    def replicas(self) -> int:
        return sum(len(card.pods) for card in self.cards)

    def plugin_card(self) -> ModelCard:
        """`distributed`: the card with the fewest allocated replicas, ties by index."""
        return min(self.cards, key=lambda card: (len(card.pods), card.index))

    def tied_cards(self) -> list[ModelCard]:
        """Every card the plugin may give the next pod: vramguard cannot know how it breaks
        a tie, so each of these has to fit."""
        fewest = min(len(card.pods) for card in self.cards)
        return [card for card in self.cards if len(card.pods) == fewest]

    def would_fit(self, need: int, floor: int) -> bool:
        return (
            self.replicas < REPLICAS_PER_CARD * len(self.cards)
            and self.declared_mib + need <= self.capacity_mib
            and all(
                card.declared_mib + need <= CARD_CAPACITY_MIB and card.free_mib >= need + floor
                for card in self.tied_cards()
            )
        )


class DevicePlugin:
    """NVIDIA's device plugin and kubelet, played by the test: watches the namespace's pods
    and, for each one bound (in the order the API server saw the binds), gives it the card
    `distributed` would, then publishes it as the node's agent would (assignment series, the
    card's used memory grown by the pod's budget) and, once the extender sees that, reports
    the pod running (from then on vramguard takes its budget to be in the card's used)."""

    def __init__(
        self,
        core: Any,
        vramguard: LocalVramguard,
        namespace: str,
        nodes: Mapping[str, ModelNode],
    ) -> None:
        self.core = core
        self.vramguard = vramguard
        self.namespace = namespace
        self.nodes = nodes
        self.lock = threading.Lock()
        self.placed: dict[str, tuple[str, int]] = {}  # pod -> (node, card index)
        self.errors: list[BaseException] = []
        self._bound: queue.Queue[Any] = queue.Queue()
        self._seen: set[str] = set()
        self._busy = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._guard(self._watch), name="plugin-watch", daemon=True),
            threading.Thread(target=self._guard(self._allocate), name="plugin-alloc", daemon=True),
        ]

    def __enter__(self) -> DevicePlugin:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    @property
    def idle(self) -> bool:
        """Every bind seen has been given its card and published."""
        return self._bound.empty() and not self._busy.is_set()

    def check(self) -> None:
        if self.errors:
            raise AssertionError(f"the test's device plugin failed: {self.errors[0]!r}")

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except BaseException as err:
                self.errors.append(err)

        return run

    def _watch(self) -> None:
        from kubernetes import watch  # noqa: PLC0415
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        new_watch = cast(Callable[[], Any], watch.Watch)
        version = None
        while not self._stop.is_set():
            if version is None:
                listed = self.core.list_namespaced_pod(self.namespace)
                for pod in listed.items:
                    self._saw(pod)
                version = listed.metadata.resource_version
            stream = new_watch()
            try:
                for event in stream.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    resource_version=version,
                    timeout_seconds=2,
                ):
                    self._saw(event["object"])
                    version = event["object"].metadata.resource_version
                    if self._stop.is_set():
                        break
            except ApiException as err:
                if err.status != 410:  # Gone: list again
                    raise
                version = None
            finally:
                stream.stop()

    def _saw(self, pod: Any) -> None:
        name = str(pod.metadata.name)
        if pod.spec.node_name and name not in self._seen:
            self._seen.add(name)
            self._bound.put(pod)

    def _allocate(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._bound.get(timeout=0.2)
            except queue.Empty:
                continue
            self._busy.set()
            try:
                batch = [first]
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(self._bound.get_nowait())
                self._publish(batch)
            finally:
                self._busy.clear()

    def _publish(self, batch: Sequence[Any]) -> None:
        exporter = self.vramguard.exporter
        touched: dict[str, ModelNode] = {}
        with self.lock:
            for pod in batch:
                name = str(pod.metadata.name)
                node = self.nodes[str(pod.spec.node_name)]
                card = node.plugin_card()
                card.pods[name] = declared_gpumem(pod)
                card.lowest_free_mib = min(card.lowest_free_mib, card.free_mib)
                self.placed[name] = (node.name, card.index)
                exporter.assign(self.namespace, name, node.name, card.index)
                touched[node.name] = node
            for node in touched.values():
                exporter.set_cards(node.name, [card.reading() for card in node.cards])
            expected = {
                node.name: (
                    [max(0, card.free_mib) for card in node.cards],
                    [{f"{self.namespace}/{p}" for p in card.pods} for card in node.cards],
                )
                for node in touched.values()
            }
        for node_name, (free, holders) in expected.items():
            wait_for_cards(
                self.vramguard,
                node_name,
                free,
                holders if len(free) > 1 else None,
                timeout=60,
            )
        for pod in batch:
            mark_running(self.core, self.namespace, pod.metadata.name)


def test_burst_on_nodes_of_one_two_and_four_cards_never_overcommits_a_card(
    core_v1: Any,
    control_plane: ClusterBase,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_cards_node: Callable[..., str],
) -> None:
    vramguard = local_vramguard
    rng = random.Random(SEED)
    group = unique_name("cards")
    floor = int(vramguard.policy["extender"]["floorMiB"])
    namespace = make_namespace("cards-burst")
    nodes: dict[str, ModelNode] = {}
    with vramguard.extender_settings(telemetry=dict(WITH_ASSIGNMENTS)):
        for outside in OUTSIDE_MIB:
            name = make_cards_node(
                [CardReading(CARD_MIB, mib) for mib in outside],
                replicas_per_card=REPLICAS_PER_CARD,
                labels={GROUP_LABEL: group},
            )
            nodes[name] = ModelNode(name, [ModelCard(i, mib) for i, mib in enumerate(outside)])
        sizes = {f"burst-{i:03d}": rng.choice(SIZES_MIB) for i in range(PODS)}
        room = sum(node.capacity_mib for node in nodes.values())
        assert sum(sizes.values()) > room, "more demand than room"
        refused_live = vramguard.extender_metric(
            "vramguard_extender_nodes_filtered_out_total", reason="live"
        )

        def create(name: str) -> None:
            pod = gpu_pod(name, namespace=namespace, gpumem_mib=sizes[name])
            pod.spec.node_selector = {GROUP_LABEL: group}
            core_v1.create_namespaced_pod(namespace, pod)

        with DevicePlugin(core_v1, vramguard, namespace, nodes) as plugin:
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(create, sizes))
            pods = wait_until_settled(core_v1, control_plane, plugin, namespace, sizes, floor)
            plugin.check()

        bound = [p for p in pods if p.spec.node_name]
        assert sorted(plugin.placed) == sorted(p.metadata.name for p in bound)
        cards = [(node, card) for node in nodes.values() for card in node.cards]
        declared_over = [
            f"{node.name}/gpu {card.index}: {card.declared_mib} > {CARD_CAPACITY_MIB}"
            for node, card in cards
            if card.declared_mib > CARD_CAPACITY_MIB
        ]
        live_over = [
            f"{node.name}/gpu {card.index}: free {card.lowest_free_mib}"
            for node, card in cards
            if card.lowest_free_mib < 0
        ]
        assert declared_over == [], declared_over
        assert live_over == [], live_over
        # The extender agrees with the plugin's books, card by card.
        for node in nodes.values():
            state = vramguard.extender_node(node.name) or {}
            if len(node.cards) == 1:
                assert state["declaredMiB"] == node.declared_mib, state
                continue
            seen = [(c["declaredMiB"], c["capacityMiB"], c["replicas"]) for c in state["cards"]]
            books = [(c.declared_mib, CARD_CAPACITY_MIB, len(c.pods)) for c in node.cards]
            assert seen == books, (node.name, state["cards"])
        assert all(node.replicas for node in nodes.values()), "a node got no pod at all"
        for pod in pods:
            if pod.spec.node_name:
                continue
            message = unschedulable_message(pod) or ""
            assert f"Insufficient {GPUMEM_RESOURCE}" in message or "vramguard:" in message, (
                pod.metadata.name,
                message,
            )
        assert len(bound) < PODS, "every pod bound: the burst did not fill the cards"
        assert (
            vramguard.extender_metric("vramguard_extender_nodes_filtered_out_total", reason="live")
            > refused_live
        ), "the live check never refused a node: the burst did not exercise it"


def wait_until_settled(  # noqa: PLR0917 (the burst's own pieces)
    core: Any,
    cluster: ClusterBase,
    plugin: DevicePlugin,
    namespace: str,
    sizes: Mapping[str, int],
    floor: int,
    *,
    timeout: float = 120.0,
    quiet: float = 3.0,
) -> list[Any]:
    """Wait until every pod is bound (and given its card) or refused, the
    vramguard-scheduler has nothing left to try, nothing changed for ``quiet`` seconds, and
    no Pending pod would fit the card the device plugin would give it on some node (a pod
    refused while the cards of others were unknown is retried once they are known: the
    extender's GPUMemoryFits nudge, or the scheduler's own retry on the pods' updates)."""
    deadline = time.monotonic() + timeout
    last: tuple[tuple[str, str], ...] = ()
    stable_since = time.monotonic()
    while True:
        plugin.check()
        pods, state = placement(core, namespace)
        if state != last:
            last, stable_since = state, time.monotonic()
        metrics = cluster.scheduler_metrics(SCHEDULER_NAME)
        queued = scheduler_queued(metrics)
        with plugin.lock:
            fitting = [
                (name, sizes[name], node.name)
                for name, where in state
                if where == "-"
                for node in plugin.nodes.values()
                if node.would_fit(sizes[name], floor)
            ]
        decided = len(pods) == len(sizes) and all(where for _, where in state)
        settled = decided and plugin.idle and not queued
        if settled and not fitting and time.monotonic() - stable_since >= quiet:
            return list(pods)
        if time.monotonic() >= deadline:
            undecided = [name for name, where in state if not where]
            raise ProcessError(
                f"not settled after {timeout:.0f}s: {queued:.0f} pod(s) queued, "
                f"{len(undecided)} neither bound nor refused: {undecided[:10]}; plugin idle: "
                f"{plugin.idle}; Pending but would fit the plugin's card (pod, MiB, node): "
                f"{fitting[:10]}"
            )
        time.sleep(0.5)


# --- 4. the watchdog, card by card -------------------------------------------------------------

# Card 0 holds arena alone (+3000 over its budget) and is nearly full; card 1 holds llm, the
# furthest over budget on the node (+4000), and nvr, with room to spare. The device plugin
# gives the next pod card 0 (one replica against two), where it does not fit live.
ON_FULL_CARD = Tenant("wd", "arena", 2000, 5000)
ON_OTHER_CARD = (Tenant("wd", "llm", 3000, 7000), Tenant("wd", "nvr", 2000, 1500))
FULL_CARD_FREE_MIB = 700  # below the watchdog's floor, above its emergency floor (512)


def test_watchdog_recycles_the_offender_on_the_full_card_only(
    control_plane: ClusterBase,
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_cards_node: Callable[..., str],
) -> None:
    vramguard = local_vramguard
    exporter = vramguard.exporter
    idle = CardReading(CARD_MIB, DRIVER_MIB)
    node = make_cards_node([idle, idle])
    namespace = make_namespace("wd")
    other_used = DRIVER_MIB + sum(t.uses_mib for t in ON_OTHER_CARD)
    cards = [
        CardReading(CARD_MIB, CARD_MIB - FULL_CARD_FREE_MIB),  # arena and work outside budgets
        CardReading(CARD_MIB, other_used),
    ]
    assert FULL_CARD_FREE_MIB < FLOOR_MIB <= cards[1].free_mib

    with vramguard.extender_settings(telemetry={"preset": "node-agent"}):
        placed = [(ON_FULL_CARD, 0), *((tenant, 1) for tenant in ON_OTHER_CARD)]
        for tenant, index in placed:
            deploy(core_v1, tenant, namespace, node)
            exporter.assign(namespace, tenant.pod, node, index)
            exporter.set_pod_usage(namespace, tenant.pod, tenant.uses_mib)
        exporter.set_cards(node, cards)
        holders = [{f"{namespace}/{t.pod}" for t, i in placed if i == index} for index in (0, 1)]
        wait_for_cards(vramguard, node, [card.free_mib for card in cards], holders)
        tenants = pods_present(core_v1, namespace)

        # A pod waits for card 0, the one the device plugin would give it.
        core_v1.create_namespaced_pod(
            namespace,
            gpu_pod("incoming", namespace=namespace, node_name_selector=node, gpumem_mib=1500),
        )
        message = wait_for_unschedulable_message(core_v1, namespace, "incoming", "vramguard:")
        assert f"{card_label(node, 0)}: live free {FULL_CARD_FREE_MIB} MiB < need 1500" in (
            message
        ), message

        enforce = watchdog(control_plane, vramguard, node, "--dry-run", "false")
        assert enforce.returncode == 0, enforce.stderr
        # Card 1 is fine (not logged); card 0 recycles its own offender.
        (line,) = decision_lines(enforce.stderr)
        victim = f"{namespace}/{ON_FULL_CARD.pod}"
        assert line.startswith(
            f"node={node} gpu=0 uuid={card_uuid(node, 0)} action=recycle reason=over-budget "
            f"dry_run=false free={FULL_CARD_FREE_MIB} floor={FLOOR_MIB} pod={victim} "
            f"uid={tenants[ON_FULL_CARD.pod]} used=5000 declared=2000 result=deleted "
        ), line
        present = pods_present(core_v1, namespace)
        assert ON_FULL_CARD.pod not in present
        assert {t.pod: present.get(t.pod) for t in ON_OTHER_CARD} == {
            t.pod: tenants[t.pod] for t in ON_OTHER_CARD
        }, "a pod on the other card was touched"
        (event,) = pod_events(core_v1, namespace, ON_FULL_CARD.pod, "VRAMWatchdogRecycled")
        assert f"{card_label(node, 0)}: live free {FULL_CARD_FREE_MIB} MiB < floor" in event, event
        assert f"{victim} uses 5000 MiB of 2000 declared (+3000)" in event, event
