"""The watchdog's writes on a pod: delete it with a UID precondition, so a pod recreated
under the same name is never hit, and record a VRAMWatchdogRecycled Event on it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal, Protocol

from kubernetes.client.exceptions import ApiException

from kube.client import core_api
from kube.errors import HTTP_CONFLICT, HTTP_NOT_FOUND, api_message, cause
from kube.events import event_body

EVENT_REASON = "VRAMWatchdogRecycled"
EVENT_COMPONENT = "vramguard-watchdog"
EVENT_MESSAGE_LIMIT = 1024
API_TIMEOUT_SECONDS = 30
# The one-line form of an error: the watchdog logs it in a logfmt field.
CAUSE_LIMIT = 300

DeleteResult = Literal["deleted", "gone", "conflict", "error"]


class PodRef(Protocol):
    """The pod a write is about (gpumem.state.PodView is one)."""

    @property
    def uid(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...


class KubernetesPods:
    """Pods over a CoreV1Api: delete with a UID precondition, and a core/v1 Event."""

    def __init__(self, core: Any, instance: str) -> None:
        self._core = core
        self._instance = instance[:128]  # the API's reportingInstance limit

    def delete(self, victim: PodRef) -> tuple[DeleteResult, str]:
        from kubernetes import client  # noqa: PLC0415  (the models module is big)

        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=victim.uid))
        try:
            self._core.delete_namespaced_pod(
                victim.name,
                victim.namespace,
                body=options,
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                return "gone", "the pod is already gone"
            if err.status == HTTP_CONFLICT:
                return "conflict", "the name belongs to another pod now (UID precondition)"
            return "error", f"{err.status} {api_message(err)}"
        except Exception as err:  # urllib3 and socket errors
            return "error", cause(err, limit=CAUSE_LIMIT)
        return "deleted", ""

    def record_event(self, victim: PodRef, message: str, now: float) -> str | None:
        body = recycled_event(victim, message, now, instance=self._instance)
        try:
            self._core.create_namespaced_event(
                victim.namespace, body, _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException as err:
            return f"recording an event: {err.status} {api_message(err)}"
        except Exception as err:  # urllib3 and socket errors
            return f"recording an event: {cause(err, limit=CAUSE_LIMIT)}"
        return None


def kubernetes_pods(kubeconfig: Path | None) -> KubernetesPods:
    return KubernetesPods(
        core_api(str(kubeconfig) if kubeconfig else None, pool_size=2), socket.gethostname()
    )


def recycled_event(victim: PodRef, message: str, now: float, *, instance: str) -> dict[str, Any]:
    """A core/v1 Warning Event about the deleted pod (`kubectl get events -A
    --field-selector reason=VRAMWatchdogRecycled` lists them)."""
    stem = victim.name[:200].rstrip(".-") or "pod"
    return event_body(
        namespace=victim.namespace,
        pod_name=victim.name,
        pod_uid=victim.uid,
        reason=EVENT_REASON,
        message=message[:EVENT_MESSAGE_LIMIT],
        action="Delete",
        component=EVENT_COMPONENT,
        instance=instance,
        now=now,
        generate_name=f"{stem}.",
    )
