"""`vramguard advertise`: set each GPU node's vramguard.io/gpumem from its GFD labels.

    vramguard advertise [--policy FILE] [--kubeconfig FILE] [--node NAME]... [--interval S]
                        [--health-port PORT] [--once] [--dry-run]

One line per node: the arithmetic (GFD memory x count - slack = value) and what was done
(set, unchanged, skipped with the reason, failed with the reason). Without --once it runs a
pass every --interval seconds and reports only what changed after the first pass.

Exit status: 0 when the pass went through (--once), 1 when the cluster could not be reached or
a patch was refused, 2 on a usage error (bad arguments, unreadable policy or kubeconfig). A
loop exits 1 only when its first pass cannot read the nodes (no permission, API unreachable):
later failures are logged and retried, since the apiserver may just be restarting.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import Any

from gpumem.policy_file import PolicyError
from kube.client import core_api
from kube.errors import NodeAPIError
from kube.nodes import KubernetesNodes
from ops import common, readings
from ops.advertiser import Advertiser
from ops.common import FAILED, OK, USAGE_ERROR
from ops.probes import TEXT, ProbeServer

log = logging.getLogger("ops.advertise")

NAME = "advertise"
DEFAULT_INTERVAL_SECONDS = 60.0


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        NAME,
        help="advertise each GPU node's GPU memory (vramguard.io/gpumem) from its GFD labels",
        description="Patch status.capacity and status.allocatable of the policy's "
        "gpumemResourceName on every GPU node (nodes labelled nvidia.com/gpu.memory by GPU "
        "Feature Discovery) to nvidia.com/gpu.memory x nvidia.com/gpu.count - "
        "extender.capacitySlackMiB, in MiB. Nodes already advertising that value are not "
        "patched. Repeats every --interval seconds, since a re-registered node loses it.",
    )
    add = parser.add_argument
    common.add_cluster_options(parser)
    add(
        "--node",
        dest="nodes",
        action="append",
        default=[],
        metavar="NAME",
        help="only this node (repeat for several)",
    )
    add(
        "--interval",
        type=common.seconds(positive=True),
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between passes (default {DEFAULT_INTERVAL_SECONDS:g})",
    )
    add(
        "--health-port",
        type=int,
        metavar="PORT",
        help="serve GET /healthz (the loop is running) and /readyz (the last pass reached "
        "the API) in plain HTTP on this port, for kubelet probes",
    )
    add("--once", action="store_true", help="one pass, then exit")
    add("--dry-run", action="store_true", help="print what would be set; patch nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        current_policy = readings.policy_source(args.policy)
    except PolicyError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)
    try:
        core = readings.connect(
            args.kubeconfig, lambda path: core_api(str(path) if path else None, pool_size=4)
        )
    except readings.ReadError as err:
        return common.fail(NAME, str(err), err.status)

    policy = current_policy()
    advertiser = Advertiser(
        KubernetesNodes(core),
        current_policy,
        nodes=args.nodes,
        dry_run=args.dry_run,
        emit=_print,
        quiet_repeats=not args.once,
    )
    scope = ", ".join(args.nodes) if args.nodes else "every GPU node"
    _print(
        f"advertising {policy.gpumem_resource_name} on {scope}: nvidia.com/gpu.memory x "
        f"nvidia.com/gpu.count - {policy.extender.capacity_slack_mib} MiB slack"
        + (" (dry run)" if args.dry_run else "")
        + ("" if args.once else f", every {args.interval:g} s")
    )
    health = None
    if args.health_port is not None and not args.once:
        # Alive while passes keep ending: a pass is bounded by its API timeouts (30 s a call).
        health = HealthServer(advertiser, args.health_port, stale_after=3 * args.interval + 120)
        health.start()
    try:
        try:
            result = advertiser.run_once()
        except NodeAPIError as err:
            return common.fail(NAME, str(err), FAILED)
        if args.once:
            return FAILED if result.failed else OK
        stop = threading.Event()
        common.stop_on_signals(stop)
        advertiser.loop(args.interval, stop, first_pass_done=True)
        return OK
    finally:
        if health is not None:
            health.stop()


class HealthServer(ProbeServer):
    """GET /healthz: 200 while the loop is alive (a pass ended within `stale_after` seconds,
    or the first one is still running); GET /readyz: 200 when the last pass could read the
    nodes. Plain HTTP on every address, for the kubelet: it says nothing but "ok"."""

    def __init__(self, advertiser: Advertiser, port: int, *, stale_after: float) -> None:
        self._advertiser = advertiser
        self._stale_after = stale_after
        super().__init__(self._respond, port, name="vramguard-advertise-health")

    def answer(self, path: str) -> tuple[int, str]:
        advertiser = self._advertiser
        ended = advertiser.last_pass_ended
        if path == "/healthz":
            if ended is None or time.monotonic() - ended <= self._stale_after:
                return 200, "ok"
            return 503, f"no pass ended in the last {self._stale_after:g} s"
        if path == "/readyz":
            if ended is not None and advertiser.last_pass_ok:
                return 200, "ok"
            return 503, "the last pass could not read the nodes" if ended else "no pass yet"
        return 404, "not found"

    def _respond(self, path: str) -> tuple[int, str, bytes]:
        status, text = self.answer(path)
        return status, TEXT, (text + "\n").encode()


def _print(line: str) -> None:
    print(line, flush=True)
