"""core/v1 Events: the one body builder, and the writer of the extender's Pending explainer
(the watchdog's single Event is written by kube.pods).

core/v1 is the API `kubectl describe pod` lists (it shows events.k8s.io Events too: one object,
two versions); core/v1 keeps count and firstTimestamp/lastTimestamp, so a refresh reads
"x3 over 20m" there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from kube.client import release, written_as
from kube.errors import HTTP_CONFLICT, HTTP_NOT_FOUND, EventExists, EventMissing, EventWriteError


def event_body(
    *,
    namespace: str,
    pod_name: str,
    pod_uid: str,
    reason: str,
    message: str,
    action: str,
    component: str,
    instance: str,
    now: float,
    count: int = 1,
    name: str | None = None,
    generate_name: str | None = None,
) -> dict[str, Any]:
    """A core/v1 Warning Event about a pod, as kube-scheduler's own FailedScheduling is shaped.
    Named by `name`, or by the API server from `generate_name` (one of the two)."""
    timestamp = rfc3339(now)
    object_name = {"name": name} if name is not None else {"generateName": generate_name}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {**object_name, "namespace": namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": namespace,
            "name": pod_name,
            "uid": pod_uid,
        },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "action": action,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": count,
    }


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodMessage(Protocol):
    """Something to say about one pod (kube.conditions' nudge is one)."""

    @property
    def namespace(self) -> str: ...
    @property
    def pod_name(self) -> str: ...
    @property
    def pod_uid(self) -> str: ...
    @property
    def message(self) -> str: ...


class EventRequest(PodMessage, Protocol):
    """One named Event about one pod (extender.pending.EventRequest is one)."""

    @property
    def name(self) -> str: ...
    @property
    def count(self) -> int: ...


class KubernetesEvents:
    """Create and refresh named core/v1 Events over a CoreV1Api, all of one reason and one
    reporting component; a refresh sets count, message and lastTimestamp."""

    def __init__(
        self,
        core: Any,
        *,
        reason: str,
        component: str,
        instance: str,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._core = core
        self._reason = reason
        self._component = component
        self._instance = instance[:128]  # the API's reportingInstance limit
        self._timeout = timeout_seconds

    def create(self, request: EventRequest, now: float) -> None:
        """Create the Event; raise EventExists or EventWriteError."""
        body = event_body(
            namespace=request.namespace,
            pod_name=request.pod_name,
            pod_uid=request.pod_uid,
            reason=self._reason,
            message=request.message,
            action="Scheduling",
            component=self._component,
            instance=self._instance,
            now=now,
            count=request.count,
            name=request.name,
        )
        exists = {HTTP_CONFLICT: EventExists(request.name)}
        with written_as(EventWriteError, "creating an event", exists):
            response = self._core.create_namespaced_event(
                request.namespace,
                body,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        release(response)

    def refresh(self, request: EventRequest, now: float) -> None:
        """Set its count, message and last timestamp; raise EventMissing or EventWriteError."""
        patch = {"count": request.count, "lastTimestamp": rfc3339(now), "message": request.message}
        missing = {HTTP_NOT_FOUND: EventMissing(request.name)}
        with written_as(EventWriteError, "patching an event", missing):
            response = self._core.patch_namespaced_event(
                request.name,
                request.namespace,
                patch,
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        release(response)
