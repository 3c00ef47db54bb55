"""Scheduling throughput of the vramguard-scheduler with the extender vs the same scheduler
without it, on a real kube-apiserver and kube-scheduler (local processes, no kubelet).

    .venv/bin/python -m tests.bench.scheduling_bench [--nodes 500 1000] [--pods 1000]
    .venv/bin/python -m tests.bench.scheduling_bench --nodes 50 --pods 100   # a quick look

The whole vramguard stack runs as in the e2e suite (tests/e2e/harness LocalVramguard): the
webhook registered, the extender watching pods and nodes, Prometheus scraping a fake
dcgm-exporter that reports every node's card (15360 MiB, 300 MiB used), with the shipped
policy's production timings (manifests/base/policy.yaml: telemetry refreshed every 5 s,
maxAge 60 s, 120 s warm-up). So the extender does its real work on every GPU pod: filter
with the budget and the live check, prioritize, and bind (re-check, reservation, Binding).

Each run, for N GPU nodes (T4: 8 time-sliced nvidia.com/gpu, 14000 MiB of gpumem):
1. creates the pods while no scheduler serves them (GPU pods ask only for nvidia.com/gpu: 1;
   the webhook adds the 1024 MiB budget, the class and schedulerName vramguard-scheduler);
2. starts kube-scheduler with manifests/base/scheduler-config.yaml (arm "extender"), or the
   same configuration without its `extenders` (arm "plain"); in both, the scheduler's API
   client may send 5000 requests/s (see CLIENT_QPS: at the default 50 the plain arm would
   measure the client's rate limit, not scheduling);
3. watches the namespace's pods (one watch, started before the scheduler) and notes when each
   got its node: throughput is the pods bound after the first one over the time from the
   first bind to the last, so the scheduler's start-up is not in it;
4. stops the scheduler, checks every pod is bound, deletes them and waits until the extender's
   snapshot has forgotten them.
A third arm, "floor", runs the same configuration with the extender's URL pointing at
tests.bench.floors' no-op extender (same server stack; filter passes every node, prioritize
scores 0, bind creates the Binding through the same binder): what any HTTP extender costs.
Its CPU per pod is the floor process's. vramguard's extender keeps running (and watching) in
the plain and floor arms, as it does in the extender arm.
Arms alternate (extender, plain, floor, then floor, plain, extender with --repeats 2) so slow
drifts of the machine hit every arm. Non-GPU pods (schedulerName set, nothing requested) go
through the extender and plain arms on the largest node count: the extender is never called
for them (managedResources).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tests.bench.kube import (
    BindWatch,
    RawApi,
    count_bound,
    cpu_seconds,
    create_namespace,
    create_nodes,
    create_pod,
    delete_pods,
    in_parallel,
    pod_body,
    wait_for,
)
from tests.bench.table import Row, Target, markdown_table
from tests.e2e.harness import SCHEDULER_NAME, ControlPlane, GPUNodeSpec, LocalVramguard
from tests.e2e.harness.process import ManagedProcess, free_port, url_ok
from tests.e2e.harness.vramguard import scheduler_configuration

CARD_MIB = 15360
ADVERTISED_MIB = 14000
DRIVER_MIB = 300
SCHEDULED = "scheduler_schedule_attempts_total"
ALGORITHM = "scheduler_scheduling_algorithm_duration_seconds"
# kube-scheduler's API client allows 50 requests/s (burst 100) unless configured, and the
# shipped configuration does not: without the extender every bind is one of those requests,
# so the baseline would be capped at 50 pods/s while the extender, which binds with its own
# client, is not. Both arms get this limit instead (scheduler_perf's, 5000); 0 keeps 50.
CLIENT_QPS = 5000


class FloorExtender:
    """tests.bench.floors' no-op extender as a process (plain HTTP on loopback, as the
    bench's vramguard extender)."""

    def __init__(self, cluster: ControlPlane) -> None:
        self.cluster = cluster
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            "floor-extender",
            [
                sys.executable,
                "-m",
                "tests.bench.floors",
                "extender",
                f"--port={self.port}",
                f"--kubeconfig={cluster.kubeconfig}",
            ],
            cluster.workdir / "logs" / "floor-extender.log",
        )

    def start(self) -> None:
        self.cluster.start_process(
            self.process,
            ready=lambda: url_ok(f"{self.url}/readyz"),
            what=f"floor extender {self.url}/readyz",
            timeout=60,
        )


@dataclass
class Arm:
    """One scheduler run: which pods, which configuration, what came out."""

    kind: str  # "GPU" or "non-GPU"
    config: str  # "extender", "plain" or "floor" (the no-op extender)
    nodes: int
    pods: int
    rate: float = float("nan")  # pods bound per second
    seconds: float = float("nan")
    failed_attempts: float = 0.0  # unschedulable or error attempts on the way
    # The scheduler's own mean time per pod to find and rank nodes (in-tree plugins and the
    # extender's filter and prioritize, round trips included), ms.
    algorithm_ms: float = float("nan")
    watch_reconnects: int = 0
    # CPU time per bound pod, ms, from just before the scheduler starts until every pod is
    # bound: the extender's (its idle work in that span included) and the scheduler's.
    extender_cpu_ms: float = float("nan")
    scheduler_cpu_ms: float = float("nan")


def throughput(bound_at: Sequence[float]) -> tuple[float, float]:
    """(pods per second, seconds) from the times pods were bound: the binds after the first
    over the time from the first to the last, so the scheduler's start-up is not in it."""
    times = sorted(bound_at)
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan"), float("nan")
    return (len(times) - 1) / (times[-1] - times[0]), times[-1] - times[0]


def counter(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` with these labels in Prometheus text."""
    total = 0.0
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(label in line for label in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


class SchedulingBench:
    def __init__(
        self, cluster: ControlPlane, vramguard: LocalVramguard, threads: int, client_qps: int
    ) -> None:
        self.cluster = cluster
        self.vramguard = vramguard
        self.api = RawApi(cluster.kubeconfig)
        self.threads = threads
        self.nodes = 0
        self.runs = 0
        config = scheduler_configuration(vramguard.extender_url, cluster.kubeconfig)
        if client_qps:
            config["clientConnection"].update(qps=client_qps, burst=client_qps)
        plain = copy.deepcopy(config)
        del plain["extenders"]
        self.floor = FloorExtender(cluster)
        floor = copy.deepcopy(config)
        for extender in floor["extenders"]:
            extender["urlPrefix"] = extender["urlPrefix"].replace(
                vramguard.extender_url, self.floor.url
            )
        self.configs = {"extender": config, "plain": plain, "floor": floor}

    def grow_to(self, count: int) -> None:
        """Add GPU nodes up to `count`, each with a card the exporter reports, and wait until
        the extender has every one with live telemetry."""
        specs = [
            GPUNodeSpec(
                name=f"gpu-{index:05d}",
                gpu_replicas=8,
                gpu_memory_mib=CARD_MIB,
                gpumem_mib=ADVERTISED_MIB,
            )
            for index in range(self.nodes, count)
        ]
        create_nodes(self.api, specs, self.threads)
        for spec in specs:
            self.vramguard.exporter.set_node(spec.name, total_mib=CARD_MIB, used_mib=DRIVER_MIB)
        self.nodes = count
        wait_for(
            f"the extender to see {count} nodes with live telemetry",
            lambda: self.extender_counts()[1] >= count,
            timeout=120 + count / 10,
            interval=1.0,
        )

    def extender_counts(self) -> tuple[int, int, int]:
        """(pods, nodes with live telemetry, reservations) in the extender's snapshot."""
        snapshot = json.loads(self.vramguard.extender_get("/debug/snapshot"))
        nodes = snapshot["nodes"].values()
        pods = sum(len(node["pods"]) for node in nodes)
        live = sum(1 for node in nodes if node["liveFreeMiB"] is not None)
        reservations = sum(len(node["reservations"]) for node in nodes)
        return pods, live, reservations

    def run(self, kind: str, config: str, pods: int, timeout: float) -> Arm:
        arm = Arm(kind, config, self.nodes, pods)
        self.runs += 1
        namespace = f"bench-{self.runs}-{kind.lower()}-{config}"
        create_namespace(self.api, namespace)
        gpu = kind == "GPU"
        scheduler = None if gpu else SCHEDULER_NAME  # the webhook sets it on GPU pods
        in_parallel(
            lambda index: create_pod(
                self.api,
                namespace,
                pod_body(f"p-{index:05d}", gpu=gpu, scheduler_name=scheduler),
            ),
            range(pods),
            self.threads,
        )
        watch = BindWatch(self.api, namespace)
        serving = self.floor.process if config == "floor" else self.vramguard.extender_process
        extender_pid = serving.pid
        extender_cpu = cpu_seconds(extender_pid) if extender_pid else float("nan")
        try:
            scheduler_process = self.cluster.start_scheduler(SCHEDULER_NAME, self.configs[config])
            try:
                try:
                    watch.wait(pods, timeout)
                except TimeoutError as err:
                    bound, total = count_bound(self.api, namespace)
                    raise TimeoutError(f"{arm}: {err}; the API has {bound}/{total} bound") from err
                if extender_pid:
                    arm.extender_cpu_ms = 1000 * (cpu_seconds(extender_pid) - extender_cpu) / pods
                if scheduler_process.pid:
                    arm.scheduler_cpu_ms = 1000 * cpu_seconds(scheduler_process.pid) / pods
                text = self.cluster.scheduler_metrics(SCHEDULER_NAME)
                arm.failed_attempts = sum(
                    counter(text, SCHEDULED, profile=SCHEDULER_NAME, result=result)
                    for result in ("unschedulable", "error")
                )
                attempts = counter(text, ALGORITHM + "_count")
                if attempts:
                    arm.algorithm_ms = 1000 * counter(text, ALGORITHM + "_sum") / attempts
            finally:
                self.cluster.stop_scheduler(SCHEDULER_NAME)
        finally:
            watch.stop()
        arm.watch_reconnects = watch.reconnects
        arm.rate, arm.seconds = throughput(list(watch.bound.values()))
        bound_in_api, total = count_bound(self.api, namespace)
        if bound_in_api != total:
            raise RuntimeError(f"{arm}: only {bound_in_api}/{total} pods bound in the API")
        delete_pods(self.api, namespace)
        if gpu:
            wait_for(
                "the extender to forget the deleted pods",
                lambda: self.extender_counts()[::2] == (0, 0),
                timeout=120,
                interval=0.5,
            )
        print(
            f"  {kind} pods, {config:<8} {self.nodes:>5} nodes: {pods} bound in "
            f"{arm.seconds:.2f} s, {arm.rate:.0f} pods/s, extender CPU "
            f"{arm.extender_cpu_ms:.2f} ms/pod",
            file=sys.stderr,
            flush=True,
        )
        return arm


def measure(
    node_counts: Sequence[int],
    pods: int,
    *,
    repeats: int = 1,
    non_gpu: bool = True,
    threads: int = 4,
    client_qps: int = CLIENT_QPS,
) -> list[Arm]:
    """Every arm, in alternating order, on one control plane grown to each node count."""
    cluster = ControlPlane(default_scheduler=False, keep_logs=False)
    arms: list[Arm] = []
    cluster.start()
    vramguard = LocalVramguard(cluster, extender_settings={})  # the shipped policy's timings
    try:
        vramguard.start()
        cluster.stop_scheduler(SCHEDULER_NAME)  # started again per arm, with each config
        bench = SchedulingBench(cluster, vramguard, threads, client_qps)
        bench.floor.start()
        timeout = 60 + pods  # generous: a stall, not slowness, should end a run
        for count in sorted(node_counts):
            bench.grow_to(count)
            for repeat in range(repeats):
                gpu_order = ("extender", "plain", "floor")
                gpu_order = gpu_order if repeat % 2 == 0 else gpu_order[::-1]
                arms += [bench.run("GPU", config, pods, timeout) for config in gpu_order]
        if non_gpu:
            for repeat in range(repeats):
                order = ("extender", "plain") if repeat % 2 == 0 else ("plain", "extender")
                arms += [bench.run("non-GPU", config, pods, timeout) for config in order]
    finally:
        vramguard.stop()
        cluster.stop()
    return arms


def median_of(arms: Sequence[Arm], kind: str, config: str, nodes: int, what: str) -> float:
    values = [
        getattr(a, what) for a in arms if (a.kind, a.config, a.nodes) == (kind, config, nodes)
    ]
    return statistics.median(values) if values else float("nan")


def median_rate(arms: Sequence[Arm], kind: str, config: str, nodes: int) -> float:
    return median_of(arms, kind, config, nodes, "rate")


def _present(value: float) -> float | None:
    return None if math.isnan(value) else value  # NaN: not measured (no such arm)


def rows(arms: Sequence[Arm]) -> list[Row]:
    """Extender vs plain and vs the no-op extender, per pod kind and node count (median over
    repeats); for GPU pods also the extender's CPU per bound pod vs the no-op extender's."""
    result = []
    for kind, nodes in dict.fromkeys((a.kind, a.nodes) for a in arms):
        pods = next(a.pods for a in arms if (a.kind, a.nodes) == (kind, nodes))
        gpu = kind == "GPU"
        target: Target | tuple[Target, ...] = (
            (Target("ratio", ">=", 0.5), Target("floor_ratio", ">=", 0.8))
            if gpu
            else Target("ratio", ">=", 0.9)
        )  # non-GPU: 1.0x asked; 0.9 leaves room for the noise of one run
        result.append(
            Row(
                measure=f"scheduling throughput, {kind} pods",
                configuration=f"{pods:,} pods on {nodes:,} nodes, with the extender",
                value=median_rate(arms, kind, "extender", nodes),
                unit="pods/s",
                baseline=median_rate(arms, kind, "plain", nodes),
                baseline_label="same scheduler, no extender",
                floor=_present(median_rate(arms, kind, "floor", nodes)),
                floor_label="no-op extender",
                target=target,
            )
        )
        if gpu:
            result.append(
                Row(
                    measure="extender CPU per bound GPU pod",
                    configuration=f"{pods:,} pods on {nodes:,} nodes",
                    value=median_of(arms, kind, "extender", nodes, "extender_cpu_ms"),
                    unit="ms",
                    floor=_present(median_of(arms, kind, "floor", nodes, "extender_cpu_ms")),
                    floor_label="no-op extender",
                    target=Target("value", "<=", 2.5),
                )
            )
    return result


def details(arms: Sequence[Arm]) -> str:
    lines = [
        f"{'pods':<8} {'config':<9} {'nodes':>6} {'count':>6} {'seconds':>8} {'pods/s':>7} "
        f"{'algorithm ms':>12} {'failed attempts':>15} {'extender cpu':>12} {'sched cpu':>9}"
    ]
    for a in arms:
        lines.append(
            f"{a.kind:<8} {a.config:<9} {a.nodes:>6} {a.pods:>6} {a.seconds:>8.2f} "
            f"{a.rate:>7.1f} {a.algorithm_ms:>12.2f} {a.failed_attempts:>15.0f} "
            f"{a.extender_cpu_ms:>12.2f} {a.scheduler_cpu_ms:>9.2f}"
        )
    lines.append(
        "config floor: the no-op extender (tests.bench.floors); its extender cpu is the floor's.\n"
        "algorithm ms: the scheduler's mean scheduling_algorithm_duration per pod (filter and "
        "score,\nthe extender's round trips included); binding runs beside it. pods/s: median "
        "over repeats in the summary.\nextender cpu, sched cpu: CPU ms per pod of "
        "the extender (from the scheduler's start until every pod is bound, idle work\n"
        "included) and of kube-scheduler (its whole life, start-up included)."
    )
    restarts = sum(a.watch_reconnects for a in arms)
    if restarts:
        lines.append(f"the bench's pod watch was reopened {restarts} time(s) (it fell behind)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1, help="runs per arm (alternating)")
    parser.add_argument("--no-non-gpu", dest="non_gpu", action="store_false")
    parser.add_argument("--threads", type=int, default=4, help="client threads creating pods")
    parser.add_argument(
        "--client-qps",
        type=int,
        default=CLIENT_QPS,
        help="kube-scheduler's clientConnection qps and burst, both arms (0: the default 50)",
    )
    args = parser.parse_args(argv)
    arms = measure(
        args.nodes,
        args.pods,
        repeats=args.repeats,
        non_gpu=args.non_gpu,
        threads=args.threads,
        client_qps=args.client_qps,
    )
    print(details(arms))
    print()
    print(markdown_table(rows(arms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
