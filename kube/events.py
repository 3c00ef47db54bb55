"""core/v1 Events: the one body builder, and the writer the extender's Pending explainer uses.

core/v1 is the API `kubectl describe pod` lists (it shows events.k8s.io Events too: one object,
two versions); core/v1 keeps count and firstTimestamp/lastTimestamp, so a refresh reads
"x3 over 20m" there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


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
