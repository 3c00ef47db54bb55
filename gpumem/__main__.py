"""`python -m gpumem schema` prints the policy file's JSON Schema;
`python -m gpumem check FILE` validates a policy file;
`python -m gpumem match-conditions` renders the webhook's CEL matchConditions from a policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from gpumem.match_conditions import (
    MatchConditionsError,
    match_conditions,
    replace_block,
    strategic_merge_patch,
)
from gpumem.policy import PolicyError, load_policy, policy_schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpumem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("schema", help="print the policy JSON Schema")
    check = commands.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    conditions = commands.add_parser(
        "match-conditions",
        help="render the MutatingWebhookConfiguration's matchConditions from a policy file",
        description="Without --write or --check, print the matchConditions list. --patch "
        "prints a kustomize patch instead, for an overlay with a policy file of its own.",
    )
    conditions.add_argument("--policy", required=True, help="the policy file to render from")
    mode = conditions.add_mutually_exclusive_group()
    mode.add_argument(
        "--write", metavar="FILE", help="rewrite the block between the markers in FILE"
    )
    mode.add_argument(
        "--check", metavar="FILE", help="exit 1 when FILE's block is not this rendering"
    )
    mode.add_argument("--patch", action="store_true", help="print a strategic-merge patch")
    args = parser.parse_args(argv)
    if args.command == "schema":
        print(json.dumps(policy_schema(), indent=2, sort_keys=True))
        return 0
    try:
        if args.command == "match-conditions":
            return _match_conditions(args)
        load_policy(args.file)
    except (PolicyError, MatchConditionsError, OSError) as err:
        print(f"invalid: {err}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0


def _match_conditions(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    if args.patch:
        print(yaml.safe_dump(dict(strategic_merge_patch(policy)), sort_keys=False, width=1000))
        return 0
    if args.write is None and args.check is None:
        print(yaml.safe_dump(match_conditions(policy), sort_keys=False, width=1000), end="")
        return 0
    target = Path(args.write or args.check)
    current = target.read_text(encoding="utf-8")
    rendered = replace_block(current, policy)
    if args.write is not None:
        if rendered != current:
            target.write_text(rendered, encoding="utf-8")
        return 0
    if rendered != current:
        print(
            f"{target}: matchConditions differ from {args.policy}; run `make match-conditions`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
