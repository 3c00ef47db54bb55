"""kube.nodepods: the node's pods from a list+watch with the node's field selector."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from kube.nodepods import NodePods
from kube.reflector import Restart

CID = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def pod(uid: str, name: str, version: str, container_id: str = "") -> dict[str, Any]:
    statuses = [{"name": "main", "containerID": f"containerd://{container_id}"}]
    return {
        "metadata": {"uid": uid, "namespace": "ai", "name": name, "resourceVersion": version},
        "spec": {"containers": [{"name": "main"}]},
        "status": {"containerStatuses": statuses if container_id else []},
    }


class Response:
    def __init__(self, data: bytes = b"", lines: list[dict[str, Any]] | None = None) -> None:
        self.data = data
        self.lines = lines or []

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        for line in self.lines:
            yield json.dumps(line).encode() + b"\n"

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class Core:
    """list_pod_for_all_namespaces: one list, then one watch with the events given, then
    watches that end at once."""

    def __init__(self, items: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        self.items = items
        self.events = events
        self.calls: list[dict[str, Any]] = []
        self.watched = threading.Event()

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if not kwargs.get("watch"):
            body = {"metadata": {"resourceVersion": "10"}, "items": self.items}
            return Response(json.dumps(body).encode())
        events, self.events = self.events, []
        if not events:
            self.watched.set()
        return Response(lines=events)


class Hooks:
    def __init__(self) -> None:
        self.lists: list[int] = []
        self.restarts: list[Restart] = []

    def listed(self, resource: str, count: int, version: str) -> None:
        self.lists.append(count)

    def restarted(
        self, resource: str, reason: Restart, err: Exception | None, delay: float
    ) -> None:
        self.restarts.append(reason)


def test_the_node_pods_by_uid_follow_the_watch() -> None:
    core = Core(
        [pod("u1", "a", "8", CID), pod("u2", "b", "9")],
        [
            {"type": "MODIFIED", "object": pod("u2", "b", "11", "feed")},
            {"type": "DELETED", "object": pod("u1", "a", "12", CID)},
            {"type": "ADDED", "object": pod("u3", "c", "13")},
        ],
    )
    pods = NodePods(core, "gpu-1", hooks=Hooks(), list_timeout=7)
    assert pods.by_uid() is None  # not read yet, which is not "no pods"
    pods.start()
    try:
        # The second watch starts after the first one's events were applied.
        assert core.watched.wait(5)
        index = pods.by_uid()
    finally:
        pods.stop()
    assert index is not None
    assert sorted(index) == ["u2", "u3"]
    assert index["u2"].container_ids == {"feed": "main"}
    first = core.calls[0]
    assert first["field_selector"] == "spec.nodeName=gpu-1"
    assert first["_request_timeout"] == 7
    assert all(c["field_selector"] == "spec.nodeName=gpu-1" for c in core.calls)


def test_list_once_reads_without_watching() -> None:
    core = Core([pod("u1", "a", "8", CID)], [])
    hooks = Hooks()
    pods = NodePods(core, "gpu-1", hooks=hooks)
    pods.list_once()
    index = pods.by_uid()
    assert index is not None
    assert index["u1"].container_ids == {CID: "main"}
    assert hooks.lists == [1]
    assert [c.get("watch") for c in core.calls] == [None]
