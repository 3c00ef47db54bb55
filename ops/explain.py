"""`vramguard explain POD -n NS`: why a GPU pod is Pending, or where it would fit, node by node.

    vramguard explain POD [-n NAMESPACE] [--prometheus-url URL] [--policy FILE]
                          [--kubeconfig FILE] [--scheduler-name NAME] [-o table|json]

One list of nodes and pods plus one telemetry read build the snapshot the extender would hold
(as `status` does); the pod is then judged on every node with the extender's own fit rule
(gpumem.explain.judge_nodes): fits (with the MiB to spare), refused (the extender's reason,
word for word), not admitted by the pod's nodeSelector or node affinity, or no GPU memory. A
Pending pod's summary is the extender's GPUMemoryUnavailable Event text when no node fits.
On a node with several GPUs the refusal names the card that refused, and a row per card
(`node-a/gpu 1`) says whether the device plugin could give the pod that card (a candidate, by
the policy's allocationPolicy), with the card's live free and declared/capacity.

Without --prometheus-url (or when Prometheus cannot be read) the live check is not evaluated:
the nodes are judged on the declared budgets alone, as staleMode budget-only would, and every
row that fits says so. The snapshot has no reservations (they live only inside the extender),
so a pod bound in the last seconds may be missing from the declared figures.

A bound pod is not judged again on its own node, whose declared figure already counts it: that
node is shown as "bound" with its figures, and the other nodes are judged as if the pod were
placed anew. A pod of another scheduler is judged all the same, saying that vramguard never
judges it; a terminated pod, or one that declares no GPU memory, is not judged.

Exit status: 0 when the pod was explained (also when vramguard does not judge it); 1 when the
cluster cannot be read or the pod does not exist; 2 on a usage error, an unreadable policy,
kubeconfig or GPU-memory declaration, or when Prometheus could not be read (the verdicts are
printed, on the declared budgets alone).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from gpumem.pending import scheduling_pod
from gpumem.policy_file import PolicyError
from ops import common, readings
from ops.common import FAILED, OK, PARTIAL, USAGE_ERROR
from ops.explain_report import LiveRead, explain_report, explanation_json, render_explanation

NAME = "explain"
DEFAULT_SCHEDULER = "vramguard-scheduler"


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        NAME,
        help="why a GPU pod is Pending, or where it would fit, node by node",
        description="Judge a pod on every node with the extender's fit rule and say, per "
        "node, whether it fits (and with how many MiB to spare), why it is refused (the "
        "extender's own reason), or that the pod's selectors or the node's lack of GPU "
        "memory rule the node out.",
    )
    add = parser.add_argument
    add("pod", metavar="POD", help="the pod's name")
    add("-n", "--namespace", default="default", help="the pod's namespace (default: default)")
    add("--prometheus-url", metavar="URL", help="Prometheus base URL (the live check)")
    common.add_cluster_options(parser)
    add(
        "--scheduler-name",
        metavar="NAME",
        help="the scheduler vramguard's extender serves (default: the policy's schedulerName, "
        f"else {DEFAULT_SCHEDULER})",
    )
    add("-o", "--output", choices=["table", "json"], default="table", help="output format")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        policy = readings.load_policy(args.policy)
    except PolicyError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)
    try:
        nodes, pods = readings.list_cluster(args.kubeconfig)
    except readings.ReadError as err:
        return common.fail(NAME, str(err), err.status)
    raw = find_pod(pods, args.namespace, args.pod)
    if raw is None:
        return common.fail(NAME, f"pod {args.namespace}/{args.pod} not found", FAILED)
    pod = scheduling_pod(raw, policy.resource_names)
    now = readings.now()
    live: LiveRead = "not-read"
    reading = None
    result = OK
    if pod.need_mib > 0 and not pod.terminated and args.prometheus_url:
        try:
            reading = readings.read_live(args.prometheus_url, policy, now)
            live = "read"
        except readings.TelemetryUnavailable as err:
            result = common.fail(NAME, f"{err}; judging on the declared budgets alone", PARTIAL)
            live = "unavailable"
    snapshot = readings.build_snapshot(policy, nodes, pods, reading, now)
    report = explain_report(
        pod,
        snapshot,
        policy.extender,
        now,
        resource=policy.gpumem_resource_name,
        served_scheduler=args.scheduler_name or policy.scheduler_name or DEFAULT_SCHEDULER,
        live=live,
    )
    common.show(
        args.output,
        lambda: explanation_json(report),
        lambda colour: render_explanation(report, colour=colour),
    )
    if pod.demand_error is not None:
        return USAGE_ERROR  # the policy reads its resources differently from the apiserver
    return result


def find_pod(
    pods: Sequence[Mapping[str, Any]], namespace: str, name: str
) -> Mapping[str, Any] | None:
    for raw in pods:
        metadata = raw.get("metadata")
        if (
            isinstance(metadata, Mapping)
            and metadata.get("namespace") == namespace
            and metadata.get("name") == name
        ):
            return raw
    return None
