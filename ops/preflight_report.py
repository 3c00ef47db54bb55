"""What `vramguard preflight` answers, as pure data: yes, no or stale, with the arithmetic per
node, and the lines it prints.

The arithmetic is the live part of the fit rule, with its own parts (gpumem.fit): live free
minus the budgets not yet in use and the reservations (not_yet_in_use_mib), against need +
floor, where the sample is fresh (is_stale, staleness_text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gpumem.fit import is_stale, not_yet_in_use_mib, staleness_text
from gpumem.state import NodeState, Snapshot
from ops.common import CANNOT_TELL, NO, OK
from ops.table import paint

Answer = Literal["yes", "no", "stale"]
_EXIT_STATUS: dict[Answer, int] = {"yes": OK, "no": NO, "stale": CANNOT_TELL}


@dataclass(frozen=True, slots=True)
class PreflightLine:
    node: str
    need_mib: int
    floor_mib: int
    # None when the node has no fresh live telemetry (stale_reason says why).
    free_mib: int | None = None
    not_yet_using_mib: int = 0
    stale_reason: str | None = None

    @property
    def available_mib(self) -> int | None:
        return None if self.free_mib is None else self.free_mib - self.not_yet_using_mib

    @property
    def fits(self) -> bool | None:
        available = self.available_mib
        return None if available is None else available >= self.need_mib + self.floor_mib


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
) -> Preflight:
    """Yes when some node (or `node`) has need + floor MiB live free after the budgets not yet
    in use; stale when none does and some node had no fresh telemetry to tell (it might);
    no otherwise. Only nodes with a GPU memory capacity are candidates."""
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
    lines = tuple(preflight_line(s, need_mib, floor_mib, max_age_seconds, now) for s in candidates)
    if any(line.fits for line in lines):
        return Preflight("yes", lines)
    if any(line.fits is None for line in lines):
        return Preflight("stale", lines)
    return Preflight("no", lines)


def preflight_line(
    node: NodeState, need_mib: int, floor_mib: int, max_age_seconds: float, now: float
) -> PreflightLine:
    live = node.live
    if live is None:
        return PreflightLine(node.name, need_mib, floor_mib, stale_reason="no live telemetry")
    if is_stale(live.sampled_at, max_age_seconds, now):
        return PreflightLine(
            node.name,
            need_mib,
            floor_mib,
            stale_reason=f"live telemetry {staleness_text(live, max_age_seconds, now)}",
        )
    idle = not_yet_in_use_mib(node, now)
    return PreflightLine(node.name, need_mib, floor_mib, live.free_mib, idle)


def render_preflight_line(line: PreflightLine, colour: bool = False) -> str:
    want = f"need {line.need_mib} + floor {line.floor_mib}"
    if line.free_mib is None:
        return f"{line.node}: {line.stale_reason}; {want}: {paint('STALE', colour)}"
    verdict = "yes" if line.fits else paint("NO", colour)
    return (
        f"{line.node}: live free {line.free_mib} MiB - {line.not_yet_using_mib} not yet in use "
        f"= {line.available_mib} MiB; {want}: {verdict}"
    )


def render_preflight(result: Preflight, colour: bool = False) -> list[str]:
    lines = [render_preflight_line(line, colour) for line in result.lines]
    if result.problem is not None:
        lines.append(result.problem)
    return lines
