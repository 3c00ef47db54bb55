"""The pods of one node, kept current by a list+watch (kube.reflector) with the field selector
spec.nodeName=<node>, as the kubelet itself watches them: the node agent's names for the pod
UIDs and container IDs it reads in /proc/<pid>/cgroup, which PodResources does not give.

A watch rather than a list every scan: a thousand agents listing every 10 s would cost the API
server a hundred lists a second, a watch only the changes of each node's own pods.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from gpumem.attribution import PodIdentity, by_uid, pod_identity
from kube.reflector import ApiSource, Hooks, RawObject, Reflector, Retry

CONNECT_TIMEOUT_SECONDS = 10


class NodePods:
    """uid -> PodIdentity of the node's pods, from a reflector in a daemon thread. `by_uid`
    is None until the first list has succeeded: "no pod known" and "not read yet" differ."""

    def __init__(
        self,
        core: Any,
        node: str,
        *,
        hooks: Hooks,
        list_timeout: float = 30,
        watch_seconds: int = 300,
    ) -> None:
        list_pods = functools.partial(
            core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}"
        )
        source = ApiSource(
            list_pods,
            resource="pods",
            page_size=500,
            list_timeout=list_timeout,
            watch_seconds=watch_seconds,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        self._reflector = Reflector(
            "pods",
            source,
            self._replace,
            self._apply,
            hooks=hooks,
            retry=Retry(first=1.0, longest=60.0, min_watch=1.0),
            thread_name="vramguard-node-agent-pods",
        )
        self._lock = threading.Lock()
        self._pods: dict[str, PodIdentity] = {}
        self._index: Mapping[str, PodIdentity] | None = None

    def start(self) -> None:
        self._reflector.start()

    def stop(self) -> None:
        self._reflector.stop(timeout=1.0)

    def list_once(self) -> None:
        """One list, no watch (`node-agent --once`); raises what the API call raises."""
        self._reflector.list_once()

    def by_uid(self) -> Mapping[str, PodIdentity] | None:
        with self._lock:
            return self._index

    def _replace(self, items: Iterable[RawObject]) -> None:
        pods = {p.uid: p for raw in items if (p := pod_identity(raw)) is not None}
        with self._lock:
            self._pods = pods
            self._index = by_uid(pods.values())

    def _apply(self, event: str, raw: RawObject) -> None:
        pod = pod_identity(raw)
        if pod is None:
            return
        with self._lock:
            if event == "DELETED":
                self._pods.pop(pod.uid, None)
            else:
                self._pods[pod.uid] = pod
            # Rebuilt, not edited: a scan holds the previous index without the lock.
            self._index = by_uid(self._pods.values())


__all__ = ["NodePods"]
