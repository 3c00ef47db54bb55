"""The extender's CPU per bound GPU pod in one process, without kube-apiserver or the
scheduler: what `scheduling_bench`'s "extender CPU per bound pod" is made of, and a quick
before/after for a change to the request path or the watches.

    .venv/bin/python -m tests.bench.extender_cpu [--nodes 500] [--pods 300] [--profile]

One extender app (extender.app.create_app) over an in-memory store of N one-card nodes with
live telemetry, driven through its ASGI interface as kube-scheduler drives it, for each pod:
the pod watch's ADDED event, POST /filter and /prioritize with the pod and every node's name
(nodeCacheCapable), POST /bind (a binder that records the call: the API round trip is not in
it), then the watch's MODIFIED event of the bound pod (nodeName, PodScheduled) and, at the
end, every pod's DELETED event. The events are applied as the watch applies them (parsed
from the JSON line the API server sends). CPU is process time per pod over the whole loop;
--profile prints the cProfile of the loop's top functions instead.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extender.app import ExtenderDeps, FixedPolicy, create_app
from extender.metrics import ExtenderMetrics
from extender.settings import Settings
from extender.store import ClusterStore
from gpumem.state import Sample, TelemetryReading

GPUMEM = "vramguard.io/gpumem"


def node(name: str) -> dict[str, Any]:
    allocatable = {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "8"}
    allocatable[GPUMEM] = "14000"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "labels": {
                "kubernetes.io/hostname": name,
                "nvidia.com/gpu.memory": "15360",
                "nvidia.com/gpu.count": "1",
                "nvidia.com/gpu.product": "Tesla-T4",
            },
        },
        "spec": {},
        "status": {
            "capacity": dict(allocatable),
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def pod(index: int, node_name: str | None = None) -> dict[str, Any]:
    """A GPU pod as the webhook leaves it, with the fields the API server adds."""
    name = f"p-{index:05d}"
    limits = {"nvidia.com/gpu": "1", GPUMEM: "1024"}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": f"00000000-0000-0000-0000-{index:012d}",
            "resourceVersion": str(1000 + index),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"vramguard.io/gpumem": "1024", "vramguard.io/decision": "d" * 120},
            "managedFields": [
                {
                    "manager": "python",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:containers": {'k:{"name":"main"}': {".": {}}}}},
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": limits, "requests": dict(limits)},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "vramguard-scheduler",
            "priorityClassName": "gpu-default",
            "priority": 1000,
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            ],
        },
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }
    if node_name is not None:
        body["spec"]["nodeName"] = node_name
        body["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    return body


class RecordingBinder:
    def __init__(self) -> None:
        self.binds = 0

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        self.binds += 1


async def call(app: Any, path: str, body: bytes) -> bytes:
    """One POST through the ASGI interface, as uvicorn would make it."""
    chunks: list[bytes] = []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    await app(scope, receive, send)
    return b"".join(chunks)


def build(nodes: int) -> tuple[Any, ClusterStore, list[str]]:
    from gpumem.policy import Policy  # noqa: PLC0415

    policy = Policy.model_validate({})
    now = time.time()
    store = ClusterStore(policy)
    names = [f"gpu-{i:05d}" for i in range(nodes)]
    store.replace_nodes([node(name) for name in names])
    store.replace_pods([])
    store.apply_telemetry(
        TelemetryReading(
            source="dcgm",
            fetched_at=now,
            free={name: Sample(15060, now) for name in names},
            used={name: Sample(300, now) for name in names},
        )
    )
    with tempfile.TemporaryDirectory() as directory:
        policy_file = Path(directory) / "policy.yaml"
        policy_file.write_text("{}\n")
        settings = Settings(policy=policy_file, prometheus_url="http://prometheus.invalid:9090")
    deps = ExtenderDeps(
        store=store, binder=RecordingBinder(), policy=FixedPolicy(policy), metrics=ExtenderMetrics()
    )
    return create_app(settings, deps), store, names


def event_line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


def apply_line(store: ClusterStore, line: bytes) -> None:
    event = json.loads(line)
    store.apply_pod_event(event["type"], event["object"])


async def run(app: Any, store: ClusterStore, names: Sequence[str], pods: int) -> None:
    node_names = names
    for index in range(pods):
        raw = pod(index)
        apply_line(store, event_line("ADDED", raw))
        args = json.dumps({"Pod": raw, "Nodes": None, "NodeNames": node_names}).encode()
        await call(app, "/filter", args)
        scores = json.loads(await call(app, "/prioritize", args))
        best = max(scores, key=lambda s: s["Score"])["Host"]
        binding = {
            "PodName": raw["metadata"]["name"],
            "PodNamespace": "bench",
            "PodUID": raw["metadata"]["uid"],
            "Node": best,
        }
        answer = json.loads(await call(app, "/bind", json.dumps(binding).encode()))
        if answer.get("Error"):
            raise RuntimeError(f"bind refused: {answer}")
        apply_line(store, event_line("MODIFIED", pod(index, best)))
    for index in range(pods):
        apply_line(store, event_line("DELETED", pod(index)))


def measure(nodes: int, pods: int, profile: bool = False) -> float:
    """CPU ms per pod (process time), after one warm-up pass."""
    app, store, names = build(nodes)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run(app, store, names, min(pods, 20)))
        profiler = cProfile.Profile() if profile else None
        started = time.process_time()
        if profiler is not None:
            profiler.enable()
        loop.run_until_complete(run(app, store, names, pods))
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
        return 1000 * (time.process_time() - started) / pods
    finally:
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    for nodes in args.nodes:
        if args.profile:
            measure(nodes, args.pods, profile=True)
            continue
        values = sorted(measure(nodes, args.pods) for _ in range(args.repeats))
        print(
            f"{nodes} nodes: extender CPU per pod {values[len(values) // 2]:.3f} ms "
            f"(median of {args.repeats}; {', '.join(f'{v:.3f}' for v in values)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
