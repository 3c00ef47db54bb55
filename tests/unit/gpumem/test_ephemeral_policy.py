"""The ephemeral-container ValidatingAdmissionPolicy's CEL (gpumem.ephemeral_policy) means what
the webhook's device-variable rule means, evaluated by an independent CEL implementation
(cel-python) the way the API server runs a policy: the variables in order, then the
validation, then (on a denial) the messageExpression. An evaluation error raises here (the API
server would refuse the request under failurePolicy Fail)."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumem import ephemeral_policy
from gpumem.ephemeral_policy import (
    ADDED_LINES,
    BEGIN_MARKER,
    END_MARKER,
    EphemeralPolicyError,
    excluded_namespaces,
    policy_spec,
    render_block,
    replace_block,
    strategic_merge_patch,
)
from gpumem.marked_block import holds_marked
from gpumem.policy import NO_DEVICES, Policy
from webhook import decide

DEFAULT = Policy()
TWO_NAMES = Policy.model_validate(
    {"deviceEnvNames": ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"]}
)
NONE = Policy.model_validate({"deviceEnvNames": []})
NAMESPACE = "tenant"


def _run(cel: str, activation: dict[str, Any]) -> Any:
    environment = celpy.Environment()
    result = environment.program(environment.compile(cel)).evaluate(activation)
    if isinstance(result, CELEvalError):
        raise result
    return result


def admit(policy: Policy, new: dict[str, Any], old: dict[str, Any]) -> str | None:
    """None when the policy admits the update from `old` to `new`, else its message."""
    spec = policy_spec(policy)
    activation: dict[str, Any] = {
        "object": json_to_cel(new),
        "oldObject": json_to_cel(old),
        "request": json_to_cel({"namespace": NAMESPACE, "operation": "UPDATE"}),
    }
    variables: dict[Any, Any] = {}
    for variable in spec["variables"]:
        activation["variables"] = celpy.celtypes.MapType(variables)
        variables[celpy.celtypes.StringType(variable["name"])] = _run(
            variable["expression"], activation
        )
    activation["variables"] = celpy.celtypes.MapType(variables)
    (validation,) = spec["validations"]
    allowed = _run(validation["expression"], activation)
    assert isinstance(allowed, celpy.celtypes.BoolType), allowed
    if allowed:
        return None
    message = _run(validation["messageExpression"], activation)
    assert isinstance(message, str), message
    return str(message)


def pod(*ephemeral: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "pause"}]}
    if ephemeral:
        spec["ephemeralContainers"] = list(ephemeral)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gpu"}, "spec": spec}


def debug(name: str = "debugger", **env: str | None) -> dict[str, Any]:
    """An ephemeral container; each keyword is an env entry (None: from valueFrom)."""
    container: dict[str, Any] = {"name": name, "image": "busybox"}
    if env:
        container["env"] = [
            {"name": key, "value": value}
            if value is not None
            else {"name": key, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            for key, value in env.items()
        ]
    return container


def test_every_card_is_denied_with_the_container_and_the_variable() -> None:
    message = admit(DEFAULT, pod(debug(NVIDIA_VISIBLE_DEVICES="all")), pod())
    assert message == (
        "ephemeral container debugger sets NVIDIA_VISIBLE_DEVICES=all: ephemeral containers "
        "cannot request a GPU, so the container runtime would hand it those cards outside any "
        "GPU-memory budget; leave the variable out or set it to void (namespace tenant)"
    )


@pytest.mark.parametrize("value", ["all", "0", "0,1", "GPU-6b1f", "VOID", "None", " void"])
def test_a_value_that_names_cards_is_denied(value: str) -> None:
    assert admit(DEFAULT, pod(debug(NVIDIA_VISIBLE_DEVICES=value)), pod()) is not None


@pytest.mark.parametrize("value", ["", "void", "none"])
def test_no_card_is_admitted(value: str) -> None:
    assert admit(DEFAULT, pod(debug(NVIDIA_VISIBLE_DEVICES=value)), pod()) is None


def test_value_from_is_denied_since_its_value_is_not_known() -> None:
    message = admit(DEFAULT, pod(debug(NVIDIA_VISIBLE_DEVICES=None)), pod())
    assert message is not None
    assert message.startswith(
        "ephemeral container debugger sets NVIDIA_VISIBLE_DEVICES from valueFrom: "
    )


@pytest.mark.parametrize(
    "container",
    [
        debug(),
        debug(PATH="/bin", HOME="/root"),
        debug(nvidia_visible_devices="all"),  # names are exact, as in the webhook
        {"name": "debugger", "image": "busybox", "env": [{"name": "NVIDIA_VISIBLE_DEVICES"}]},
        {"name": "debugger", "image": "busybox", "env": []},
    ],
    ids=["no env", "other variables", "another case", "no value", "empty env"],
)
def test_containers_without_cards_are_admitted(container: dict[str, Any]) -> None:
    assert admit(DEFAULT, pod(container), pod()) is None


def test_only_the_containers_the_request_adds_are_judged() -> None:
    # One added before the policy existed stays (ephemeral containers cannot be removed or
    # changed); adding another, clean one is admitted.
    before = debug("old", NVIDIA_VISIBLE_DEVICES="all")
    assert admit(DEFAULT, pod(before, debug("new")), pod(before)) is None
    message = admit(DEFAULT, pod(before, debug("new", NVIDIA_VISIBLE_DEVICES="0")), pod(before))
    assert message is not None
    assert message.startswith("ephemeral container new sets NVIDIA_VISIBLE_DEVICES=0:")


def test_the_first_offending_container_and_variable_are_named() -> None:
    new = pod(
        debug("clean"),
        debug("second", CUDA_VISIBLE_DEVICES="1", NVIDIA_VISIBLE_DEVICES="void"),
        debug("third", NVIDIA_VISIBLE_DEVICES="all"),
    )
    message = admit(TWO_NAMES, new, pod())
    assert message is not None
    assert message.startswith("ephemeral container second sets CUDA_VISIBLE_DEVICES=1:")
    assert admit(DEFAULT, new, pod()) is not None  # third, under the default names


def test_a_pod_without_ephemeral_containers_cannot_raise() -> None:
    # The subresource always carries the list, but every optional field is guarded.
    assert admit(DEFAULT, pod(), pod()) is None
    bare = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}}
    assert admit(DEFAULT, bare, bare) is None


def test_no_device_names_admit_everything() -> None:
    assert admit(NONE, pod(debug(NVIDIA_VISIBLE_DEVICES="all")), pod()) is None
    assert "e.name in [] &&" in policy_spec(NONE)["variables"][1]["expression"]


def test_no_devices_are_the_container_toolkits_values() -> None:
    # One tuple, read by the webhook and written into this policy's CEL.
    assert frozenset(NO_DEVICES) == {"", "void", "none"}
    assert len(NO_DEVICES) == len(set(NO_DEVICES))
    assert "['', 'void', 'none']" in ephemeral_policy.env_test(DEFAULT)


ENV_NAMES = st.sampled_from(["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "PATH"])
VALUES = st.sampled_from(["", "void", "none", "all", "0", "VOID", "Void"])
ENTRY = st.one_of(
    st.builds(lambda name, value: {"name": name, "value": value}, ENV_NAMES, VALUES),
    st.builds(lambda name: {"name": name}, ENV_NAMES),
    st.builds(
        lambda name: {"name": name, "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ENV_NAMES,
    ),
)


@settings(max_examples=150, deadline=None)
@given(env=st.lists(ENTRY, max_size=4), two=st.booleans())
def test_the_rule_is_the_webhooks(env: list[dict[str, Any]], two: bool) -> None:
    """The webhook's own rule (which reads ephemeralContainers too, on the pods it sees) and
    the policy agree on every env: an ephemeral container never requests a GPU."""
    policy = TWO_NAMES if two else DEFAULT
    container = {"name": "debugger", "image": "busybox", "env": env}
    new = pod(container)
    denial = decide._gpu_access_denial(new, policy, NAMESPACE)
    assert (admit(policy, new, pod()) is not None) == (denial is not None)


def test_excluded_namespaces_are_the_systems_and_the_policys() -> None:
    policy = Policy.model_validate({"excludedNamespaces": ["gpu-operator", "kube-system"]})
    assert excluded_namespaces(policy) == [
        "kube-system",
        "vramguard",
        "vramguard-node",
        "gpu-operator",
    ]
    assert excluded_namespaces(policy, "gpu-system", "gpu-system") == [
        "kube-system",
        "gpu-system",
        "gpu-operator",
    ]


def test_the_block_is_replaced_and_everything_else_kept() -> None:
    text = f"head: 1\nspec:\n  failurePolicy: Fail\n  {BEGIN_MARKER}\n  old: 1\n  {END_MARKER}\n"
    text += "tail: 2\n"
    assert holds_marked(text, BEGIN_MARKER)
    rendered = replace_block(text, DEFAULT)
    assert rendered.startswith("head: 1\nspec:\n  failurePolicy: Fail\n")
    assert rendered.endswith(f"  {END_MARKER}\ntail: 2\n")
    assert "old: 1" not in rendered
    assert replace_block(rendered, DEFAULT) == rendered
    assert render_block(DEFAULT, 2) in rendered
    assert replace_block(rendered, TWO_NAMES) != rendered


@pytest.mark.parametrize(
    "text", ["spec: {}\n", f"  {END_MARKER}\n  {BEGIN_MARKER}\n", f"{BEGIN_MARKER}\n" * 2]
)
def test_a_file_without_one_block_is_refused(text: str) -> None:
    with pytest.raises(EphemeralPolicyError):
        replace_block(text, DEFAULT)


def test_the_lines_are_joined_by_single_spaces() -> None:
    spec = policy_spec(DEFAULT)
    assert spec["variables"][0]["expression"] == " ".join(ADDED_LINES)
    for text in (
        spec["variables"][1]["expression"],
        spec["validations"][0]["messageExpression"],
    ):
        assert "  " not in text
        assert " ." not in text
        assert "( " not in text


def test_the_patch_holds_the_policy_dependent_fields() -> None:
    patch = strategic_merge_patch(TWO_NAMES)
    assert patch["metadata"] == {"name": "vramguard-ephemeral-gpu-env"}
    spec = policy_spec(TWO_NAMES)
    assert patch["spec"] == {
        key: spec[key] for key in ("matchConstraints", "variables", "validations")
    }
