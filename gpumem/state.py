"""The frozen state a request reads: telemetry as the store receives it, and per node the
pods, reservations and live figures the fit rule (gpumem.fit) judges.

Built by gpumem.nodestate, published by the extender's store (extender.store); nothing here
changes after it is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from gpumem.nodes import Capacity

PodKey = tuple[str, str]
NO_LABELS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Reservation:
    """VRAM promised at bind time to a pod the watch does not show on its node yet."""

    uid: str
    namespace: str
    name: str
    node: str
    mib: int
    expires_at: float


# --- Telemetry as the store receives it --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    mib: int
    sampled_at: float


@dataclass(frozen=True, slots=True)
class CardSample:
    """One card's telemetry: the series of one GPU (by UUID) on one node. Exporters that map
    pods repeat a card's series once per pod on it with the same value: one card, one sample,
    never a sum."""

    uuid: str
    # The exporter's GPU index label ("0", "1": dcgm-exporter's `gpu`), None when absent.
    index: str | None = None
    free: Sample | None = None
    used: Sample | None = None
    total: Sample | None = None


@dataclass(frozen=True)
class TelemetryReading:
    """One successful fetch. Node maps are keyed by Node name; pod_used is None when the source
    has no per-pod usage, which changes what counts as "not yet using" (see build_node_state).
    Node-level samples are the sums over a node's cards (each card counted once)."""

    source: str
    fetched_at: float
    free: Mapping[str, Sample] = field(default_factory=dict)
    used: Mapping[str, Sample] = field(default_factory=dict)
    total: Mapping[str, Sample] = field(default_factory=dict)
    pod_used: Mapping[PodKey, Sample] | None = None
    # False when the source reports only per-pod usage (pod-exporter): node usage is then the
    # sum of the node's pods.
    has_node_usage: bool = True
    # Per card, where the series carry a GPU UUID: Node name -> UUID -> its sample.
    cards: Mapping[str, Mapping[str, CardSample]] = field(default_factory=dict)
    # Which card a pod holds, where a source says so (an exporter's pod labels beside a GPU
    # UUID, the node agent's assignment series): (namespace, pod) -> GPU UUID.
    pod_cards: Mapping[PodKey, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TelemetryStatus:
    source: str
    fetched_at: float | None = None
    failing: bool = False
    error: str | None = None

    @property
    def fetched_once(self) -> bool:
        return self.fetched_at is not None


# --- The frozen state a request reads -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodView:
    uid: str
    namespace: str
    name: str
    declared_mib: int
    used_mib: int | None
    warm_until: float
    # The UUID of the card the pod holds, where known and one of its node's cards; None while
    # the pod is unassigned (bound, but no source has said which card the device plugin gave).
    card: str | None = None

    def warming(self, now: float) -> bool:
        return now < self.warm_until


@dataclass(frozen=True, slots=True)
class LiveView:
    free_mib: int
    used_mib: int | None
    sampled_at: float
    source: str

    def age(self, now: float) -> float:
        # A clock a little ahead on the Prometheus side must not read as negative age.
        return max(0.0, now - self.sampled_at)


@dataclass(frozen=True, slots=True)
class PodGroup:
    """Pods counted together by the card rule (a card's, or a node's unassigned ones), with
    their sums made once when the state is built: declared MiB, and how much of it is not in
    use yet (as NodeState's idle_base and idle_warming, for these pods)."""

    pods: tuple[PodView, ...] = ()
    declared_mib: int = 0
    idle_base_mib: int = 0
    idle_warming: tuple[tuple[float, int], ...] = ()

    def not_yet_using_mib(self, now: float) -> int:
        """The budgets of these pods not in use yet (gpumem.idle.idle_budget)."""
        return self.idle_base_mib + sum(mib for until, mib in self.idle_warming if now < until)


NO_PODS = PodGroup()


@dataclass(frozen=True, slots=True)
class CardState:
    """One card of a node with several: what the card rule (gpumem.cards) judges."""

    # 0-based position on the node (cards ordered by index label, then UUID).
    position: int
    # The exporter's GPU index, else the position, as text: "gpu 1" in reasons.
    index: str
    uuid: str | None
    # What the card holds in declared budgets (capacity), and its memory without slack.
    capacity_mib: int | None
    total_mib: int | None
    live: LiveView | None
    # The pods known to hold this card (PodView.card is this card's UUID).
    group: PodGroup = NO_PODS

    @property
    def pods(self) -> tuple[PodView, ...]:
        return self.group.pods

    @property
    def declared_mib(self) -> int:
        return self.group.declared_mib

    def not_yet_using_mib(self, now: float) -> int:
        return self.group.not_yet_using_mib(now)

    @property
    def replicas(self) -> int:
        """Time-sliced replicas allocated on the card, as far as vramguard knows: one per pod."""
        return len(self.pods)

    @property
    def label(self) -> str:
        """How reasons name the card: `gpu 1 (GPU-8f3c…)`."""
        if self.uuid is None:
            return f"gpu {self.index}"
        short = self.uuid if len(self.uuid) <= 8 else self.uuid[:8] + "…"
        return f"gpu {self.index} ({short})"


class QuickFit(NamedTuple):
    """What the fast path of /filter and /prioritize reads (gpumem.fit.quick_headroom), for a
    node that can take it: no reservations, a capacity and live telemetry. A tuple because
    /filter unpacks it for every candidate node."""

    room_mib: int  # capacity - declared
    free_mib: int  # live free
    sampled_at: float
    # The idle window (NodeState.idle_window): from, until, not-yet-using MiB within it.
    idle_from: float
    idle_until: float
    idle_mib: int


@dataclass(frozen=True, slots=True)
class NodeState:
    name: str
    known: bool
    capacity: Capacity
    declared_mib: int
    pods: tuple[PodView, ...]
    reservations: tuple[Reservation, ...]
    live: LiveView | None
    per_pod_usage: bool
    # "Not yet using" MiB: idle_base counts at any time, each (until, MiB) in idle_warming
    # only while now < until. /filter asks this of every candidate node, so the sum is also
    # kept for the window around the build time in which no warm-up starts or ends
    # (idle_window), which is where requests fall: the snapshot is rebuilt every refresh.
    idle_base_mib: int
    idle_warming: tuple[tuple[float, int], ...]
    idle_window: tuple[float, float, int]
    # What the fast path needs, when the node can take it (see QuickFit).
    quick: QuickFit | None
    # The Node's labels (empty for a node the watch has not shown): the pod-side selectors
    # of gpumem.explain read them; the fit rule does not.
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)
    # The node's cards when it has more than one (gpumem.cards): then the fit rule is about
    # the card the device plugin may give the pod. Empty on a one-card node, whose card is the
    # node: the node-wide rule is exact there.
    cards: tuple[CardState, ...] = ()
    # The fast path on a node with several cards: one QuickFit per candidate card, its room
    # the tighter of the card's (less the unassigned pods' budgets) and the node's, its idle
    # MiB the card's pods' and the unassigned pods'. None where the full rule must decide
    # (reservations, a candidate card without live figures).
    quick_cards: tuple[QuickFit, ...] | None = None
    # On a node with several cards, the pods whose card is not known.
    unassigned_group: PodGroup | None = None

    @property
    def cards_live(self) -> bool:
        """Whether some card has live figures of its own (per-GPU telemetry)."""
        return any(card.live is not None for card in self.cards)

    @property
    def unassigned(self) -> tuple[PodView, ...]:
        """The node's pods whose card is not known (all of them on a one-card node)."""
        if self.unassigned_group is not None:
            return self.unassigned_group.pods
        return tuple(pod for pod in self.pods if pod.card is None)

    def reserved_mib(self, now: float) -> int:
        if not self.reservations:
            return 0
        return sum(r.mib for r in self.reservations if r.expires_at > now)

    def not_yet_using_mib(self, now: float) -> int:
        """Declared VRAM of pods on the node that is not in use yet, so not missing from the
        live free figure either; reservations come on top (see gpumem.fit)."""
        start, end, cached = self.idle_window
        if start <= now < end:
            return cached
        return self.idle_base_mib + sum(mib for until, mib in self.idle_warming if now < until)

    def pod(self, uid: str) -> PodView | None:
        for pod in self.pods:
            if pod.uid == uid:
                return pod
        return None


@dataclass(frozen=True)
class Snapshot:
    nodes: Mapping[str, NodeState]
    telemetry: TelemetryStatus
    synced: bool
    version: int

    def node(self, name: str) -> NodeState | None:
        return self.nodes.get(name)


@dataclass(frozen=True, slots=True)
class BindablePod:
    """What /bind needs to know about the pod it binds."""

    namespace: str
    name: str
    need_mib: int
    bound_node: str | None
    # A pod that uses a GPU (or declares GPU memory): with need_mib 0 it has no budget and is
    # refused (gpumem.fit.no_budget_message); a pod that uses no GPU binds unchecked.
    is_gpu: bool = True
