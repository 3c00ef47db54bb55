"""Prometheus metrics of the extender, in a registry of its own per app (tests build many).

Per card of a node with several (gpumem.state.NodeState.cards), labelled node, gpu (its
index) and uuid ("" for a card known only from GPU Feature Discovery):
`vramguard_extender_card_free_mib` (live free, for cards with live telemetry) and
`vramguard_extender_card_declared_mib` (the declared budgets of the pods assigned to it). A
one-card node has no card series: its card is the node.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extender.store import ClusterStore

PREFIX = "vramguard_extender_"
# The filter budget is a few milliseconds; the coarse defaults would hide it.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ExtenderMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "Extender requests by verb and result.",
            ["verb", "result"],
            registry=r,
        )
        self.latency = Histogram(
            PREFIX + "request_duration_seconds",
            "Extender request latency by verb.",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.nodes_filtered_out = Counter(
            PREFIX + "nodes_filtered_out_total",
            "Nodes refused to a GPU pod by /filter, by reason kind.",
            ["reason"],
            registry=r,
        )
        self.stale_decisions = Counter(
            PREFIX + "stale_telemetry_decisions_total",
            "Node decisions taken without fresh live telemetry: budget-only passes a node on "
            "declared budgets alone, deny refuses it.",
            ["mode"],
            registry=r,
        )
        self.telemetry_fetches = Counter(
            PREFIX + "telemetry_fetches_total",
            "Telemetry fetches by result.",
            ["result"],
            registry=r,
        )
        self.preemption_nodes_left_out = Counter(
            PREFIX + "preemption_nodes_left_out_total",
            "Candidate nodes /preempt left out of its answer, beyond the most it vets "
            "(VRAMGUARD_EXTENDER_MAX_PREEMPTION_NODES).",
            registry=r,
        )
        self.telemetry_rejected = Counter(
            PREFIX + "telemetry_rejected_samples_total",
            "Telemetry samples dropped as implausible: free or used above the card's total "
            "(reported, else GPU Feature Discovery memory), or negative; the node or card is "
            "then without live telemetry (staleMode decides).",
            ["figure", "reason"],
            registry=r,
        )
        self.telemetry_up = Gauge(
            PREFIX + "telemetry_up", "1 when the last telemetry fetch succeeded.", registry=r
        )
        self.telemetry_age = Gauge(
            PREFIX + "telemetry_age_seconds",
            "Seconds since the last successful telemetry fetch (-1: never).",
            registry=r,
        )
        self.telemetry_stale_nodes = Gauge(
            PREFIX + "telemetry_stale_nodes",
            "Nodes whose live telemetry is missing or older than maxAgeSeconds.",
            registry=r,
        )
        self.bind_results = Counter(
            PREFIX + "binds_total",
            "Binds by result: bound, refused (no longer fits), unknown-pod, api-error.",
            ["result"],
            registry=r,
        )
        self.reservations = Gauge(
            PREFIX + "reservations",
            "VRAM reservations of binds not yet seen by the watch.",
            registry=r,
        )
        self.watch_restarts = Counter(
            PREFIX + "watch_restarts_total",
            "Pod and node watch restarts: expired (410 Gone, relist), error (backoff), "
            "relist (requested).",
            ["resource", "reason"],
            registry=r,
        )
        self.floor = Gauge(
            PREFIX + "floor_mib",
            "Live headroom the extender keeps free on every card (policy extender.floorMiB), "
            "MiB; follows policy reloads.",
            registry=r,
        )
        self.explanations = Counter(
            PREFIX + "explanations_total",
            "GPUMemoryUnavailable events explaining Pending GPU pods, by result: created, "
            "refreshed (count bumped), duplicate (already written, by another replica or "
            "before a restart), dropped (queue full; tried again), error (API refused), nudged "
            "(a Pending pod fits now: its vramguard.io/GPUMemoryFits condition was set so "
            "kube-scheduler tries it again).",
            ["result"],
            registry=r,
        )
        self.unschedulable_pods = Gauge(
            PREFIX + "unschedulable_gpu_pods",
            "GPU pods of the served scheduler that the pod watch shows Pending as "
            "unschedulable (0 when explanations are off).",
            registry=r,
        )
        self.policy_reloads = Counter(
            PREFIX + "policy_reloads_total",
            "Policy file reloads by result.",
            ["result"],
            registry=r,
        )
        # One collector for the life of the registry: both apps (extender.app) observe the
        # same store, and registering its series twice would be refused.
        self.cards = CardGauges()
        r.register(self.cards)

    def observe_store(self, store: ClusterStore, clock: Callable[[], float] = time.time) -> None:
        """Gauges read from the store when scraped."""

        def telemetry_age() -> float:
            fetched_at = store.telemetry_status.fetched_at
            return -1.0 if fetched_at is None else max(0.0, clock() - fetched_at)

        def stale_nodes() -> float:
            now = clock()
            max_age = store.policy.extender.max_age_seconds
            return sum(
                1
                for node in store.snapshot().nodes.values()
                if node.known
                and node.capacity.mib is not None
                and (node.live is None or node.live.age(now) > max_age)
            )

        self.floor.set_function(lambda: store.policy.extender.floor_mib)
        self.telemetry_age.set_function(telemetry_age)
        self.telemetry_stale_nodes.set_function(stale_nodes)
        self.reservations.set_function(store.active_reservations)
        self.cards.observe(store)

    def render(self) -> bytes:
        return generate_latest(self.registry)


CARD_LABELS = ("node", "gpu", "uuid")


class CardGauges(Collector):
    """The per-card gauges, read from the store's snapshot when scraped: a labelled Gauge
    would keep the series of a card or node that has gone, a collector has only what is."""

    def __init__(self) -> None:
        self._store: ClusterStore | None = None

    def observe(self, store: ClusterStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry refuses a second collector of the same series.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        free, declared = self._families()
        if self._store is not None:
            for name, node in sorted(self._store.snapshot().nodes.items()):
                for card in node.cards:
                    labels = [name, card.index, card.uuid or ""]
                    declared.add_metric(labels, card.declared_mib)
                    if card.live is not None:
                        free.add_metric(labels, card.live.free_mib)
        yield free
        yield declared

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                PREFIX + "card_free_mib",
                "Live free VRAM of each card of a node with several, MiB (cards with live "
                "telemetry only).",
                labels=CARD_LABELS,
            ),
            GaugeMetricFamily(
                PREFIX + "card_declared_mib",
                "Declared GPU memory of the pods assigned to each card of a node with "
                "several, MiB (unassigned pods count on no card here).",
                labels=CARD_LABELS,
            ),
        )
