"""kube.reflector.ApiSource over a fake list function: raw objects, watch events, 410 Gone.
(The loop itself is tested through its callers: tests/unit/webhook/test_cluster.py and
tests/unit/extender/test_watches.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kube.reflector import ApiSource
from kube.reflector import WatchExpired as ResourceExpired
from tests.unit.kube.fakes import obj

# --- ApiSource over the kubernetes client's list function --------------------------


class FakeResponse:
    """What a kubernetes list call returns with _preload_content=False."""

    status = 200

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


def test_api_source_lists_raw_objects() -> None:
    calls: list[dict[str, Any]] = []

    def list_namespace(**kwargs: Any) -> FakeResponse:
        calls.append(kwargs)
        body = {"metadata": {"resourceVersion": "77"}, "items": [obj("a"), obj("b")]}
        return FakeResponse(json.dumps(body).encode())

    items, version = ApiSource(list_namespace).list()
    assert [item["metadata"]["name"] for item in items] == ["a", "b"]
    assert version == "77"
    assert calls[0]["_preload_content"] is False


def test_api_source_watch_yields_events_and_turns_410_into_expired() -> None:
    def list_namespace(**kwargs: Any) -> FakeResponse:
        assert kwargs["watch"] is True
        assert kwargs["resource_version"] == "5"
        assert kwargs["allow_watch_bookmarks"] is True
        return FakeResponse(
            lines=[
                {"type": "ADDED", "object": obj("a", "6")},
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "code": 410,
                        "reason": "Expired",
                        "message": "old",
                    },
                },
            ]
        )

    events = ApiSource(list_namespace).watch("5")
    assert next(events) == ("ADDED", obj("a", "6"))
    with pytest.raises(ResourceExpired):
        next(events)


def test_api_source_list_410_is_expired() -> None:
    def list_namespace(**_: Any) -> FakeResponse:
        raise ApiException(status=410, reason="Gone")

    with pytest.raises(ResourceExpired):
        ApiSource(list_namespace).list()
