"""The benchmark suite's one table: each measurement beside its baseline from the same run.

Pure data and formatting, no timing: every bench module returns `Row`s, `tests.bench.run`
prints them with `markdown_table`. A row's ratio is value / baseline (the plain system: no
webhook, no extender, GET /healthz); where a floor was measured (the same protocol served by a
server that does nothing: tests.bench.floors) its floor ratio is value / floor, which is the
part of the cost that is vramguard's own. Its targets, when the issue sets them, are on the
value, the ratio or the floor ratio, and say whether they were met.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Comparison = Literal["<", "<=", ">="]
NOT_APPLICABLE = "\u2013"  # en dash
TIMES = "\u00d7"  # the multiplication sign of "1.25x"


@dataclass(frozen=True)
class Target:
    """`value < 2` (ms), `ratio <= 1.25`, `ratio >= 0.5`: what the issue asks for."""

    on: Literal["value", "ratio", "floor_ratio"]
    comparison: Comparison
    threshold: float

    def met(
        self, value: float | None, ratio: float | None, floor_ratio: float | None = None
    ) -> bool | None:
        """None when the number it is about was not measured."""
        measured = {"value": value, "ratio": ratio, "floor_ratio": floor_ratio}[self.on]
        if measured is None or math.isnan(measured):
            return None
        if self.comparison == "<":
            return measured < self.threshold
        if self.comparison == "<=":
            return measured <= self.threshold
        return measured >= self.threshold

    def describe(self, unit: str) -> str:
        if self.on == "ratio":
            return f"{self.comparison} {_number(self.threshold)}{TIMES}"
        if self.on == "floor_ratio":
            return f"{self.comparison} {_number(self.threshold)}{TIMES} floor"
        return f"{self.comparison} {_number(self.threshold)} {unit}".rstrip()


@dataclass(frozen=True)
class Row:
    """One line of the table: a measured value, its baseline and what the target says."""

    measure: str
    configuration: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""  # what the baseline is: "GET /healthz", "no webhook", "idle"
    target: Target | tuple[Target, ...] | None = None
    note: str = ""  # shown instead of a value when there is none (skipped, failed)
    floor: float | None = None  # the same protocol on a server that does nothing
    floor_label: str = ""  # "no-op webhook", "no-op extender"

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.baseline)

    @property
    def floor_ratio(self) -> float | None:
        return ratio(self.value, self.floor)

    @property
    def targets(self) -> tuple[Target, ...]:
        if self.target is None:
            return ()
        return self.target if isinstance(self.target, tuple) else (self.target,)

    @property
    def met(self) -> bool | None:
        """All targets met; None when there is none or one was not measured."""
        verdicts = [t.met(self.value, self.ratio, self.floor_ratio) for t in self.targets]
        if not verdicts or None in verdicts:
            return None
        return all(verdicts)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline; None when either is missing or the baseline is not positive."""
    if value is None or baseline is None or math.isnan(value) or math.isnan(baseline):
        return None
    if baseline <= 0:
        return None
    return value / baseline


def format_quantity(value: float | None, unit: str) -> str:
    """A number with a sensible precision for its size, and its unit."""
    if value is None or math.isnan(value):
        return NOT_APPLICABLE
    if math.isinf(value):
        return f"∞ {unit}".rstrip()
    return f"{_number(value)} {unit}".rstrip()


def format_ratio(value: float | None) -> str:
    if value is None:
        return NOT_APPLICABLE
    return f"{value:.2f}{TIMES}"


def format_met(met: bool | None, target: Target | tuple[Target, ...] | None) -> str:
    if not target:
        return NOT_APPLICABLE
    if met is None:
        return "not measured"
    return "yes" if met else "**no**"


HEADERS = (
    "measure",
    "configuration",
    "baseline",
    "floor",
    "value",
    "ratio",
    "vs floor",
    "target",
    "met?",
)


def cells(row: Row) -> tuple[str, ...]:
    baseline = format_quantity(row.baseline, row.unit)
    if row.baseline is not None and row.baseline_label:
        baseline = f"{baseline} ({row.baseline_label})"
    floor = format_quantity(row.floor, row.unit)
    if row.floor is not None and row.floor_label:
        floor = f"{floor} ({row.floor_label})"
    value = row.note if row.value is None and row.note else format_quantity(row.value, row.unit)
    targets = row.targets
    return (
        row.measure,
        row.configuration,
        baseline,
        floor,
        value,
        format_ratio(row.ratio),
        format_ratio(row.floor_ratio),
        ", ".join(t.describe(row.unit) for t in targets) if targets else NOT_APPLICABLE,
        format_met(row.met, row.target),
    )


def markdown_table(rows: Sequence[Row]) -> str:
    """A GitHub-flavoured Markdown table, columns padded so it also reads as plain text."""
    lines = [cells(row) for row in rows]
    columns = zip(HEADERS, *lines, strict=True)
    widths = [max(len(cell) for cell in column) for column in columns]

    def line(values: Sequence[str]) -> str:
        padded = (value.ljust(width) for value, width in zip(values, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(HEADERS), separator, *(line(values) for values in lines)])


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
