"""What the fit rule keeps of a Pod: its declared GPU memory, its node, and since when it may
hold VRAM (the start of its warm-up).

Pure readers of raw API Pods (camelCase dicts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gpumem.demand import DemandError, PodDemand, ResourceNames, read_demand
from gpumem.objects import mapping, sequence
from gpumem.state import PodKey

# The logger these lines were always written under: the log lines stay as they were.
log = logging.getLogger(__name__)

# Phases of a pod that has ended: it holds no VRAM and is not scheduled again.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


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
        warm_from=warm_from(status, demand),
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


def warm_from(status: Mapping[str, Any], demand: PodDemand) -> float | None:
    """When the pod's warm-up starts: the later of its scheduling and the start of its GPU
    containers; None while one of them is not running yet."""
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
