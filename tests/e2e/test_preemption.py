"""Scenario 6, preemption: a tier-1 GPU pod that does not fit preempts tier-2 pods whose
budgets free enough VRAM, and never a tier-1 pod. kube-scheduler's own preemption dry run
finds the victims (it counts vramguard.io/gpumem: the node advertises it and the scheduler
config does not ignore it); the extender's preempt verb then vets them against live VRAM.

No kubelet runs here, so the test plays its part: a victim is deleted with a grace period
(the scheduler sets its deletionTimestamp); once it is terminating, the card reports its
memory freed and the test deletes it for good, as the kubelet would after stopping it."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from .harness import (
    LocalVramguard,
    finish_terminating,
    gpu_pod,
    mark_running,
    terminating_pods,
    wait_for_pod_node,
    wait_for_terminating,
    wait_for_unschedulable_message,
)
from .harness.pods import declared_on_node
from .harness.tenants import LONG_AGO

pytestmark = pytest.mark.e2e

CARD_MIB = 15360
CAPACITY_MIB = 14000
DRIVER_MIB = 300
GRACE_SECONDS = 30
PREEMPT_REQUESTS = "vramguard_extender_requests_total"


@dataclass(frozen=True)
class Workload:
    name: str
    tier: int
    mib: int
    uses_mib: int


class Card:
    """A node, its tier-1 and tier-2 namespaces, and what its card reports in use."""

    def __init__(
        self,
        core: Any,
        vramguard: LocalVramguard,
        make_namespace: Callable[..., str],
        make_vram_node: Callable[..., str],
    ) -> None:
        self.core = core
        self.vramguard = vramguard
        self.node = make_vram_node(gpumem_mib=CAPACITY_MIB, total_mib=CARD_MIB, used_mib=DRIVER_MIB)
        self.namespaces = {1: make_namespace("tier1"), 2: make_namespace("tier2")}
        vramguard.add_namespaces(
            {self.namespaces[1]: {"priorityClassName": "tier-1-gpu"}}
        )  # tier 2: the policy's default class
        self.used = DRIVER_MIB
        self.running: dict[str, Workload] = {}

    def run(self, workload: Workload) -> None:
        """Schedule it, report it running, and its memory in use."""
        namespace = self.namespaces[workload.tier]
        self.core.create_namespaced_pod(namespace, self.pod(workload))
        assert wait_for_pod_node(self.core, namespace, workload.name) == self.node
        mark_running(
            self.core,
            namespace,
            workload.name,
            started=datetime.datetime.now(datetime.UTC) - LONG_AGO,
        )
        self.running[workload.name] = workload
        self.report(self.used + workload.uses_mib)

    def pod(self, workload: Workload) -> Any:
        return gpu_pod(
            workload.name,
            namespace=self.namespaces[workload.tier],
            node_name_selector=self.node,
            gpumem_mib=workload.mib,
            termination_grace_period_seconds=GRACE_SECONDS,
        )

    def report(self, used: int) -> None:
        self.used = used
        self.vramguard.set_card(self.node, total_mib=CARD_MIB, used_mib=used)

    def class_of(self, name: str) -> str:
        workload = self.running[name]
        pod = self.core.read_namespaced_pod(name, self.namespaces[workload.tier])
        return str(pod.spec.priority_class_name)

    def terminating(self) -> list[Any]:
        return [p for ns in self.namespaces.values() for p in terminating_pods(self.core, ns)]

    def preempt_requests(self) -> float:
        return self.vramguard.extender_metric(PREEMPT_REQUESTS, verb="preempt")


@pytest.fixture
def card(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> Card:
    return Card(core_v1, local_vramguard, make_namespace, make_vram_node)


def test_tier1_pod_preempts_tier2_pods_only(card: Card) -> None:
    core = card.core
    for workload in (
        Workload("inference", 1, 5000, 4500),
        Workload("video", 1, 3000, 2500),
        Workload("batch-a", 2, 2000, 1800),
        Workload("batch-b", 2, 2000, 1800),
        Workload("batch-c", 2, 1500, 1300),
    ):
        card.run(workload)
    assert declared_on_node(core, card.node) == 13500
    assert card.class_of("inference") == "tier-1-gpu"
    assert card.class_of("batch-a") == "tier-2-gpu"
    asked = card.preempt_requests()

    # 13500 + 3000 > 14000: at least 2500 MiB of tier-2 budgets have to go.
    preemptor = Workload("stt", 1, 3000, 2800)
    namespace = card.namespaces[1]
    core.create_namespaced_pod(namespace, card.pod(preemptor))

    # The scheduler deletes its victims one API call each: wait for all of them, i.e. for
    # enough budget to be on its way out.
    victims = wait_for_terminating(
        core,
        card.namespaces[2],
        enough=lambda pods: sum(card.running[p.metadata.name].mib for p in pods) >= 2500,
    )
    assert card.preempt_requests() > asked, "the extender vetted the victims"
    assert not terminating_pods(core, namespace), "a tier-1 pod was chosen as a victim"
    freed = sum(card.running[v.metadata.name].mib for v in victims)
    assert {v.spec.priority_class_name for v in victims} == {"tier-2-gpu"}

    # The kubelet stops the victims: their memory is freed on the card, then they go.
    card.report(card.used - sum(card.running[v.metadata.name].uses_mib for v in victims))
    finish_terminating(core, victims)

    assert wait_for_pod_node(core, namespace, preemptor.name, timeout=60) == card.node
    for name in ("inference", "video"):
        pod = core.read_namespaced_pod(name, namespace)
        assert pod.metadata.deletion_timestamp is None
        assert pod.spec.node_name == card.node
    assert declared_on_node(core, card.node) == 13500 - freed + preemptor.mib
    assert declared_on_node(core, card.node) <= CAPACITY_MIB


def test_no_preemption_when_only_tier1_pods_would_free_enough(card: Card) -> None:
    core = card.core
    for workload in (
        Workload("inference", 1, 8000, 7000),
        Workload("video", 1, 5000, 4000),
        Workload("batch", 2, 1000, 900),
    ):
        card.run(workload)

    # 14000 + 2000 > 14000, and evicting the only tier-2 pod frees 1000: not enough.
    preemptor = Workload("stt", 1, 2000, 1800)
    core.create_namespaced_pod(card.namespaces[1], card.pod(preemptor))
    message = wait_for_unschedulable_message(
        core, card.namespaces[1], preemptor.name, "preemption:"
    )
    assert "Insufficient vramguard.io/gpumem" in message, message
    assert not card.terminating(), "something was evicted for nothing"
    assert declared_on_node(core, card.node) == 14000


def test_extender_vetoes_victims_that_free_too_little_live_vram(card: Card) -> None:
    core = card.core
    # The tier-1 tenant's arena has grown far beyond its 5000 MiB budget.
    card.run(Workload("llama", 1, 5000, 10204))
    card.run(Workload("batch", 2, 4000, 3500))
    asked = card.preempt_requests()

    # Budgets: 9000 + 6000 > 14000, and evicting "batch" would make them fit (11000).
    # Live: 1356 MiB free + what "batch" holds (its budget, 4000, as no per-pod usage is
    # reported) = 5356 < 6000 + floor 512: the extender refuses the node as a candidate.
    preemptor = Workload("big", 1, 6000, 5500)
    core.create_namespaced_pod(card.namespaces[1], card.pod(preemptor))
    message = wait_for_unschedulable_message(
        core, card.namespaces[1], preemptor.name, "preemption:"
    )
    assert card.preempt_requests() > asked, message
    assert not card.terminating(), "a victim was evicted though it frees too little"
    # One line per preemption: how many of the proposed nodes were refused, the first reason.
    assert card.vramguard.log_mentions(
        card.vramguard.extender_process,
        f"preemption for {card.namespaces[1]}/{preemptor.name} refused on 1 of 1 node(s) "
        f"({card.node}: ",
    )
