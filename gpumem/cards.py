"""Cards, not nodes: the fit rule on a node with several GPUs (pure).

A time-sliced pod runs on one card, and the NVIDIA device plugin, not the scheduler, picks
which one after the pod is bound (GetPreferredAllocation, by its allocation policy). So on a
node with several cards "some card has room" is not enough: the pod fits only when every card
the plugin could give it has room. Per node, in MiB:

- the *candidate cards*: under `distributed` (the plugin's default) the card with the fewest
  allocated replicas, under `packed` the most. vramguard knows a card's replicas from the pods
  assigned to it; each unassigned pod or reservation of the node may take a card before this
  pod does, so it widens the set (a card is a candidate while its replicas are within the
  fewest plus the number of such pods). Under `packed` every card is a candidate: vramguard
  cannot tell when the plugin's fullest card has no replica left.
- declared, on every candidate card c: declared(c) + unassigned(node) + reservations(node) +
  need <= capacity(c);
- live, on every candidate card c: free(c) - not yet in use(c) - not yet in use(unassigned)
  - reservations >= need + floor.

Unassigned pods count against every card of their node: exact on one card, conservative on
many, tight once the assignments are known. A node with one card has no CardStates here
(NodeState.cards is empty) and keeps the node-wide rule of gpumem.fit, which is this rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from gpumem.idle import idle_parts
from gpumem.nodes import Capacity, NodeFacts
from gpumem.policy import AllocationPolicy, ExtenderSettings
from gpumem.state import (
    CardSample,
    CardState,
    LiveView,
    NodeState,
    PodGroup,
    PodView,
    TelemetryReading,
)

# --- Building a node's cards -------------------------------------------------------------------


def build_cards(
    name: str,
    *,
    facts: NodeFacts | None,
    capacity: Capacity,
    reading: TelemetryReading | None,
    views: Sequence[PodView],
    settings: ExtenderSettings,
) -> tuple[tuple[CardState, ...], tuple[PodView, ...], PodGroup | None]:
    """The node's cards, its pods with their card where a source said which, and the pods no
    card is known to hold; or no cards (the pods as they are, None) when the node has one
    card or none.

    Cards come from per-GPU telemetry (by UUID); GPU Feature Discovery's count adds cards the
    telemetry does not show (their live figures unknown), and alone gives cards without UUID,
    to which no pod can be assigned (so every pod counts against every card)."""
    samples = _card_samples(name, reading)
    gfd = facts.gfd if facts is not None else None
    counted = gfd.count if gfd is not None and gfd.count is not None else 1
    count = max(len(samples), counted if gfd is not None else 0)
    if count <= 1:
        return (), tuple(views), None
    uuids = {sample.uuid for sample in samples}
    pod_cards = reading.pod_cards if reading is not None else {}
    assigned = tuple(
        dataclasses.replace(view, card=card)
        if (card := pod_cards.get((view.namespace, view.name))) in uuids
        else view
        for view in views
    )
    per_pod_usage = reading is not None and reading.pod_used is not None
    share = capacity.mib // count if capacity.mib is not None else None
    source = reading.source if reading is not None else ""
    indices = _indices(samples, count)
    cards = []
    for position in range(count):
        sample = samples[position] if position < len(samples) else None
        total = _card_total(sample, facts)
        uuid = sample.uuid if sample is not None else None
        index = indices[position]
        per_card = _card_capacity(share, facts, sample, settings.capacity_slack_mib)
        cards.append(
            CardState(
                position=position,
                index=index,
                uuid=uuid,
                capacity_mib=per_card,
                total_mib=total,
                live=_card_live(sample, total, source),
                group=pod_group(
                    (view for view in assigned if uuid is not None and view.card == uuid),
                    per_pod_usage,
                ),
            )
        )
    unassigned = pod_group((view for view in assigned if view.card is None), per_pod_usage)
    return tuple(cards), assigned, unassigned


def pod_group(pods: Iterable[PodView], per_pod_usage: bool) -> PodGroup:
    """Pods with their declared and not-yet-used sums (PodGroup)."""
    members = tuple(pods)
    base, warming = idle_parts(members, per_pod_usage)
    return PodGroup(members, sum(pod.declared_mib for pod in members), base, tuple(warming))


def _card_samples(name: str, reading: TelemetryReading | None) -> list[CardSample]:
    if reading is None:
        return []
    by_uuid: Mapping[str, CardSample] = reading.cards.get(name, {})
    return sorted(by_uuid.values(), key=_card_order)


def _card_order(sample: CardSample) -> tuple[int, str, str]:
    index = sample.index or ""
    return (int(index) if index.isdigit() else 1 << 30, index, sample.uuid)


def _card_capacity(
    share: int | None, facts: NodeFacts | None, sample: CardSample | None, slack_mib: int
) -> int | None:
    """A card's capacity: its share of the node's (advertised gpumem, else GFD memory x count
    minus the slack), but never more than one card's GFD memory minus the slack (the driver
    and CUDA contexts take that on every card, so a node-wide slack spread thin must not
    count) nor than the memory the card's own telemetry reports (cards of different sizes)."""
    if share is None:
        return None
    bounds = [share]
    if facts is not None and facts.gfd is not None:
        bounds.append(facts.gfd.memory_mib - slack_mib)
    reported = _reported_total(sample)
    if reported is not None:
        bounds.append(reported)
    return max(0, min(bounds))


def _indices(samples: Sequence[CardSample], count: int) -> list[str]:
    """The cards' index labels: the exporter's, else the lowest number no other card has (a
    card that GFD counts but the telemetry does not show must not pass for another)."""
    taken = {sample.index for sample in samples if sample.index}
    indices = []
    spare = (str(n) for n in range(count + len(taken)) if str(n) not in taken)
    for position in range(count):
        sample = samples[position] if position < len(samples) else None
        indices.append(sample.index if sample is not None and sample.index else next(spare))
    return indices


def _card_total(sample: CardSample | None, facts: NodeFacts | None) -> int | None:
    """A card's memory: what its telemetry reports, else its GFD memory."""
    reported = _reported_total(sample)
    if reported is not None:
        return reported
    if facts is not None and facts.gfd is not None:
        return facts.gfd.memory_mib
    return None


def _reported_total(sample: CardSample | None) -> int | None:
    if sample is None:
        return None
    if sample.total is not None:
        return sample.total.mib
    if sample.free is not None and sample.used is not None:
        return sample.free.mib + sample.used.mib
    return None


def _card_live(sample: CardSample | None, total_mib: int | None, source: str) -> LiveView | None:
    """A card's live free VRAM: reported free, else its total minus reported used."""
    if sample is None:
        return None
    used = sample.used.mib if sample.used is not None else None
    if sample.free is not None:
        return LiveView(sample.free.mib, used, sample.free.sampled_at, source)
    if sample.used is None or total_mib is None:
        return None
    sampled_at = sample.used.sampled_at
    if sample.total is not None:
        sampled_at = min(sampled_at, sample.total.sampled_at)
    return LiveView(max(0, total_mib - sample.used.mib), sample.used.mib, sampled_at, source)


# --- Which cards the device plugin may give the pod -------------------------------------------


def candidate_cards(
    cards: Sequence[CardState], ahead: int, policy: AllocationPolicy
) -> tuple[CardState, ...]:
    """The cards the device plugin could give the next pod, `ahead` being the pods of the
    node that may take a card before it (unassigned pods and reservations)."""
    if policy != "distributed" or not cards:
        return tuple(cards)
    fewest = min(card.replicas for card in cards)
    return tuple(card for card in cards if card.replicas <= fewest + ahead)


def node_candidates(node: NodeState, policy: AllocationPolicy, now: float) -> tuple[CardState, ...]:
    """The candidate cards for a new pod on `node`: each of its unassigned pods and active
    reservations may take a card before this pod does."""
    reservations = sum(1 for r in node.reservations if r.expires_at > now)
    return candidate_cards(node.cards, len(node.unassigned) + reservations, policy)
