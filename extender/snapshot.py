"""Cluster and telemetry state: a thread-safe store fed by the watches, the telemetry poller and
the binder, and the frozen Snapshot that requests read.

Writers (watch threads, the telemetry thread, binds) update the store under one lock and rebuild
the NodeState of each node they touched right away, so a request never pays for a rebuild. A
request only copies the node map (a dict copy) when something changed, and only if it can take
the lock without waiting; otherwise it reads the previous snapshot, a few milliseconds old. The
fit check that matters, the one in /bind, reads the latest NodeState under the lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

from gpumem.demand import DemandError, PodDemand, ResourceNames, read_demand
from gpumem.objects import mapping, sequence
from gpumem.policy import ExtenderSettings, Policy
from gpumem.quantity import QuantityError, parse_mib

log = logging.getLogger(__name__)

GFD_MEMORY_LABEL = "nvidia.com/gpu.memory"
GFD_COUNT_LABEL = "nvidia.com/gpu.count"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# Demands remembered from /filter for pods the watch has not shown yet (see remember_demand).
REMEMBERED_DEMANDS = 4096

PodKey = tuple[str, str]
NO_LABELS: Mapping[str, str] = MappingProxyType({})
CapacitySource = Literal["allocatable", "gfd", "none"]


# --- What the store keeps from API objects ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """The parts of a Node the fit rule reads. Capacity itself is computed when a NodeState is
    built, so a policy change (resource name, slack) applies without a relist."""

    name: str
    allocatable: Mapping[str, Any]
    gfd_memory_mib: int | None
    gfd_count: int | None
    # For explaining a Pending pod, whose nodeSelector or affinity may rule a node out.
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PodRecord:
    """A GPU pod as the store counts it."""

    uid: str
    namespace: str
    name: str
    node: str | None
    declared_mib: int
    # When the pod may have started allocating VRAM: the later of its scheduling and the start
    # of its GPU containers. None while a GPU container is not running (image pull, crash loop).
    warm_from: float | None

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Reservation:
    """VRAM promised at bind time to a pod the watch does not show on its node yet."""

    uid: str
    namespace: str
    name: str
    node: str
    mib: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class Capacity:
    mib: int | None
    source: CapacitySource
    # The card memory (GFD memory x count) without slack: the total that usage is subtracted
    # from when telemetry reports only usage.
    card_total_mib: int | None


# --- Telemetry as the store receives it --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    mib: int
    sampled_at: float


@dataclass(frozen=True)
class TelemetryReading:
    """One successful fetch. Node maps are keyed by Node name; pod_used is None when the source
    has no per-pod usage, which changes what counts as "not yet using" (see build_node_state)."""

    source: str
    fetched_at: float
    free: Mapping[str, Sample] = field(default_factory=dict)
    used: Mapping[str, Sample] = field(default_factory=dict)
    total: Mapping[str, Sample] = field(default_factory=dict)
    pod_used: Mapping[PodKey, Sample] | None = None
    # False when the source reports only per-pod usage (pod-exporter): node usage is then the
    # sum of the node's pods.
    has_node_usage: bool = True


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
    # What /filter's fast path needs, when the node can take it (see fit.filter_nodes):
    # (capacity - declared, live free, sampled at, idle window start, end, idle MiB).
    quick: tuple[int, int, float, float, float, int] | None
    # The Node's labels (empty for a node the watch has not shown): the pod-side selectors
    # of extender.explain read them; the fit rule does not.
    labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)

    def reserved_mib(self, now: float) -> int:
        if not self.reservations:
            return 0
        return sum(r.mib for r in self.reservations if r.expires_at > now)

    def not_yet_using_mib(self, now: float) -> int:
        """Declared VRAM of pods on the node that is not in use yet, so not missing from the
        live free figure either; reservations come on top (see fit)."""
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


# --- Pure readers of API objects -----------------------------------------------------------------


def node_facts(raw: Mapping[str, Any]) -> NodeFacts | None:
    """The facts of a raw Node, or None when it has no name."""
    metadata = mapping(raw.get("metadata"))
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return None
    labels = mapping(metadata.get("labels"))
    status = mapping(raw.get("status"))
    return NodeFacts(
        name=name,
        allocatable=dict(mapping(status.get("allocatable"))),
        gfd_memory_mib=_label_int(labels, GFD_MEMORY_LABEL),
        gfd_count=_label_int(labels, GFD_COUNT_LABEL),
        labels={str(k): str(v) for k, v in labels.items()},
    )


def node_capacity(facts: NodeFacts | None, gpumem_resource: str, slack_mib: int) -> Capacity:
    """C from the advertised extended resource, else from GPU Feature Discovery labels minus
    the slack (the driver and CUDA contexts take memory the label does not show)."""
    if facts is None:
        return Capacity(None, "none", None)
    card = None
    if facts.gfd_memory_mib is not None:
        card = facts.gfd_memory_mib * (facts.gfd_count if facts.gfd_count is not None else 1)
    if gpumem_resource in facts.allocatable:
        try:
            return Capacity(parse_mib(facts.allocatable[gpumem_resource]), "allocatable", card)
        except QuantityError:
            log.warning("node %s: unreadable allocatable %s", facts.name, gpumem_resource)
    if card is not None and card > 0:
        return Capacity(max(0, card - slack_mib), "gfd", card)
    return Capacity(None, "none", None)


def pod_record(raw: Mapping[str, Any], names: ResourceNames) -> PodRecord | None:
    """The record of a GPU pod that may hold VRAM, or None (no GPU demand, no uid, or done)."""
    metadata = mapping(raw.get("metadata"))
    status = mapping(raw.get("status"))
    uid = metadata.get("uid")
    if not isinstance(uid, str) or not uid or status.get("phase") in TERMINAL_PHASES:
        return None
    try:
        demand = read_demand(raw, names)
    except DemandError as err:
        # The apiserver validates quantities, so this is a resource name the policy reads
        # differently; count the pod as a GPU pod with no budget rather than lose it.
        log.warning("pod %s/%s: %s", metadata.get("namespace"), metadata.get("name"), err)
        demand = PodDemand(is_gpu=True, declared_mib=0, containers=())
    if not demand.is_gpu and not demand.declared_mib:
        return None
    node = mapping(raw.get("spec")).get("nodeName")
    return PodRecord(
        uid=uid,
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        node=node if isinstance(node, str) and node else None,
        declared_mib=demand.declared_mib or 0,
        warm_from=_warm_from(status, demand),
    )


def bound_pod_key(raw: Mapping[str, Any]) -> tuple[PodKey, str] | None:
    """(namespace, name) and node of any bound, non-terminal pod: telemetry that reports usage
    per pod attributes it to nodes through this, GPU pods or not."""
    metadata = mapping(raw.get("metadata"))
    node = mapping(raw.get("spec")).get("nodeName")
    if not isinstance(node, str) or not node:
        return None
    if mapping(raw.get("status")).get("phase") in TERMINAL_PHASES:
        return None
    return (str(metadata.get("namespace", "")), str(metadata.get("name", ""))), node


def _warm_from(status: Mapping[str, Any], demand: PodDemand) -> float | None:
    gpu_containers = {c.name for c in demand.containers if c.uses_gpu}
    scheduled = None
    for item in sequence(status.get("conditions")):
        condition = mapping(item)
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            scheduled = _timestamp(condition.get("lastTransitionTime"))
    started: list[float] = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for item in sequence(status.get(key)):
            container = mapping(item)
            if gpu_containers and container.get("name") not in gpu_containers:
                continue
            state = mapping(container.get("state"))
            if "terminated" in state:
                continue  # a finished container holds no VRAM, and will not start again
            start = _timestamp(mapping(state.get("running")).get("startedAt"))
            if start is None:
                return None  # waiting: image pull, crash loop; its allocation is still ahead
            started.append(start)
    if not started:
        return None
    return max(started + ([scheduled] if scheduled is not None else []))


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _label_int(labels: Mapping[str, Any], key: str) -> int | None:
    try:
        value = int(str(labels[key]))
    except (KeyError, ValueError):
        return None
    return value if value >= 0 else None


# --- Building a NodeState (pure) ------------------------------------------------------------


def build_node_state(
    name: str,
    *,
    facts: NodeFacts | None,
    pods: Iterable[PodRecord],
    declared_mib: int,
    reservations: Iterable[Reservation],
    reading: TelemetryReading | None,
    pods_used: Sample | None,
    policy: Policy,
    built_at: float,
) -> NodeState:
    settings = policy.extender
    capacity = node_capacity(facts, policy.gpumem_resource_name, settings.capacity_slack_mib)
    pod_used = reading.pod_used if reading is not None else None
    per_pod_usage = pod_used is not None
    views = []
    idle_base = 0
    idle_warming = []
    for record in pods:
        used = pod_used.get(record.key) if pod_used is not None else None
        view = PodView(
            uid=record.uid,
            namespace=record.namespace,
            name=record.name,
            declared_mib=record.declared_mib,
            used_mib=used.mib if used is not None else None,
            warm_until=(
                record.warm_from + settings.warmup_seconds
                if record.warm_from is not None
                else math.inf
            ),
        )
        views.append(view)
        base, warming = idle_budget(view, per_pod_usage)
        idle_base += base
        if warming:
            idle_warming.append((view.warm_until, warming))
    live = live_view(name, capacity, reading, pods_used, settings)
    reserved = tuple(reservations)
    window = _idle_window(idle_base, idle_warming, built_at)
    quick = None
    if facts is not None and capacity.mib is not None and live is not None and not reserved:
        quick = (capacity.mib - declared_mib, live.free_mib, live.sampled_at, *window)
    return NodeState(
        name=name,
        known=facts is not None,
        capacity=capacity,
        declared_mib=declared_mib,
        pods=tuple(views),
        reservations=reserved,
        live=live,
        per_pod_usage=per_pod_usage,
        idle_base_mib=idle_base,
        idle_warming=tuple(idle_warming),
        idle_window=window,
        quick=quick,
        labels=facts.labels if facts is not None else NO_LABELS,
    )


def _idle_window(
    base: int, warming: list[tuple[float, int]], at: float
) -> tuple[float, float, int]:
    """The span around `at` in which the set of warming pods does not change, and the
    not-yet-using MiB within it."""
    start = max((until for until, _ in warming if until <= at), default=-math.inf)
    end = min((until for until, _ in warming if until > at), default=math.inf)
    return start, end, base + sum(mib for until, mib in warming if until > at)


def idle_budget(pod: PodView, per_pod_usage: bool) -> tuple[int, int]:
    """How much of a pod's budget is not in use yet: (MiB at any time, MiB while warming up).

    A pod that has not allocated its VRAM yet does not show in the live free figure, so the
    live check subtracts its budget. With per-pod usage, a pod absent from it is not using
    anything at any age; a warming pod that is present counts only declared - used, because
    the part it already allocated is already missing from free VRAM and subtracting its whole
    budget would count that part twice. Without per-pod usage only the warm-up window says
    whether a pod has allocated yet.
    """
    if not per_pod_usage:
        return 0, pod.declared_mib
    if pod.used_mib is None:
        return pod.declared_mib, 0
    return 0, max(0, pod.declared_mib - pod.used_mib)


def live_view(
    name: str,
    capacity: Capacity,
    reading: TelemetryReading | None,
    pods_used: Sample | None,
    settings: ExtenderSettings,
) -> LiveView | None:
    """Live free VRAM of a node: reported free, else total - used, where total comes from a
    query, GFD labels or nodeTotalMiB, and used from a query or the sum of the node's pods."""
    if reading is None:
        return None
    used = reading.used.get(name) if reading.has_node_usage else pods_used
    free = reading.free.get(name)
    if free is not None:
        return LiveView(free.mib, used.mib if used else None, free.sampled_at, reading.source)
    total = reading.total.get(name)
    total_mib = total.mib if total is not None else capacity.card_total_mib
    if total_mib is None:
        total_mib = settings.telemetry.node_total_mib
    if total_mib is None or used is None:
        return None
    sampled_at = min(used.sampled_at, total.sampled_at) if total else used.sampled_at
    return LiveView(max(0, total_mib - used.mib), used.mib, sampled_at, reading.source)


# --- The store ----------------------------------------------------------------------------------


class ClusterStore:
    """Nodes, GPU pods, reservations and telemetry, updated from several threads."""

    def __init__(self, policy: Policy, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._policy = policy
        self._nodes: dict[str, NodeFacts] = {}
        self._pods: dict[str, PodRecord] = {}
        self._pods_on_node: dict[str, dict[str, PodRecord]] = {}
        self._declared_on_node: dict[str, int] = {}
        self._pod_nodes: dict[PodKey, str] = {}
        self._reservations: dict[str, Reservation] = {}
        self._reservations_on_node: dict[str, dict[str, Reservation]] = {}
        self._reading: TelemetryReading | None = None
        self._pods_used_by_node: dict[str, Sample] = {}
        self._telemetry = TelemetryStatus(source=policy.extender.telemetry.preset)
        self._synced: set[str] = set()
        self._states: dict[str, NodeState] = {}
        self._version = 0
        self._stale = False
        self._published = Snapshot(MappingProxyType({}), self._telemetry, False, 0)
        # Its own lock: /filter writes here from the event loop and must never wait for a
        # telemetry rebuild holding the main lock.
        self._remembered_lock = threading.Lock()
        self._remembered: OrderedDict[str, BindablePod] = OrderedDict()

    # -- reading --

    def snapshot(self) -> Snapshot:
        """The latest published state, never waiting for a writer (see the module docstring)."""
        if self._stale and self._lock.acquire(blocking=False):
            try:
                if self._stale:
                    self._publish_locked()
            finally:
                self._lock.release()
        return self._published

    def node_state(self, name: str) -> NodeState | None:
        """The current state of one node, waiting for writers: for /bind, in a worker thread."""
        with self._lock:
            return self._states.get(name)

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def synced(self) -> bool:
        return {"pods", "nodes"} <= self._synced

    @property
    def telemetry_status(self) -> TelemetryStatus:
        return self._telemetry

    def active_reservations(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for r in self._reservations.values() if r.expires_at > now)

    def pod_for_bind(self, uid: str) -> BindablePod | None:
        with self._lock:
            record = self._pods.get(uid)
        if record is not None:
            return BindablePod(record.namespace, record.name, record.declared_mib, record.node)
        with self._remembered_lock:
            return self._remembered.get(uid)

    def remember_demand(self, uid: str, namespace: str, name: str, need_mib: int) -> None:
        """Keep the demand /filter saw, in case /bind comes before the watch shows the pod."""
        if not uid:
            return
        with self._remembered_lock:
            self._remembered[uid] = BindablePod(namespace, name, need_mib, None)
            self._remembered.move_to_end(uid)
            while len(self._remembered) > REMEMBERED_DEMANDS:
                self._remembered.popitem(last=False)

    # -- pods --

    def replace_pods(self, raw_pods: Iterable[Mapping[str, Any]]) -> None:
        """Replace every pod with a fresh list (after a list or a relist)."""
        names = self._policy.resource_names
        records = {}
        pod_nodes = {}
        for raw in raw_pods:
            record = pod_record(raw, names)
            if record is not None:
                records[record.uid] = record
            bound = bound_pod_key(raw)
            if bound is not None:
                pod_nodes[bound[0]] = bound[1]
        with self._lock:
            touched = set(self._pods_on_node) | set(self._reservations_on_node)
            self._pods = {}
            self._pods_on_node = {}
            self._declared_on_node = {}
            self._pod_nodes = pod_nodes
            for record in records.values():
                self._add_pod_locked(record)
            for uid, reservation in list(self._reservations.items()):
                record = records.get(uid)
                if record is None or record.node is not None:
                    self._drop_reservation_locked(reservation)
            self._synced.add("pods")
            self._rebuild_locked(touched | set(self._pods_on_node))

    def apply_pod_event(self, event_type: str, raw: Mapping[str, Any]) -> None:
        """ADDED, MODIFIED or DELETED from the pod watch."""
        metadata = mapping(raw.get("metadata"))
        uid = metadata.get("uid")
        if not isinstance(uid, str):
            return
        key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        deleted = event_type == "DELETED"
        record = None if deleted else pod_record(raw, self._policy.resource_names)
        bound = None if deleted else bound_pod_key(raw)
        with self._lock:
            touched: set[str] = set()
            if bound is None:
                self._pod_nodes.pop(key, None)
            else:
                self._pod_nodes[key] = bound[1]
            old = self._pods.get(uid)
            if old is not None:
                self._remove_pod_locked(old)
                touched.add(old.node or "")
            if record is not None:
                self._add_pod_locked(record)
                touched.add(record.node or "")
            # The reservation ends once the pod is counted on its node, or will never be.
            reservation = self._reservations.get(uid)
            if reservation is not None and (record is None or record.node is not None):
                self._drop_reservation_locked(reservation)
                touched.add(reservation.node)
            touched.discard("")
            self._rebuild_locked(touched)

    def _add_pod_locked(self, record: PodRecord) -> None:
        self._pods[record.uid] = record
        if record.node is not None:
            self._pods_on_node.setdefault(record.node, {})[record.uid] = record
            self._declared_on_node[record.node] = (
                self._declared_on_node.get(record.node, 0) + record.declared_mib
            )

    def _remove_pod_locked(self, record: PodRecord) -> None:
        self._pods.pop(record.uid, None)
        if record.node is None:
            return
        on_node = self._pods_on_node.get(record.node, {})
        on_node.pop(record.uid, None)
        declared = self._declared_on_node.get(record.node, 0) - record.declared_mib
        if on_node:
            self._declared_on_node[record.node] = declared
        else:
            self._pods_on_node.pop(record.node, None)
            self._declared_on_node.pop(record.node, None)

    # -- nodes --

    def replace_nodes(self, raw_nodes: Iterable[Mapping[str, Any]]) -> None:
        facts = [f for f in (node_facts(raw) for raw in raw_nodes) if f is not None]
        with self._lock:
            touched = set(self._nodes)
            self._nodes = {f.name: f for f in facts}
            self._synced.add("nodes")
            self._rebuild_locked(touched | set(self._nodes))

    def apply_node_event(self, event_type: str, raw: Mapping[str, Any]) -> None:
        facts = node_facts(raw)
        if facts is None:
            return
        with self._lock:
            if event_type == "DELETED":
                self._nodes.pop(facts.name, None)
            else:
                if self._nodes.get(facts.name) == facts:
                    return  # status heartbeats change nothing the fit rule reads
                self._nodes[facts.name] = facts
            self._rebuild_locked({facts.name})

    # -- reservations --

    def reserve(self, reservation: Reservation) -> None:
        with self._lock:
            old = self._reservations.get(reservation.uid)
            if old is not None:
                self._drop_reservation_locked(old)
            self._reservations[reservation.uid] = reservation
            self._reservations_on_node.setdefault(reservation.node, {})[reservation.uid] = (
                reservation
            )
            self._rebuild_locked({reservation.node} | ({old.node} if old else set()))

    def release(self, uid: str) -> bool:
        """End a reservation (bind failed); False when it had already ended."""
        with self._lock:
            reservation = self._reservations.get(uid)
            if reservation is None:
                return False
            self._drop_reservation_locked(reservation)
            self._rebuild_locked({reservation.node})
            return True

    def expire_reservations(self) -> int:
        """Drop reservations past their TTL (a bind whose pod never showed up); the fit rule
        already ignores them, this only frees the memory and the gauge."""
        now = self._clock()
        with self._lock:
            expired = [r for r in self._reservations.values() if r.expires_at <= now]
            for reservation in expired:
                self._drop_reservation_locked(reservation)
            self._rebuild_locked({r.node for r in expired})
        for reservation in expired:
            log.info(
                "reservation of %s MiB for %s/%s on %s expired",
                reservation.mib,
                reservation.namespace,
                reservation.name,
                reservation.node,
            )
        return len(expired)

    def _drop_reservation_locked(self, reservation: Reservation) -> None:
        self._reservations.pop(reservation.uid, None)
        on_node = self._reservations_on_node.get(reservation.node, {})
        on_node.pop(reservation.uid, None)
        if not on_node:
            self._reservations_on_node.pop(reservation.node, None)

    # -- telemetry --

    def apply_telemetry(self, reading: TelemetryReading) -> None:
        """A successful fetch: every node's live figure changes, so rebuild them all here, in
        the telemetry thread, rather than in the next request."""
        with self._lock:
            self._reading = reading
            self._pods_used_by_node = self._attribute_pod_usage_locked(reading)
            self._telemetry = TelemetryStatus(reading.source, reading.fetched_at)
            self._rebuild_locked(self._all_names_locked())

    def telemetry_failed(self, source: str, error: str) -> None:
        """A failed fetch keeps the last reading: its samples age and turn stale after
        maxAgeSeconds, so one slow answer does not flip every node to the stale mode."""
        with self._lock:
            self._telemetry = replace(self._telemetry, source=source, failing=True, error=error)
            self._stale = True

    def _attribute_pod_usage_locked(self, reading: TelemetryReading) -> dict[str, Sample]:
        if reading.pod_used is None or reading.has_node_usage:
            return {}
        # A node with no GPU process reported uses nothing, as of this fetch.
        by_node = {name: Sample(0, reading.fetched_at) for name in self._nodes}
        for key, sample in reading.pod_used.items():
            node = self._pod_nodes.get(key)
            if node is None:
                continue
            total = by_node.get(node)
            if total is None:
                by_node[node] = sample
            else:
                by_node[node] = Sample(
                    total.mib + sample.mib, min(total.sampled_at, sample.sampled_at)
                )
        return by_node

    # -- policy --

    def set_policy(self, policy: Policy) -> bool:
        """Apply a reloaded policy; True when resource names changed, which changes which pods
        are GPU pods and so needs a relist of pods."""
        with self._lock:
            names_changed = policy.resource_names != self._policy.resource_names
            self._policy = policy
            if self._telemetry.source != policy.extender.telemetry.preset:
                self._telemetry = TelemetryStatus(policy.extender.telemetry.preset)
                self._reading = None
            self._rebuild_locked(self._all_names_locked())
        return names_changed

    # -- building --

    def _all_names_locked(self) -> set[str]:
        return set(self._nodes) | set(self._pods_on_node) | set(self._reservations_on_node)

    def _rebuild_locked(self, names: Iterable[str]) -> None:
        now = self._clock()
        for name in names:
            facts = self._nodes.get(name)
            pods = self._pods_on_node.get(name, {})
            reservations = self._reservations_on_node.get(name, {})
            if facts is None and not pods and not reservations:
                self._states.pop(name, None)
                continue
            self._states[name] = build_node_state(
                name,
                facts=facts,
                pods=pods.values(),
                declared_mib=self._declared_on_node.get(name, 0),
                reservations=reservations.values(),
                reading=self._reading,
                pods_used=self._pods_used_by_node.get(name),
                policy=self._policy,
                built_at=now,
            )
        self._stale = True

    def _publish_locked(self) -> None:
        self._version += 1
        self._published = Snapshot(
            MappingProxyType(dict(self._states)), self._telemetry, self.synced, self._version
        )
        self._stale = False
