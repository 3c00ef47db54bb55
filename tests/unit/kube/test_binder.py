"""kube.binder: the Binding with the pod's UID, and errors that read like sentences."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kube.binder import KubernetesBinder
from kube.errors import BindError
from tests.unit.kube.fakes import FakeResponse


class FakeCore:
    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.calls: list[dict[str, Any]] = []

    def create_namespaced_pod_binding(self, **kwargs: Any) -> FakeResponse:
        self.calls.append(kwargs)
        if self.failure is not None:
            raise self.failure
        return FakeResponse(b"{}")


def test_binder_creates_the_binding_with_the_pod_uid() -> None:
    core = FakeCore()
    KubernetesBinder(core, timeout_seconds=3).bind("team-a", "p", "uid-1", "gpu-1")
    call = core.calls[0]
    assert (call["name"], call["namespace"]) == ("p", "team-a")
    assert call["_preload_content"] is False
    assert call["_request_timeout"] == 3
    body = call["body"]
    assert body.metadata.uid == "uid-1"
    assert (body.target.kind, body.target.name, body.target.api_version) == ("Node", "gpu-1", "v1")


def test_binder_reports_the_api_message() -> None:
    failure = ApiException(status=409, reason="Conflict")
    failure.body = json.dumps(
        {"kind": "Status", "message": 'pod p is already assigned to node "gpu-2"', "code": 409}
    )
    with pytest.raises(BindError, match='409 pod p is already assigned to node "gpu-2"'):
        KubernetesBinder(FakeCore(failure)).bind("team-a", "p", "uid-1", "gpu-1")


def test_binder_wraps_connection_errors() -> None:
    with pytest.raises(BindError, match="connection reset"):
        KubernetesBinder(FakeCore(ConnectionResetError("connection reset"))).bind(
            "team-a", "p", "uid-1", "gpu-1"
        )
