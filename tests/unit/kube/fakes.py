"""Fakes of what the kubernetes client hands kube's modules: raw answers and CoreV1Api calls."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from kube.reflector import RawObject


def obj(name: str, version: str = "1", **fields: Any) -> RawObject:
    labels = fields.pop("labels", None)
    metadata: dict[str, Any] = {"name": name, "resourceVersion": version}
    if labels is not None:
        metadata["labels"] = labels
    return {"metadata": metadata, **fields}


class FakeResponse:
    """The urllib3 response that `_preload_content=False` returns."""

    def __init__(self, data: bytes = b"", chunks: list[bytes] | None = None) -> None:
        self.data = data
        self.chunks = chunks or []
        self.closed = False
        self.released = False

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Any:
        yield from self.chunks

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True


class FakeEventAPI:
    """The CoreV1Api methods KubernetesEvents calls."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.failure = failure

    def _record(self, name: str, *args: Any, **kwargs: Any) -> FakeResponse:
        self.calls.append((name, args, kwargs))
        assert kwargs["_preload_content"] is False
        assert kwargs["_request_timeout"] == 4
        if self.failure is not None:
            raise self.failure
        return FakeResponse(b"{}")

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> FakeResponse:
        return self._record("create", namespace, body, **kwargs)

    def patch_namespaced_event(
        self, name: str, namespace: str, body: Any, **kwargs: Any
    ) -> FakeResponse:
        return self._record("patch", name, namespace, body, **kwargs)

    def patch_namespaced_pod_status(
        self, name: str, namespace: str, body: Any, **kwargs: Any
    ) -> FakeResponse:
        return self._record("pod-status", name, namespace, body, **kwargs)


EVENT_TIME = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def api_error(status: int, reason: str, message: str) -> ApiException:
    failure = ApiException(status=status, reason=reason)
    failure.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return failure
