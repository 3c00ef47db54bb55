"""`vramguard preflight`: is there enough live free VRAM to start a batch job now?

    vramguard preflight --need MIB [--node NAME] [--floor MIB] --prometheus-url URL
                        [--policy FILE] [--kubeconfig FILE]

One list of nodes and pods plus one telemetry read build the snapshot the extender would hold;
the live part of its fit rule then says, per GPU node, with the numbers:

    node-a: live free 2100 MiB - 0 not yet in use = 2100 MiB; need 3000 + floor 512: NO

A job runs on one card, so on a node with several GPUs the arithmetic is per card and the
node has room when some card has; the device plugin, not vramguard, picks the card, so the
node's line says which cards have room and that vramguard cannot promise the job one of them
(unless every card has room):

    node-b: need 3000 + floor 512 on one card: yes on gpu 1 of 2 cards; the device plugin
    picks the card (distributed), so vramguard cannot promise the job one of these
      gpu 0 (GPU-8f3c…): live free 2100 MiB - 0 not yet in use = 2100 MiB; need 3000 + ...: NO
      gpu 1 (GPU-1d2e…): live free 9000 MiB - 0 not yet in use = 9000 MiB; need 3000 + ...: yes

Exit status: 0 when some node (or --node) has need + floor MiB live free on a card after the
budgets not yet in use; 1 when none has; 2 when it cannot tell: telemetry unavailable or too old
(Prometheus down, no fresh sample for a node that might fit), the cluster unreachable, or a
usage error (bad arguments, unreadable policy). A gate treats 1 and 2 alike: do not start.
"""

from __future__ import annotations

import argparse
from typing import Any

from gpumem.policy_file import PolicyError
from ops import common, readings
from ops.common import CANNOT_TELL, USAGE_ERROR
from ops.preflight_report import preflight, render_preflight

NAME = "preflight"


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        NAME,
        help="exit 0 when a card has the given live free VRAM now (a gate for batch jobs)",
        description="Exit 0 when some GPU node (or --node) has --need MiB of live free VRAM "
        "above the floor, after subtracting the budgets of pods not using their VRAM yet, as "
        "the extender's live check does; 1 when none has; 2 when telemetry is unavailable or "
        "stale. Prints the arithmetic per node, and per card on nodes with several GPUs (a "
        "card with --need MiB free: the job runs on one).",
    )
    add = parser.add_argument
    add("--need", type=common.mib, required=True, metavar="MIB", help="MiB the job needs")
    add("--node", metavar="NAME", help="only this node (default: any GPU node)")
    add(
        "--floor",
        type=common.mib,
        metavar="MIB",
        help="MiB to keep free on top (default: the policy's extender.floorMiB)",
    )
    add("--prometheus-url", required=True, metavar="URL", help="Prometheus base URL")
    common.add_cluster_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        policy = readings.load_policy(args.policy)
    except PolicyError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)
    settings = policy.extender
    floor = settings.floor_mib if args.floor is None else args.floor
    try:
        nodes, pods = readings.list_cluster(args.kubeconfig)
        now = readings.now()
        reading = readings.read_live(args.prometheus_url, policy, now)
    except readings.ReadError as err:  # the cluster or Prometheus: no answer either way
        return common.fail(NAME, str(err), CANNOT_TELL)
    snapshot = readings.build_snapshot(policy, nodes, pods, reading, now)
    result = preflight(
        snapshot,
        args.need,
        floor_mib=floor,
        max_age_seconds=settings.max_age_seconds,
        now=now,
        node=args.node,
        allocation_policy=settings.allocation_policy,
    )
    for line in render_preflight(result, colour=common.colour()):
        print(line, flush=True)
    return result.exit_status  # OK, NO or CANNOT_TELL
