"""The advertiser's pure part (which nodes, which value, which patch) and its passes over a
fake API."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import jsonpatch
import pytest

from extender.advertise import (
    Advertiser,
    AdvertiserService,
    NodeAdvert,
    NodeAPIError,
    escape_pointer,
    plan_node,
    plan_nodes,
    quantity_value,
    status_patch,
)
from gpumem.policy import Policy
from tests.unit.extender.factories import GPUMEM, make_node, make_policy

T4_MIB = 15360


def gpu_node(
    name: str = "gpu-1",
    *,
    memory: str | None = str(T4_MIB),
    count: str | None = "1",
    advertised: str | None = None,
    allocatable: str | None = "same",
) -> dict[str, Any]:
    """A GFD-labelled node; `advertised` is its capacity of gpumem, `allocatable` its
    allocatable one ("same": as capacity)."""
    node = make_node(name)
    labels = node["metadata"]["labels"]
    if memory is not None:
        labels["nvidia.com/gpu.memory"] = memory
    if count is not None:
        labels["nvidia.com/gpu.count"] = count
    status = node["status"]
    status["capacity"].pop(GPUMEM, None)
    status["allocatable"].pop(GPUMEM, None)
    if advertised is not None:
        status["capacity"][GPUMEM] = advertised
    in_allocatable = advertised if allocatable == "same" else allocatable
    if in_allocatable is not None:
        status["allocatable"][GPUMEM] = in_allocatable
    return node


# --- plan_node: table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "slack", "action", "value", "reason"),
    [
        pytest.param(gpu_node(), 1024, "set", 14336, "", id="t4-not-advertised"),
        pytest.param(gpu_node(advertised="14336"), 1024, "unchanged", 14336, "", id="t4-done"),
        pytest.param(gpu_node(advertised="14000"), 1024, "set", 14336, "", id="other-value"),
        pytest.param(
            gpu_node(advertised="14336", allocatable=None), 1024, "set", 14336, "", id="no-alloc"
        ),
        pytest.param(
            gpu_node(advertised="14336", allocatable="14000"), 1024, "set", 14336, "", id="alloc"
        ),
        # A quantity kube-scheduler would read as bytes is rewritten as the plain integer.
        pytest.param(gpu_node(advertised="14336Mi"), 1024, "set", 14336, "", id="suffix"),
        # The API server stores 15000 as "15k": the same quantity, nothing to do.
        pytest.param(
            gpu_node(memory="16024", advertised="15k"), 1024, "unchanged", 15000, "", id="15k"
        ),
        pytest.param(gpu_node(advertised="1.4336e4"), 1024, "unchanged", 14336, "", id="exp"),
        pytest.param(gpu_node(advertised="garbage"), 1024, "set", 14336, "", id="garbage"),
        pytest.param(gpu_node(count="4", memory="81920"), 2048, "set", 325632, "", id="4xA100"),
        pytest.param(gpu_node(count=None), 1024, "set", 14336, "", id="no-count-is-one"),
        pytest.param(gpu_node(), 0, "set", 15360, "", id="no-slack"),
        pytest.param(
            make_node("cpu-1"), 1024, "skipped", None, "not a GPU node", id="no-gfd-labels"
        ),
        pytest.param(
            gpu_node(memory=None), 1024, "skipped", None, "not a GPU node", id="count-only"
        ),
        pytest.param(gpu_node(memory="16GB"), 1024, "skipped", None, "unreadable", id="bad-mem"),
        pytest.param(gpu_node(memory="0"), 1024, "skipped", None, "unreadable", id="zero-mem"),
        pytest.param(gpu_node(count="0"), 1024, "skipped", None, "no GPU", id="zero-count"),
        pytest.param(gpu_node(count="two"), 1024, "skipped", None, "no GPU", id="bad-count"),
        pytest.param(
            gpu_node(memory="1024"), 1024, "skipped", None, "leaves nothing", id="all-slack"
        ),
    ],
)
def test_plan_node(
    node: dict[str, Any], slack: int, action: str, value: int | None, reason: str
) -> None:
    advert = plan_node(node, GPUMEM, slack)
    assert advert.node == node["metadata"]["name"]
    assert advert.action == action
    assert advert.value_mib == value
    assert reason in advert.reason
    assert bool(advert.patch) == (action == "set")


def test_plan_never_changes_the_node() -> None:
    node = gpu_node()
    before = copy.deepcopy(node)
    plan_node(node, GPUMEM, 1024)
    assert node == before


@pytest.mark.parametrize(
    "node",
    [
        gpu_node(),
        gpu_node(advertised="14000"),
        gpu_node(advertised="14336", allocatable="1"),
        gpu_node(advertised="14336Mi", allocatable=None),
    ],
    ids=["unset", "other", "alloc-differs", "suffix"],
)
def test_patch_sets_both_maps_and_nothing_else(node: dict[str, Any]) -> None:
    advert = plan_node(node, GPUMEM, 1024)
    patched = jsonpatch.apply_patch(node, list(advert.patch))
    assert patched["status"]["capacity"][GPUMEM] == "14336"
    assert patched["status"]["allocatable"][GPUMEM] == "14336"
    for field in ("capacity", "allocatable"):
        others = {k: v for k, v in patched["status"][field].items() if k != GPUMEM}
        assert others == {k: v for k, v in node["status"][field].items() if k != GPUMEM}
    assert {k: v for k, v in patched.items() if k != "status"} == {
        k: v for k, v in node.items() if k != "status"
    }
    # Applied again, the plan says there is nothing left to do: the patch converges.
    assert plan_node(patched, GPUMEM, 1024).action == "unchanged"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("14336", 14336),
        ("15k", 15000),
        ("2Ki", 2048),
        ("1Mi", 1 << 20),
        ("1.5e3", 1500),
        ("500m", Fraction(1, 2)),
        ("0", 0),
        ("-1", None),
        ("", None),
        ("1.2.3", None),
        ("14336 MiB", None),
        (None, None),
        (14336, None),
    ],
)
def test_quantity_value(text: object, value: object) -> None:
    assert quantity_value(text) == value


def test_patch_escapes_the_resource_name() -> None:
    advert = plan_node(gpu_node(), GPUMEM, 1024)
    assert [op["path"] for op in advert.patch] == [
        "/status/capacity/vramguard.io~1gpumem",
        "/status/allocatable/vramguard.io~1gpumem",
    ]
    assert {op["op"] for op in advert.patch} == {"add"}
    assert escape_pointer("a~b/c") == "a~0b~1c"


def test_patch_only_touches_the_map_that_differs() -> None:
    advert = plan_node(gpu_node(advertised="14336", allocatable="14000"), GPUMEM, 1024)
    assert [op["path"] for op in advert.patch] == ["/status/allocatable/vramguard.io~1gpumem"]


def test_patch_of_an_empty_status_guards_against_a_concurrent_kubelet() -> None:
    """A node without capacity gets whole maps, but only if nobody wrote them meanwhile."""
    node = gpu_node()
    node["status"] = {}
    patch = status_patch(node, GPUMEM, "14336")
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "981"}
    patched = jsonpatch.apply_patch(node, list(patch))
    assert patched["status"] == {"capacity": {GPUMEM: "14336"}, "allocatable": {GPUMEM: "14336"}}
    node.pop("status")
    patched = jsonpatch.apply_patch(node, list(status_patch(node, GPUMEM, "14336")))
    assert patched["status"]["allocatable"] == {GPUMEM: "14336"}
    raced = copy.deepcopy(node) | {"metadata": node["metadata"] | {"resourceVersion": "982"}}
    raced["status"] = {}
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(raced, list(patch))


def test_plan_nodes_uses_the_policy_and_sorts() -> None:
    policy = Policy.model_validate(
        {"gpumemResourceName": "example.com/vram", "extender": {"capacitySlackMiB": 360}}
    )
    nodes = [gpu_node("gpu-b"), make_node("cpu-a"), gpu_node("gpu-a", memory="24576")]
    adverts = plan_nodes(nodes, policy)
    assert [(a.node, a.action, a.value_mib) for a in adverts] == [
        ("cpu-a", "skipped", None),
        ("gpu-a", "set", 24216),
        ("gpu-b", "set", 15000),
    ]
    assert adverts[1].patch[0]["path"] == "/status/capacity/example.com~1vram"
    assert [a.node for a in plan_nodes(nodes, policy, only={"gpu-b"})] == ["gpu-b"]


# --- one readable line per node --------------------------------------------------------------


@pytest.mark.parametrize(
    ("advert", "line"),
    [
        (
            plan_node(gpu_node(), GPUMEM, 1024),
            "gpu-1: 15360 MiB x 1 GPU - 1024 MiB slack = 14336 MiB vramguard.io/gpumem: "
            "set, was unset",
        ),
        (
            plan_node(gpu_node(advertised="14336"), GPUMEM, 1024),
            "gpu-1: 15360 MiB x 1 GPU - 1024 MiB slack = 14336 MiB vramguard.io/gpumem: unchanged",
        ),
        (
            plan_node(gpu_node(advertised="14000", allocatable="13000"), GPUMEM, 1024),
            "gpu-1: 15360 MiB x 1 GPU - 1024 MiB slack = 14336 MiB vramguard.io/gpumem: "
            "set, was capacity 14000, allocatable 13000",
        ),
        (
            plan_node(make_node("cpu-1"), GPUMEM, 1024),
            "cpu-1: skipped (no nvidia.com/gpu.memory label: not a GPU node)",
        ),
        (NodeAdvert("gone", "failed", reason="no such node"), "gone: failed (no such node)"),
    ],
)
def test_describe(advert: NodeAdvert, line: str) -> None:
    assert advert.describe() == line


# --- passes over a fake API ------------------------------------------------------------------


class FakeNodes:
    """extender.advertise.NodeClient over a dict of raw nodes, applying patches for real."""

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
    service = AdvertiserService(adv, interval=0.01)
    service.start()
    try:
        # Passes fail while the API is away, then the node is patched once it is back.
        threading.Event().wait(0.05)
        client.unreachable = False
        for _ in range(200):
            if client.patches:
                break
            threading.Event().wait(0.01)
    finally:
        service.stop()
    assert [name for name, _ in client.patches] == ["gpu-1"]
