"""The advertiser's passes over a fake API."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch
import pytest

from kube.errors import NodeAPIError
from ops.advertiser import Advertiser
from tests.unit.extender.factories import GPUMEM, make_node, make_policy
from tests.unit.gpumem.test_advertise import gpu_node


class FakeNodes:
    """ops.advertiser.NodeClient over a dict of raw nodes, applying patches for real."""

    def __init__(self, *nodes: dict[str, Any]) -> None:
        self.nodes = {n["metadata"]["name"]: n for n in nodes}
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []
        self.unreachable = False
        self.refuse: dict[str, str] = {}
        self.lock = threading.Lock()

    def list_gpu_nodes(self) -> list[dict[str, Any]]:
        if self.unreachable:
            raise NodeAPIError("listing nodes: cannot reach the API server: refused")
        return [
            copy.deepcopy(n)
            for n in self.nodes.values()
            if "nvidia.com/gpu.memory" in n["metadata"]["labels"]
        ]

    def read_node(self, name: str) -> dict[str, Any] | None:
        if self.unreachable:
            raise NodeAPIError(f"reading node {name}: cannot reach the API server: refused")
        node = self.nodes.get(name)
        return None if node is None else copy.deepcopy(node)

    def patch_status(self, name: str, patch: Sequence[Mapping[str, Any]]) -> None:
        if name in self.refuse:
            raise NodeAPIError(self.refuse[name])
        with self.lock:
            ops = [dict(op) for op in patch]
            self.patches.append((name, ops))
            self.nodes[name] = jsonpatch.apply_patch(self.nodes[name], ops)


def advertiser(client: FakeNodes, **options: Any) -> tuple[Advertiser, list[str]]:
    lines: list[str] = []
    policy = make_policy(capacitySlackMiB=1024)
    return Advertiser(client, lambda: policy, emit=lines.append, **options), lines


def test_a_pass_patches_gpu_nodes_once() -> None:
    client = FakeNodes(gpu_node("gpu-1"), gpu_node("gpu-2", advertised="14336"), make_node("cpu"))
    adv, lines = advertiser(client)

    result = adv.run_once()

    assert [(a.node, a.action) for a in result.adverts] == [
        ("gpu-1", "set"),
        ("gpu-2", "unchanged"),
    ]
    assert [name for name, _ in client.patches] == ["gpu-1"]
    assert client.nodes["gpu-1"]["status"]["allocatable"][GPUMEM] == "14336"
    assert "cpu" not in {name for name, _ in client.patches}
    assert len(lines) == 2
    # Idempotent: the second pass patches nothing.
    assert {a.action for a in adv.run_once().adverts} == {"unchanged"}
    assert len(client.patches) == 1


def test_named_nodes_are_read_directly_even_without_labels() -> None:
    client = FakeNodes(gpu_node("gpu-1"), gpu_node("gpu-2"), make_node("cpu"))
    adv, lines = advertiser(client, nodes=["gpu-2", "cpu", "nope"])

    result = adv.run_once()

    assert [(a.node, a.action) for a in result.adverts] == [
        ("cpu", "skipped"),
        ("gpu-2", "set"),
        ("nope", "failed"),
    ]
    assert [name for name, _ in client.patches] == ["gpu-2"]
    assert [a.node for a in result.failed] == ["nope"]
    assert lines[-1] == "nope: failed (no such node)"


def test_dry_run_patches_nothing() -> None:
    client = FakeNodes(gpu_node("gpu-1"))
    adv, lines = advertiser(client, dry_run=True)
    assert [a.action for a in adv.run_once().adverts] == ["would-set"]
    assert client.patches == []
    assert lines == [
        "gpu-1: 15360 MiB x 1 GPU - 1024 MiB slack = 14336 MiB vramguard.io/gpumem: "
        "would set (dry run), was unset"
    ]


def test_a_refused_patch_is_reported_and_the_pass_goes_on() -> None:
    client = FakeNodes(gpu_node("gpu-1"), gpu_node("gpu-2"))
    client.refuse["gpu-1"] = "patching node gpu-1 status: 403 nodes/status is forbidden"
    adv, lines = advertiser(client)
    result = adv.run_once()
    assert [(a.node, a.action) for a in result.adverts] == [("gpu-1", "failed"), ("gpu-2", "set")]
    assert "failed (patching node gpu-1 status: 403 nodes/status is forbidden)" in lines[0]


def test_an_unreachable_cluster_fails_the_pass() -> None:
    client = FakeNodes(gpu_node("gpu-1"))
    client.unreachable = True
    adv, _ = advertiser(client)
    with pytest.raises(NodeAPIError, match="cannot reach"):
        adv.run_once()


def test_quiet_repeats_reports_only_what_changed() -> None:
    client = FakeNodes(gpu_node("gpu-1"), gpu_node("gpu-2", advertised="14336"))
    adv, lines = advertiser(client, quiet_repeats=True)
    adv.run_once()
    assert len(lines) == 2
    adv.run_once()
    assert len(lines) == 2, "a settled cluster is silent"
    # The node re-registers and loses its gpumem: re-asserted, and said.
    client.nodes["gpu-2"] = gpu_node("gpu-2")
    adv.run_once()
    assert lines[-1].startswith("gpu-2:")
    assert lines[-1].endswith("set, was unset")
    assert client.nodes["gpu-2"]["status"]["capacity"][GPUMEM] == "14336"


def test_the_policy_is_read_on_every_pass() -> None:
    client = FakeNodes(gpu_node("gpu-1"))
    policies = [make_policy(capacitySlackMiB=1024), make_policy(capacitySlackMiB=2048)]
    adv = Advertiser(client, lambda: policies[0], emit=lambda _: None)
    adv.run_once()
    policies.pop(0)
    assert adv.run_once().adverts[0].value_mib == 13312
    assert client.nodes["gpu-1"]["status"]["capacity"][GPUMEM] == "13312"


def test_the_loop_survives_failing_passes_and_stops() -> None:
    client = FakeNodes(gpu_node("gpu-1"))
    client.unreachable = True
    adv, _ = advertiser(client)
    stop = threading.Event()
    loop = threading.Thread(target=adv.loop, args=(0.01, stop), daemon=True)
    loop.start()
    try:
        # Passes fail while the API is away, then the node is patched once it is back.
        threading.Event().wait(0.05)
        client.unreachable = False
        for _ in range(200):
            if client.patches:
                break
            threading.Event().wait(0.01)
    finally:
        stop.set()
        loop.join(timeout=5)
    assert [name for name, _ in client.patches] == ["gpu-1"]
