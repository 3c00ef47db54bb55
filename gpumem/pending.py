"""What scheduling reads of a pod: its GPU-memory need, its node selectors and where it stands.

`scheduling_pod` reads any raw pod, bound or not (`vramguard explain` reads every pod this way);
`pending_pod` keeps the ones to explain: the served scheduler's unschedulable GPU pods, which the
extender's explainer and the watchdog judge against every node (gpumem.explain.judge_nodes).
Pure: raw objects in, frozen data out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gpumem.affinity import admits
from gpumem.demand import DemandError, ResourceNames, read_demand
from gpumem.objects import mapping, sequence
from gpumem.pods import TERMINAL_PHASES


class Placeable(Protocol):
    """What judging a pod against nodes reads: its need and its node selectors."""

    @property
    def need_mib(self) -> int: ...

    def admits(self, node: str, labels: Mapping[str, str]) -> bool: ...


@dataclass(frozen=True, slots=True)
class PendingPod:
    """A GPU pod that the served scheduler tried and failed to place."""

    uid: str
    namespace: str
    name: str
    need_mib: int
    node_selector: Mapping[str, str] = field(default_factory=dict)
    # requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms, raw (ORed).
    affinity_terms: tuple[Mapping[str, Any], ...] = ()
    # The PodScheduled condition's message: a change means a new scheduling attempt ended
    # differently, worth a fresh look.
    scheduler_message: str = ""

    def admits(self, node: str, labels: Mapping[str, str]) -> bool:
        """Whether the pod's nodeSelector and required node affinity allow the node (taints
        and the rest are kube-scheduler's to explain)."""
        return admits(self.node_selector, self.affinity_terms, node, labels)


@dataclass(frozen=True, slots=True)
class SchedulingPod:
    """What scheduling reads of any pod, bound or not: its GPU-memory need, its node
    selectors and where it stands. `vramguard explain` reads every pod this way; the pod
    watch's `pending_pod` keeps the ones to explain with an Event."""

    uid: str
    namespace: str
    name: str
    # The declared GPU memory in MiB; 0 when the pod declares none (or demand_error).
    need_mib: int
    scheduler_name: str
    node_name: str | None = None
    phase: str = ""
    terminating: bool = False
    # A GPU pod (it asks for a GPU resource or for gpumem), whatever it declares.
    gpu: bool = False
    node_selector: Mapping[str, str] = field(default_factory=dict)
    affinity_terms: tuple[Mapping[str, Any], ...] = ()
    # The message of PodScheduled=False with reason Unschedulable; None when the pod does
    # not have that condition (bound, or not tried yet).
    scheduler_message: str | None = None
    # Why the declaration could not be read (a resource the policy reads differently).
    demand_error: str | None = None

    @property
    def terminated(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def admits(self, node: str, labels: Mapping[str, str]) -> bool:
        return admits(self.node_selector, self.affinity_terms, node, labels)

    def pending_for(self, scheduler_name: str) -> bool:
        """Whether the pod is one to explain: not bound, not terminating, of the served
        scheduler, PodScheduled=False with reason Unschedulable, declaring GPU memory.

        Only the served scheduler's pods: the extender's fit rule is part of that
        scheduler's decision and no other; a GPU pod of another scheduler (an excluded
        namespace on the default scheduler, say) was never judged by it, and an explanation
        in vramguard's name would be a claim about a decision vramguard did not take."""
        return (
            not self.node_name
            and self.scheduler_name == scheduler_name
            and bool(self.uid)
            and not self.terminating
            and not self.terminated
            and self.scheduler_message is not None
            and self.demand_error is None
            and self.need_mib > 0
        )

    def as_pending(self) -> PendingPod:
        return PendingPod(
            uid=self.uid,
            namespace=self.namespace,
            name=self.name,
            need_mib=self.need_mib,
            node_selector=self.node_selector,
            affinity_terms=self.affinity_terms,
            scheduler_message=self.scheduler_message or "",
        )


def scheduling_pod(raw: Mapping[str, Any], names: ResourceNames) -> SchedulingPod:
    """Read any raw pod (garbage reads as an unnamed pod that declares nothing)."""
    metadata = mapping(raw.get("metadata"))
    spec = mapping(raw.get("spec"))
    status = mapping(raw.get("status"))
    uid = metadata.get("uid")
    node_name = spec.get("nodeName")
    phase = status.get("phase")
    need, gpu, error = 0, False, None
    try:
        demand = read_demand(raw, names)
        need, gpu = demand.declared_mib or 0, demand.is_gpu
    except DemandError as err:
        # The apiserver validates quantities; the policy reads this one differently.
        gpu, error = True, str(err)
    selector = mapping(spec.get("nodeSelector"))
    return SchedulingPod(
        uid=uid if isinstance(uid, str) else "",
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        need_mib=need,
        scheduler_name=_scheduler_of(spec),
        node_name=node_name if isinstance(node_name, str) and node_name else None,
        phase=phase if isinstance(phase, str) else "",
        terminating=bool(metadata.get("deletionTimestamp")),
        gpu=gpu,
        node_selector={str(k): str(v) for k, v in selector.items()},
        affinity_terms=_required_terms(spec),
        scheduler_message=_unschedulable_message(status),
        demand_error=error,
    )


def pending_pod(
    raw: Mapping[str, Any], scheduler_name: str, names: ResourceNames
) -> PendingPod | None:
    """The pod as a PendingPod when it is one to explain (SchedulingPod.pending_for).

    The cheap tests come first: the pod watch calls this for every pod event, and reading the
    demand is the costly part.
    """
    spec = mapping(raw.get("spec"))
    if spec.get("nodeName") or _scheduler_of(spec) != scheduler_name:
        return None
    if _unschedulable_message(mapping(raw.get("status"))) is None:
        return None
    pod = scheduling_pod(raw, names)
    return pod.as_pending() if pod.pending_for(scheduler_name) else None


def _scheduler_of(spec: Mapping[str, Any]) -> str:
    name = spec.get("schedulerName")
    return name if isinstance(name, str) and name else "default-scheduler"


def _unschedulable_message(status: Mapping[str, Any]) -> str | None:
    for item in sequence(status.get("conditions")):
        condition = mapping(item)
        if condition.get("type") != "PodScheduled":
            continue
        if condition.get("status") == "False" and condition.get("reason") == "Unschedulable":
            return str(condition.get("message") or "")
        return None
    return None


def _required_terms(spec: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    node_affinity = mapping(mapping(spec.get("affinity")).get("nodeAffinity"))
    required = mapping(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    return tuple(mapping(t) for t in sequence(required.get("nodeSelectorTerms")))
