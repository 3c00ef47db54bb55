"""What a Node tells the fit rule: its GPU memory capacity, from the advertised extended
resource or from the GPU Feature Discovery labels.

The card memory from GFD labels is read here and nowhere else (`gfd_cards`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gpumem.objects import mapping
from gpumem.quantity import QuantityError, parse_mib

log = logging.getLogger(__name__)

GFD_MEMORY_LABEL = "nvidia.com/gpu.memory"
GFD_COUNT_LABEL = "nvidia.com/gpu.count"

CapacitySource = Literal["allocatable", "gfd", "none"]


@dataclass(frozen=True, slots=True)
class GfdCards:
    """A node's cards as GPU Feature Discovery labels them."""

    # nvidia.com/gpu.memory: MiB per card, a non-negative integer.
    memory_mib: int
    # nvidia.com/gpu.count; None where the label is absent (GFD's one card), 0 where it is no
    # non-negative integer: vramguard does not guess how many cards a node has, so neither the
    # fit rule nor the advertiser counts any GFD memory on such a node.
    count: int | None

    @property
    def total_mib(self) -> int:
        """The memory of all cards; a node without a count label has one card."""
        return self.memory_mib * (self.count if self.count is not None else 1)


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """The parts of a Node the fit rule reads. Capacity itself is computed when a NodeState is
    built, so a policy change (resource name, slack) applies without a relist."""

    name: str
    allocatable: Mapping[str, Any]
    gfd: GfdCards | None
    # For explaining a Pending pod, whose nodeSelector or affinity may rule a node out.
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Capacity:
    mib: int | None
    source: CapacitySource
    # The card memory (GFD memory x count) without slack: the total that usage is subtracted
    # from when telemetry reports only usage.
    card_total_mib: int | None


def gfd_cards(labels: Mapping[str, Any]) -> GfdCards | None:
    """The cards GPU Feature Discovery labels on a node, or None without a readable
    nvidia.com/gpu.memory label."""
    memory = _label_int(labels, GFD_MEMORY_LABEL)
    if memory is None:
        return None
    if GFD_COUNT_LABEL not in labels:
        return GfdCards(memory, None)
    count = _label_int(labels, GFD_COUNT_LABEL)
    return GfdCards(memory, 0 if count is None else count)


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
        gfd=gfd_cards(labels),
        labels={str(k): str(v) for k, v in labels.items()},
    )


def node_capacity(facts: NodeFacts | None, gpumem_resource: str, slack_mib: int) -> Capacity:
    """C from the advertised extended resource, else from GPU Feature Discovery labels minus
    the slack (the driver and CUDA contexts take memory the label does not show)."""
    if facts is None:
        return Capacity(None, "none", None)
    card = facts.gfd.total_mib if facts.gfd is not None else None
    if gpumem_resource in facts.allocatable:
        try:
            return Capacity(parse_mib(facts.allocatable[gpumem_resource]), "allocatable", card)
        except QuantityError:
            log.warning("node %s: unreadable allocatable %s", facts.name, gpumem_resource)
    if card is not None and card > 0:
        return Capacity(max(0, card - slack_mib), "gfd", card)
    return Capacity(None, "none", None)


def _label_int(labels: Mapping[str, Any], key: str) -> int | None:
    try:
        value = int(str(labels[key]))
    except (KeyError, ValueError):
        return None
    return value if value >= 0 else None
