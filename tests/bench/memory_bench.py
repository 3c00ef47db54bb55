"""Resident memory of the webhook and the extender: idle, and with a big cluster in the snapshot.

    .venv/bin/python -m tests.bench.memory_bench [--nodes 1000] [--pods 10000]

Both services run as real processes (`python -m webhook`, `python -m extender`, started by
tests/e2e/harness LocalVramguard next to a local kube-apiserver, with Prometheus scraping a
fake dcgm-exporter), configured by the shipped policy (production timings). Their resident
set size (VmRSS in /proc/PID/status; VmHWM is the peak) is read:

1. idle: once both are ready in an empty cluster (no node, no pod);
2. loaded: after the API server holds `--nodes` GPU nodes, every one reported by the exporter,
   and `--pods` GPU pods spread over them (created through the API, so the webhook admits each
   one, then bound with a pods/binding as a scheduler binds them, though no scheduler runs:
   the webhook refuses GPU pods that set spec.nodeName themselves), and the
   extender's watches have delivered all of them: a marker pod created after the rest is in
   its snapshot (watch events arrive in order), and no node's telemetry is stale. Then one
   more telemetry refresh passes before the reading;
3. restarted (the extender only): the extender stopped and started again in that loaded
   cluster, as a rolling update or a crash restarts it, read the same way once it has the
   marker pod and live telemetry. Here every pod and node comes from its initial list, not
   from watch events: the high-water mark of a list of the whole cluster.

No request that builds a large answer (/debug/snapshot of the whole cluster) is sent before
the reading, so what is measured is what the services keep, not a reply being built.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from tests.bench.kube import (
    Memory,
    RawApi,
    bind_pod,
    create_namespace,
    create_nodes,
    create_pod,
    in_parallel,
    pod_body,
    process_memory,
    wait_for,
)
from tests.bench.table import Row, markdown_table
from tests.e2e.harness import SCHEDULER_NAME, ControlPlane, GPUNodeSpec, LocalVramguard
from tests.e2e.harness.vramguard import metric_value

CARD_MIB = 15360
ADVERTISED_MIB = 14000
DRIVER_MIB = 300
NAMESPACES = 10
REFRESH_SECONDS = 5  # manifests/base/policy.yaml extender.refreshSeconds


@dataclass(frozen=True)
class MemoryResult:
    nodes: int
    pods: int
    idle: dict[str, Memory]
    loaded: dict[str, Memory]
    restarted: Memory  # the extender, started again in the loaded cluster
    load_seconds: float  # creating the nodes and pods and waiting for the extender


def measure(nodes: int, pods: int, threads: int = 4) -> MemoryResult:
    cluster = ControlPlane(default_scheduler=False, keep_logs=False)
    cluster.start()
    vramguard = LocalVramguard(cluster, extender_settings={})  # the shipped policy's timings
    try:
        vramguard.start()
        cluster.stop_scheduler(SCHEDULER_NAME)  # nothing to schedule: pods come bound
        processes = {
            "webhook": vramguard.webhook_process,
            "extender": vramguard.extender_process,
        }
        time.sleep(2)  # let start-up allocations settle
        idle = {name: process_memory(_pid(p.pid)) for name, p in processes.items()}
        started = time.monotonic()
        api = RawApi(cluster.kubeconfig)
        specs = [
            GPUNodeSpec(
                name=f"gpu-{index:05d}",
                gpu_replicas=16,
                gpu_memory_mib=CARD_MIB,
                gpumem_mib=ADVERTISED_MIB,
            )
            for index in range(nodes)
        ]
        create_nodes(api, specs, threads)
        for spec in specs:
            vramguard.exporter.set_node(spec.name, total_mib=CARD_MIB, used_mib=DRIVER_MIB)
        namespaces = [f"bench-memory-{index}" for index in range(NAMESPACES)]
        for namespace in namespaces:
            create_namespace(api, namespace)

        def create(index: int) -> None:
            name, namespace = f"p-{index:06d}", namespaces[index % NAMESPACES]
            create_pod(api, namespace, pod_body(name, gpu=True))
            bind_pod(api, namespace, name, specs[index % nodes].name)

        in_parallel(create, range(pods), threads)
        print(f"  created {nodes} nodes and {pods} pods", file=sys.stderr, flush=True)
        last = specs[-1].name
        create_pod(api, namespaces[0], pod_body("marker", gpu=True))
        bind_pod(api, namespaces[0], "marker", last)

        def settle(how: str) -> None:
            wait_for(
                f"the extender's pods {how} to include the marker pod",
                lambda: _has_pod(vramguard, last, "marker"),
                timeout=300,
                interval=1.0,
            )
            wait_for(
                "live telemetry for every node",
                lambda: _stale_nodes(vramguard) == 0,
                timeout=120,
                interval=1.0,
            )

        settle("from the watch")
        load_seconds = time.monotonic() - started
        time.sleep(REFRESH_SECONDS + 1)  # one more telemetry refresh and rebuild
        loaded = {name: process_memory(_pid(p.pid)) for name, p in processes.items()}
        vramguard.stop_extender()
        vramguard.start_extender()
        settle("from its initial list")
        time.sleep(REFRESH_SECONDS + 1)
        restarted = process_memory(_pid(vramguard.extender_process.pid))
    finally:
        vramguard.stop()
        cluster.stop()
    return MemoryResult(nodes, pods + 1, idle, loaded, restarted, load_seconds)


def _pid(pid: int | None) -> int:
    if pid is None:
        raise RuntimeError("the service is not running")
    return pid


def _has_pod(vramguard: LocalVramguard, node: str, pod: str) -> bool:
    query = urllib.parse.urlencode({"node": node})
    state = json.loads(vramguard.extender_get(f"/debug/snapshot?{query}"))["nodes"].get(node)
    return state is not None and any(item["name"] == pod for item in state["pods"])


def _stale_nodes(vramguard: LocalVramguard) -> float:
    text = vramguard.extender_get("/metrics")
    return metric_value(text, "vramguard_extender_telemetry_stale_nodes")


def summary_rows(result: MemoryResult) -> list[Row]:
    loaded = f"{result.nodes:,} nodes, {result.pods:,} GPU pods"
    configurations = {
        "extender": f"{loaded} in its snapshot, live telemetry",
        "webhook": f"after admitting {result.pods:,} GPU pods ({result.nodes:,} nodes)",
    }
    rows = [
        Row(
            measure=f"{name} resident memory (RSS)",
            configuration=configurations[name],
            value=result.loaded[name].rss_mib,
            unit="MiB",
            baseline=result.idle[name].rss_mib,
            baseline_label="idle, empty cluster",
        )
        for name in ("extender", "webhook")
    ]
    rows.insert(
        1,
        Row(
            measure="extender resident memory (RSS)",
            configuration=f"restarted in that cluster: {loaded} from its initial list",
            value=result.restarted.rss_mib,
            unit="MiB",
            baseline=result.idle["extender"].rss_mib,
            baseline_label="idle, empty cluster",
        ),
    )
    return rows


def details(result: MemoryResult) -> str:
    lines = [f"{'service':<9} {'idle RSS':>9} {'loaded RSS':>11} {'loaded peak':>12}  (MiB)"]
    for name in ("extender", "webhook"):
        idle, loaded = result.idle[name], result.loaded[name]
        lines.append(
            f"{name:<9} {idle.rss_mib:>9.1f} {loaded.rss_mib:>11.1f} {loaded.peak_mib:>12.1f}"
        )
    lines.append(
        f"extender restarted in the loaded cluster: RSS {result.restarted.rss_mib:.1f}, "
        f"peak {result.restarted.peak_mib:.1f}"
    )
    lines.append(
        f"loaded: {result.nodes:,} nodes and {result.pods:,} GPU pods created and seen by the "
        f"extender in {result.load_seconds:.0f} s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=4, help="client threads creating pods")
    args = parser.parse_args(argv)
    result = measure(args.nodes, args.pods, args.threads)
    print(details(result))
    print()
    print(markdown_table(summary_rows(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
