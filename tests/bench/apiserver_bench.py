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

Two floors run in the same rounds (tests.bench.floors, on the webhook's own server stack, TLS
context and certificate), registered with vramguard's configuration with only the URL
changed: "no-op webhook" (allowed, no patch) and "fixed-patch webhook" (allowed with
vramguard's own JSONPatch for the bench's GPU pod, taken from its /mutate once at the start,
so the API server applies a patch of the same size). The order of the four arms rotates each
round. Which server answered a dry-run probe is told by the floor's call counters, so every
arm is seen in effect before it is timed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import ssl
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.bench.kube import RawApi, create_namespace, percentile, pod_body
from tests.bench.table import Row, Target, markdown_table
from tests.e2e.harness import SCHEDULER_NAME, ControlPlane, LocalVramguard
from tests.e2e.harness.process import ManagedProcess, free_port, url_ok

NAMESPACE = "bench-create"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
GPU, NON_GPU = "GPU pod", "non-GPU pod"
REGISTERED, UNREGISTERED = "webhook", "no webhook"
NOOP, PATCH = "no-op webhook", "fixed-patch webhook"
ARMS = (REGISTERED, UNREGISTERED, NOOP, PATCH)
FLOOR_PATHS = {NOOP: "noop", PATCH: "patch"}
# GPU pod p50: <= 1.5x no webhook, and <= 1.15x the no-op webhook (issue 16).
TARGET = Target("ratio", "<=", 1.5)
FLOOR_TARGET = Target("floor_ratio", "<=", 1.15)


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


class FloorWebhook:
    """tests.bench.floors' webhook as a process, on vramguard's certificate."""

    def __init__(self, cluster: ControlPlane, vramguard: LocalVramguard, patch: bytes) -> None:
        tls = vramguard.directory / "webhook-tls"
        patch_file = vramguard.directory / "floor-patch.json"
        patch_file.write_bytes(patch)
        self.port = free_port()
        self.context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        self.url = f"https://127.0.0.1:{self.port}"
        self.cluster = cluster
        self.process = ManagedProcess(
            "floor-webhook",
            [
                sys.executable,
                "-m",
                "tests.bench.floors",
                "webhook",
                f"--port={self.port}",
                f"--tls-cert={tls / 'tls.crt'}",
                f"--tls-key={tls / 'tls.key'}",
                f"--patch={patch_file}",
            ],
            cluster.workdir / "logs" / "floor-webhook.log",
        )

    def start(self) -> None:
        self.cluster.start_process(
            self.process,
            ready=lambda: url_ok(f"{self.url}/readyz", self.context),
            what=f"floor webhook {self.url}/readyz",
            timeout=60,
        )

    def calls(self) -> dict[str, int]:
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context)
        try:
            connection.request("GET", "/calls")
            return dict(json.loads(connection.getresponse().read()))
        finally:
            connection.close()


def vramguard_patch(vramguard: LocalVramguard, pod: dict[str, object]) -> bytes:
    """The JSONPatch vramguard's webhook answers for `pod` (its /mutate, called directly)."""
    context = ssl.create_default_context(cafile=str(vramguard.directory / "webhook-tls/ca.crt"))
    port = int(vramguard.webhook_url.rsplit(":", 1)[1])
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": {**pod, "metadata": {**pod["metadata"], "namespace": NAMESPACE}},  # type: ignore[dict-item]
        },
    }
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    try:
        connection.request(
            "POST", "/mutate", json.dumps(review), {"Content-Type": "application/json"}
        )
        answer = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    patch = answer["response"].get("patch")
    if not patch:
        raise RuntimeError(f"vramguard's webhook sent no patch for the bench's GPU pod: {answer}")
    return base64.b64decode(patch)


class Registration:
    """Points vramguard's MutatingWebhookConfiguration at one arm's server (or deletes it),
    waiting each time until the API server acts on the change (its informer is
    asynchronous)."""

    def __init__(self, api: RawApi, name: str, floor: FloorWebhook) -> None:
        self.api = api
        self.name = name
        self.floor = floor
        current = api.get_json(f"{WEBHOOKS}/{name}")
        metadata = {"name": name, "labels": current["metadata"].get("labels")}
        self.body = {**current, "metadata": {k: v for k, v in metadata.items() if v}}
        self.vramguard_url = current["webhooks"][0]["clientConfig"]["url"]
        self.arm = REGISTERED

    def select(self, arm: str) -> None:
        if arm != self.arm:
            if self.arm != UNREGISTERED:
                self.api.request("DELETE", f"{WEBHOOKS}/{self.name}")
                self.arm = UNREGISTERED
            if arm != UNREGISTERED:
                url = self.vramguard_url if arm == REGISTERED else f"{self.floor.url}/"
                if arm in FLOOR_PATHS:
                    url += FLOOR_PATHS[arm]
                body = json.loads(json.dumps(self.body))
                for webhook in body["webhooks"]:
                    webhook["clientConfig"]["url"] = url
                self.api.request("POST", WEBHOOKS, body)
            self.arm = arm
        self._wait(arm)

    def served_by(self) -> str:
        """Which arm's server a dry-run GPU pod went through."""
        before = self.floor.calls()
        pod = json.loads(
            self.api.request(
                "POST",
                f"/api/v1/namespaces/{NAMESPACE}/pods?dryRun=All",
                pod_body("probe", gpu=True),
            )
        )
        after = self.floor.calls()
        for arm, path in FLOOR_PATHS.items():
            if after.get(path, 0) > before.get(path, 0):
                return arm
        return REGISTERED if pod["spec"].get("schedulerName") == SCHEDULER_NAME else UNREGISTERED

    def _wait(self, arm: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while (served := self.served_by()) != arm:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the API server still sends GPU pods to {served!r}, not {arm!r}"
                )
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
    """`rounds` rounds of the four arms (order rotated each round), `pods` pods of each kind
    per block."""
    cluster = ControlPlane(default_scheduler=False, keep_logs=False)
    latencies = Latencies()
    cluster.start()
    vramguard = LocalVramguard(cluster, extender_settings={})
    try:
        vramguard.start()
        # Only the webhooks are measured: nothing else should react to the pods.
        cluster.stop_scheduler(SCHEDULER_NAME)
        vramguard.stop_extender()
        vramguard.prometheus.stop()
        api = RawApi(cluster.kubeconfig)
        create_namespace(api, NAMESPACE)
        floor = FloorWebhook(
            cluster, vramguard, vramguard_patch(vramguard, pod_body("x", gpu=True))
        )
        floor.start()
        registration = Registration(api, "vramguard", floor)
        created = 0
        for arm in ARMS:  # warm every server and connection up
            registration.select(arm)
            create_block(api, Latencies(), arm, warmup, created)
            created += warmup
        for round_ in range(rounds):
            order = ARMS[round_ % len(ARMS) :] + ARMS[: round_ % len(ARMS)]
            if round_ % 2:
                order = order[::-1]
            for arm in order:
                registration.select(arm)
                create_block(api, latencies, arm, pods, created)
                created += pods
                print(f"  round {round_ + 1}: {arm} done", file=sys.stderr, flush=True)
        registration.select(REGISTERED)  # as LocalVramguard.stop expects to find it
    finally:
        vramguard.stop()
        cluster.stop()
    return latencies


def summary_rows(latencies: Latencies, pods: int, rounds: int) -> list[Row]:
    rows = []
    count = pods * rounds
    for kind in (GPU, NON_GPU):
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                Row(
                    measure=f"pod CREATE {label}, {kind}",
                    configuration=f"kube-apiserver, vramguard registered ({count:,} pods)",
                    value=latencies.quantile(kind, REGISTERED, q),
                    unit="ms",
                    baseline=latencies.quantile(kind, UNREGISTERED, q),
                    baseline_label="not registered",
                    floor=latencies.quantile(kind, NOOP, q),
                    floor_label="no-op webhook",
                    target=(TARGET, FLOOR_TARGET) if kind == GPU and q == 0.5 else None,
                )
            )
        if kind == GPU:
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                rows.append(
                    Row(
                        measure=f"pod CREATE {label}, {kind}",
                        configuration="fixed-patch webhook (vramguard's patch, no decision)",
                        value=latencies.quantile(kind, PATCH, q),
                        unit="ms",
                        baseline=latencies.quantile(kind, UNREGISTERED, q),
                        baseline_label="not registered",
                        floor=latencies.quantile(kind, NOOP, q),
                        floor_label="no-op webhook",
                    )
                )
    return rows


def details(latencies: Latencies) -> str:
    lines = [f"{'pod':<12} {'arm':<20} {'count':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7}"]
    for kind in (GPU, NON_GPU):
        for arm in ARMS:
            count = len(latencies.samples.get((kind, arm), []))
            p50, p90, p99 = (latencies.quantile(kind, arm, q) for q in (0.5, 0.9, 0.99))
            lines.append(f"{kind:<12} {arm:<20} {count:>6} {p50:>7.2f} {p90:>7.2f} {p99:>7.2f}")
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
