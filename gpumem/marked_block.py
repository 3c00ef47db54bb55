"""A generated block inside a hand-written YAML file, between a BEGIN and an END marker line.

The manifests keep their comments and layout by hand, while the parts that must follow the
policy (the webhook's matchConditions, the ephemeral-container policy's CEL) are rendered by
code: the renderer owns only the lines between its markers, so a test can re-render a file and
compare it byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable


def holds_marked(text: str, begin_marker: str) -> bool:
    """Whether `text` has a `begin_marker` line (the CLI renders whichever blocks a file
    holds)."""
    return any(line.lstrip().startswith(begin_marker) for line in text.splitlines())


def replace_marked(
    text: str,
    begin_marker: str,
    end_marker: str,
    render: Callable[[int], str],
    error: type[ValueError],
) -> str:
    """`text` with the lines from the one `begin_marker` line to the one `end_marker` line
    (both included) replaced by `render(indent)`, indent being the BEGIN line's; everything
    else is kept byte for byte. Anything but exactly one BEGIN followed by one END raises
    `error`."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.lstrip().startswith(begin_marker)]
    ends = [i for i, line in enumerate(lines) if line.lstrip().startswith(end_marker)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise error(f"expected one {begin_marker!r} line followed by one {end_marker!r} line")
    begin, end = begins[0], ends[0]
    indent = len(lines[begin]) - len(lines[begin].lstrip())
    return "".join([*lines[:begin], render(indent), *lines[end + 1 :]])
