"""kube.nodes: the advertiser's API calls."""

from __future__ import annotations

import json
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from kube.errors import NodeAPIError
from kube.nodes import KubernetesNodes
from tests.unit.extender.factories import make_node
from tests.unit.kube.fakes import FakeResponse


class FakeNodeAPI:
    """The CoreV1Api methods KubernetesNodes calls, answering from scripts."""

    def __init__(self, nodes: list[dict[str, Any]], page_size: int = 1) -> None:
        self.nodes = nodes
        self.page_size = page_size
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.failure: Exception | None = None

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        assert kwargs["_preload_content"] is False
        assert kwargs["_request_timeout"]
        if self.failure is not None:
            raise self.failure

    def list_node(self, **kwargs: Any) -> FakeResponse:
        self._record("list_node", **kwargs)
        start = int(kwargs.get("_continue") or 0)
        end = start + self.page_size
        metadata = {"resourceVersion": "7", "continue": str(end) if end < len(self.nodes) else ""}
        return FakeResponse(
            json.dumps({"items": self.nodes[start:end], "metadata": metadata}).encode()
        )

    def read_node(self, name: str, **kwargs: Any) -> FakeResponse:
        self._record("read_node", name, **kwargs)
        for node in self.nodes:
            if node["metadata"]["name"] == name:
                return FakeResponse(json.dumps(node).encode())
        raise ApiException(status=404, reason="Not Found")

    def patch_node_status(self, name: str, body: Any, **kwargs: Any) -> FakeResponse:
        self._record("patch_node_status", name, body, **kwargs)
        return FakeResponse(b"{}")


def test_nodes_lists_gfd_labelled_nodes_page_by_page() -> None:
    core = FakeNodeAPI([make_node("gpu-1", gfd_memory_mib=15360), make_node("gpu-2")])
    nodes = KubernetesNodes(core).list_gpu_nodes()
    assert [n["metadata"]["name"] for n in nodes] == ["gpu-1", "gpu-2"]
    assert [c[2]["label_selector"] for c in core.calls] == ["nvidia.com/gpu.memory"] * 2
    assert [c[2].get("_continue") for c in core.calls] == [None, "1"]


def test_nodes_read_one_or_none() -> None:
    core = FakeNodeAPI([make_node("gpu-1")])
    nodes = KubernetesNodes(core)
    node = nodes.read_node("gpu-1")
    assert node is not None
    assert node["metadata"]["name"] == "gpu-1"
    assert nodes.read_node("gone") is None


def test_nodes_patch_the_status_subresource_with_a_json_patch() -> None:
    core = FakeNodeAPI([])
    patch = [{"op": "add", "path": "/status/capacity/vramguard.io~1gpumem", "value": "14336"}]
    KubernetesNodes(core).patch_status("gpu-1", patch)
    ((name, args, kwargs),) = core.calls
    assert (name, args) == ("patch_node_status", ("gpu-1", patch))
    assert kwargs["_content_type"] == "application/json-patch+json"
    assert kwargs["field_manager"] == "vramguard-advertise"


def test_nodes_errors_read_like_sentences() -> None:
    core = FakeNodeAPI([])
    core.failure = ApiException(status=403, reason="Forbidden")
    core.failure.body = json.dumps({"message": 'nodes "gpu-1" is forbidden: no patch on status'})
    with pytest.raises(NodeAPIError) as refused:
        KubernetesNodes(core).patch_status("gpu-1", [])
    assert str(refused.value) == (
        'patching node gpu-1 status: 403 nodes "gpu-1" is forbidden: no patch on status'
    )
    connection = urllib3.exceptions.NewConnectionError(
        urllib3.connection.HTTPConnection("localhost"),
        "Failed to establish a new connection: [Errno 111] Connection refused",
    )
    core.failure = urllib3.exceptions.MaxRetryError(
        urllib3.HTTPConnectionPool("localhost"), "/api/v1/nodes", connection
    )
    with pytest.raises(NodeAPIError) as unreachable:
        KubernetesNodes(core).list_gpu_nodes()
    assert str(unreachable.value) == (
        "listing nodes: cannot reach the API server: "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )
