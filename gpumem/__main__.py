"""`python -m gpumem schema` prints the policy file's JSON Schema;
`python -m gpumem check FILE` validates a policy file."""

from __future__ import annotations

import argparse
import json
import sys

from gpumem.policy import PolicyError, load_policy, policy_schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpumem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("schema", help="print the policy JSON Schema")
    check = commands.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "schema":
        print(json.dumps(policy_schema(), indent=2, sort_keys=True))
        return 0
    try:
        load_policy(args.file)
    except PolicyError as err:
        print(f"invalid: {err}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
