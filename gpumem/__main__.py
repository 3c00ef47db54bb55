"""`python -m gpumem schema` prints the policy file's JSON Schema;
`python -m gpumem check FILE` validates a policy file;
`python -m gpumem match-conditions` renders the webhook's CEL matchConditions, and the
ephemeral-container ValidatingAdmissionPolicy's CEL, from a policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from gpumem import ephemeral_policy
from gpumem.ephemeral_policy import EphemeralPolicyError
from gpumem.marked_block import holds_marked
from gpumem.match_conditions import (
    BEGIN_MARKER,
    MatchConditionsError,
    match_conditions,
    replace_block,
    strategic_merge_patch,
)
from gpumem.policy import Policy, PolicyError, load_policy, policy_schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpumem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("schema", help="print the policy JSON Schema")
    check = commands.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    conditions = commands.add_parser(
        "match-conditions",
        help="render the MutatingWebhookConfiguration's matchConditions and the "
        "ephemeral-container ValidatingAdmissionPolicy from a policy file",
        description="Without --write or --check, print the matchConditions list. --write and "
        "--check take the files to render into: each one's marked blocks (the webhook's "
        "matchConditions, the ephemeral-container policy's rules) are rendered. --patch "
        "prints a kustomize patch instead, for an overlay with a policy file of its own; "
        "--patch-ephemeral the same for the ephemeral-container policy.",
    )
    conditions.add_argument("--policy", required=True, help="the policy file to render from")
    mode = conditions.add_mutually_exclusive_group()
    mode.add_argument(
        "--write",
        metavar="FILE",
        nargs="+",
        help="rewrite the blocks between the markers in each FILE",
    )
    mode.add_argument(
        "--check",
        metavar="FILE",
        nargs="+",
        help="exit 1 when a FILE's blocks are not this rendering",
    )
    mode.add_argument("--patch", action="store_true", help="print a strategic-merge patch")
    mode.add_argument(
        "--patch-ephemeral",
        action="store_true",
        help="print a strategic-merge patch of the ephemeral-container policy",
    )
    args = parser.parse_args(argv)
    if args.command == "schema":
        print(json.dumps(policy_schema(), indent=2, sort_keys=True))
        return 0
    try:
        if args.command == "match-conditions":
            return _match_conditions(args)
        load_policy(args.file)
    except (PolicyError, MatchConditionsError, EphemeralPolicyError, OSError) as err:
        print(f"invalid: {err}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0


def _match_conditions(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    if args.patch:
        print(yaml.safe_dump(dict(strategic_merge_patch(policy)), sort_keys=False, width=1000))
        return 0
    if args.patch_ephemeral:
        patch = dict(ephemeral_policy.strategic_merge_patch(policy))
        print(yaml.safe_dump(patch, sort_keys=False, width=1000))
        return 0
    if args.write is None and args.check is None:
        print(yaml.safe_dump(match_conditions(policy), sort_keys=False, width=1000), end="")
        return 0
    stale = False
    for name in args.write or args.check:
        target = Path(name)
        current = target.read_text(encoding="utf-8")
        rendered = _render_blocks(current, policy)
        if args.write is not None:
            if rendered != current:
                target.write_text(rendered, encoding="utf-8")
        elif rendered != current:
            print(
                f"{target}: the rendered CEL differs from {args.policy}; "
                "run `make match-conditions`",
                file=sys.stderr,
            )
            stale = True
    return 1 if stale else 0


def _render_blocks(text: str, policy: Policy) -> str:
    """`text` with each marked block it holds rendered anew; a file with none is an error."""
    found = False
    if holds_marked(text, BEGIN_MARKER):
        text = replace_block(text, policy)
        found = True
    if holds_marked(text, ephemeral_policy.BEGIN_MARKER):
        text = ephemeral_policy.replace_block(text, policy)
        found = True
    if not found:
        raise MatchConditionsError(
            f"no {BEGIN_MARKER!r} nor {ephemeral_policy.BEGIN_MARKER!r} block to render"
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
