"""gpumem.hints: which variables a container's budget turns into, and which the pod keeps."""

from __future__ import annotations

from typing import Any

import pytest

from gpumem.demand import ResourceNames
from gpumem.hints import (
    CUPY_LIMIT,
    JAX_FRACTION,
    JAX_FRACTION_NEW,
    JAX_PREALLOCATE,
    MAX_MPS_DEVICES,
    MPS_LIMIT,
    TF_GROWTH,
    TOOLKIT_LIMIT,
    TOOLKIT_REQUEST,
    HintRules,
    PodValue,
    gpu_count,
    hints_for,
    plan_container,
    pod_env,
)

T4_MIB = 15360
ALL = HintRules(
    container_toolkit=True, mps=True, jax=True, tensorflow=True, cupy=True, card_mib=T4_MIB
)
NAMES = ResourceNames(frozenset({"nvidia.com/gpu", "amd.com/gpu"}), "vramguard.io/gpumem")


def env_of(budget: int, rules: HintRules, gpus: int = 1) -> dict[str, str]:
    hints, _ = hints_for(budget, gpus, rules)
    return {name: value for hint in hints for name, value in hint.env}


def test_nothing_is_on_by_default() -> None:
    assert not HintRules().enabled
    assert hints_for(3000, 1, HintRules()) == ((), ())


def test_every_switch_from_a_3000_mib_budget_on_a_t4() -> None:
    assert env_of(3000, ALL) == {
        TOOLKIT_REQUEST: "3000",
        TOOLKIT_LIMIT: "3000",
        MPS_LIMIT: "0=3000M",
        JAX_PREALLOCATE: "false",
        # 3000 / 15360 = 0.1953..., rounded down to thousandths: 0.195 x 15360 = 2995.2 MiB
        JAX_FRACTION: "0.195",
        TF_GROWTH: "true",
        CUPY_LIMIT: str(3000 * 1024 * 1024),
    }


@pytest.mark.parametrize(
    ("budget", "factor", "limit"),
    [
        pytest.param(3000, 1.0, "3000", id="factor 1: limit is the budget"),
        pytest.param(3000, 1.5, "4500", id="factor 1.5"),
        pytest.param(3000, 1.1, "3300", id="exact decimal arithmetic: 3000 x 1.1 is 3300"),
        pytest.param(1001, 1.5, "1501", id="rounded down"),
    ],
)
def test_toolkit_limit_is_budget_times_factor(budget: int, factor: float, limit: str) -> None:
    rules = HintRules(container_toolkit=True, toolkit_limit_factor=factor)
    assert env_of(budget, rules) == {TOOLKIT_REQUEST: str(budget), TOOLKIT_LIMIT: limit}


@pytest.mark.parametrize(
    ("budget", "card", "fraction"),
    [
        pytest.param(5000, T4_MIB, "0.325", id="llama-swap: 5000 of a T4"),
        pytest.param(1500, T4_MIB, "0.097", id="portal-stt: 1500 of a T4"),
        pytest.param(8192, 16384, "0.500", id="exactly half"),
        pytest.param(16383, 16384, "0.999", id="just below the card"),
        pytest.param(16, 16000, "0.001", id="the smallest fraction"),
    ],
)
def test_jax_fraction_never_lets_the_pool_pass_the_budget(
    budget: int, card: int, fraction: str
) -> None:
    got = env_of(budget, HintRules(jax=True, card_mib=card))[JAX_FRACTION]
    assert got == fraction
    assert float(got) * card <= budget


@pytest.mark.parametrize(
    ("budget", "card", "reason"),
    [
        pytest.param(3000, None, "no card size is known (hints.cardMiB)", id="no card size"),
        pytest.param(15, 16000, "under 0.001 of the 16000 MiB card", id="rounds to zero"),
        pytest.param(16000, 16000, "not below the 16000 MiB card", id="the whole card"),
        pytest.param(20000, 16000, "not below the 16000 MiB card", id="more than the card"),
    ],
)
def test_jax_fraction_is_not_guessed(budget: int, card: int | None, reason: str) -> None:
    hints, unset = hints_for(budget, 1, HintRules(jax=True, card_mib=card))
    # Preallocation is switched off all the same: it needs no card size.
    assert [hint.env for hint in hints] == [((JAX_PREALLOCATE, "false"),)]
    assert [(u.switch, u.variable) for u in unset] == [("jax", JAX_FRACTION)]
    assert reason in unset[0].reason


def test_card_source_is_named() -> None:
    rules = HintRules(jax=True, card_mib=1000, card_source="namespaces.big.hints.cardMiB")
    _, unset = hints_for(2000, 1, rules)
    assert "(namespaces.big.hints.cardMiB)" in unset[0].reason


@pytest.mark.parametrize(
    ("gpus", "value"),
    [
        pytest.param(1, "0=2000M", id="one GPU: device 0"),
        pytest.param(3, "0=2000M,1=2000M,2=2000M", id="every device of the container"),
        pytest.param(MAX_MPS_DEVICES, None, id="at the bound"),
    ],
)
def test_mps_limit_per_device(gpus: int, value: str | None) -> None:
    got = env_of(2000, HintRules(mps=True), gpus)[MPS_LIMIT]
    assert got.count("=") == gpus
    if value is not None:
        assert got == value


def test_mps_limit_is_not_written_for_absurd_counts() -> None:
    hints, unset = hints_for(2000, MAX_MPS_DEVICES + 1, HintRules(mps=True))
    assert hints == ()
    assert unset[0].variable == MPS_LIMIT
    assert f"asks for {MAX_MPS_DEVICES + 1} GPUs" in unset[0].reason


# --- the container's own environment ------------------------------------------------------


def container(*env: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "app", "env": list(env), **fields}


def test_plan_adds_every_variable_in_order() -> None:
    plan = plan_container(container(), 3000, 1, ALL)
    assert [name for name, _ in plan.add] == [
        TOOLKIT_REQUEST,
        TOOLKIT_LIMIT,
        MPS_LIMIT,
        JAX_PREALLOCATE,
        JAX_FRACTION,
        TF_GROWTH,
        CUPY_LIMIT,
    ]
    assert plan.left_alone == ()
    assert plan.unset == ()


def test_a_container_without_env_gets_the_hints() -> None:
    plan = plan_container({"name": "app"}, 3000, 1, HintRules(tensorflow=True))
    assert plan.add == ((TF_GROWTH, "true"),)


LEFT_ALONE = [
    pytest.param(
        [{"name": TOOLKIT_LIMIT, "value": "9000"}],
        "containerToolkit",
        PodValue(TOOLKIT_LIMIT, "9000"),
        id="the pod's toolkit limit: the request is not added beside it either",
    ),
    pytest.param(
        [{"name": "NVIDIA_GPU_MEMORY_REQUESTS", "value": "100"}],
        "containerToolkit",
        PodValue("NVIDIA_GPU_MEMORY_REQUESTS", "100"),
        id="the plural spelling one version of the hook reads first",
    ),
    pytest.param(
        [{"name": MPS_LIMIT, "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
        "mps",
        PodValue(MPS_LIMIT, None),
        id="a value from a reference is the pod's",
    ),
    pytest.param(
        [{"name": JAX_FRACTION_NEW, "value": ".5"}],
        "jax",
        PodValue(JAX_FRACTION_NEW, ".5"),
        id="the new JAX spelling: jaxlib refuses both at once",
    ),
    pytest.param(
        [{"name": TF_GROWTH, "value": "false"}],
        "tensorflow",
        PodValue(TF_GROWTH, "false"),
        id="growth switched off on purpose",
    ),
    pytest.param(
        [{"name": CUPY_LIMIT, "value": "50%"}],
        "cupy",
        PodValue(CUPY_LIMIT, "50%"),
        id="the pod's own CuPy limit",
    ),
    pytest.param(
        [{"name": CUPY_LIMIT}],
        "cupy",
        PodValue(CUPY_LIMIT, ""),
        id="set to empty is set",
    ),
]


@pytest.mark.parametrize(("env", "switch", "found"), LEFT_ALONE)
def test_what_the_pod_sets_itself_is_left_alone(
    env: list[dict[str, Any]], switch: str, found: PodValue
) -> None:
    plan = plan_container(container(*env), 3000, 1, ALL)
    assert [(left.hint.switch, left.found) for left in plan.left_alone] == [(switch, found)]
    left = plan.left_alone[0]
    added = {name for name, _ in plan.add}
    assert not added & {name for name, _ in left.hint.env}
    assert not added & set(left.hint.guards)
    # The other hints are still written.
    assert len(added) == 7 - len(left.hint.env)


def test_values_equal_to_vramguards_are_kept_and_the_rest_added() -> None:
    # A second pass (reinvocation) over the first pass's result adds nothing.
    first = plan_container(container(), 3000, 1, ALL)
    again = plan_container(
        container(*({"name": n, "value": v} for n, v in first.add)), 3000, 1, ALL
    )
    assert again.add == ()
    assert again.left_alone == ()
    # Half a pair written by the pod with vramguard's own value: only the other half is added.
    half = plan_container(container({"name": TOOLKIT_REQUEST, "value": "3000"}), 3000, 1, ALL)
    assert (TOOLKIT_LIMIT, "3000") in half.add
    assert all(name != TOOLKIT_REQUEST for name, _ in half.add)
    assert half.left_alone == ()


def test_a_value_left_from_another_budget_is_the_pods() -> None:
    # Growth does not depend on the budget: the same value is vramguard's own.
    plan = plan_container(container({"name": TF_GROWTH, "value": "true"}), 2000, 1, ALL)
    assert all(left.hint.switch != "tensorflow" for left in plan.left_alone)
    stale = plan_container(container({"name": CUPY_LIMIT, "value": "1"}), 2000, 1, ALL)
    assert [left.found for left in stale.left_alone] == [PodValue(CUPY_LIMIT, "1")]


def test_the_last_of_repeated_names_wins() -> None:
    env = pod_env(container({"name": "A", "value": "1"}, {"name": "A", "value": "2"}))
    assert env == {"A": PodValue("A", "2")}


def test_malformed_env_entries_are_skipped() -> None:
    env = pod_env({"env": [None, "x", {"value": "1"}, {"name": 3}, {"name": "B", "value": 5}]})
    assert env == {"B": PodValue("B", "")}
    assert pod_env({"env": "not a list"}) == {}


def test_env_from_plans_nothing() -> None:
    plan = plan_container(container(envFrom=[{"configMapRef": {"name": "app"}}]), 3000, 1, ALL)
    assert plan.env_from
    assert plan.add == ()
    assert plan.left_alone == ()
    assert not plan_container(container(envFrom=[]), 3000, 1, ALL).env_from


@pytest.mark.parametrize(
    ("resources", "count"),
    [
        pytest.param({"limits": {"nvidia.com/gpu": "2"}}, 2, id="limit"),
        pytest.param({"requests": {"nvidia.com/gpu": 3}}, 3, id="request only, a JSON number"),
        pytest.param({"limits": {"nvidia.com/gpu": "1", "amd.com/gpu": "4"}}, 4, id="the largest"),
        pytest.param(
            {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "5"}},
            2,
            id="limits win over requests",
        ),
        pytest.param({"limits": {"vramguard.io/gpumem": "3000"}}, 1, id="gpumem only"),
        pytest.param({"limits": {"nvidia.com/gpu": "0.5"}}, 1, id="not whole"),
        pytest.param({"limits": {"nvidia.com/gpu": "lots"}}, 1, id="not a quantity"),
        pytest.param({"limits": {"nvidia.com/gpu": "1e3"}}, 1000, id="exponent"),
        pytest.param(None, 1, id="no resources"),
    ],
)
def test_gpu_count(resources: dict[str, Any] | None, count: int) -> None:
    assert gpu_count({"resources": resources}, NAMES) == count
