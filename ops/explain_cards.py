"""`vramguard explain` card by card, on a node with several GPUs: which cards the device plugin
could give the pod (the fit rule's candidate cards, gpumem.cards.candidate_cards), which one
refused it, and each card's figures, as rows under the node's verdict (ops.explain_report).

Pure. A one-card node has no card rows: its card is the node, and its verdict says it all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpumem import cards
from gpumem.explain import NodeVerdict
from gpumem.fit import Refusal, is_stale, staleness_text
from gpumem.pending import SchedulingPod
from gpumem.policy import ExtenderSettings
from gpumem.state import CardState, NodeState
from ops.table import MISSING

# The verdicts for which the fit rule chose candidate cards: a bound pod is not judged again
# on its node, and a node the pod's selectors rule out is not judged at all.
_JUDGED = ("fits", "refused")


@dataclass(frozen=True, slots=True)
class CardVerdictRow:
    """One card of the node, as the fit rule saw it for this pod."""

    index: str
    uuid: str | None
    replicas: int
    # Whether the device plugin could give the pod this card (so the rule checked it); None
    # where the pod was not judged on the node.
    candidate: bool | None
    # The card whose check refused the pod (the refusal names it).
    refused: bool
    # A bound pod's own card, where known.
    holds_pod: bool
    live_free_mib: int | None
    telemetry_age_seconds: float | None
    declared_mib: int
    capacity_mib: int | None


def card_rows(
    node: NodeState,
    verdict: NodeVerdict,
    pod: SchedulingPod,
    settings: ExtenderSettings,
    now: float,
) -> tuple[CardVerdictRow, ...]:
    if not node.cards:
        return ()
    judged = verdict.verdict in _JUDGED
    candidates = {
        card.position for card in cards.node_candidates(node, settings.allocation_policy, now)
    }
    refused = refused_card(node, verdict.refusal)
    held = node.pod(pod.uid)
    rows = []
    for card in node.cards:
        live = card.live
        rows.append(
            CardVerdictRow(
                index=card.index,
                uuid=card.uuid,
                replicas=card.replicas,
                candidate=card.position in candidates if judged else None,
                refused=refused is not None and refused.position == card.position,
                holds_pod=held is not None and card.uuid is not None and held.card == card.uuid,
                live_free_mib=None if live is None else live.free_mib,
                telemetry_age_seconds=None if live is None else round(live.age(now), 1),
                declared_mib=card.declared_mib,
                capacity_mib=card.capacity_mib,
            )
        )
    return tuple(rows)


def refused_card(node: NodeState, refusal: Refusal | None) -> CardState | None:
    """The card that refused (Refusal.card); None for a node-wide refusal, and for a pod
    bigger than every card (no one card refused it)."""
    if refusal is None or refusal.card is None or refusal.card >= len(node.cards):
        return None
    return node.cards[refusal.card]


def card_stale_reason(node: NodeState, settings: ExtenderSettings, now: float) -> str:
    """Why the live check was skipped on a node with several cards: which candidate cards had
    no fresh telemetry (the node's own figure is a sum over cards, never what was checked)."""
    parts = []
    missing = []
    for card in cards.node_candidates(node, settings.allocation_policy, now):
        live = card.live
        if live is None:
            missing.append(card.label)
        elif is_stale(live.sampled_at, settings.max_age_seconds, now):
            parts.append(
                f"live telemetry of {card.label} "
                f"{staleness_text(live, settings.max_age_seconds, now)}"
            )
    if missing:
        parts.insert(0, f"no live telemetry for {', '.join(missing)}")
    why = "; ".join(parts) or "no fresh live telemetry for the cards"
    return f"{why}: live check skipped (staleMode budget-only)"


def card_json(row: CardVerdictRow) -> dict[str, Any]:
    return {
        "index": row.index,
        "uuid": row.uuid,
        "replicas": row.replicas,
        "candidate": row.candidate,
        "refused": row.refused,
        "holdsPod": row.holds_pod,
        "liveFreeMiB": row.live_free_mib,
        "telemetryAgeSeconds": row.telemetry_age_seconds,
        "declaredMiB": row.declared_mib,
        "capacityMiB": row.capacity_mib,
    }


def card_cells(node: str, row: CardVerdictRow) -> tuple[str, ...]:
    """A card's row under its node's verdict, in the explain table's columns."""
    capacity = MISSING if row.capacity_mib is None else str(row.capacity_mib)
    return (
        f"{node}/gpu {row.index}",
        _card_verdict(row),
        MISSING if row.live_free_mib is None else f"{row.live_free_mib} MiB",
        f"{row.declared_mib}/{capacity} MiB",
        _card_reason(row),
    )


def _card_verdict(row: CardVerdictRow) -> str:
    if row.refused:
        return "refused"
    if row.candidate is not None:
        return "candidate" if row.candidate else "not candidate"
    return "bound" if row.holds_pod else MISSING


def _card_reason(row: CardVerdictRow) -> str:
    replicas = f"{row.replicas} replica{'s' if row.replicas != 1 else ''}"
    if row.refused:
        return f"{replicas}; the card that refused the pod (reason above)"
    if row.candidate is False:
        # Only `distributed` leaves cards out (gpumem.cards.candidate_cards).
        return f"{replicas}; the device plugin (distributed) gives the pod a card with fewer"
    if row.holds_pod:
        return f"{replicas}; the pod runs on this card"
    return replicas
