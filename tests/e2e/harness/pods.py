"""Pods for the e2e tests: build one that asks for GPU resources, and wait for the
scheduler to bind it. On the API-only nodes nothing runs them, so "scheduled" means
``spec.nodeName`` is set; on the real node (realnode.py) the kubelet runs them, with the
locally built busybox image and a command (``running_pod`` there)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, cast

# Never pulled: no kubelet runs these pods.
PLACEHOLDER_IMAGE = "pause"
GPUMEM_RESOURCE = "vramguard.io/gpumem"


def gpu_pod(
    name: str,
    *,
    namespace: str = "default",
    gpus: int = 1,
    scheduler_name: str | None = None,
    node_name_selector: str | None = None,
    requests: Mapping[str, str] | None = None,
    limits: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    gpumem_mib: int | None = None,
    priority_class_name: str | None = None,
    termination_grace_period_seconds: int = 0,
    image: str = PLACEHOLDER_IMAGE,
    command: list[str] | None = None,
    node_name: str | None = None,
) -> Any:
    """A one-container V1Pod with ``nvidia.com/gpu: gpus`` as its limit (plus extras).

    ``node_name_selector`` pins it (by the ``kubernetes.io/hostname`` label) to one node,
    for tests that must not depend on which fake node a scheduler prefers.
    ``gpumem_mib`` declares a GPU-memory budget (``vramguard.io/gpumem`` limit, MiB).
    ``termination_grace_period_seconds`` above 0 makes a deletion graceful: the pod then
    stays, terminating, until ``kubelet.finish_terminating`` (or the real node's kubelet).
    ``image`` and ``command`` are for the real node (never pulled: ``imagePullPolicy:
    Never``); ``node_name`` places the pod itself, bypassing every scheduler.
    """
    from kubernetes import client  # noqa: PLC0415

    pod_limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    if gpumem_mib is not None:
        pod_limits[GPUMEM_RESOURCE] = str(gpumem_mib)
    pod_limits.update(limits or {})
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=namespace,
            annotations=dict(annotations or {}) or None,
            labels=dict(labels or {}) or None,
        ),
        spec=client.V1PodSpec(
            scheduler_name=scheduler_name,
            node_name=node_name,
            priority_class_name=priority_class_name,
            node_selector=(
                {"kubernetes.io/hostname": node_name_selector} if node_name_selector else None
            ),
            restart_policy="Never",
            termination_grace_period_seconds=termination_grace_period_seconds,
            containers=[
                client.V1Container(
                    name="main",
                    image=image,
                    image_pull_policy="Never",
                    command=command,
                    resources=client.V1ResourceRequirements(
                        requests=dict(requests or {}) or None,
                        limits=pod_limits or None,
                    ),
                )
            ],
        ),
    )


def wait_for_pod_node(
    core: Any, namespace: str, name: str, *, timeout: float = 30.0, interval: float = 0.2
) -> str:
    """Wait until the pod is bound; return its node name.

    Raises TimeoutError with the pod's PodScheduled condition (and recent events)
    when it is not bound in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.spec.node_name:
            return str(pod.spec.node_name)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"pod {namespace}/{name} not scheduled after {timeout:.0f}s: "
                f"{_scheduling_status(core, pod)}"
            )
        time.sleep(interval)


def wait_for_unschedulable(
    core: Any, namespace: str, name: str, *, timeout: float = 30.0, interval: float = 0.2
) -> str:
    """Wait until a scheduler has tried and failed to place the pod (its PodScheduled
    condition is False); return the condition's message. Fails if the pod gets bound."""
    deadline = time.monotonic() + timeout
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.spec.node_name:
            raise AssertionError(f"pod {namespace}/{name} was scheduled onto {pod.spec.node_name}")
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return str(condition.message or condition.reason or "")
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no scheduler reported pod {namespace}/{name} unschedulable after {timeout:.0f}s"
            )
        time.sleep(interval)


def placement(core: Any, namespace: str) -> tuple[list[Any], tuple[tuple[str, str], ...]]:
    """Every pod of a namespace, and where each stands, sorted by name: (name, its node, "-"
    when a scheduler found it unschedulable, "" when none has decided yet)."""
    pods = core.list_namespaced_pod(namespace).items
    state = tuple(
        sorted(
            (p.metadata.name, p.spec.node_name or ("-" if unschedulable_message(p) else ""))
            for p in pods
        )
    )
    return list(pods), state


def unschedulable_message(pod: Any) -> str | None:
    """The message of a pod's PodScheduled=False condition, or None (bound, or not tried)."""
    if pod.spec.node_name:
        return None
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return str(condition.message or condition.reason or "")
    return None


def wait_for_unschedulable_message(
    core: Any,
    namespace: str,
    name: str,
    contains: str,
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
) -> str:
    """Wait until the pod's PodScheduled=False message contains ``contains`` (the scheduler
    rewrites it on every attempt); return it. Fails if the pod gets bound."""
    deadline = time.monotonic() + timeout
    message = None
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.spec.node_name:
            raise AssertionError(f"pod {namespace}/{name} was scheduled onto {pod.spec.node_name}")
        message = unschedulable_message(pod)
        if message is not None and contains in message:
            return message
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"pod {namespace}/{name}: no unschedulable message containing {contains!r} "
                f"after {timeout:.0f}s; last: {message!r}"
            )
        time.sleep(interval)


def pod_events(core: Any, namespace: str, name: str, reason: str) -> list[str]:
    """The messages of the pod's events with ``reason``, oldest first."""
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},reason={reason}"
    ).items
    return [str(e.message or "") for e in events]


def failed_scheduling_events(core: Any, namespace: str, name: str) -> list[str]:
    """The messages of the pod's FailedScheduling events (kube-scheduler's), oldest first."""
    return pod_events(core, namespace, name, "FailedScheduling")


def wait_for_pod_event(
    core: Any,
    namespace: str,
    name: str,
    reason: str,
    *,
    timeout: float = 30.0,
    interval: float = 0.25,
) -> str:
    """Wait for an event with ``reason`` about the pod; return the latest one's message."""
    deadline = time.monotonic() + timeout
    while True:
        messages = pod_events(core, namespace, name, reason)
        if messages:
            return messages[-1]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {reason} event for pod {namespace}/{name} in {timeout:.0f}s")
        time.sleep(interval)


def declared_gpumem(pod: Any) -> int:
    """A V1Pod's GPU-memory budget as kube-scheduler counts it: the sum of its containers'
    ``vramguard.io/gpumem`` requests (the API server stores "2000" as "2k")."""
    from kubernetes.utils import parse_quantity  # noqa: PLC0415

    parse = cast(Callable[[str], Decimal], parse_quantity)
    total = 0
    for container in pod.spec.containers:
        resources = container.resources
        requests = (resources.requests if resources else None) or {}
        if GPUMEM_RESOURCE in requests:
            total += int(parse(requests[GPUMEM_RESOURCE]))
    return total


def declared_on_node(core: Any, node: str) -> int:
    """Sum of the GPU-memory budgets of the pods bound to ``node`` (not terminated), from
    the API."""
    pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    return sum(
        declared_gpumem(pod) for pod in pods if pod.status.phase not in ("Succeeded", "Failed")
    )


def pod_stays_unscheduled(
    core: Any, namespace: str, name: str, *, for_seconds: float = 5.0
) -> bool:
    """True if the pod is still not bound after ``for_seconds``."""
    try:
        wait_for_pod_node(core, namespace, name, timeout=for_seconds)
    except TimeoutError:
        return True
    return False


def delete_pod(core: Any, namespace: str, name: str) -> None:
    """Delete a pod immediately, ignoring one that is already gone."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    except ApiException as err:
        if err.status != 404:
            raise


def _scheduling_status(core: Any, pod: Any) -> str:
    conditions = [
        f"{c.type}={c.status} {c.reason or ''}: {c.message or ''}".strip()
        for c in (pod.status.conditions or [])
        if c.type == "PodScheduled"
    ]
    try:
        events = core.list_namespaced_event(
            pod.metadata.namespace,
            field_selector=f"involvedObject.name={pod.metadata.name}",
        ).items
    except Exception as err:  # diagnostics only: never mask the timeout itself
        events_text = f"(events unavailable: {err})"
    else:
        events_text = "; ".join(f"{e.reason}: {e.message}" for e in events[-5:]) or "no events"
    return f"{'; '.join(conditions) or 'no PodScheduled condition'}; events: {events_text}"


def wait_for_phase(
    core: Any,
    namespace: str,
    name: str,
    phases: str | tuple[str, ...],
    *,
    timeout: float = 60.0,
    interval: float = 0.25,
) -> Any:
    """Wait until a kubelet has reported the pod in one of ``phases`` (``Running``: every
    container also started); return the V1Pod. Raises TimeoutError with its last status."""
    wanted = (phases,) if isinstance(phases, str) else phases
    deadline = time.monotonic() + timeout
    pod = None
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        phase = pod.status.phase if pod.status else None
        started = all(s.started for s in (pod.status.container_statuses or [None]) if s)
        if phase in wanted and (phase != "Running" or started):
            return pod
        if phase in ("Succeeded", "Failed") and phase not in wanted:
            raise AssertionError(
                f"pod {namespace}/{name} ended {phase} ({pod.status.reason}: "
                f"{pod.status.message}), not {'/'.join(wanted)}"
            )
        if time.monotonic() >= deadline:
            status = pod.status.to_dict() if pod.status else {}
            raise TimeoutError(
                f"pod {namespace}/{name} not {'/'.join(wanted)} after {timeout:.0f}s: "
                f"phase {phase}, status {status}"
            )
        time.sleep(interval)


def wait_for_gone(
    core: Any, namespace: str, name: str, *, timeout: float = 60.0, interval: float = 0.25
) -> None:
    """Wait until the pod object is gone (a kubelet finished a graceful deletion)."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return
            raise
        if time.monotonic() >= deadline:
            raise TimeoutError(f"pod {namespace}/{name} still there after {timeout:.0f}s")
        time.sleep(interval)
