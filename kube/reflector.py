"""One list+watch loop: keep a caller's view of one resource kind in sync with the API server.

List, then watch from the list's resourceVersion, resuming from the last version seen
(bookmarks included) when the server ends the stream. A 410 Gone, or `request_relist`, lists
again; any other failure is retried after an exponential backoff with jitter; a watch that ends
sooner than `Retry.min_watch` is resumed only after that long, so a server that ends watches at
once cannot turn the loop into a spin.

A list streams: each page is requested once the caller has read the previous one, so at most
one page of raw objects is alive at a time (10,000 pods decoded at once are tens of MiB, and
Python keeps the arenas they used). The caller builds its state as the objects arrive and swaps
it in at the end; a list that fails half way raises out of the caller's read, before the swap.

Objects are read as raw JSON (`_preload_content=False`): callers want camelCase dicts, and
skipping the generated models' deserialization is much cheaper on a busy watch. The watch
stream is read line by line here (one JSON event a line), not through `kubernetes.watch`,
whose deserialization and retry-once-after-410 the loop does not want.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kubernetes.client.exceptions import ApiException

from kube.client import read_json, release
from kube.errors import HTTP_GONE
from kube.threads import Threads

RawObject = dict[str, Any]
# A list in progress: its pages of raw objects, each requested when the previous one has been
# read; the generator returns (StopIteration.value) the list's resourceVersion.
Pages = Generator[list[RawObject], None, str]
# What ended a list+watch: the caller's hook logs and counts it.
Restart = Literal["relist", "expired", "error"]


class WatchExpired(Exception):
    """The resourceVersion is too old (410 Gone): only a relist can continue."""


@dataclass(frozen=True)
class Retry:
    """How a reflector waits: backoff after a failure doubles from `first` up to `longest`;
    a watch that ends sooner than `min_watch` is resumed only after that long (0: at once)."""

    first: float = 0.5
    longest: float = 60.0
    min_watch: float = 1.0


class Source(Protocol):
    """One resource kind on the API: list it, and watch it from a resourceVersion."""

    def list(self) -> Pages:
        """Every object, page by page, then the list's resourceVersion; WatchExpired on 410,
        from whichever page the server refuses."""
        ...

    def watch(self, resource_version: str) -> Iterator[tuple[str, RawObject]]:
        """(event type, raw object) until the server ends the watch; WatchExpired on 410."""
        ...

    def stop(self) -> None:
        """Unblock a watch in progress, from another thread."""
        ...


class Hooks(Protocol):
    """What the caller logs and counts; the loop itself says nothing."""

    def listed(self, resource: str, count: int, version: str) -> None: ...

    def restarted(
        self, resource: str, reason: Restart, err: Exception | None, delay: float
    ) -> None:
        """The loop lists again: on request, after a 410, or after `err` and `delay` s."""
        ...


class ListFunction(Protocol):
    """A CoreV1Api list method (list_pod_for_all_namespaces, list_node, list_namespace...)."""

    def __call__(self, **kwargs: Any) -> Any: ...


class ApiSource:
    """A Source over a kubernetes client list function. `page_size` None lists in one request
    (no limit); `list_timeout` bounds each list request; a watch asks the server to end it
    after `watch_seconds`, with a read timeout past that to detect a connection that died
    silently."""

    def __init__(
        self,
        list_function: ListFunction,
        *,
        resource: str | None = None,
        page_size: int | None = 500,
        list_timeout: float = 60,
        watch_seconds: int = 300,
        connect_timeout: float = 10,
        read_slack: float = 30,
    ) -> None:
        self._list_function = list_function
        self._resource = resource
        self._page_size = page_size
        self._list_timeout = list_timeout
        self._watch_seconds = watch_seconds
        self._connect_timeout = connect_timeout
        self._read_slack = read_slack
        self._stopping = threading.Event()

    def list(self) -> Pages:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "_preload_content": False,
                "_request_timeout": self._list_timeout,
            }
            if self._page_size is not None:
                kwargs["limit"] = self._page_size
            if token:
                kwargs["_continue"] = token
            page = read_json(self._call(**kwargs))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            version = metadata.get("resourceVersion")
            items = [item for item in page.get("items") or () if isinstance(item, dict)]
            # Dropped before the next request: one page alive at a time (module docstring).
            del page, metadata
            yield items
            del items
            if not token:
                break
        if not isinstance(version, str) or not version:
            what = f"{self._resource} list" if self._resource else "list"
            raise ValueError(f"{what} has no resourceVersion")
        return version

    def watch(self, resource_version: str) -> Iterator[tuple[str, RawObject]]:
        self._stopping.clear()
        response = self._call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds,
            _preload_content=False,
            _request_timeout=(self._connect_timeout, self._watch_seconds + self._read_slack),
        )
        try:
            for line in _lines(response):
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object")
                if not isinstance(obj, dict):
                    raise ValueError(f"watch event without object: {line[:200]}")
                if kind == "ERROR":
                    if obj.get("code") == HTTP_GONE:
                        raise WatchExpired(obj.get("message", "410 Gone"))
                    raise ValueError(f"watch error {obj.get('code')}: {obj.get('message')}")
                yield str(kind), obj
                if self._stopping.is_set():
                    break
        finally:
            response.close()
            release(response)

    def stop(self) -> None:
        self._stopping.set()

    def _call(self, **kwargs: Any) -> Any:
        try:
            return self._list_function(**kwargs)
        except ApiException as err:
            if err.status == HTTP_GONE:
                raise WatchExpired(str(err.reason)) from err
            raise


class Reflector:
    """List and watch one resource kind into `replace` (every object of each list, read once,
    as the list arrives: see the module docstring) and `apply` (event type, object: ADDED,
    MODIFIED, DELETED; bookmarks only move the version), until stopped. Runs in the caller's
    thread (`run`) or its own (`start`/`stop`)."""

    def __init__(
        self,
        resource: str,
        source: Source,
        replace: Callable[[Iterable[RawObject]], None],
        apply: Callable[[str, RawObject], None],
        *,
        hooks: Hooks,
        retry: Retry,
        thread_name: str | None = None,
        join_seconds: float = 1.0,
    ) -> None:
        self.resource = resource
        self.source = source
        self._replace = replace
        self._apply = apply
        self._hooks = hooks
        self._retry = retry
        self._thread_name = thread_name or f"watch-{resource}"
        self._threads = Threads(join_seconds=join_seconds)
        self._stop = self._threads.stopping
        self._relist = threading.Event()

    def start(self) -> None:
        self._threads.start(self._thread_name, self.run)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop. The thread may sit in a socket read until the server ends the watch;
        it is a daemon thread and stops at its next event, so do not wait long for it."""
        self.request_stop()
        self._threads.stop(timeout)

    def request_stop(self) -> None:
        """Ask the loop to end, without waiting for it."""
        self._stop.set()
        self.source.stop()

    def request_relist(self) -> None:
        """Relist at the next event or stream end (e.g. the policy changed what to keep)."""
        self._relist.set()

    def run(self) -> None:
        """List and watch until stopped."""
        first, longest, min_watch = self._retry.first, self._retry.longest, self._retry.min_watch
        delay = first
        while not self._stop.is_set():
            try:
                self._relist.clear()
                version = self.list_once()
                delay = first
                while not self._stop.is_set() and not self._relist.is_set():
                    started = time.monotonic()
                    version = self.watch_once(version)
                    if min_watch > 0 and time.monotonic() - started < min_watch:
                        # A server that ends watches at once must not turn this into a spin.
                        self._stop.wait(min_watch)
                if self._relist.is_set():
                    self._hooks.restarted(self.resource, "relist", None, 0.0)
            except WatchExpired as err:
                self._hooks.restarted(self.resource, "expired", err, 0.0)
            except Exception as err:  # network, apiserver, garbage: all retried the same way
                if self._stop.is_set():
                    break  # stopping can end a watch with an error; nothing to retry
                self._hooks.restarted(self.resource, "error", err, delay)
                # Jitter spreads the reconnects of many replicas after an apiserver restart.
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, longest)

    def list_once(self) -> str:
        """List every object into `replace`; returns the resourceVersion."""
        listing = _Listing(self.source.list())
        self._replace(listing)
        if listing.version is None:
            raise RuntimeError(f"the {self.resource} list was not read to its end")
        self._hooks.listed(self.resource, listing.count, listing.version)
        return listing.version

    def watch_once(self, version: str) -> str:
        """Apply watch events until the server ends the stream; returns the last version."""
        events = self.source.watch(version)
        try:
            for kind, obj in events:
                new_version = (obj.get("metadata") or {}).get("resourceVersion")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(kind, obj)
                if isinstance(new_version, str) and new_version:
                    version = new_version
                if self._stop.is_set() or self._relist.is_set():
                    break
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # a generator's finally closes its response now, not at collection
        return version


class _Listing:
    """The objects of one list, read once: each page is requested when the previous one has
    been read; `count` and `version` are the list's once the reading has ended."""

    def __init__(self, pages: Pages) -> None:
        self._pages: Pages | None = pages
        self.count = 0
        self.version: str | None = None

    def __iter__(self) -> Iterator[RawObject]:
        pages, self._pages = self._pages, None
        if pages is None:
            raise RuntimeError("a list is read once")
        while True:
            try:
                page = next(pages)
            except StopIteration as end:
                self.version = end.value
                return
            self.count += len(page)
            yield from page
            del page  # before the next page is requested


def _lines(response: Any) -> Iterator[str]:
    """Lines of a streamed watch response (one JSON event per line)."""
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        buffer.extend(chunk if isinstance(chunk, bytes) else str(chunk).encode())
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            line = buffer[start:end].strip()
            if line:
                yield line.decode("utf-8", errors="replace")
            start = end + 1
        del buffer[:start]
    if buffer.strip():
        yield buffer.strip().decode("utf-8", errors="replace")


__all__ = [
    "ApiSource",
    "Hooks",
    "Pages",
    "RawObject",
    "Reflector",
    "Retry",
    "Source",
    "WatchExpired",
]
