from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from extender.advertise import NodeAPIError
from extender.cluster import (
    BindError,
    KubernetesBinder,
    KubernetesEvents,
    KubernetesNodes,
    ResourceWatch,
    WatchExpired,
    node_watch,
    pod_watch,
)
from extender.metrics import ExtenderMetrics
from extender.pending import (
    EventExists,
    EventMissing,
    EventRequest,
    EventWriteError,
    NudgeRequest,
)
from extender.store import ClusterStore
from tests.unit.extender.factories import make_node, make_pod, make_policy


class FakeResponse:
    """The urllib3 response that `_preload_content=False` returns."""

    def __init__(self, data: bytes = b"", chunks: list[bytes] | None = None) -> None:
        self.data = data
        self.chunks = chunks or []
        self.closed = False
        self.released = False

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Any:
        yield from self.chunks

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True


def event(kind: str, obj: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    if version is not None:
        obj["metadata"]["resourceVersion"] = version
    return {"type": kind, "object": obj}


def stream_of(*events: dict[str, Any], split: int = 37) -> list[bytes]:
    """Watch events as the apiserver streams them: JSON lines, chunked anywhere."""
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    return [body[i : i + split] for i in range(0, len(body), split)]


class FakeListWatch:
    """list_pod_for_all_namespaces: answers list calls and watch calls from scripts."""

    def __init__(self, pages: list[Any], watches: list[Any]) -> None:
        self.pages = pages
        self.watches = watches
        self.calls: list[dict[str, Any]] = []
        self.done = threading.Event()

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        assert kwargs["_preload_content"] is False
        script = self.watches if kwargs.get("watch") else self.pages
        if not script:
            self.done.set()
            raise ConnectionError("script exhausted")
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        if kwargs.get("watch"):
            return FakeResponse(chunks=step)
        return FakeResponse(data=json.dumps(step).encode())


def page(items: list[dict[str, Any]], version: str, token: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": version}
    if token:
        metadata["continue"] = token
    return {"apiVersion": "v1", "kind": "PodList", "metadata": metadata, "items": items}


def new_store() -> ClusterStore:
    return ClusterStore(make_policy())


def test_list_pages_into_the_store() -> None:
    store = new_store()
    api = FakeListWatch(
        [
            page([make_pod("a", 1000, node="n1")], "100", token="next"),
            page([make_pod("b", 2000, node="n1")], "100"),
        ],
        [],
    )
    watch = pod_watch(
        type("Core", (), {"list_pod_for_all_namespaces": api})(), store, ExtenderMetrics()
    )
    assert watch.list_once() == "100"
    assert store.snapshot().node("n1").declared_mib == 3000
    assert api.calls[1]["_continue"] == "next"
    assert api.calls[0]["limit"] == 500


def test_watch_applies_events_and_follows_versions() -> None:
    store = new_store()
    store.replace_pods([])
    pod = make_pod("a", 1000, node="n1")
    api = FakeListWatch(
        [],
        [
            stream_of(
                event("ADDED", pod, "101"),
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}},
                event("ADDED", make_pod("b", 500, node="n1"), "160"),
                event("DELETED", pod, "170"),
            )
        ],
    )
    watch = ResourceWatch("pods", api, store.replace_pods, store.apply_pod_event, ExtenderMetrics())
    assert watch.watch_once("100") == "170"
    assert store.snapshot().node("n1").declared_mib == 500
    call = api.calls[0]
    assert call["resource_version"] == "100"
    assert call["allow_watch_bookmarks"] is True
    assert call["watch"] is True


def test_watch_error_410_is_expired() -> None:
    store = new_store()
    gone = {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "too old resource version: 100 (4711)",
            "reason": "Expired",
            "code": 410,
        },
    }
    api = FakeListWatch([], [stream_of(gone)])
    watch = ResourceWatch("pods", api, store.replace_pods, store.apply_pod_event, ExtenderMetrics())
    with pytest.raises(WatchExpired, match="too old"):
        watch.watch_once("100")


def test_watch_start_410_is_expired() -> None:
    store = new_store()
    api = FakeListWatch([], [ApiException(status=410, reason="Gone")])
    watch = ResourceWatch("pods", api, store.replace_pods, store.apply_pod_event, ExtenderMetrics())
    with pytest.raises(WatchExpired):
        watch.watch_once("100")


def run_until_exhausted(watch: ResourceWatch, api: FakeListWatch) -> None:
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    assert api.done.wait(timeout=5)
    watch.stop()
    thread.join(timeout=5)


def test_run_relists_after_410_and_backs_off_after_errors() -> None:
    store = new_store()
    metrics = ExtenderMetrics()
    api = FakeListWatch(
        [
            page([make_pod("a", 1000, node="n1")], "100"),
            page([make_pod("b", 2000, node="n1")], "200"),
            page([make_pod("c", 4000, node="n1")], "300"),
        ],
        [
            stream_of(event("ADDED", make_pod("x", 8, node="n1"), "101")),  # stream ends
            ApiException(status=410, reason="Gone"),  # resume from 101 is too old
            ApiException(status=500, reason="Internal Server Error"),
        ],
    )
    watch = ResourceWatch(
        "pods",
        api,
        store.replace_pods,
        store.apply_pod_event,
        metrics,
        backoff_initial_seconds=0.01,
    )
    run_until_exhausted(watch, api)

    versions = [c.get("resource_version") for c in api.calls if c.get("watch")]
    # a stream that ends resumes from its last version; 410 relists at once; an error relists
    # after the backoff
    assert versions == ["100", "101", "200", "300"]
    assert store.synced is False  # nodes never listed
    assert store.snapshot().node("n1").declared_mib == 4000  # the third list won
    restarts = {
        s.labels["reason"]: s.value
        for s in metrics.registry.collect()
        for s in s.samples
        if s.name == "vramguard_extender_watch_restarts_total"
    }
    assert restarts["expired"] == 1
    assert restarts["error"] >= 1


def test_relist_on_request() -> None:
    store = new_store()
    api = FakeListWatch(
        [page([], "1"), page([make_pod("a", 1000, node="n1")], "2")],
        [stream_of(event("ADDED", make_pod("x", 8, node="n1"), "5"))],
    )
    watch = ResourceWatch("pods", api, store.replace_pods, store.apply_pod_event, ExtenderMetrics())
    watch.request_relist()  # before the first list: cleared by it
    original_apply = watch._apply

    def apply_then_relist(kind: str, obj: dict[str, Any]) -> None:
        original_apply(kind, obj)
        watch.request_relist()

    watch._apply = apply_then_relist
    run_until_exhausted(watch, api)
    assert [c.get("watch", False) for c in api.calls[:3]] == [False, True, False]


def test_node_watch_feeds_nodes() -> None:
    store = new_store()
    api = FakeListWatch([page([make_node("n1", allocatable_mib=14000)], "7")], [])
    core = type("Core", (), {"list_node": api})()
    node_watch(core, store, ExtenderMetrics()).list_once()
    assert store.snapshot().node("n1").capacity.mib == 14000


# --- Binder ------------------------------------------------------------------------------------


class FakeCore:
    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.calls: list[dict[str, Any]] = []

    def create_namespaced_pod_binding(self, **kwargs: Any) -> FakeResponse:
        self.calls.append(kwargs)
        if self.failure is not None:
            raise self.failure
        return FakeResponse(b"{}")


def test_binder_creates_the_binding_with_the_pod_uid() -> None:
    core = FakeCore()
    KubernetesBinder(core, timeout_seconds=3).bind("team-a", "p", "uid-1", "gpu-1")
    call = core.calls[0]
    assert (call["name"], call["namespace"]) == ("p", "team-a")
    assert call["_preload_content"] is False
    assert call["_request_timeout"] == 3
    body = call["body"]
    assert body.metadata.uid == "uid-1"
    assert (body.target.kind, body.target.name, body.target.api_version) == ("Node", "gpu-1", "v1")


def test_binder_reports_the_api_message() -> None:
    failure = ApiException(status=409, reason="Conflict")
    failure.body = json.dumps(
        {"kind": "Status", "message": 'pod p is already assigned to node "gpu-2"', "code": 409}
    )
    with pytest.raises(BindError, match='409 pod p is already assigned to node "gpu-2"'):
        KubernetesBinder(FakeCore(failure)).bind("team-a", "p", "uid-1", "gpu-1")


def test_binder_wraps_connection_errors() -> None:
    with pytest.raises(BindError, match="connection reset"):
        KubernetesBinder(FakeCore(ConnectionResetError("connection reset"))).bind(
            "team-a", "p", "uid-1", "gpu-1"
        )


# --- KubernetesNodes (the advertiser's API calls) --------------------------------------------


class FakeNodeAPI:
    """The CoreV1Api methods KubernetesNodes calls, answering from scripts."""

    def __init__(self, nodes: list[dict[str, Any]], page_size: int = 1) -> None:
        self.nodes = nodes
        self.page_size = page_size
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.failure: Exception | None = None

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        assert kwargs["_preload_content"] is False
        assert kwargs["_request_timeout"]
        if self.failure is not None:
            raise self.failure

    def list_node(self, **kwargs: Any) -> FakeResponse:
        self._record("list_node", **kwargs)
        start = int(kwargs.get("_continue") or 0)
        end = start + self.page_size
        metadata = {"resourceVersion": "7", "continue": str(end) if end < len(self.nodes) else ""}
        return FakeResponse(
            json.dumps({"items": self.nodes[start:end], "metadata": metadata}).encode()
        )

    def read_node(self, name: str, **kwargs: Any) -> FakeResponse:
        self._record("read_node", name, **kwargs)
        for node in self.nodes:
            if node["metadata"]["name"] == name:
                return FakeResponse(json.dumps(node).encode())
        raise ApiException(status=404, reason="Not Found")

    def patch_node_status(self, name: str, body: Any, **kwargs: Any) -> FakeResponse:
        self._record("patch_node_status", name, body, **kwargs)
        return FakeResponse(b"{}")


def test_nodes_lists_gfd_labelled_nodes_page_by_page() -> None:
    core = FakeNodeAPI([make_node("gpu-1", gfd_memory_mib=15360), make_node("gpu-2")])
    nodes = KubernetesNodes(core).list_gpu_nodes()
    assert [n["metadata"]["name"] for n in nodes] == ["gpu-1", "gpu-2"]
    assert [c[2]["label_selector"] for c in core.calls] == ["nvidia.com/gpu.memory"] * 2
    assert [c[2].get("_continue") for c in core.calls] == [None, "1"]


def test_nodes_read_one_or_none() -> None:
    core = FakeNodeAPI([make_node("gpu-1")])
    nodes = KubernetesNodes(core)
    node = nodes.read_node("gpu-1")
    assert node is not None
    assert node["metadata"]["name"] == "gpu-1"
    assert nodes.read_node("gone") is None


def test_nodes_patch_the_status_subresource_with_a_json_patch() -> None:
    core = FakeNodeAPI([])
    patch = [{"op": "add", "path": "/status/capacity/vramguard.io~1gpumem", "value": "14336"}]
    KubernetesNodes(core).patch_status("gpu-1", patch)
    ((name, args, kwargs),) = core.calls
    assert (name, args) == ("patch_node_status", ("gpu-1", patch))
    assert kwargs["_content_type"] == "application/json-patch+json"
    assert kwargs["field_manager"] == "vramguard-advertise"


def test_nodes_errors_read_like_sentences() -> None:
    core = FakeNodeAPI([])
    core.failure = ApiException(status=403, reason="Forbidden")
    core.failure.body = json.dumps({"message": 'nodes "gpu-1" is forbidden: no patch on status'})
    with pytest.raises(NodeAPIError) as refused:
        KubernetesNodes(core).patch_status("gpu-1", [])
    assert str(refused.value) == (
        'patching node gpu-1 status: 403 nodes "gpu-1" is forbidden: no patch on status'
    )
    connection = urllib3.exceptions.NewConnectionError(
        object(), "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    core.failure = urllib3.exceptions.MaxRetryError(None, "/api/v1/nodes", connection)
    with pytest.raises(NodeAPIError) as unreachable:
        KubernetesNodes(core).list_gpu_nodes()
    assert str(unreachable.value) == (
        "listing nodes: cannot reach the API server: "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )


# --- KubernetesEvents (explanations of Pending pods) -------------------------------------------


class FakeEventAPI:
    """The CoreV1Api methods KubernetesEvents calls."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.failure = failure

    def _record(self, name: str, *args: Any, **kwargs: Any) -> FakeResponse:
        self.calls.append((name, args, kwargs))
        assert kwargs["_preload_content"] is False
        assert kwargs["_request_timeout"] == 4
        if self.failure is not None:
            raise self.failure
        return FakeResponse(b"{}")

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> FakeResponse:
        return self._record("create", namespace, body, **kwargs)

    def patch_namespaced_event(
        self, name: str, namespace: str, body: Any, **kwargs: Any
    ) -> FakeResponse:
        return self._record("patch", name, namespace, body, **kwargs)

    def patch_namespaced_pod_status(
        self, name: str, namespace: str, body: Any, **kwargs: Any
    ) -> FakeResponse:
        return self._record("pod-status", name, namespace, body, **kwargs)


EVENT_TIME = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def event_request(count: int = 1) -> EventRequest:
    return EventRequest(
        action="create" if count == 1 else "refresh",
        name="incoming.0123456789abcdef",
        namespace="team-a",
        pod_name="incoming",
        pod_uid="uid-1",
        message="vramguard: no node fits 1500 MiB of vramguard.io/gpumem: node-a: declared "
        "13300 + 1500 > capacity 14000 MiB",
        count=count,
        key="k",
    )


def events_client(core: FakeEventAPI) -> KubernetesEvents:
    return KubernetesEvents(
        core, instance="vramguard-scheduler-7d9f-x2" + "z" * 200, timeout_seconds=4
    )


def test_events_create_a_core_v1_warning_about_the_pod() -> None:
    core = FakeEventAPI()
    events_client(core).create(event_request(), EVENT_TIME)
    [(name, (namespace, body), _)] = core.calls
    assert (name, namespace) == ("create", "team-a")
    assert body["metadata"] == {"name": "incoming.0123456789abcdef", "namespace": "team-a"}
    # What `kubectl describe pod` lists: the involved object by kind, name, namespace and uid.
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "team-a",
        "name": "incoming",
        "uid": "uid-1",
    }
    assert (body["type"], body["reason"]) == ("Warning", "GPUMemoryUnavailable")
    assert body["message"].startswith("vramguard: no node fits 1500 MiB")
    assert body["source"] == {"component": "vramguard-extender"}
    assert body["reportingComponent"] == "vramguard-extender"
    assert len(body["reportingInstance"]) == 128
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2023-11-14T22:13:20Z"
    assert body["count"] == 1


def test_events_refresh_merge_patches_count_message_and_last_timestamp() -> None:
    core = FakeEventAPI()
    events_client(core).refresh(event_request(count=3), EVENT_TIME + 60)
    [(name, (event, namespace, patch), kwargs)] = core.calls
    assert (name, event, namespace) == ("patch", "incoming.0123456789abcdef", "team-a")
    assert patch == {
        "count": 3,
        "lastTimestamp": "2023-11-14T22:14:20Z",
        "message": event_request().message,
    }
    assert kwargs["_content_type"] == "application/merge-patch+json"


def test_a_nudge_sets_one_condition_by_strategic_merge_with_the_uid_as_precondition() -> None:
    core = FakeEventAPI()
    request = NudgeRequest("team-a", "incoming", "uid-1", "vramguard: fits now on node-a")
    events_client(core).nudge(request, EVENT_TIME)
    [(name, (pod, namespace, patch), kwargs)] = core.calls
    assert (name, pod, namespace) == ("pod-status", "incoming", "team-a")
    assert patch == {
        "metadata": {"uid": "uid-1"},
        "status": {
            "conditions": [
                {
                    "type": "vramguard.io/GPUMemoryFits",
                    "status": "True",
                    "reason": "FitsNow",
                    "message": "vramguard: fits now on node-a",
                    "lastTransitionTime": "2023-11-14T22:13:20Z",
                }
            ]
        },
    }
    # Merged by condition type: kube-scheduler's PodScheduled condition stays as it is.
    assert kwargs["_content_type"] == "application/strategic-merge-patch+json"


def test_a_refused_nudge_is_one_line() -> None:
    core = FakeEventAPI(api_error(403, "Forbidden", 'pods "incoming" is forbidden'))
    request = NudgeRequest("team-a", "incoming", "uid-1", "vramguard: fits now on node-a")
    with pytest.raises(EventWriteError) as raised:
        events_client(core).nudge(request, EVENT_TIME)
    assert str(raised.value) == (
        'setting vramguard.io/GPUMemoryFits on a pod: 403 pods "incoming" is forbidden'
    )


def api_error(status: int, reason: str, message: str) -> ApiException:
    failure = ApiException(status=status, reason=reason)
    failure.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return failure


def test_events_errors() -> None:
    exists = FakeEventAPI(api_error(409, "Conflict", 'events "incoming.0123" already exists'))
    with pytest.raises(EventExists):
        events_client(exists).create(event_request(), EVENT_TIME)
    missing = FakeEventAPI(api_error(404, "Not Found", "not found"))
    with pytest.raises(EventMissing):
        events_client(missing).refresh(event_request(2), EVENT_TIME)
    forbidden = FakeEventAPI(
        api_error(403, "Forbidden", 'events is forbidden: User "x" cannot create resource')
    )
    with pytest.raises(EventWriteError, match="creating an event: 403 events is forbidden") as info:
        events_client(forbidden).create(event_request(), EVENT_TIME)
    assert "incoming" not in info.value.problem  # one problem for every pod: logged once
    connection = urllib3.exceptions.NewConnectionError(
        object(), "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    down = FakeEventAPI(urllib3.exceptions.MaxRetryError(None, "/api/v1/events", connection))
    with pytest.raises(EventWriteError) as unreachable:
        events_client(down).refresh(event_request(2), EVENT_TIME)
    assert unreachable.value.problem == (
        "patching an event: Failed to establish a new connection: [Errno 111] Connection refused"
    )
