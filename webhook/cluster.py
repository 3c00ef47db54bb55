"""Namespaces and PriorityClasses, known from list+watch in background threads.

The request path only reads `ClusterWatch.view`, an immutable snapshot swapped in whole when
something changes; no API call ever happens while a pod waits. Each resource has a reflector
thread: list, then watch from the list's resourceVersion; a watch that ends is resumed, an
expired one (410 Gone) is listed again, and any other failure is retried with backoff.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from gpumem.objects import metadata, metadata_text
from webhook.view import ClassPriority, ClusterView

log = logging.getLogger(__name__)

RawObject = dict[str, Any]
# The API server ends a watch after this long; it is then resumed from the last version.
WATCH_SECONDS = 300
# A connection that stays silent longer than this (plus the watch) is considered dead.
READ_TIMEOUT_SLACK = 30
LIST_TIMEOUT_SECONDS = 30
HTTP_GONE = 410


@dataclass(frozen=True)
class Retry:
    """How a reflector waits: backoff after a failure doubles from `first` up to `longest`;
    a watch that ends sooner than `min_watch` is resumed only after that long."""

    first: float = 0.5
    longest: float = 60.0
    min_watch: float = 1.0


class ResourceExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class ResourceSource(Protocol):
    """One resource kind on the API: list it, and watch it from a resourceVersion."""

    def list(self) -> tuple[list[RawObject], str]:
        """All objects and the list's resourceVersion."""
        ...

    def watch(self, resource_version: str) -> Iterator[tuple[str, RawObject]]:
        """(event type, raw object) until the server ends the watch; ResourceExpired on 410."""
        ...

    def stop(self) -> None:
        """Unblock a watch in progress, from another thread."""
        ...


class ApiSource:
    """A ResourceSource over a kubernetes client list function (e.g. list_namespace)."""

    def __init__(self, list_function: Callable[..., Any]) -> None:
        self._list_function = list_function
        self._watch: watch.Watch | None = None

    def list(self) -> tuple[list[RawObject], str]:
        try:
            response = self._list_function(
                _preload_content=False, _request_timeout=LIST_TIMEOUT_SECONDS
            )
        except ApiException as err:
            raise _expired_or(err) from err
        body = json.loads(response.data)
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def watch(self, resource_version: str) -> Iterator[tuple[str, RawObject]]:
        # The kubernetes client's watch module has no type annotations.
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        events = self._watch.stream(  # type: ignore[no-untyped-call]
            self._list_function,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=(LIST_TIMEOUT_SECONDS, WATCH_SECONDS + READ_TIMEOUT_SLACK),
        )
        try:
            for event in events:
                yield str(event["type"]), event["raw_object"]
        except ApiException as err:
            raise _expired_or(err) from err

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]


def _expired_or(err: ApiException) -> Exception:
    return ResourceExpired(str(err.reason)) if err.status == HTTP_GONE else err


class Reflector:
    """Mirrors one resource kind as {name: value} and reports every change."""

    def __init__(
        self,
        kind: str,
        source: ResourceSource,
        value_of: Callable[[RawObject], Any],
        *,
        # Called with a fresh dict on every change; the reflector never touches it again.
        on_change: Callable[[dict[str, Any]], None],
        stopping: threading.Event,
        retry: Retry,
    ) -> None:
        self.kind = kind
        self.source = source
        self.value_of = value_of
        self.on_change = on_change
        self.stopping = stopping
        self.retry = retry
        self.synced = threading.Event()
        self._objects: dict[str, Any] = {}

    def run(self) -> None:
        """List and watch until `stopping` is set."""
        first, longest = self.retry.first, self.retry.longest
        delay = first
        while not self.stopping.is_set():
            try:
                items, version = self.source.list()
                self._replace(items)
                delay = first
                while not self.stopping.is_set():
                    started = time.monotonic()
                    version = self._follow(version)
                    if time.monotonic() - started < self.retry.min_watch:
                        # A server that ends watches at once must not turn this into a spin.
                        self.stopping.wait(self.retry.min_watch)
            except ResourceExpired:
                log.info("%s watch expired (410 Gone); listing again", self.kind)
            except Exception as err:
                if self.stopping.is_set():
                    break
                log.warning(
                    "%s list/watch failed, retrying in %.1fs: %s",
                    self.kind,
                    delay,
                    err,
                    extra={"fields": {"resource": self.kind}},
                )
                # Jitter keeps many webhook replicas from reconnecting in lockstep.
                self.stopping.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, longest)

    def _follow(self, version: str) -> str:
        """Apply one watch's events; the resourceVersion to resume from."""
        for event_type, obj in self.source.watch(version):
            version = _resource_version(obj) or version
            name = _name(obj)
            if event_type in ("ADDED", "MODIFIED") and name:
                self._objects[name] = self.value_of(obj)
            elif event_type == "DELETED" and name:
                self._objects.pop(name, None)
            else:
                continue  # BOOKMARK: only the version moves
            self.on_change(dict(self._objects))
            if self.stopping.is_set():
                break
        return version

    def _replace(self, items: list[RawObject]) -> None:
        self._objects = {name: self.value_of(obj) for obj in items if (name := _name(obj))}
        self.on_change(dict(self._objects))
        if not self.synced.is_set():
            log.info("%s synced: %d known", self.kind, len(self._objects))
        self.synced.set()


class ClusterWatch:
    """The ClusterView of a live cluster: Namespaces (labels) and PriorityClasses."""

    def __init__(
        self,
        namespaces: ResourceSource,
        priority_classes: ResourceSource,
        retry: Retry | None = None,
    ) -> None:
        retry = retry or Retry()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._labels: Mapping[str, Mapping[str, str]] | None = None
        self._classes: Mapping[str, _ClassFacts] | None = None
        self._view = ClusterView()
        self._sources = (namespaces, priority_classes)
        self._reflectors = (
            Reflector(
                "namespaces",
                namespaces,
                _labels,
                on_change=self._namespaces_changed,
                stopping=self._stopping,
                retry=retry,
            ),
            Reflector(
                "priorityclasses",
                priority_classes,
                _class_facts,
                on_change=self._classes_changed,
                stopping=self._stopping,
                retry=retry,
            ),
        )
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_api(cls, api: client.ApiClient) -> ClusterWatch:
        return cls(
            ApiSource(client.CoreV1Api(api).list_namespace),
            ApiSource(client.SchedulingV1Api(api).list_priority_class),
        )

    @property
    def view(self) -> ClusterView:
        return self._view

    @property
    def synced(self) -> bool:
        return all(reflector.synced.is_set() for reflector in self._reflectors)

    def start(self) -> None:
        for reflector in self._reflectors:
            thread = threading.Thread(
                target=reflector.run, name=f"watch-{reflector.kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the reflectors; a thread stuck in a network read is left to die with the
        process (it is a daemon)."""
        self._stopping.set()
        for source in self._sources:
            source.stop()
        for thread in self._threads:
            thread.join(timeout)

    def _namespaces_changed(self, labels: dict[str, Any]) -> None:
        with self._lock:
            self._labels = MappingProxyType(labels)
            self._publish()

    def _classes_changed(self, classes: dict[str, Any]) -> None:
        with self._lock:
            self._classes = MappingProxyType(classes)
            self._publish()

    def _publish(self) -> None:
        classes: Mapping[str, _ClassFacts] | None = self._classes
        known = classes or {}
        # As the Priority plugin picks among several global defaults (a race can make two):
        # the lowest value, here then the first by name.
        defaults = sorted((f.value, name) for name, f in known.items() if f.global_default)
        self._view = ClusterView(
            namespace_labels=self._labels,
            priority_classes=None if classes is None else frozenset(classes),
            global_default_class=defaults[0][1] if defaults else None,
            class_priorities=MappingProxyType(
                {name: ClassPriority(f.value, f.preemption_policy) for name, f in known.items()}
            ),
        )


def api_client(kubeconfig: Path | None) -> client.ApiClient | None:
    """A client from the kubeconfig, else from the in-cluster service account, else None
    (no API access: the policy file alone decides). A broken kubeconfig raises."""
    if kubeconfig is not None:
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        return api
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    configuration = client.Configuration()
    try:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except ConfigException as err:
        log.warning("in-cluster API access is not usable: %s", err)
        return None
    return client.ApiClient(configuration)


def _name(obj: RawObject) -> str:
    return metadata_text(obj, "name")


def _resource_version(obj: RawObject) -> str:
    return metadata_text(obj, "resourceVersion")


def _labels(obj: RawObject) -> Mapping[str, str]:
    labels = metadata(obj).get("labels")
    if not isinstance(labels, Mapping):
        return MappingProxyType({})
    return MappingProxyType({str(k): str(v) for k, v in labels.items()})


@dataclass(frozen=True, slots=True)
class _ClassFacts:
    value: int
    preemption_policy: str | None
    global_default: bool


def _class_facts(obj: RawObject) -> _ClassFacts:
    value = obj.get("value")
    policy = obj.get("preemptionPolicy")
    return _ClassFacts(
        value=value if isinstance(value, int) and not isinstance(value, bool) else 0,
        preemption_policy=policy if isinstance(policy, str) and policy else None,
        global_default=obj.get("globalDefault") is True,
    )
