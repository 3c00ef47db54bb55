"""`vramguard status`: GPU memory per node and per GPU pod, declared against live.

    vramguard status [--prometheus-url URL] [--policy FILE] [--kubeconfig FILE]
                     [--extender-url URL] [-o table|json]

Per node: capacity, declared, reserved, live used, free, telemetry age; per GPU pod: namespace,
pod, class (its priorityClassName), declared, live used (where telemetry reports usage per pod)
and whether it uses more than it declared. A node with several GPUs also has a row per card
(`node-a/gpu 1`: its capacity, the budgets of the pods known to hold it, live used and free)
and one for its unassigned pods (`node-a/unassigned`: no source has said which card they got,
so the fit rule counts them on every card); its pods then say their card (CARD `gpu 1` or
`unassigned`). One-card nodes print as they always did. With --extender-url the figures are
the extender's own (its /debug/snapshot, the only place reservations are known); otherwise they
come from one list of the API and one read of Prometheus (--prometheus-url; without it, live
columns are -).

Exit status: 0 when everything was read; 1 when the cluster or the extender could not be read;
2 when the policy or the kubeconfig is unreadable, or when Prometheus could not be read (the
tables are printed without live figures).
"""

from __future__ import annotations

import argparse
from typing import Any

from gpumem.policy_file import PolicyError
from ops import common, readings
from ops.common import FAILED, OK, PARTIAL, USAGE_ERROR
from ops.status_report import render_status, status_from_debug, status_from_snapshot, status_json

NAME = "status"


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        NAME,
        help="GPU memory per node and per GPU pod: declared, reserved, live used, free",
        description="Show, per GPU node, capacity, declared, reserved (with --extender-url), "
        "live used, free and telemetry age (and the same per card on nodes with several GPUs), "
        "and per GPU pod its class, card, declared and live used, marking pods over budget.",
    )
    add = parser.add_argument
    add("--prometheus-url", metavar="URL", help="Prometheus base URL (live figures)")
    common.add_cluster_options(parser)
    add(
        "--extender-url",
        metavar="URL",
        help="read the extender's /debug/snapshot instead of the API and Prometheus",
    )
    add("-o", "--output", choices=["table", "json"], default="table", help="output format")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        policy = readings.load_policy(args.policy)
    except PolicyError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)
    result = OK
    try:
        if args.extender_url:
            status = status_from_debug(readings.fetch_extender_snapshot(args.extender_url))
        else:
            nodes, pods = readings.list_cluster(args.kubeconfig)
            now = readings.now()
            reading = None
            if args.prometheus_url:
                try:
                    reading = readings.read_live(args.prometheus_url, policy, now)
                except readings.TelemetryUnavailable as err:
                    result = common.fail(NAME, f"{err}; showing declared figures only", PARTIAL)
            snapshot = readings.build_snapshot(policy, nodes, pods, reading, now)
            status = status_from_snapshot(snapshot, now, readings.pod_classes(pods))
    except readings.ReadError as err:
        return common.fail(NAME, str(err), err.status)
    except ValueError as err:  # an extender snapshot of another shape
        return common.fail(NAME, str(err), FAILED)
    common.show(
        args.output,
        lambda: status_json(status),
        lambda colour: render_status(status, colour=colour),
    )
    return result
