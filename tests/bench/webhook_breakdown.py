"""Where a webhook call's milliseconds go (issue 16, item 2). Prints numbers, asserts none.

    .venv/bin/python -m tests.bench.webhook_breakdown [--pods 200] [--rounds 3] [--threads 8]

1. In process: the handler's own steps for the bench's GPU pod (tests.bench.kube.pod_body),
   medians of many runs: JSON decode + validation (webhook.models.parse_review), the decision
   (webhook.decide), the response's encoding (webhook.responses.review_json).
2. Through a real kube-apiserver (tests/e2e/harness, as tests.bench.apiserver_bench runs it,
   the webhook registered from manifests/base/mutatingwebhook.yaml): GPU pods created one
   after the other, then from several threads at once; rounds alternate the webhook
   registered and not. From the webhook's own /metrics, before and after each block: calls,
   new TLS handshakes (vramguard_webhook_tls_handshakes_total: each is a new connection from
   the API server; resumed sessions counted apart), and the handler's time (the
   request_duration histogram's sum / count). The client's p50 beside.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpumem.policy_file import PolicyFile
from tests.bench.kube import RawApi, create_namespace, pod_body
from tests.e2e.harness import SCHEDULER_NAME, ControlPlane, LocalVramguard
from tests.e2e.harness.vramguard import metric_value
from webhook import responses
from webhook.decide import decide
from webhook.models import parse_review
from webhook.view import ClusterView

NAMESPACE = "bench-breakdown"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
POLICY = Path(__file__).resolve().parents[2] / "manifests" / "base" / "policy.yaml"


def review_body(pod: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NAMESPACE,
                "operation": "CREATE",
                "userInfo": {"username": "bench", "groups": ["system:authenticated"]},
                "object": {**pod, "metadata": {**pod["metadata"], "namespace": NAMESPACE}},
                "oldObject": None,
                "dryRun": False,
            },
        }
    ).encode()


def median_us(step: Callable[[], object], runs: int = 2000) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        step()
        samples.append(time.perf_counter() - started)
    return 1e6 * statistics.median(samples)


def in_process() -> dict[str, float]:
    body = review_body(pod_body("gpu-x", gpu=True))
    policy = PolicyFile(POLICY).current
    view = ClusterView()
    request = parse_review(body)
    reply = decide(request, policy, view)
    return {
        "body bytes": len(body),
        "parse_review µs": median_us(lambda: parse_review(body)),
        "decide µs": median_us(lambda: decide(request, policy, view)),
        "review_json µs": median_us(
            lambda: responses.review_json(responses.complete(reply, request.uid))
        ),
    }


class Counters:
    NAMES = (
        "vramguard_webhook_requests_total",
        "vramguard_webhook_tls_handshakes_total",
        "vramguard_webhook_tls_sessions_resumed_total",
        "vramguard_webhook_connections_accepted_total",
        "vramguard_webhook_request_duration_seconds_sum",
        "vramguard_webhook_request_duration_seconds_count",
    )

    def __init__(self, vramguard: LocalVramguard) -> None:
        text = vramguard.webhook_get("/metrics")
        self.values = {name: metric_value(text, name, {}) for name in self.NAMES}
        pid = vramguard.webhook_process.pid
        assert pid is not None
        # utime + stime of the whole webhook process (TLS, HTTP, handler, logging), in ticks.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        self.values["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def minus(self, before: Counters) -> dict[str, float]:
        return {name: self.values[name] - before.values[name] for name in self.values}


def create(api: RawApi, names: Sequence[str], latencies: list[float]) -> None:
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    for name in names:
        started = time.perf_counter()
        api.request("POST", path, pod_body(name, gpu=True))
        latencies.append(1000 * (time.perf_counter() - started))


def block(
    cluster: ControlPlane, apis: list[RawApi], first: int, pods: int, threads: int
) -> list[float]:
    latencies: list[float] = []
    if threads == 1:
        create(apis[0], [f"gpu-{i:06d}" for i in range(first, first + pods)], latencies)
        return latencies
    shares = [
        [f"gpu-{i:06d}" for i in range(first + t, first + pods, threads)] for t in range(threads)
    ]
    workers = [
        threading.Thread(target=create, args=(apis[t], shares[t], latencies))
        for t in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies


class Toggle:
    def __init__(self, api: RawApi) -> None:
        self.api = api
        current = api.get_json(f"{WEBHOOKS}/vramguard")
        self.body = {**current, "metadata": {"name": "vramguard"}}
        self.registered = True

    def set(self, registered: bool) -> None:
        if registered != self.registered:
            if registered:
                self.api.request("POST", WEBHOOKS, self.body)
            else:
                self.api.request("DELETE", f"{WEBHOOKS}/vramguard")
            self.registered = registered
        deadline = time.monotonic() + 60
        while self._mutated() != registered:
            if time.monotonic() > deadline:
                raise TimeoutError("the API server did not follow the registration")
            time.sleep(0.2)

    def _mutated(self) -> bool:
        pod = json.loads(
            self.api.request(
                "POST",
                f"/api/v1/namespaces/{NAMESPACE}/pods?dryRun=All",
                pod_body("probe", gpu=True),
            )
        )
        return bool(pod["spec"].get("schedulerName") == SCHEDULER_NAME)


def through_apiserver(pods: int, rounds: int, threads: int) -> None:
    cluster = ControlPlane(default_scheduler=False, keep_logs=False)
    cluster.start()
    vramguard = LocalVramguard(cluster, extender_settings={})
    try:
        vramguard.start()
        cluster.stop_scheduler(SCHEDULER_NAME)
        vramguard.stop_extender()
        vramguard.prometheus.stop()
        apis = [RawApi(cluster.kubeconfig) for _ in range(threads)]
        create_namespace(apis[0], NAMESPACE)
        toggle = Toggle(apis[0])
        created = 0
        block(cluster, apis, created, 20, 1)  # warm up
        created += 20
        results: dict[tuple[str, bool], list[float]] = {}
        per_call: dict[str, list[dict[str, float]]] = {}
        for round_ in range(rounds):
            for registered in (True, False) if round_ % 2 == 0 else (False, True):
                toggle.set(registered)
                for label, width in (("sequential", 1), (f"{threads} threads", threads)):
                    before = Counters(vramguard)
                    latencies = block(cluster, apis, created, pods, width)
                    created += pods
                    delta = Counters(vramguard).minus(before)
                    results.setdefault((label, registered), []).append(statistics.median(latencies))
                    if registered:
                        per_call.setdefault(label, []).append(delta)
            print(f"  round {round_ + 1} done", file=sys.stderr, flush=True)
        toggle.set(True)
        for label, deltas in per_call.items():

            def total(name: str, deltas: list[dict[str, float]] = deltas) -> float:
                return sum(d[f"vramguard_webhook_{name}"] for d in deltas)

            calls = total("requests_total")
            # Less the /metrics scrape's own connection (the one after each block).
            handshakes = total("tls_handshakes_total") - len(deltas)
            cpu = sum(d["cpu_seconds"] for d in deltas)
            resumed = total("tls_sessions_resumed_total")
            handler = total("request_duration_seconds_sum")
            with_p50 = statistics.median(results[(label, True)])
            without_p50 = statistics.median(results[(label, False)])
            print(
                f"{label}: {calls:.0f} webhook calls, {handshakes:.0f} new TLS handshakes "
                f"({handshakes / max(calls, 1):.3f} per call, {resumed:.0f} resumed), handler "
                f"{1000 * handler / max(calls, 1):.3f} ms per call, webhook process CPU "
                f"{1000 * cpu / max(calls, 1):.2f} ms per call; client p50 "
                f"{with_p50:.2f} ms registered vs {without_p50:.2f} ms not "
                f"(+{with_p50 - without_p50:.2f} ms), medians of {rounds} blocks each"
            )
    finally:
        vramguard.stop()
        cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=200, help="GPU pods per block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--in-process-only", action="store_true")
    args = parser.parse_args(argv)
    for name, value in in_process().items():
        print(f"{name}: {value:,.1f}")
    if not args.in_process_only:
        through_apiserver(args.pods, args.rounds, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
