"""`vramguard COMMAND ...`: the operator's command line.

Each command is a module of this package with `register(subcommands)`, which adds its parser
and sets `run` (a function of the parsed arguments returning the exit status). Add a command
by adding a module and listing it in COMMANDS.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ops import (
    advertise,
    explain,
    node_agent,
    preflight,
    recommend,
    status,
    unregister,
    watchdog,
)

COMMANDS = (advertise, explain, node_agent, preflight, recommend, status, unregister, watchdog)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vramguard",
        description="vramguard operator commands: keep pods sharing one GPU from running it "
        "out of memory.",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level of messages on stderr (default info)",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    status: int = args.run(args)
    return status


__all__ = ["build_parser", "main"]
