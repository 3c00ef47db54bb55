"""The advertiser's pure part: which nodes, which value, which patch."""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import jsonpatch
import pytest

from gpumem.advertise import (
    NodeAdvert,
    escape_pointer,
    plan_node,
    plan_nodes,
    quantity_value,
    status_patch,
)
from gpumem.policy import Policy
from tests.unit.extender.factories import GPUMEM, make_node

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


def test_a_node_with_several_cards_advertises_the_node_total() -> None:
    # kube-scheduler counts gpumem per node, so the advertised value is the node's total; the
    # fit rule splits it across the cards (gpumem.cards) and checks each card on its own.
    advert = plan_node(gpu_node(memory="16384", count="2"), GPUMEM, 1024)
    assert (advert.action, advert.gpu_count, advert.value_mib) == ("set", 2, 31744)
    assert advert.describe() == (
        f"gpu-1: 16384 MiB x 2 GPU - 1024 MiB slack = 31744 MiB {GPUMEM}: set, was unset"
    )
