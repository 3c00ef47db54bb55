"""ClusterWatch: list+watch reflectors over scripted sources (no API server needed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kube.reflector import Pages, RawObject, Retry
from kube.reflector import WatchExpired as ResourceExpired
from tests.unit.kube.fakes import obj
from webhook.cluster import ClusterWatch, api_client
from webhook.view import ClassPriority, ClusterView

FAST = Retry(first=0.01, longest=0.05, min_watch=0.01)

Step = tuple[list[RawObject], str] | list[tuple[str, RawObject]] | Exception


class ScriptedSource:
    """Answers list() (in one page) and watch() from scripts; once a script runs out, list()
    fails and watch() blocks until stop(), like a quiet watch."""

    def __init__(self, lists: list[Step], watches: list[Step] | None = None) -> None:
        self.lists = list(lists)
        self.watches = list(watches or [])
        self.watched_from: list[str] = []
        self._stopped = threading.Event()

    def list(self) -> Pages:
        if not self.lists:
            raise RuntimeError("no more lists scripted")
        step = self.lists.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, tuple)
        items, version = step
        yield items  # one page
        return version

    def watch(self, resource_version: str) -> Iterator[tuple[str, RawObject]]:
        self.watched_from.append(resource_version)
        if not self.watches:
            self._stopped.wait(5)
            return
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, list)
        yield from step

    def stop(self) -> None:
        self._stopped.set()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def running() -> Iterator[Callable[[ScriptedSource, ScriptedSource], ClusterWatch]]:
    started: list[ClusterWatch] = []

    def start(namespaces: ScriptedSource, classes: ScriptedSource) -> ClusterWatch:
        cluster = ClusterWatch(namespaces, classes, retry=FAST)
        cluster.start()
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


NAMESPACES = ([obj("immich", labels={"tier": "1"}), obj("plain")], "10")
CLASSES = (
    [
        obj("tier-1-gpu", value=800000, preemptionPolicy="PreemptLowerPriority"),
        obj("cluster-default", globalDefault=True, value=100),
        obj("off", globalDefault=False),
    ],
    "20",
)


def test_unknown_until_synced() -> None:
    cluster = ClusterWatch(ScriptedSource([]), ScriptedSource([]), retry=FAST)
    assert cluster.view == ClusterView()
    assert not cluster.synced


def test_lists_become_the_view(running: Any) -> None:
    cluster = running(ScriptedSource([NAMESPACES]), ScriptedSource([CLASSES]))
    wait_for(lambda: cluster.synced)
    view = cluster.view
    assert view.labels_of("immich") == {"tier": "1"}
    assert view.labels_of("plain") == {}
    assert view.labels_of("unseen") is None
    assert view.priority_classes == {"tier-1-gpu", "cluster-default", "off"}
    assert view.global_default_class == "cluster-default"
    assert view.class_priorities["tier-1-gpu"] == ClassPriority(800000, "PreemptLowerPriority")
    assert view.class_priorities["off"] == ClassPriority(0, None)


def test_watch_events_update_the_view(running: Any) -> None:
    namespaces = ScriptedSource(
        [NAMESPACES],
        [
            [
                ("ADDED", obj("new", "11", labels={"tier": "0"})),
                ("MODIFIED", obj("immich", "12", labels={"tier": "2"})),
                ("DELETED", obj("plain", "13")),
                ("BOOKMARK", {"metadata": {"resourceVersion": "15"}}),
            ]
        ],
    )
    classes = ScriptedSource(
        [CLASSES], [[("MODIFIED", obj("tier-1-gpu", "21", globalDefault=True, value=800000))]]
    )
    cluster = running(namespaces, classes)
    wait_for(lambda: len(namespaces.watched_from) == 2 and len(classes.watched_from) == 2)
    view = cluster.view
    assert view.labels_of("new") == {"tier": "0"}
    assert view.labels_of("immich") == {"tier": "2"}
    assert view.labels_of("plain") is None
    # Two defaults (a race can make them): the lowest value, as the Priority plugin picks.
    assert view.global_default_class == "cluster-default"
    # The next watch resumes from the last version seen, bookmarks included.
    assert namespaces.watched_from == ["10", "15"]
    assert classes.watched_from == ["20", "21"]


def test_expired_watch_lists_again(running: Any) -> None:
    namespaces = ScriptedSource(
        [NAMESPACES, ([obj("after-relist")], "50")],
        [ResourceExpired("too old resource version")],
    )
    cluster = running(namespaces, ScriptedSource([CLASSES]))
    wait_for(lambda: cluster.view.labels_of("after-relist") is not None)
    assert cluster.view.labels_of("immich") is None
    assert namespaces.watched_from == ["10", "50"]


def test_failures_are_retried(running: Any) -> None:
    namespaces = ScriptedSource(
        [ConnectionError("refused"), PermissionError("forbidden"), NAMESPACES],
        [OSError("connection reset")],
    )
    namespaces.lists.append(([obj("relisted")], "60"))
    cluster = running(namespaces, ScriptedSource([CLASSES]))
    wait_for(lambda: cluster.view.labels_of("relisted") is not None)
    assert cluster.synced


def test_synced_needs_both_resources(running: Any) -> None:
    cluster = running(ScriptedSource([NAMESPACES]), ScriptedSource([RuntimeError("down")] * 50))
    wait_for(lambda: cluster.view.namespace_labels is not None)
    assert not cluster.synced
    assert cluster.view.priority_classes is None


def test_stop_ends_the_threads() -> None:
    cluster = ClusterWatch(ScriptedSource([NAMESPACES]), ScriptedSource([CLASSES]), retry=FAST)
    cluster.start()
    wait_for(lambda: cluster.synced)
    cluster.stop(timeout=2)
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("watch-"))


def test_no_api_access_without_kubeconfig_outside_a_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert api_client(None) is None
