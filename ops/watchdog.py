"""`vramguard watchdog`: the seeds' backstop as a loop. When a card's live free VRAM is below the
floor and something needs it, recycle (delete) the pod furthest over its declared budget.

    vramguard watchdog --prometheus-url URL [--policy FILE] [--kubeconfig FILE]
                       [--interval SECONDS] [--floor MIB] [--emergency-floor MIB]
                       [--cooldown SECONDS] [--node NAME]... [--dry-run true|false]
                       [--once] [--metrics-port PORT]

Every --interval seconds: one list of nodes and pods and one telemetry read (the extender's
own code, ops.readings), the rule of gpumem.watchdog per GPU node (per card on a node with
several GPUs and per-card telemetry: the victim is then the pod most over budget among those
known to hold that card), and for each decision that is not "ok" one log line with the
numbers:

    node=gpu-1 action=recycle reason=over-budget dry_run=true free=400 floor=1024
    pod=immich/immich-ml used=6100 declared=3000 result=dry-run msg="live free 400 MiB < ..."

On a card, the line says which (`node=gpu-2x gpu=1 uuid=GPU-8f3c... action=...`), and its
message, which the pod's Event repeats, starts with the card (`gpu 1 (GPU-8f3c…): live free
...`). The cooldown after a recycle is per card there: the VRAM it frees shows on that card.

A dry run (the default, as the seeds shipped it: observe, then enforce) logs the recycles it
would do and deletes nothing. --dry-run false, or DRY_RUN=false in the environment (the flag
wins), deletes the pod with a UID precondition, so a pod recreated under the same name is
never hit, and records a VRAMWatchdogRecycled Event on it. Prometheus or the API server
unreachable: one log line, counted, no action; the loop goes on.

Exit status: 0 (--once: the cycle ran, whatever it decided; a loop: stopped by SIGTERM or
SIGINT), 1 (--once: a delete was refused), 2 (usage error: bad arguments or DRY_RUN, an
unreadable policy or kubeconfig; --once: the cluster or Prometheus could not be read).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from typing import Any

from gpumem.policy_file import PolicyError
from kube.pods import kubernetes_pods
from ops import common, readings
from ops.common import OK, USAGE_ERROR
from ops.watchdog_loop import Options, Watchdog
from ops.watchdog_metrics import MetricsServer, WatchdogMetrics

log = logging.getLogger("ops.watchdog")

NAME = "watchdog"
DEFAULT_INTERVAL_SECONDS = 30.0
DEFAULT_COOLDOWN_SECONDS = 300.0


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        NAME,
        help="recycle the pod most over its GPU-memory budget when a card runs low "
        "(dry run by default)",
        description="Every --interval seconds, per GPU node: when live free VRAM is below the "
        "floor and a GPU pod is Pending for lack of live VRAM (or free is below the emergency "
        "floor), delete the pod with the largest used - declared among pods using more than "
        "they declared. Never a pod without a declaration. Dry run by default (DRY_RUN=true): "
        "the recycle is logged, nothing is deleted. Needs per-pod usage telemetry "
        "(pod-exporter preset or a podUsedMiB query).",
    )
    add = parser.add_argument
    add("--prometheus-url", required=True, metavar="URL", help="Prometheus base URL")
    common.add_cluster_options(parser)
    add(
        "--interval",
        type=common.seconds(positive=True),
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between cycles (default {DEFAULT_INTERVAL_SECONDS:g})",
    )
    add(
        "--floor",
        type=common.mib,
        metavar="MIB",
        help="act only below this much live free VRAM (default: the policy's "
        "extender.floorMiB, following reloads)",
    )
    add(
        "--emergency-floor",
        type=common.mib,
        metavar="MIB",
        help="below this, act even when no pod is Pending (default: half the floor)",
    )
    add(
        "--cooldown",
        type=common.seconds(positive=False),
        default=DEFAULT_COOLDOWN_SECONDS,
        metavar="SECONDS",
        help="after a recycle on a node, wait this long before the next one there, for the "
        f"freed VRAM to show in telemetry (default {DEFAULT_COOLDOWN_SECONDS:g})",
    )
    add(
        "--node",
        dest="nodes",
        action="append",
        default=[],
        metavar="NAME",
        help="only this node (repeat for several; default: every GPU node)",
    )
    add(
        "--dry-run",
        type=common.boolean,
        metavar="true|false",
        help="log recycles without deleting anything (default: $DRY_RUN, else true)",
    )
    add("--once", action="store_true", help="one cycle, then exit")
    add(
        "--metrics-port",
        type=common.port,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz in plain HTTP on this port",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        dry_run = args.dry_run if args.dry_run is not None else _dry_run_from_environment()
    except ValueError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)
    if (
        args.floor is not None
        and args.emergency_floor is not None
        and args.emergency_floor > args.floor
    ):
        return common.fail(
            NAME,
            f"--emergency-floor {args.emergency_floor} is above --floor {args.floor}",
            USAGE_ERROR,
        )
    try:
        current_policy = readings.policy_source(args.policy)
    except PolicyError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)
    try:
        pods = readings.connect(args.kubeconfig, kubernetes_pods)
    except readings.ReadError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)

    options = Options(
        prometheus_url=args.prometheus_url,
        kubeconfig=args.kubeconfig,
        interval=args.interval,
        floor_mib=args.floor,
        emergency_floor_mib=args.emergency_floor,
        cooldown_seconds=args.cooldown,
        nodes=tuple(args.nodes),
        dry_run=dry_run,
    )
    metrics = WatchdogMetrics(dry_run=dry_run)
    watchdog = Watchdog(options, pods, metrics, current_policy)
    log.info("%s", watchdog.describe())
    if args.once:
        return watchdog.cycle()
    server = None
    if args.metrics_port is not None:
        # Alive while cycles keep ending: a cycle is bounded by its API and Prometheus
        # timeouts (60 s a list page, 10 s a query, 30 s a delete).
        server = MetricsServer(watchdog, args.metrics_port, stale_after=3 * args.interval + 180)
        server.start()
    stop = threading.Event()
    common.stop_on_signals(stop)
    try:
        watchdog.loop(stop)
    finally:
        if server is not None:
            server.stop()
    log.info("stopped")
    return OK


def _dry_run_from_environment() -> bool:
    text = os.environ.get("DRY_RUN")
    if text is None or not text.strip():
        return True
    try:
        return common.parse_boolean(text)
    except ValueError:
        raise ValueError(f"DRY_RUN={text!r}: not true or false") from None
