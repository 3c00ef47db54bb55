"""kube.reflector.ApiSource over a fake list function: raw objects page by page, watch events,
410 Gone; Reflector.list_once reading a list once, as it arrives. (The loop itself is tested
through its callers: tests/unit/webhook/test_cluster.py and tests/unit/extender/test_watches.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kube.reflector import ApiSource, Pages, RawObject, Reflector, Restart, Retry
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

    pages, version = read_all(ApiSource(list_namespace).list())
    assert [[item["metadata"]["name"] for item in items] for items in pages] == [["a", "b"]]
    assert version == "77"
    assert calls[0]["_preload_content"] is False
    assert calls[0]["limit"] == 500


def read_all(pages: Pages) -> tuple[list[list[RawObject]], str]:
    read = []
    while True:
        try:
            read.append(next(pages))
        except StopIteration as end:
            return read, end.value


def list_body(names: list[str], version: str, token: str | None = None) -> bytes:
    metadata = {"resourceVersion": version} | ({"continue": token} if token else {})
    return json.dumps({"metadata": metadata, "items": [obj(name) for name in names]}).encode()


def test_api_source_requests_a_page_once_the_previous_one_is_read() -> None:
    calls: list[dict[str, Any]] = []
    bodies = [list_body(["a"], "9", "t1"), list_body(["b"], "9", "t2"), list_body(["c"], "9")]

    def list_pods(**kwargs: Any) -> FakeResponse:
        calls.append(kwargs)
        return FakeResponse(bodies[len(calls) - 1])

    pages = ApiSource(list_pods, page_size=1).list()
    assert calls == []  # nothing asked before the first page is wanted
    assert [o["metadata"]["name"] for o in next(pages)] == ["a"]
    assert len(calls) == 1
    assert [o["metadata"]["name"] for o in next(pages)] == ["b"]
    assert [c.get("_continue") for c in calls] == [None, "t1"]
    rest, version = read_all(pages)
    assert [[o["metadata"]["name"] for o in page] for page in rest] == [["c"]]
    assert version == "9"
    assert [c["limit"] for c in calls] == [1, 1, 1]


def test_api_source_without_a_page_size_lists_in_one_request() -> None:
    calls: list[dict[str, Any]] = []

    def list_namespace(**kwargs: Any) -> FakeResponse:
        calls.append(kwargs)
        return FakeResponse(list_body(["a", "b"], "3"))

    pages, version = read_all(ApiSource(list_namespace, page_size=None).list())
    assert (len(pages), version) == (1, "3")
    assert len(calls) == 1
    assert "limit" not in calls[0]


def test_api_source_list_without_a_version_fails_after_its_last_page() -> None:
    def list_namespace(**_: Any) -> FakeResponse:
        return FakeResponse(json.dumps({"metadata": {}, "items": [obj("a")]}).encode())

    pages = ApiSource(list_namespace, resource="namespaces").list()
    assert len(next(pages)) == 1
    with pytest.raises(ValueError, match="namespaces list has no resourceVersion"):
        next(pages)


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
        next(ApiSource(list_namespace).list())


# --- Reflector.list_once: one list read once, as it arrives ------------------------


class Hooks:
    def __init__(self) -> None:
        self.listed_counts: list[tuple[int, str]] = []

    def listed(self, resource: str, count: int, version: str) -> None:
        self.listed_counts.append((count, version))

    def restarted(
        self, resource: str, reason: Restart, err: Exception | None, delay: float
    ) -> None:
        pass


class PagedSource:
    """A list in pages of `names`, each page built when it is asked for; `log` says when."""

    def __init__(self, pages: list[list[str] | Exception], log: list[str]) -> None:
        self.pages = pages
        self.log = log

    def list(self) -> Pages:
        for number, page in enumerate(self.pages, 1):
            self.log.append(f"page {number}")
            if isinstance(page, Exception):
                raise page
            yield [obj(name) for name in page]
        return "42"

    def watch(self, resource_version: str) -> Iterator[tuple[str, RawObject]]:
        yield from ()

    def stop(self) -> None:
        pass


def reflector(source: PagedSource, replace: Any, hooks: Hooks | None = None) -> Reflector:
    return Reflector(
        "things", source, replace, lambda kind, o: None, hooks=hooks or Hooks(), retry=Retry()
    )


def test_list_once_hands_each_object_before_the_next_page_is_asked_for() -> None:
    log: list[str] = []
    hooks = Hooks()

    def replace(items: Iterable[RawObject]) -> None:
        log.extend(item["metadata"]["name"] for item in items)
        log.append("replaced")

    version = reflector(PagedSource([["a", "b"], [], ["c"]], log), replace, hooks).list_once()
    assert log == ["page 1", "a", "b", "page 2", "page 3", "c", "replaced"]
    assert version == "42"
    assert hooks.listed_counts == [(3, "42")]


def test_a_list_that_fails_half_way_raises_out_of_the_read_and_is_not_counted() -> None:
    log: list[str] = []
    hooks = Hooks()
    kept: list[str] = []

    def replace(items: Iterable[RawObject]) -> None:
        names = [item["metadata"]["name"] for item in items]
        kept[:] = names  # never reached: the read raises first

    source = PagedSource([["a"], ["b"], ResourceExpired("continue token expired")], log)
    with pytest.raises(ResourceExpired):
        reflector(source, replace, hooks).list_once()
    assert log == ["page 1", "page 2", "page 3"]
    assert kept == []
    assert hooks.listed_counts == []


def test_a_list_not_read_to_its_end_is_an_error() -> None:
    def replace(items: Iterable[RawObject]) -> None:
        next(iter(items))

    with pytest.raises(RuntimeError, match="not read to its end"):
        reflector(PagedSource([["a", "b"]], []), replace).list_once()


def test_a_list_is_read_once() -> None:
    def replace(items: Iterable[RawObject]) -> None:
        list(items)
        list(items)

    with pytest.raises(RuntimeError, match="read once"):
        reflector(PagedSource([["a"]], []), replace).list_once()
