"""What the control-plane benchmarks share: a lean API client, fast fake nodes, process sizes.

The kubernetes Python client turns every answer into model objects, which costs more CPU
than the API server spends on the request; on a 2-core machine that would be measured too.
`RawApi` speaks JSON over keep-alive HTTPS with the admin certificate of the kubeconfig,
one connection per thread, and leaves answers as bytes unless asked.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

from tests.e2e.harness.nodes import NOT_READY_TAINT_KEYS, GPUNodeSpec

MERGE_PATCH = "application/merge-patch+json"


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path}: {status} {body[:300]!r}")
        self.status = status


class RawApi:
    """JSON over keep-alive HTTPS to the kube-apiserver of a client-certificate kubeconfig."""

    def __init__(self, kubeconfig: Path, timeout: float = 30.0) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        server = urlsplit(cluster["server"])
        self.host = server.hostname or "127.0.0.1"
        self.port = server.port or 443
        self.context = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.context.load_cert_chain(user["client-certificate"], user["client-key"])
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=self.timeout
            )
            self._local.connection = connection
        return connection

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        ok: Sequence[int] = (200, 201, 202),
    ) -> bytes:
        """The answer's body; ApiError for any status outside `ok`."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            connection = self._connection()
            try:
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException):
                connection.close()  # a keep-alive connection the server closed: once more
                if attempt:
                    raise
        if response.status not in ok:
            raise ApiError(method, path, response.status, data)
        return data

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def in_parallel(
    work: Callable[[Any], object], items: Iterable[Any], threads: int = 4
) -> list[object]:
    """`work(item)` for every item on a few threads (each keeps its own API connection)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(work, items))


# --- namespaces, nodes and pods ------------------------------------------------------------


def create_namespace(api: RawApi, name: str) -> None:
    api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}}, ok=(200, 201, 409))


def create_node(api: RawApi, spec: GPUNodeSpec) -> None:
    """A Ready node with the spec's GPU capacity, untainted, in three calls (create, status,
    taints) instead of the harness's five with model objects."""
    api.request(
        "POST",
        "/api/v1/nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": spec.name, "labels": spec.node_labels()},
        },
    )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    resources = spec.capacity()
    status = {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "fake node (vramguard bench): no kubelet",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ],
        "addresses": [
            {"type": "InternalIP", "address": "192.0.2.1"},
            {"type": "Hostname", "address": spec.name},
        ],
    }
    path = f"/api/v1/nodes/{quote(spec.name)}"
    api.request("PATCH", f"{path}/status", {"status": status}, content_type=MERGE_PATCH)
    node = json.loads(api.request("GET", path))
    taints = node.get("spec", {}).get("taints") or []
    kept = [taint for taint in taints if taint.get("key") not in NOT_READY_TAINT_KEYS]
    if len(kept) != len(taints):
        api.request("PATCH", path, {"spec": {"taints": kept or None}}, content_type=MERGE_PATCH)


def create_nodes(api: RawApi, specs: Sequence[GPUNodeSpec], threads: int = 4) -> None:
    in_parallel(lambda spec: create_node(api, spec), specs, threads)


def pod_body(
    name: str,
    *,
    gpu: bool,
    scheduler_name: str | None = None,
    node_name: str | None = None,
    gpumem_mib: int | None = None,
) -> dict[str, Any]:
    """A one-container pod asking for one time-sliced GPU (or for nothing); the webhook adds
    the GPU-memory budget, priority class and scheduler of a GPU pod."""
    limits: dict[str, str] = {}
    if gpu:
        limits["nvidia.com/gpu"] = "1"
        if gpumem_mib is not None:
            limits["vramguard.io/gpumem"] = str(gpumem_mib)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {"name": "main", "image": "pause", "resources": {"limits": limits} if limits else {}}
        ],
    }
    if scheduler_name is not None:
        spec["schedulerName"] = scheduler_name
    if node_name is not None:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def create_pod(api: RawApi, namespace: str, body: dict[str, Any]) -> None:
    api.request("POST", f"/api/v1/namespaces/{quote(namespace)}/pods", body)


def bind_pod(api: RawApi, namespace: str, name: str, node: str) -> None:
    """The pods/binding a scheduler creates: the pod is on `node` from then on."""
    body = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
    api.request("POST", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/binding", body)


def delete_pods(api: RawApi, namespace: str) -> None:
    """Every pod of the namespace, at once and for good (no kubelet: no graceful stop)."""
    api.request(
        "DELETE",
        f"/api/v1/namespaces/{quote(namespace)}/pods?gracePeriodSeconds=0",
    )


def count_bound(api: RawApi, namespace: str) -> tuple[int, int]:
    """(bound, total) pods of the namespace."""
    pods = api.get_json(f"/api/v1/namespaces/{quote(namespace)}/pods")["items"]
    return sum(1 for pod in pods if pod.get("spec", {}).get("nodeName")), len(pods)


class BindWatch:
    """When each pod of a namespace got its node, from a watch started before any is bound.

    A thread reads the watch stream (JSON lines) and keeps, per pod name, the monotonic time
    of the first event that shows it with spec.nodeName. The apiserver ends a watch whose
    reader falls behind (a busy 2-core machine), so a stream that ends is opened again from
    the last resourceVersion seen, as client-go's reflector does; on 410 Gone a list fills in
    what was missed (bound "now": later than in truth, so never flattering).
    """

    def __init__(self, api: RawApi, namespace: str) -> None:
        self.bound: dict[str, float] = {}
        self.error: str | None = None
        self.reconnects = 0
        self._api = api
        self._path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        self._condition = threading.Condition()
        self._stopped = threading.Event()
        self._connection: http.client.HTTPSConnection | None = None
        self._version = str(api.get_json(f"{self._path}?limit=1")["metadata"]["resourceVersion"])
        self._response = self._open()
        self._thread = threading.Thread(target=self._run, name="bind-watch", daemon=True)
        self._thread.start()

    def _open(self) -> http.client.HTTPResponse:
        api = self._api
        connection = http.client.HTTPSConnection(
            api.host, api.port, context=api.context, timeout=api.timeout
        )
        self._connection = connection
        connection.request(
            "GET",
            f"{self._path}?watch=1&resourceVersion={self._version}&timeoutSeconds=3600",
            headers={"Accept": "application/json"},
        )
        response = connection.getresponse()
        if response.status != 200:
            raise ApiError("WATCH", self._path, response.status, response.read())
        return response

    def _run(self) -> None:
        try:
            while True:
                self._read(self._response)
                if self._stopped.is_set():
                    return
                self.reconnects += 1
                self._response = self._open()
        except Exception as err:  # the waiter must hear of it, whatever it is
            if not self._stopped.is_set():
                self.error = f"the watch failed: {err!r}"
        finally:
            with self._condition:
                self._condition.notify_all()

    def _read(self, response: http.client.HTTPResponse) -> None:
        """Apply the events of one stream until it ends (or stop() closes it)."""
        pending = b""
        while True:
            try:
                data = response.read1(65536)
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                if self._stopped.is_set():
                    return  # closed under this thread (http.client drops its file)
                raise
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line.strip():
                    self._apply(json.loads(line), time.monotonic())

    def _apply(self, event: dict[str, Any], now: float) -> None:
        pod = event.get("object") or {}
        if event.get("type") == "ERROR":
            if pod.get("code") != 410:
                raise ApiError("WATCH", self._path, int(pod.get("code", 0)), b"")
            self._catch_up(now)
            return
        metadata = pod.get("metadata") or {}
        self._version = str(metadata.get("resourceVersion", self._version))
        name = metadata.get("name")
        if name and (pod.get("spec") or {}).get("nodeName"):
            with self._condition:
                self.bound.setdefault(name, now)
                self._condition.notify_all()

    def _catch_up(self, now: float) -> None:
        listing = self._api.get_json(self._path)
        self._version = str(listing["metadata"]["resourceVersion"])
        with self._condition:
            for pod in listing["items"]:
                if pod["spec"].get("nodeName"):
                    self.bound.setdefault(pod["metadata"]["name"], now)
            self._condition.notify_all()

    def wait(self, count: int, timeout: float) -> None:
        """Return once `count` pods are bound; TimeoutError after `timeout` seconds, or at
        once if the watch failed."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while len(self.bound) < count:
                left = deadline - time.monotonic()
                if self.error is not None or left <= 0:
                    raise TimeoutError(
                        f"{len(self.bound)}/{count} pods bound after "
                        f"{timeout - max(0.0, left):.0f} s ({self.error or 'timed out'})"
                    )
                self._condition.wait(min(left, 1.0))

    def stop(self) -> None:
        self._stopped.set()
        connection = self._connection
        if connection is not None:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
            connection.close()
        self._thread.join(timeout=5)


def wait_for(
    what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """A process's resident set now and at its peak (VmHWM), MiB."""

    rss_mib: float
    peak_mib: float


def process_memory(pid: int) -> Memory:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return Memory(fields["VmRSS"], fields["VmHWM"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (q in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered))))]
