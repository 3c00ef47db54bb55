"""decide(): the enforcement hints a namespace's policy writes into its GPU containers."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gpumem.hints import (
    CUPY_LIMIT,
    JAX_FRACTION,
    JAX_PREALLOCATE,
    MPS_LIMIT,
    TF_GROWTH,
    TOOLKIT_LIMIT,
    TOOLKIT_REQUEST,
)
from gpumem.policy import Policy, parse_policy
from tests.unit.webhook.factories import (
    CLUSTER,
    GPU,
    GPUMEM,
    POLICY_YAML,
    applied,
    container,
    decide_pod,
    gpu_container,
    pod,
)
from webhook.responses import Reply

# The factories' policy, plus namespaces that turn hints on.
HINT_NAMESPACES = """
hinted: {gpumemMiB: 3000, hints: {containerToolkit: true, mps: true, cupy: true}}
frameworks: {gpumemMiB: 3000, hints: {jax: true, tensorflow: true, cardMiB: 15360}}
no-card: {gpumemMiB: 3000, hints: {jax: true}}
factor: {gpumemMiB: 2000, hints: {containerToolkit: true, toolkitLimitFactor: 1.5}}
rehearsal: {gpumemMiB: 3000, hints: {containerToolkit: true, dryRun: true}}
kube-system: {hints: {containerToolkit: true}}
"""
TOOLKIT_3000 = {TOOLKIT_REQUEST: "3000", TOOLKIT_LIMIT: "3000"}


def hint_policy() -> Policy:
    document = yaml.safe_load(POLICY_YAML)
    document["namespaces"].update(yaml.safe_load(HINT_NAMESPACES))
    return parse_policy(yaml.safe_dump(document), "test policy")


def decide_hinted(obj: dict[str, Any]) -> Reply:
    return decide_pod(obj, hint_policy())


def env(obj: dict[str, Any], name: str = "app", list_name: str = "containers") -> dict[str, Any]:
    """A container's env by name: the value, or the valueFrom mapping."""
    for item in obj["spec"].get(list_name, []):
        if item["name"] == name:
            return {e["name"]: e.get("value", e.get("valueFrom")) for e in item.get("env", [])}
    raise KeyError(name)


OTHER_WARNINGS = (
    "vramguard: injected ",
    "vramguard: set vramguard.io/gpumem",
    "vramguard: set priorityClassName",
    "vramguard: set schedulerName",
    "vramguard: PriorityClass ",
)


def hint_warnings(decision: Reply) -> list[str]:
    """The warnings the hints added, without the gpumem, class and scheduler ones."""
    return [w for w in decision.warnings if not w.startswith(OTHER_WARNINGS)]


# --- what is written ------------------------------------------------------------------------

WRITTEN = [
    pytest.param(
        pod(gpu_container(), namespace="hinted"),
        {**TOOLKIT_3000, MPS_LIMIT: "0=3000M", CUPY_LIMIT: str(3000 << 20)},
        id="toolkit, MPS and CuPy from the injected budget",
    ),
    pytest.param(
        pod(container("app", limits={GPU: "2", GPUMEM: "2Gi"}), namespace="hinted"),
        {
            TOOLKIT_REQUEST: "2048",
            TOOLKIT_LIMIT: "2048",
            MPS_LIMIT: "0=2048M,1=2048M",
            CUPY_LIMIT: str(2048 << 20),
        },
        id="the pod's own declaration, normalised first; one MPS entry per GPU",
    ),
    pytest.param(
        pod(gpu_container(), namespace="frameworks"),
        {JAX_PREALLOCATE: "false", JAX_FRACTION: "0.195", TF_GROWTH: "true"},
        id="JAX with the namespace's card size, TensorFlow growth",
    ),
    pytest.param(
        pod(gpu_container(), namespace="no-card"),
        {JAX_PREALLOCATE: "false"},
        id="no card size: no fraction guessed, preallocation still off",
    ),
    pytest.param(
        pod(gpu_container(), namespace="factor"),
        {TOOLKIT_REQUEST: "2000", TOOLKIT_LIMIT: "3000"},
        id="toolkitLimitFactor 1.5: the request is the budget, the limit 1.5 x",
    ),
    pytest.param(
        pod(
            gpu_container(env=[{"name": "MODEL", "value": "clip"}]),
            namespace="hinted",
        ),
        {"MODEL": "clip", **TOOLKIT_3000, MPS_LIMIT: "0=3000M", CUPY_LIMIT: str(3000 << 20)},
        id="appended after the container's own variables",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), WRITTEN)
def test_hints_written(obj: dict[str, Any], expected: dict[str, str]) -> None:
    decision = decide_hinted(obj)
    assert decision.allowed
    assert env(applied(obj, decision)) == expected


def test_the_patch_appends_and_resends_nothing_of_the_pods() -> None:
    obj = pod(gpu_container(env=[{"name": "MODEL", "value": "clip"}]), namespace="factor")
    env_ops = [op for op in decide_hinted(obj).patch if "/env" in op["path"]]
    assert env_ops == [
        {
            "op": "add",
            "path": "/spec/containers/0/env/1",
            "value": {"name": TOOLKIT_REQUEST, "value": "2000"},
        },
        {
            "op": "add",
            "path": "/spec/containers/0/env/2",
            "value": {"name": TOOLKIT_LIMIT, "value": "3000"},
        },
    ]


def test_warning_audit_and_log_say_what_was_set() -> None:
    decision = decide_hinted(pod(gpu_container(), namespace="factor"))
    settings = f"{TOOLKIT_REQUEST}=2000 {TOOLKIT_LIMIT}=3000"
    assert hint_warnings(decision) == [
        f"vramguard: set {settings} on container app (enforcement hints, namespace factor)"
    ]
    assert decision.audit_annotations["hints"] == f"app: {settings}"
    assert decision.changes["hints[app]"] == settings
    assert all("/" not in key for key in decision.audit_annotations)


def test_every_container_with_a_budget_gets_its_own() -> None:
    obj = pod(
        container("model", limits={GPU: "1", GPUMEM: "3000"}),
        container("proxy"),
        container("embed", limits={GPU: "1", GPUMEM: "1000"}),
        init_containers=[container("warmup", limits={GPU: "1", GPUMEM: "500"})],
        namespace="factor",
    )
    decision = decide_hinted(obj)
    result = applied(obj, decision)
    assert env(result, "model") == {TOOLKIT_REQUEST: "3000", TOOLKIT_LIMIT: "4500"}
    assert env(result, "embed") == {TOOLKIT_REQUEST: "1000", TOOLKIT_LIMIT: "1500"}
    assert env(result, "warmup", "initContainers") == {
        TOOLKIT_REQUEST: "500",
        TOOLKIT_LIMIT: "750",
    }
    assert env(result, "proxy") == {}, "a container without the GPU gets nothing"
    assert decision.audit_annotations["hints"] == (
        f"warmup: {TOOLKIT_REQUEST}=500 {TOOLKIT_LIMIT}=750; "
        f"model: {TOOLKIT_REQUEST}=3000 {TOOLKIT_LIMIT}=4500; "
        f"embed: {TOOLKIT_REQUEST}=1000 {TOOLKIT_LIMIT}=1500"
    )


def test_a_gpu_container_without_a_budget_of_its_own_gets_none() -> None:
    # The injected budget lands on the first GPU container; the second has no amount of its own.
    obj = pod(gpu_container("model"), gpu_container("helper"), namespace="factor")
    decision = decide_hinted(obj)
    result = applied(obj, decision)
    assert TOOLKIT_REQUEST in env(result, "model")
    assert env(result, "helper") == {}
    assert (
        "vramguard: container helper uses the GPU but declares no vramguard.io/gpumem of its "
        "own: no enforcement hints"
    ) in decision.warnings


def test_a_zero_budget_is_denied_before_any_hint() -> None:
    """A cap of 0 would keep the container off the card; minGpumemMiB refuses the pod first."""
    obj = pod(container("app", limits={GPU: "1", GPUMEM: "0"}), namespace="factor")
    decision = decide_hinted(obj)
    assert decision.allowed is False
    assert decision.patch == ()


# --- what is left alone ------------------------------------------------------------------------


def test_a_variable_the_pod_sets_is_left_alone_with_a_warning() -> None:
    obj = pod(
        gpu_container(env=[{"name": TOOLKIT_LIMIT, "value": "9000"}]),
        namespace="hinted",
    )
    decision = decide_hinted(obj)
    assert env(applied(obj, decision)) == {
        TOOLKIT_LIMIT: "9000",
        MPS_LIMIT: "0=3000M",
        CUPY_LIMIT: str(3000 << 20),
    }
    assert (
        f"vramguard: container app sets {TOOLKIT_LIMIT} itself (9000): containerToolkit hint "
        f"{TOOLKIT_REQUEST}=3000 {TOOLKIT_LIMIT}=3000 left alone"
    ) in decision.warnings
    assert decision.audit_annotations["hints-left-alone"] == (
        f"app: {TOOLKIT_REQUEST} {TOOLKIT_LIMIT}"
    )


def test_a_value_from_a_reference_is_left_alone() -> None:
    source = {"secretKeyRef": {"name": "limits", "key": "mps"}}
    obj = pod(gpu_container(env=[{"name": MPS_LIMIT, "valueFrom": source}]), namespace="hinted")
    decision = decide_hinted(obj)
    assert env(applied(obj, decision))[MPS_LIMIT] == source
    assert any(f"sets {MPS_LIMIT} itself (from valueFrom)" in w for w in decision.warnings)


def test_the_pods_value_is_shown_printable_and_short() -> None:
    odd = "x" * 100 + "\n"
    obj = pod(gpu_container(env=[{"name": CUPY_LIMIT, "value": odd}]), namespace="hinted")
    warning = next(w for w in decide_hinted(obj).warnings if CUPY_LIMIT in w)
    assert warning.isprintable()
    assert "x" * 41 not in warning


def test_env_from_gets_no_hints() -> None:
    obj = pod(gpu_container(envFrom=[{"configMapRef": {"name": "app"}}]), namespace="hinted")
    decision = decide_hinted(obj)
    assert "env" not in applied(obj, decision)["spec"]["containers"][0]
    assert hint_warnings(decision) == [
        "vramguard: container app reads variables from envFrom, which vramguard cannot see: "
        "no enforcement hints (one could override a value set there)"
    ]
    assert "hints" not in decision.audit_annotations


def test_no_card_size_is_a_warning() -> None:
    decision = decide_hinted(pod(gpu_container(), namespace="no-card"))
    assert (
        f"vramguard: container app: {JAX_FRACTION} not set (jax hint): no card size is known "
        "(hints.cardMiB)"
    ) in decision.warnings


# --- dry run, excluded namespaces, off by default ---------------------------------------------


def test_dry_run_only_warns_and_annotates() -> None:
    obj = pod(gpu_container(), namespace="rehearsal")
    decision = decide_hinted(obj)
    assert all("/env" not in op["path"] for op in decision.patch)
    settings = f"{TOOLKIT_REQUEST}=3000 {TOOLKIT_LIMIT}=3000"
    assert hint_warnings(decision) == [
        f"vramguard: dry run: would set {settings} on container app "
        "(enforcement hints, namespace rehearsal)"
    ]
    assert decision.audit_annotations["hints-dry-run"] == f"app: {settings}"
    assert "hints" not in decision.audit_annotations
    assert not any(key.startswith("hints") for key in decision.changes)


def test_dry_run_of_a_pod_with_nothing_else_to_change() -> None:
    done = pod(
        container("app", requests={GPU: "1", GPUMEM: "3000"}, limits={GPU: "1", GPUMEM: "3000"}),
        namespace="rehearsal",
        priorityClassName="tier-2-gpu",
        schedulerName="vramguard-scheduler",
    )
    decision = decide_hinted(done)
    assert decision.patch == ()
    assert decision.outcome == "allowed"
    assert "hints-dry-run" in decision.audit_annotations


def test_excluded_namespace_gets_no_hints_even_when_listed() -> None:
    decision = decide_hinted(pod(gpu_container(), namespace="kube-system"))
    assert decision.patch == ()
    assert decision.warnings == ()
    assert decision.audit_annotations == {}


def test_a_namespace_without_hints_is_unchanged_by_them() -> None:
    obj = pod(gpu_container(), namespace="immich")
    assert decide_hinted(obj) == decide_pod(obj)
    assert "env" not in applied(obj, decide_pod(obj))["spec"]["containers"][0]


def test_a_denied_pod_gets_no_hints() -> None:
    decision = decide_hinted(
        pod(container("app", limits={GPU: "1", GPUMEM: "20000"}), namespace="hinted")
    )
    assert not decision.allowed
    assert decision.patch == ()


# --- reinvocation -----------------------------------------------------------------------------

REINVOKED = [
    pytest.param(pod(gpu_container(), namespace="hinted"), id="toolkit, MPS, CuPy"),
    pytest.param(pod(gpu_container(), namespace="frameworks"), id="JAX and TensorFlow"),
    pytest.param(pod(gpu_container(), namespace="no-card"), id="no card size"),
    pytest.param(pod(gpu_container(), namespace="rehearsal"), id="dry run"),
    pytest.param(
        pod(gpu_container(env=[{"name": TOOLKIT_LIMIT, "value": "9000"}]), namespace="hinted"),
        id="left alone",
    ),
    pytest.param(
        pod(
            gpu_container("a", env=[{"name": "X", "value": "1"}]),
            gpu_container("b"),
            init_containers=[container("i", limits={GPU: "1", GPUMEM: "500"})],
            namespace="factor",
        ),
        id="several containers",
    ),
]


@pytest.mark.parametrize("obj", REINVOKED)
def test_reinvocation_adds_nothing_and_warns_nothing_new(obj: dict[str, Any]) -> None:
    first = decide_hinted(obj)
    once = applied(obj, first)
    again = decide_hinted(copy.deepcopy(once))
    assert again.allowed
    assert again.patch == ()
    # What repeats is the same text, which the API server sends once per request (its warning
    # recorder drops a text it has already recorded).
    assert set(again.warnings) <= set(first.warnings)
    assert not any(w.startswith("vramguard: set ") for w in again.warnings)
    assert "hints" not in again.audit_annotations


def test_reinvocation_after_another_webhook_changed_a_hint() -> None:
    first = applied(
        pod(gpu_container(), namespace="factor"),
        decide_hinted(pod(gpu_container(), namespace="factor")),
    )
    for item in first["spec"]["containers"][0]["env"]:
        if item["name"] == TOOLKIT_LIMIT:
            item["value"] = "2500"
    again = decide_hinted(first)
    assert again.patch == ()
    assert any(f"sets {TOOLKIT_LIMIT} itself (2500)" in w for w in again.warnings)


def test_reinvocation_after_another_webhook_added_a_gpu_container() -> None:
    obj = pod(container("model", limits={GPU: "1", GPUMEM: "3000"}), namespace="factor")
    once = applied(obj, decide_hinted(obj))
    once["spec"]["containers"].append(container("late", limits={GPU: "1", GPUMEM: "1000"}))
    again = decide_hinted(once)
    result = applied(once, again)
    assert env(result, "late") == {TOOLKIT_REQUEST: "1000", TOOLKIT_LIMIT: "1500"}
    assert again.audit_annotations["hints"] == f"late: {TOOLKIT_REQUEST}=1000 {TOOLKIT_LIMIT}=1500"
    # The late container's request is completed too; its env is one add, nothing else is resent.
    assert [op["path"] for op in again.patch if "env" in op["path"]] == ["/spec/containers/1/env"]
    assert all(op["path"].startswith("/spec/containers/1/") for op in again.patch)


def test_hints_do_not_depend_on_what_the_cluster_view_knows() -> None:
    obj = pod(gpu_container(), namespace="factor")
    with_api = decide_pod(obj, hint_policy(), CLUSTER)
    assert env(applied(obj, with_api)) == {TOOLKIT_REQUEST: "2000", TOOLKIT_LIMIT: "3000"}
