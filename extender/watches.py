"""The extender's list+watch of pods and nodes into the store (kube.reflector), each in a
daemon thread, counted in vramguard_extender_watch_restarts_total and logged as
"pods watch: ..."."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from kube.reflector import ApiSource, ListFunction, RawObject, Reflector, Restart, Retry

log = logging.getLogger(__name__)

Resource = Literal["pods", "nodes"]
LIST_TIMEOUT_SECONDS = 60
CONNECT_TIMEOUT_SECONDS = 10


class WatchLog:
    """kube.reflector.Hooks of the extender: a log line per list, a counted log line per
    restart."""

    def __init__(self, metrics: ExtenderMetrics) -> None:
        self._metrics = metrics

    def listed(self, resource: str, count: int, version: str) -> None:
        log.info("listed %d %s at resourceVersion %s", count, resource, version)

    def restarted(
        self, resource: str, reason: Restart, err: Exception | None, delay: float
    ) -> None:
        if reason == "relist":
            message = "relisting on request"
        elif reason == "expired":
            message = f"watch expired, relisting: {err}"
        else:
            message = f"failed, retrying in {delay:.1f}s: {err}"
        self._metrics.watch_restarts.labels(resource=resource, reason=reason).inc()
        level = logging.INFO if reason != "error" else logging.WARNING
        log.log(level, "%s watch: %s", resource, message)


class ResourceWatch(Reflector):
    """Keep the store's view of one resource in sync with the API: paginated lists (60 s a
    page), backoff from 0.5 s up to 30 s, and a watch resumed at once when it ends."""

    def __init__(
        self,
        resource: Resource,
        list_function: ListFunction,
        replace: Callable[[Iterable[RawObject]], None],
        apply: Callable[[str, RawObject], None],
        metrics: ExtenderMetrics,
        *,
        page_size: int = 500,
        watch_timeout_seconds: int = 300,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
    ) -> None:
        source = ApiSource(
            list_function,
            resource=resource,
            page_size=page_size,
            list_timeout=LIST_TIMEOUT_SECONDS,
            watch_seconds=watch_timeout_seconds,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        super().__init__(
            resource,
            source,
            replace,
            apply,
            hooks=WatchLog(metrics),
            retry=Retry(first=backoff_initial_seconds, longest=backoff_max_seconds, min_watch=0),
            thread_name=f"vramguard-watch-{resource}",
        )


class Replacement(Protocol):
    """A fresh list being read into one consumer: `add` each raw object, then `commit` swaps it
    in whole; one never committed (the list failed half way) changes nothing."""

    def add(self, raw: RawObject) -> None: ...

    def commit(self) -> None: ...


class PodListener(Protocol):
    """Something else fed by the pod watch, after the store (extender.pending)."""

    def pod_replacement(self) -> Replacement: ...

    def apply_pod_event(self, event_type: str, raw: RawObject) -> None: ...


def pod_watch(
    core: Any,
    store: ClusterStore,
    metrics: ExtenderMetrics,
    *,
    listeners: Sequence[PodListener] = (),
    **options: Any,
) -> ResourceWatch:
    """The pod watch into the store and then into each listener, so a listener reading the
    store's snapshot sees the event it is handed already applied."""
    replace: Callable[[Iterable[RawObject]], None] = store.replace_pods
    apply: Callable[[str, RawObject], None] = store.apply_pod_event
    if listeners:

        def replace(items: Iterable[RawObject]) -> None:
            # One pass feeds every consumer: the list streams a page at a time and is read once.
            replacements: list[Replacement] = [store.pod_replacement()]
            replacements += [listener.pod_replacement() for listener in listeners]
            for raw in items:
                for replacement in replacements:
                    replacement.add(raw)
            for replacement in replacements:  # the store's first
                replacement.commit()

        def apply(event_type: str, raw: RawObject) -> None:
            store.apply_pod_event(event_type, raw)
            for listener in listeners:
                listener.apply_pod_event(event_type, raw)

    return ResourceWatch(
        "pods", core.list_pod_for_all_namespaces, replace, apply, metrics, **options
    )


def node_watch(
    core: Any, store: ClusterStore, metrics: ExtenderMetrics, **options: Any
) -> ResourceWatch:
    return ResourceWatch(
        "nodes", core.list_node, store.replace_nodes, store.apply_node_event, metrics, **options
    )
