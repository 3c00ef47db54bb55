"""Pod CREATE latency through a real kube-apiserver with vramguard's webhook registered vs not.

    .venv/bin/python -m tests.bench.apiserver_bench [--pods 250] [--rounds 4]

A local control plane (etcd, kube-apiserver; tests/e2e/harness) and the webhook as
`python -m webhook`, registered from manifests/base/mutatingwebhook.yaml (failurePolicy Fail,
CEL matchConditions, 5 s timeout) with only its URL and CA changed. No scheduler, extender or
Prometheus runs, so nothing else reacts to the pods.

Rounds alternate two arms, in the order AB BA AB ...: "webhook" (the configuration
registered, and a dry-run GPU pod seen mutated) and "no webhook" (deleted, and a dry-run GPU
pod seen untouched; the webhook process keeps running). In each block, GPU pods (one
nvidia.com/gpu; the webhook injects a budget, a class and the scheduler) and non-GPU pods
are created one after the other, interleaved, by one client over a keep-alive HTTPS
connection; latency is that client's, request sent to answer read. Non-GPU pods show what the
registration costs pods the webhook never sees (the API server evaluates the CEL conditions
and skips the call).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.bench.kube import RawApi, create_namespace, percentile, pod_body
from tests.bench.table import Row, Target, markdown_table
from tests.e2e.harness import SCHEDULER_NAME, ControlPlane, LocalVramguard

NAMESPACE = "bench-create"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
GPU, NON_GPU = "GPU pod", "non-GPU pod"
REGISTERED, UNREGISTERED = "webhook", "no webhook"
TARGET = Target("ratio", "<=", 1.25)  # p50 with the webhook <= 1.25x without


@dataclass
class Latencies:
    """Client-side CREATE latencies (ms) per (pod kind, arm)."""

    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, kind: str, arm: str, ms: float) -> None:
        self.samples.setdefault((kind, arm), []).append(ms)

    def quantile(self, kind: str, arm: str, q: float) -> float:
        values = self.samples.get((kind, arm))
        if not values:
            return float("nan")
        return statistics.median(values) if q == 0.5 else percentile(values, q)


class Registration:
    """Deletes and re-creates vramguard's MutatingWebhookConfiguration, waiting each time
    until the API server acts on the change (its informer is asynchronous)."""

    def __init__(self, api: RawApi, name: str) -> None:
        self.api = api
        self.name = name
        current = api.get_json(f"{WEBHOOKS}/{name}")
        metadata = {"name": name, "labels": current["metadata"].get("labels")}
        self.body = {**current, "metadata": {k: v for k, v in metadata.items() if v}}
        self.registered = True

    def register(self) -> None:
        if not self.registered:
            self.api.request("POST", WEBHOOKS, self.body)
            self.registered = True
        self._wait(mutated=True)

    def unregister(self) -> None:
        if self.registered:
            self.api.request("DELETE", f"{WEBHOOKS}/{self.name}")
            self.registered = False
        self._wait(mutated=False)

    def _wait(self, *, mutated: bool, timeout: float = 60.0) -> None:
        probe = pod_body("probe", gpu=True)
        path = f"/api/v1/namespaces/{NAMESPACE}/pods?dryRun=All"
        deadline = time.monotonic() + timeout
        while True:
            pod = json.loads(self.api.request("POST", path, probe))
            if (pod["spec"].get("schedulerName") == SCHEDULER_NAME) == mutated:
                return
            if time.monotonic() > deadline:
                state = "mutating" if mutated else "skipping"
                raise TimeoutError(f"the API server is not {state} GPU pods after {timeout} s")
            time.sleep(0.2)


def create_block(api: RawApi, latencies: Latencies, arm: str, pods: int, first: int) -> None:
    """`pods` GPU and `pods` non-GPU pods, interleaved, each timed."""
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    for index in range(first, first + pods):
        for kind in (GPU, NON_GPU):
            prefix = "gpu" if kind == GPU else "cpu"
            body = pod_body(f"{prefix}-{index:06d}", gpu=kind == GPU)
            started = time.perf_counter()
            api.request("POST", path, body)
            latencies.add(kind, arm, 1000 * (time.perf_counter() - started))


def measure(pods: int, rounds: int, warmup: int = 20) -> Latencies:
    """`rounds` rounds of both arms (AB BA ...), `pods` pods of each kind per block."""
    cluster = ControlPlane(default_scheduler=False, keep_logs=False)
    latencies = Latencies()
    cluster.start()
    vramguard = LocalVramguard(cluster, extender_settings={})
    try:
        vramguard.start()
        # Only the webhook is measured: nothing else should react to the pods.
        cluster.stop_scheduler(SCHEDULER_NAME)
        vramguard.stop_extender()
        vramguard.prometheus.stop()
        api = RawApi(cluster.kubeconfig)
        create_namespace(api, NAMESPACE)
        registration = Registration(api, "vramguard")
        created = 0
        create_block(api, Latencies(), REGISTERED, warmup, created)  # warm both ends up
        created += warmup
        for round_ in range(rounds):
            order = (REGISTERED, UNREGISTERED) if round_ % 2 == 0 else (UNREGISTERED, REGISTERED)
            for arm in order:
                if arm == REGISTERED:
                    registration.register()
                else:
                    registration.unregister()
                create_block(api, latencies, arm, pods, created)
                created += pods
                print(f"  round {round_ + 1}: {arm} done", file=sys.stderr, flush=True)
        registration.register()  # as LocalVramguard.stop expects to find it
    finally:
        vramguard.stop()
        cluster.stop()
    return latencies


def summary_rows(latencies: Latencies, pods: int, rounds: int) -> list[Row]:
    rows = []
    for kind in (GPU, NON_GPU):
        count = pods * rounds
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                Row(
                    measure=f"pod CREATE {label}, {kind}",
                    configuration=f"kube-apiserver, webhook registered ({count:,} pods)",
                    value=latencies.quantile(kind, REGISTERED, q),
                    unit="ms",
                    baseline=latencies.quantile(kind, UNREGISTERED, q),
                    baseline_label="not registered",
                    target=TARGET if kind == GPU and q == 0.5 else None,
                )
            )
    return rows


def details(latencies: Latencies) -> str:
    lines = [f"{'pod':<12} {'arm':<11} {'count':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7}"]
    for kind in (GPU, NON_GPU):
        for arm in (REGISTERED, UNREGISTERED):
            count = len(latencies.samples.get((kind, arm), []))
            p50, p90, p99 = (latencies.quantile(kind, arm, q) for q in (0.5, 0.9, 0.99))
            lines.append(f"{kind:<12} {arm:<11} {count:>6} {p50:>7.2f} {p90:>7.2f} {p99:>7.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=250, help="pods of each kind per block")
    parser.add_argument("--rounds", type=int, default=4, help="blocks per arm, alternating")
    args = parser.parse_args(argv)
    latencies = measure(args.pods, args.rounds)
    print(details(latencies))
    print()
    print(markdown_table(summary_rows(latencies, args.pods, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
