"""The extender's pod and node watches (extender.watches over kube.reflector): paginated
lists into the store, watch events, 410 Gone, backoff, relist on request, the restart metric."""

from __future__ import annotations

import copy
import json
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from extender.watches import ResourceWatch, node_watch, pod_watch
from kube.reflector import WatchExpired
from tests.unit.extender.factories import make_node, make_pod, make_policy
from tests.unit.kube.fakes import FakeResponse


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
    node = store.snapshot().node("n1")
    assert node is not None
    assert node.declared_mib == 3000
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
    node = store.snapshot().node("n1")
    assert node is not None
    assert node.declared_mib == 500
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
    node = store.snapshot().node("n1")
    assert node is not None
    assert node.declared_mib == 4000  # the third list won
    restarts = {
        s.labels["reason"]: s.value
        for m in metrics.registry.collect()
        for s in m.samples
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
    node = store.snapshot().node("n1")
    assert node is not None
    assert node.capacity.mib == 14000


# --- a list streams into the store: one page of raw pods alive at a time, swapped in whole ---


class Raw(dict[str, Any]):
    """A raw object that a weak reference can follow (a plain dict cannot)."""


@dataclass
class Answer:
    page: Raw


class BlockedStream(FakeResponse):
    """A watch that sends nothing until `end` is set."""

    def __init__(self, end: threading.Event) -> None:
        super().__init__()
        self.end = end

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Any:
        self.end.wait(5)
        yield from ()


Page = list[dict[str, Any]] | Exception


class StreamedPages:
    """list_pod_for_all_namespaces answering each list (a request without a continue token
    starts the next one scripted) page by page with Raw objects, read back by a read_json
    patched to pass them through. At each request it records how many raw pods of the earlier
    pages are still alive. Watches send nothing until `released`."""

    def __init__(self, *lists: Sequence[Page]) -> None:
        self.lists = list(lists)
        self.pages: Sequence[Page] = []
        self.listed = 0
        self.alive_at_request: list[int] = []
        self.refs: list[weakref.ref[Raw]] = []
        self.released = threading.Event()

    def __call__(self, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            return BlockedStream(self.released)
        self.alive_at_request.append(sum(ref() is not None for ref in self.refs))
        token = kwargs.get("_continue")
        if token is None:
            self.pages, self.listed = self.lists.pop(0), self.listed + 1
        number = int(token) if token else 0
        step = self.pages[number]
        if isinstance(step, Exception):
            raise step
        items = [Raw(copy.deepcopy(pod)) for pod in step]
        self.refs += [weakref.ref(item) for item in items]
        metadata = {"resourceVersion": str(100 * self.listed)}
        if number + 1 < len(self.pages):
            metadata["continue"] = str(number + 1)
        return Answer(Raw(metadata=metadata, items=items))


@pytest.fixture
def passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kube.reflector.read_json", lambda answer: answer.page)


class Names:
    """A pod listener that keeps the names it was handed (never the raw pods)."""

    def __init__(self) -> None:
        self.replaced: list[list[str]] = []
        self.events: list[str] = []

    def pod_replacement(self) -> Any:
        names: list[str] = []
        listener = self

        class Replacement:
            def add(self, raw: dict[str, Any]) -> None:
                names.append(raw["metadata"]["name"])

            def commit(self) -> None:
                listener.replaced.append(names)

        return Replacement()

    def apply_pod_event(self, event_type: str, raw: dict[str, Any]) -> None:
        self.events.append(raw["metadata"]["name"])


def watch_of(api: Any, store: ClusterStore, listener: Names) -> ResourceWatch:
    core = type("Core", (), {"list_pod_for_all_namespaces": api})()
    return pod_watch(
        core, store, ExtenderMetrics(), listeners=[listener], backoff_initial_seconds=0.01
    )


THREE_PAGES = [
    [make_pod("a", 1000, node="n1"), make_pod("b", 1000, node="n1")],
    [make_pod("c", 1000, node="n1"), make_pod("d", 1000, node="n2")],
    [make_pod("e", 1000, node="n2")],
]


@pytest.mark.usefixtures("passed_through")
def test_a_list_is_read_into_the_store_and_the_listeners_a_page_at_a_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = new_store()
    listener = Names()
    api = StreamedPages(THREE_PAGES)
    with caplog.at_level("INFO", logger="extender.watches"):
        assert watch_of(api, store, listener).list_once() == "100"
    # When a page is asked for, the earlier pages are gone but for the one pod the reading
    # loop still holds: the store and the listener kept only what they build from them.
    assert api.alive_at_request == [0, 1, 1]
    assert listener.replaced == [["a", "b", "c", "d", "e"]]  # every pod, in one pass
    assert declared(store) == {"n1": 3000, "n2": 2000}
    assert "listed 5 pods at resourceVersion 100" in caplog.text


@pytest.mark.usefixtures("passed_through")
@pytest.mark.parametrize(
    "failure",
    [WatchExpired("the continue token expired"), ConnectionError("reset by peer")],
    ids=["410", "network"],
)
def test_a_list_that_fails_half_way_changes_nothing_and_is_listed_again(
    failure: Exception,
) -> None:
    store = new_store()
    store.replace_pods([make_pod("old", 500, node="n1")])
    listener = Names()
    api = StreamedPages([*THREE_PAGES[:2], failure], THREE_PAGES)
    watch = watch_of(api, store, listener)
    with pytest.raises(type(failure)):
        watch.list_once()
    assert declared(store) == {"n1": 500, "n2": 0}  # nothing of pages 1 and 2 went in
    assert listener.replaced == []

    # The loop lists again, from the first page, and that list wins.
    api.lists.insert(0, [*THREE_PAGES[:2], failure])
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: bool(listener.replaced))
    finally:
        watch.request_stop()
        api.released.set()
        thread.join(timeout=5)
    assert api.listed == 3
    assert listener.replaced == [["a", "b", "c", "d", "e"]]
    assert declared(store) == {"n1": 3000, "n2": 2000}
    assert store.pod_for_bind(str(make_pod("old", 500)["metadata"]["uid"])) is None


def declared(store: ClusterStore) -> dict[str, int]:
    nodes = {name: store.snapshot().node(name) for name in ("n1", "n2")}
    return {name: 0 if node is None else node.declared_mib for name, node in nodes.items()}


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
