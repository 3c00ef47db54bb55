"""ops.table: aligned columns."""

from __future__ import annotations

import pytest

from ops.table import render_table


@pytest.mark.parametrize(
    ("headers", "rows", "expected"),
    [
        (("A", "B"), [], ["A  B"]),
        (("A", "LONG"), [("xyz", "1")], ["A    LONG", "xyz  1"]),
    ],
)
def test_render_table(
    headers: tuple[str, ...], rows: list[tuple[str, ...]], expected: list[str]
) -> None:
    assert render_table(headers, rows) == expected
