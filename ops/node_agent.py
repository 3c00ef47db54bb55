"""`vramguard node-agent`: per GPU node, which pod holds which card and how much memory each
card and each pod uses, as Prometheus metrics (a DaemonSet: components/node-agent).

    vramguard node-agent [--node-name NAME] [--interval SECONDS]
                         [--pod-resources-socket PATH] [--pod-resources-timeout SECONDS]
                         [--proc-root PATH] [--kubeconfig FILE] [--api-timeout SECONDS]
                         [--metrics-port PORT] [--once]

Every --interval seconds: NVML (per card, and per process), the kubelet's PodResources List
(which container holds which GPU), /proc/<pid>/cgroup of each GPU process (its pod UID and
container ID), joined with the node's pods from a watch of the API (their names for those
UIDs and IDs). The metrics are ops.node_agent_metrics's; a source that fails is a counted
error and a log line, never a crash, and the other sources are still served.

Exit status: 0 (--once: every GPU and PodResources were read; a loop: stopped by SIGTERM or
SIGINT), 1 (--once: a source could not be read), 2 (usage error: no node name, an unusable
kubeconfig).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops import common
from ops.common import FAILED, OK, USAGE_ERROR

if TYPE_CHECKING:
    from ops.node_agent_loop import NodeAgent, PodNames
    from ops.node_agent_metrics import NodeAgentMetrics

log = logging.getLogger("ops.node_agent")

NAME = "node-agent"
DEFAULT_INTERVAL_SECONDS = 10.0
# kube.podresources.DEFAULT_SOCKET, spelled out so that building the parser (every `vramguard`
# command does) does not import grpc; a test keeps the two equal.
DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        NAME,
        help="serve per-card and per-pod GPU memory and which pod holds which card, as "
        "Prometheus metrics (one per GPU node)",
        description="Every --interval seconds: read NVML (memory per card and per process), "
        "the kubelet's PodResources (which container holds which GPU) and each GPU process's "
        "cgroup (its pod), and serve them on /metrics. Needs hostPID (NVML gives host PIDs), "
        "the PodResources socket and read access to the node's pods in the API.",
    )
    add = parser.add_argument
    add(
        "--node-name",
        default=os.environ.get("NODE_NAME") or None,
        metavar="NAME",
        help="this node's name, for the metrics and the pod watch (default: $NODE_NAME, "
        "from the downward API)",
    )
    add(
        "--interval",
        type=common.seconds(positive=True),
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between scans (default {DEFAULT_INTERVAL_SECONDS:g})",
    )
    add(
        "--pod-resources-socket",
        type=Path,
        default=Path(DEFAULT_SOCKET),
        metavar="PATH",
        help=f"the kubelet's PodResources socket (default {DEFAULT_SOCKET})",
    )
    add(
        "--pod-resources-timeout",
        type=common.seconds(positive=True),
        default=5.0,
        metavar="SECONDS",
        help="deadline of each PodResources call (default 5)",
    )
    add(
        "--proc-root",
        type=Path,
        default=Path("/proc"),
        metavar="PATH",
        help="the host's /proc, where NVML's PIDs are (default /proc, with hostPID)",
    )
    add(
        "--kubeconfig",
        type=Path,
        help="kubeconfig for the pod watch (default: in-cluster; neither: processes are "
        "not attributed to pods)",
    )
    add(
        "--api-timeout",
        type=common.seconds(positive=True),
        default=30.0,
        metavar="SECONDS",
        help="timeout of each list of the node's pods (default 30)",
    )
    add(
        "--metrics-port",
        type=common.port,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz in plain HTTP on this port",
    )
    add("--once", action="store_true", help="one scan, print the metrics, exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.node_name:
        return common.fail(NAME, "no node name: set --node-name or NODE_NAME", USAGE_ERROR)
    # Imported here, not at the top: gRPC and the generated protobuf modules load in a tenth
    # of a second, which the other commands of `vramguard` need not pay.
    from kube.podresources import PodResourcesClient  # noqa: PLC0415
    from ops.node_agent_loop import NodeAgent, Options  # noqa: PLC0415
    from ops.node_agent_metrics import NodeAgentMetrics  # noqa: PLC0415
    from ops.nvml import Nvml  # noqa: PLC0415

    metrics = NodeAgentMetrics()
    try:
        pod_names = _pod_names(args, metrics)
    except ValueError as err:
        return common.fail(NAME, str(err), USAGE_ERROR)
    nvml = Nvml()
    pod_resources = PodResourcesClient(
        args.pod_resources_socket, timeout=args.pod_resources_timeout
    )
    options = Options(node=args.node_name, interval=args.interval, proc_root=args.proc_root)
    agent = NodeAgent(options, nvml, pod_resources, pod_names, metrics)
    log.info(
        "node %s: scanning every %gs (PodResources %s, /proc at %s)",
        options.node,
        options.interval,
        args.pod_resources_socket,
        args.proc_root,
    )
    try:
        if args.once:
            complete = agent.scan()
            sys.stdout.write(metrics.render().decode())
            sys.stdout.flush()
            return OK if complete else FAILED
        return _serve(args, agent, pod_names)
    finally:
        pod_resources.close()
        nvml.close()


def _serve(args: argparse.Namespace, agent: NodeAgent, pod_names: PodNames) -> int:
    from ops.node_agent_metrics import MetricsServer  # noqa: PLC0415

    server = None
    if args.metrics_port is not None:
        # A scan is bounded by its PodResources deadline and NVML's own calls; three missed
        # intervals plus that is a stuck scan, which a restart clears.
        stale_after = 3 * args.interval + args.pod_resources_timeout + 60
        server = MetricsServer(agent, args.metrics_port, stale_after=stale_after)
        server.start()
    pod_names.start()
    stop = threading.Event()
    common.stop_on_signals(stop)
    try:
        agent.loop(stop)
    finally:
        pod_names.stop()
        if server is not None:
            server.stop()
    log.info("stopped")
    return OK


def _pod_names(args: argparse.Namespace, metrics: NodeAgentMetrics) -> PodNames:
    """The node's pods from the API (kube.nodepods), or NoPodNames without API access.
    ValueError: a kubeconfig or service account that cannot be used."""
    from kube.client import InClusterUnusable, api_client, core_v1  # noqa: PLC0415
    from kube.nodepods import NodePods  # noqa: PLC0415
    from ops.node_agent_loop import NoPodNames, PodWatchLog  # noqa: PLC0415

    try:
        api = api_client(args.kubeconfig, default_kubeconfig=False, pool_size=2, retries=0)
    except InClusterUnusable as err:
        raise ValueError(f"the service account cannot be used: {err}") from err
    except Exception as err:  # the kubernetes client's config errors, an unreadable file
        raise ValueError(f"kubeconfig {args.kubeconfig}: {err}") from err
    if api is None:
        log.warning(
            "no API access (no --kubeconfig, not in a cluster): GPU processes are counted "
            "as unattributed, not per pod"
        )
        return NoPodNames()
    pods = NodePods(
        core_v1(api), args.node_name, hooks=PodWatchLog(metrics), list_timeout=args.api_timeout
    )
    if args.once:
        try:
            pods.list_once()
        except Exception as err:  # the API unreachable: the scan still runs, unattributed
            metrics.errors.labels("kube").inc()
            log.warning("source=kube listing the node's pods failed: %s", err)
    return pods


__all__ = ["NAME", "register", "run"]
