"""What `vramguard preflight` answers, as pure data: yes, no or stale, with the arithmetic per
node, and the lines it prints.

The arithmetic is the live part of the fit rule, with its own parts (gpumem.fit): live free
minus the budgets not yet in use and the reservations (not_yet_in_use_mib), against need +
floor, where the sample is fresh (is_stale, staleness_text).

A time-sliced job runs on one card, so on a node with several the arithmetic is per card (its
live free, minus the budgets not yet in use on it, of the node's unassigned pods, which may
be on it, and the reservations), and the node has room when some card has. The device plugin
picks the card after scheduling (by its allocation policy), so unless every card has room
vramguard cannot promise the job gets one that has: the node's line names the cards that do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gpumem.fit import is_stale, not_yet_in_use_mib, staleness_text
from gpumem.state import NO_PODS, CardState, LiveView, NodeState, Snapshot
from ops.common import CANNOT_TELL, NO, OK
from ops.table import paint

Answer = Literal["yes", "no", "stale"]
_EXIT_STATUS: dict[Answer, int] = {"yes": OK, "no": NO, "stale": CANNOT_TELL}


@dataclass(frozen=True, slots=True)
class PreflightLine:
    """A node's arithmetic, or on a node with several cards one card's (node is then the
    card's label, `gpu 1 (GPU-8f3c…)`) and the node's line holds its cards'."""

    node: str
    need_mib: int
    floor_mib: int
    # None when the node has no fresh live telemetry (stale_reason says why), and on a node
    # with several cards, whose figures are its cards'.
    free_mib: int | None = None
    not_yet_using_mib: int = 0
    stale_reason: str | None = None
    cards: tuple[PreflightLine, ...] = ()
    # The device plugin's allocation policy (cards only): the plugin, not vramguard, picks.
    allocation_policy: str = "distributed"

    @property
    def available_mib(self) -> int | None:
        return None if self.free_mib is None else self.free_mib - self.not_yet_using_mib

    @property
    def fits(self) -> bool | None:
        """Yes, no, or None when it cannot tell; with cards: yes when some card fits, None
        when none does and some card cannot tell."""
        if self.cards:
            answers = [card.fits for card in self.cards]
            if any(answers):
                return True
            return None if None in answers else False
        available = self.available_mib
        return None if available is None else available >= self.need_mib + self.floor_mib

    @property
    def fitting_cards(self) -> tuple[PreflightLine, ...]:
        return tuple(card for card in self.cards if card.fits)


@dataclass(frozen=True, slots=True)
class Preflight:
    answer: Answer
    lines: tuple[PreflightLine, ...]
    problem: str | None = None

    @property
    def exit_status(self) -> int:
        return _EXIT_STATUS[self.answer]


def preflight(
    snapshot: Snapshot,
    need_mib: int,
    *,
    floor_mib: int,
    max_age_seconds: float,
    now: float,
    node: str | None = None,
    allocation_policy: str = "distributed",
) -> Preflight:
    """Yes when some node (or `node`) has need + floor MiB live free after the budgets not yet
    in use (on a node with several cards: on some card); stale when none does and some node
    (card) had no fresh telemetry to tell (it might); no otherwise. Only nodes with a GPU
    memory capacity are candidates."""
    if node is not None:
        state = snapshot.nodes.get(node)
        if state is None or not state.known:
            return Preflight("no", (), f"node {node} not found")
        if state.capacity.mib is None:
            return Preflight("no", (), f"node {node} advertises no GPU memory")
        candidates: Sequence[NodeState] = [state]
    else:
        candidates = [
            s for _, s in sorted(snapshot.nodes.items()) if s.known and s.capacity.mib is not None
        ]
        if not candidates:
            return Preflight("no", (), "no node advertises GPU memory")
    lines = tuple(
        preflight_line(s, need_mib, floor_mib, max_age_seconds, now, allocation_policy)
        for s in candidates
    )
    if any(line.fits for line in lines):
        return Preflight("yes", lines)
    if any(line.fits is None for line in lines):
        return Preflight("stale", lines)
    return Preflight("no", lines)


def preflight_line(  # noqa: PLR0917 (the arithmetic's own figures)
    node: NodeState,
    need_mib: int,
    floor_mib: int,
    max_age_seconds: float,
    now: float,
    allocation_policy: str = "distributed",
) -> PreflightLine:
    if node.cards:
        cards = tuple(
            _card_line(node, card, need_mib, floor_mib, max_age_seconds, now) for card in node.cards
        )
        return PreflightLine(
            node.name, need_mib, floor_mib, cards=cards, allocation_policy=allocation_policy
        )
    live = node.live
    stale = _stale_reason(live, max_age_seconds, now)
    if live is None or stale is not None:
        return PreflightLine(node.name, need_mib, floor_mib, stale_reason=stale)
    idle = not_yet_in_use_mib(node, now)
    return PreflightLine(node.name, need_mib, floor_mib, live.free_mib, idle)


def _stale_reason(live: LiveView | None, max_age_seconds: float, now: float) -> str | None:
    if live is None:
        return "no live telemetry"
    if is_stale(live.sampled_at, max_age_seconds, now):
        return f"live telemetry {staleness_text(live, max_age_seconds, now)}"
    return None


def _card_line(  # noqa: PLR0917 (as preflight_line)
    node: NodeState,
    card: CardState,
    need_mib: int,
    floor_mib: int,
    max_age_seconds: float,
    now: float,
) -> PreflightLine:
    """The fit rule's live arithmetic on one card: the budgets not yet in use of the pods
    known to hold it and of the node's unassigned pods (any may be on it), and the node's
    reservations (any may land on it)."""
    live = card.live
    stale = _stale_reason(live, max_age_seconds, now)
    if live is None or stale is not None:
        return PreflightLine(card.label, need_mib, floor_mib, stale_reason=stale)
    unassigned = node.unassigned_group or NO_PODS
    idle = node.reserved_mib(now) + card.not_yet_using_mib(now) + unassigned.not_yet_using_mib(now)
    return PreflightLine(card.label, need_mib, floor_mib, live.free_mib, idle)


def render_preflight_line(line: PreflightLine, colour: bool = False) -> str:
    want = f"need {line.need_mib} + floor {line.floor_mib}"
    if line.cards:
        return f"{line.node}: {want} on one card: {_cards_verdict(line, colour)}"
    if line.free_mib is None:
        return f"{line.node}: {line.stale_reason}; {want}: {paint('STALE', colour)}"
    verdict = "yes" if line.fits else paint("NO", colour)
    return (
        f"{line.node}: live free {line.free_mib} MiB - {line.not_yet_using_mib} not yet in use "
        f"= {line.available_mib} MiB; {want}: {verdict}"
    )


def _cards_verdict(line: PreflightLine, colour: bool) -> str:
    """The answer of a node with several cards, and which cards have room."""
    fitting = line.fitting_cards
    count = len(line.cards)
    if len(fitting) == count:
        verdict = f"yes, on every card ({count})"
    elif fitting:
        names = ", ".join(_short(card.node) for card in fitting)
        verdict = (
            f"yes on {names} of {count} cards; the device plugin picks the card "
            f"({line.allocation_policy}), so vramguard cannot promise the job one of these"
        )
    elif line.fits is None:
        verdict = paint("STALE", colour) + " (no card has it; some cannot tell)"
    else:
        verdict = paint("NO", colour) + f" (none of {count} cards has it)"
    return verdict


def _short(label: str) -> str:
    """`gpu 1` of `gpu 1 (GPU-8f3c…)`: the card lines below spell out the UUID."""
    return label.split(" (", 1)[0]


def render_preflight(result: Preflight, colour: bool = False) -> list[str]:
    lines = []
    for line in result.lines:
        lines.append(render_preflight_line(line, colour))
        # A node with several cards: each card's arithmetic under the node's answer.
        lines += [f"  {render_preflight_line(card, colour)}" for card in line.cards]
    if result.problem is not None:
        lines.append(result.problem)
    return lines
