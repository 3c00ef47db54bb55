"""The extender's cluster and telemetry state: a thread-safe store fed by the watches, the
telemetry poller and the binder, publishing the frozen Snapshot (gpumem.state) that requests
read.

Writers (watch threads, the telemetry thread, binds) update the store under one lock and rebuild
the NodeState of each node they touched right away (gpumem.nodestate), so a request never pays
for a rebuild. A request only copies the node map (a dict copy) when something changed, and only
if it can take the lock without waiting; otherwise it reads the previous snapshot, a few
milliseconds old. The fit check that matters, the one in /bind, reads the latest NodeState under
the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from extender.telemetry_parse import Rejection, plausible_reading
from gpumem.demand import ResourceNames
from gpumem.nodes import NodeFacts, node_facts
from gpumem.nodestate import build_node_state
from gpumem.objects import mapping
from gpumem.pods import PodRecord, bound_pod_key, pod_record
from gpumem.policy import Policy
from gpumem.state import (
    BindablePod,
    NodeState,
    PodKey,
    Reservation,
    Sample,
    Snapshot,
    TelemetryReading,
    TelemetryStatus,
)

# The logger these lines were always written under: the log lines stay as they were.
log = logging.getLogger(__name__)

# Demands remembered from /filter for pods the watch has not shown yet (see remember_demand).
REMEMBERED_DEMANDS = 4096


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

    def remember_demand(
        self, uid: str, namespace: str, name: str, need_mib: int, *, is_gpu: bool = False
    ) -> None:
        """Keep the demand /filter saw, in case /bind comes before the watch shows the pod."""
        if not uid:
            return
        with self._remembered_lock:
            self._remembered[uid] = BindablePod(namespace, name, need_mib, None, is_gpu)
            self._remembered.move_to_end(uid)
            while len(self._remembered) > REMEMBERED_DEMANDS:
                self._remembered.popitem(last=False)

    # -- pods --

    def replace_pods(self, raw_pods: Iterable[Mapping[str, Any]]) -> None:
        """Replace every pod with a fresh list (after a list or a relist)."""
        replacement = self.pod_replacement()
        for raw in raw_pods:
            replacement.add(raw)
        replacement.commit()

    def pod_replacement(self) -> PodReplacement:
        """A fresh list of pods read one at a time, swapped in whole by its `commit`."""
        return PodReplacement(self, self._policy.resource_names)

    def _replace_pods(self, records: dict[str, PodRecord], pod_nodes: dict[PodKey, str]) -> None:
        with self._lock:
            touched = set(self._pods_on_node) | set(self._reservations_on_node)
            self._pods = {}
            self._pods_on_node = {}
            self._declared_on_node = {}
            self._pod_nodes = pod_nodes
            for record in records.values():
                self._add_pod_locked(record)
            for uid, reservation in list(self._reservations.items()):
                listed = records.get(uid)
                if listed is None or listed.node is not None:
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
            if old is not None and old == record and uid not in self._reservations:
                # An update of nothing the rule reads (a status heartbeat, a label, the
                # kubelet's container states): the node's state stays as built.
                return
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

    def apply_telemetry(self, reading: TelemetryReading) -> list[Rejection]:
        """A successful fetch: every node's live figure changes, so rebuild them all here, in
        the telemetry thread, rather than in the next request. Samples no card can produce
        (extender.telemetry_parse.plausible_reading) are dropped first; returns them."""
        with self._lock:
            card_memory = {name: facts.gfd for name, facts in self._nodes.items()}
            reading, rejections = plausible_reading(reading, card_memory)
            self._reading = reading
            self._pods_used_by_node = self._attribute_pod_usage_locked(reading)
            self._telemetry = TelemetryStatus(reading.source, reading.fetched_at)
            self._rebuild_locked(self._all_names_locked())
        return rejections

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


class PodReplacement:
    """A pod list being read (ClusterStore.pod_replacement): `add` keeps what the store needs
    of each raw pod, so the raw list is never held whole (kube.reflector streams it a page at a
    time); `commit` swaps every pod in at once. One never committed (the list failed half way)
    changes nothing."""

    def __init__(self, store: ClusterStore, names: ResourceNames) -> None:
        self._store = store
        self._names = names
        self._records: dict[str, PodRecord] = {}
        self._pod_nodes: dict[PodKey, str] = {}

    def add(self, raw: Mapping[str, Any]) -> None:
        record = pod_record(raw, self._names)
        if record is not None:
            self._records[record.uid] = record
        bound = bound_pod_key(raw)
        if bound is not None:
            self._pod_nodes[bound[0]] = bound[1]

    def commit(self) -> None:
        self._store._replace_pods(self._records, self._pod_nodes)
