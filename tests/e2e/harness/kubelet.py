"""What a kubelet would do for a bound pod, done by the test instead (no kubelet runs here).

- ``mark_running``: report the pod's containers as started (status subresource), as a
  kubelet does once the containers run. vramguard reads container start times to tell a
  pod that may already hold its VRAM from one that has not allocated it yet.
- ``finish_terminating``: delete pods that were deleted gracefully (they got a
  ``deletionTimestamp``, e.g. preemption victims) for good, as a kubelet does once their
  containers have stopped.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from typing import Any

_CONFLICT = 409
_NOT_FOUND = 404


def mark_running(
    core: Any,
    namespace: str,
    name: str,
    *,
    started: datetime.datetime | None = None,
    attempts: int = 5,
) -> Any:
    """Set phase Running, Ready, and every container running since ``started`` (default
    now). The pod must be bound. Returns the updated V1Pod."""
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    for attempt in range(attempts):
        pod = core.read_namespaced_pod(name, namespace)
        if not pod.spec.node_name:
            raise ValueError(f"pod {namespace}/{name} is not bound to a node: nothing runs it")
        now = datetime.datetime.now(datetime.UTC)
        since = started or now
        conditions = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
        conditions += [
            client.V1PodCondition(type=kind, status="True", last_transition_time=now)
            for kind in ("Initialized", "ContainersReady", "Ready")
        ]
        pod.status.phase = "Running"
        pod.status.conditions = conditions
        pod.status.start_time = since
        pod.status.host_ip = "192.0.2.1"
        pod.status.pod_ip = "198.51.100.1"
        pod.status.container_statuses = [
            client.V1ContainerStatus(
                name=container.name,
                image=container.image,
                image_id=f"fake://{container.image}",
                container_id=f"fake://{namespace}/{name}/{container.name}",
                ready=True,
                started=True,
                restart_count=0,
                state=client.V1ContainerState(
                    running=client.V1ContainerStateRunning(started_at=since)
                ),
            )
            for container in pod.spec.containers
        ]
        try:
            return core.replace_namespaced_pod_status(name, namespace, pod)
        except ApiException as err:
            if err.status != _CONFLICT or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def terminating_pods(core: Any, namespace: str) -> list[Any]:
    """Pods of the namespace that have been deleted gracefully and are still there."""
    return [
        pod
        for pod in core.list_namespaced_pod(namespace).items
        if pod.metadata.deletion_timestamp is not None
    ]


def finish_terminating(core: Any, pods: Iterable[Any]) -> list[str]:
    """Delete these (terminating) pods for good; return their names."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    done = []
    for pod in pods:
        try:
            core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
            )
        except ApiException as err:
            if err.status != _NOT_FOUND:
                raise
        done.append(str(pod.metadata.name))
    return done


def wait_for_terminating(
    core: Any,
    namespace: str,
    *,
    enough: Callable[[list[Any]], bool] = bool,
    settle: float = 1.0,
    timeout: float = 30.0,
    interval: float = 0.2,
) -> list[Any]:
    """Wait until the namespace's terminating pods are ``enough`` (default: any) and their
    set has not changed for ``settle`` seconds (a scheduler deletes its preemption victims
    one API call each); return them."""
    deadline = time.monotonic() + timeout
    names: set[str] = set()
    since = time.monotonic()
    while True:
        pods = terminating_pods(core, namespace)
        current = {str(p.metadata.name) for p in pods}
        if current != names:
            names, since = current, time.monotonic()
        if pods and enough(pods) and time.monotonic() - since >= settle:
            return pods
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"pods of {namespace} terminating after {timeout:.0f}s: {sorted(names) or 'none'}"
            )
        time.sleep(interval)
