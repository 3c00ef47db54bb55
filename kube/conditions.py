"""A condition in a pod's status: how the extender nudges kube-scheduler to try a Pending pod
again once it fits (extender.pending's Nudger). A status update is a pod update, which
requeues a pod that only the extender refused; it is not an Event."""

from __future__ import annotations

from typing import Any

from kube.client import release, written_as
from kube.errors import NudgeError
from kube.events import PodMessage, rfc3339


class KubernetesNudger:
    """Sets one True condition (`condition`, `reason`) in a pod's status over a CoreV1Api."""

    def __init__(
        self, core: Any, *, condition: str, reason: str, timeout_seconds: float = 10.0
    ) -> None:
        self._core = core
        self._condition = condition
        self._reason = reason
        self._timeout = timeout_seconds

    def nudge(self, request: PodMessage, now: float) -> None:
        """Set the condition (a strategic merge on the conditions' type, so kube-scheduler's
        PodScheduled and the kubelet's are left alone); raise NudgeError. The uid in the
        patch is a precondition: a pod recreated under the same name is not touched."""
        patch = {
            "metadata": {"uid": request.pod_uid},
            "status": {
                "conditions": [
                    {
                        "type": self._condition,
                        "status": "True",
                        "reason": self._reason,
                        "message": request.message,
                        "lastTransitionTime": rfc3339(now),
                    }
                ]
            },
        }
        with written_as(NudgeError, f"setting {self._condition} on a pod"):
            response = self._core.patch_namespaced_pod_status(
                request.pod_name,
                request.namespace,
                patch,
                _content_type="application/strategic-merge-patch+json",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        release(response)
