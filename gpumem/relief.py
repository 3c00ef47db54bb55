"""What evicting a set of victims gives back on their node, for the fit rule's preemption
check (gpumem.fit, extender.scheduling.vet_preemption). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gpumem.idle import idle_budget
from gpumem.state import NodeState


@dataclass(frozen=True, slots=True)
class CardRelief:
    """What evicting victims gives back on one card (or among the unassigned pods)."""

    declared_mib: int = 0
    not_yet_using_mib: int = 0
    live_freed_mib: int = 0


@dataclass(frozen=True, slots=True)
class Relief:
    """What evicting a set of victims gives back on their node."""

    declared_mib: int = 0
    not_yet_using_mib: int = 0
    live_freed_mib: int = 0
    victims: int = 0
    # On a node with several cards: per card UUID, None for the unassigned victims.
    by_card: Mapping[str | None, CardRelief] = field(default_factory=lambda: MappingProxyType({}))


NO_RELIEF = Relief()
NO_CARD_RELIEF = CardRelief()


def victims_relief(node: NodeState, uids: Sequence[str], now: float) -> Relief:
    """What evicting these pods gives back.

    Only pods the snapshot counts on the node count: a victim it does not know is either not a
    GPU pod or not counted in the node's figures yet, so removing it changes nothing here.
    Live VRAM freed is the victim's measured usage. Without per-pod usage, a victim past its
    warm-up is assumed to hold its budget (the best estimate there is), capped by the node's
    measured usage; a warming victim is assumed to hold nothing yet, which is the safe side.
    """
    by_uid = {pod.uid: pod for pod in node.pods}
    declared = idle = freed = estimated = victims = 0
    by_card: dict[str | None, CardRelief] = {}
    for uid in uids:
        pod = by_uid.get(uid)
        if pod is None:
            continue
        victims += 1
        declared += pod.declared_mib
        base, warming = idle_budget(pod, node.per_pod_usage)
        warm = pod.warming(now)
        pod_idle = base + (warming if warm else 0)
        idle += pod_idle
        # On a card, only measured usage counts as freed: the estimate below is node-wide.
        pod_freed = pod.used_mib or 0
        if pod.used_mib is not None:
            freed += pod.used_mib
        elif not node.per_pod_usage and not warm:
            estimated += pod.declared_mib
        if node.cards:
            was = by_card.get(pod.card, NO_CARD_RELIEF)
            by_card[pod.card] = CardRelief(
                was.declared_mib + pod.declared_mib,
                was.not_yet_using_mib + pod_idle,
                was.live_freed_mib + (pod_freed if pod.card is not None else 0),
            )
    live = node.live
    if live is not None and live.used_mib is not None:
        estimated = min(estimated, max(0, live.used_mib - freed))
    return Relief(declared, idle, freed + estimated, victims, MappingProxyType(by_card))
