"""Namespaces and PriorityClasses, known from list+watch in background threads.

The request path only reads `ClusterWatch.view`, an immutable snapshot swapped in whole when
something changes; no API call ever happens while a pod waits. Each resource has a reflector
thread (kube.reflector): list, then watch from the list's resourceVersion; a watch that ends
is resumed, an expired one (410 Gone) is listed again, and any other failure is retried with
backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gpumem.objects import metadata, metadata_text
from kube import client as kube_client
from kube.client import ApiClient, InClusterUnusable, core_v1, scheduling_v1
from kube.reflector import ApiSource, RawObject, Reflector, Restart, Retry, Source
from webhook.view import ClassPriority, ClusterView

log = logging.getLogger(__name__)

# The API server ends a watch after this long; it is then resumed from the last version.
WATCH_SECONDS = 300
# A connection that stays silent longer than this (plus the watch) is considered dead.
READ_TIMEOUT_SLACK = 30
LIST_TIMEOUT_SECONDS = 30
# The webhook's backoff: from 0.5 s up to 60 s; a watch that ends within 1 s waits that long.
RETRY = Retry(first=0.5, longest=60.0, min_watch=1.0)


class _WatchLog:
    """kube.reflector.Hooks of the webhook: a line per restart (the sync is _Mirror's)."""

    def listed(self, resource: str, count: int, version: str) -> None:
        pass

    def restarted(
        self, resource: str, reason: Restart, err: Exception | None, delay: float
    ) -> None:
        if reason == "expired":
            log.info("%s watch expired (410 Gone); listing again", resource)
        elif reason == "error":
            log.warning(
                "%s list/watch failed, retrying in %.1fs: %s",
                resource,
                delay,
                err,
                extra={"fields": {"resource": resource}},
            )


class _Mirror:
    """One resource kind as {name: value}, handed whole to `on_change` on every change."""

    def __init__(
        self,
        kind: str,
        value_of: Callable[[RawObject], Any],
        # Called with a fresh dict on every change; the mirror never touches it again.
        on_change: Callable[[dict[str, Any]], None],
    ) -> None:
        self.kind = kind
        self.value_of = value_of
        self.on_change = on_change
        self.synced = threading.Event()
        self._objects: dict[str, Any] = {}

    def replace(self, items: Iterable[RawObject]) -> None:
        self._objects = {name: self.value_of(obj) for obj in items if (name := _name(obj))}
        self.on_change(dict(self._objects))
        if not self.synced.is_set():
            log.info("%s synced: %d known", self.kind, len(self._objects))
        self.synced.set()

    def apply(self, event_type: str, obj: RawObject) -> None:
        name = _name(obj)
        if not name:
            return
        if event_type == "DELETED":
            self._objects.pop(name, None)
        else:
            self._objects[name] = self.value_of(obj)
        self.on_change(dict(self._objects))


class ClusterWatch:
    """The ClusterView of a live cluster: Namespaces (labels) and PriorityClasses."""

    def __init__(
        self,
        namespaces: Source,
        priority_classes: Source,
        retry: Retry | None = None,
    ) -> None:
        retry = retry or RETRY
        self._lock = threading.Lock()
        self._labels: Mapping[str, Mapping[str, str]] | None = None
        self._classes: Mapping[str, _ClassFacts] | None = None
        self._view = ClusterView()
        self._mirrors = (
            _Mirror("namespaces", _labels, self._namespaces_changed),
            _Mirror("priorityclasses", _class_facts, self._classes_changed),
        )
        hooks = _WatchLog()
        self._reflectors = tuple(
            Reflector(
                mirror.kind,
                source,
                mirror.replace,
                mirror.apply,
                hooks=hooks,
                retry=retry,
                thread_name=f"watch-{mirror.kind}",
            )
            for mirror, source in zip(self._mirrors, (namespaces, priority_classes), strict=True)
        )

    @classmethod
    def from_api(cls, api: ApiClient) -> ClusterWatch:
        def source(list_function: Any) -> ApiSource:
            # One list request (no pagination): namespaces and classes are few.
            return ApiSource(
                list_function,
                page_size=None,
                list_timeout=LIST_TIMEOUT_SECONDS,
                watch_seconds=WATCH_SECONDS,
                connect_timeout=LIST_TIMEOUT_SECONDS,
                read_slack=READ_TIMEOUT_SLACK,
            )

        return cls(
            source(core_v1(api).list_namespace),
            source(scheduling_v1(api).list_priority_class),
        )

    @property
    def view(self) -> ClusterView:
        return self._view

    @property
    def synced(self) -> bool:
        return all(mirror.synced.is_set() for mirror in self._mirrors)

    def start(self) -> None:
        for reflector in self._reflectors:
            reflector.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the reflectors; a thread stuck in a network read is left to die with the
        process (it is a daemon)."""
        for reflector in self._reflectors:
            reflector.request_stop()
        for reflector in self._reflectors:
            reflector.stop(timeout)

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


def api_client(kubeconfig: Path | None) -> ApiClient | None:
    """A client from the kubeconfig, else from the in-cluster service account, else None
    (no API access: the policy file alone decides). A broken kubeconfig raises."""
    try:
        return kube_client.api_client(kubeconfig, default_kubeconfig=False)
    except InClusterUnusable as err:
        log.warning("in-cluster API access is not usable: %s", err)
        return None


def _name(obj: RawObject) -> str:
    return metadata_text(obj, "name")


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
