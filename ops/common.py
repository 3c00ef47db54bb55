"""What the operator commands share besides their readings: their exit statuses, argument
types that turn a bad value into argparse's one-line usage error, printing a report as a table
or JSON, one-line failures, and the signal handling of the looping commands (`advertise`,
`watchdog`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

# Exit statuses, one name per meaning; each command's docstring says which it uses.
OK = 0
# The command could not do its job: the cluster or the extender unreadable, no such pod, a
# patch or a delete refused.
FAILED = 1
# preflight: no node has the VRAM (1, so that a gate treats it like "cannot tell": do not start).
NO = 1
# A usage error: bad arguments (argparse exits 2 itself), an unreadable policy, a bad DRY_RUN.
USAGE_ERROR = 2
# status, explain: the answer is printed, but without the live figures (Prometheus unreadable).
PARTIAL = 2
# preflight, watchdog --once: nothing could be read, so no answer either way (there 1 means
# "no" and "a delete was refused").
CANNOT_TELL = 2

MAX_SECONDS = 86400.0
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """--policy and --kubeconfig, the same in every command."""
    add = parser.add_argument
    add("--policy", type=Path, help="policy file (default: the built-in policy defaults)")
    add("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster, else ~/.kube/config)")


def mib(text: str) -> int:
    """A whole, non-negative number of MiB."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MiB: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def seconds(*, positive: bool) -> Callable[[str], float]:
    """Seconds, at most a day; more than 0 when positive, else at least 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        low_ok = value > 0 if positive else value >= 0
        if not (low_ok and value <= MAX_SECONDS):
            least = "more than 0" if positive else "at least 0"
            raise argparse.ArgumentTypeError(
                f"must be {least} and at most {MAX_SECONDS:g} seconds: {text!r}"
            )
        return value

    return parse


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value


def parse_boolean(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off, any case. Raises ValueError."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(text)


def boolean(text: str) -> bool:
    try:
        return parse_boolean(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not true or false: {text!r}") from None


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (the kubelet stopping the pod) and Ctrl-C end a loop between passes."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)


def colour() -> bool:
    """Colour only on a terminal, and not when NO_COLOR is set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def fail(command: str, message: str, status: int) -> int:
    """One line on stderr, `vramguard COMMAND: message`, and the exit status to return."""
    print(f"vramguard {command}: {message}", file=sys.stderr, flush=True)
    return status


def show(output: str, as_json: Callable[[], Any], as_lines: Callable[[bool], list[str]]) -> None:
    """Print a report: `-o json`, or its lines (coloured only on a terminal)."""
    if output == "json":
        print(json.dumps(as_json(), indent=2), flush=True)
        return
    for line in as_lines(colour()):
        print(line)
    sys.stdout.flush()
