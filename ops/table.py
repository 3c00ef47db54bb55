"""The aligned tables the operator commands print (`status`, `explain`), and their colour.

Pure text: whether to colour at all (a terminal, no NO_COLOR) is ops.common.colour's call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gpumem.quantity import format_mib

RED = "\033[31m"
RESET = "\033[0m"
MISSING = "-"


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    red_rows: Sequence[bool] = (),
    colour: bool = False,
) -> list[str]:
    """Columns left-aligned, two spaces apart; colour (ANSI red) is applied after padding so
    escape codes never shift a column."""
    body = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [_row(headers, widths)]
    for index, row in enumerate(body):
        line = _row(row, widths)
        lines.append(paint(line, colour and index < len(red_rows) and red_rows[index]))
    return lines


def paint(text: str, colour: bool) -> str:
    """The text in red when colour is on."""
    return f"{RED}{text}{RESET}" if colour else text


def mib_cell(value: int | None) -> str:
    """A MiB figure in the unit a person reads best (gpumem.quantity.format_mib), or -."""
    return MISSING if value is None else format_mib(value)


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
