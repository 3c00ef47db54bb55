"""The webhook's matchConditions rendered from the policy: the exact text, and what the CEL
decides, evaluated by an independent CEL implementation (cel-python) against sample pods and
compared with what the webhook itself counts as a GPU pod (gpumem.demand)."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumem.demand import read_demand
from gpumem.match_conditions import (
    BEGIN_MARKER,
    CONDITION_NAME,
    END_MARKER,
    MAX_NAMES,
    MatchConditionsError,
    access_parts,
    condition_lines,
    expression,
    expression_lines,
    expression_with_access,
    match_conditions,
    render_block,
    replace_block,
    resource_names,
    strategic_merge_patch,
)
from gpumem.policy import Policy

DEFAULT = Policy()
WITH_AMD = Policy.model_validate({"gpuResourceNames": ["nvidia.com/gpu", "amd.com/gpu"]})


def evaluate(cel: str, pod: dict[str, Any]) -> bool:
    """The expression's value for `pod` as the API server's `object`; a CEL evaluation error
    raises (the API server would count it as a webhook failure)."""
    environment = celpy.Environment()
    program = environment.program(environment.compile(cel))
    result = program.evaluate({"object": json_to_cel(pod)})
    if isinstance(result, CELEvalError):
        raise result
    assert isinstance(result, celpy.celtypes.BoolType), result
    return bool(result)


def sends(policy: Policy, pod: dict[str, Any]) -> bool:
    """Whether the API server would send `pod` to the webhook under this policy's conditions."""
    (condition,) = match_conditions(policy)
    return evaluate(condition["expression"], pod)


def container(
    name: str = "app",
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "busybox", **extra}
    resources = {key: value for key, value in (("requests", requests), ("limits", limits)) if value}
    if resources:
        c["resources"] = resources
    return c


def pod(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers)}
    if init is not None:
        spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


# --- the text --------------------------------------------------------------------------------


def test_default_policy_renders_the_documented_shape() -> None:
    # Spelled out once, so a change to the shape is a deliberate one (the Helm chart renders
    # the same string).
    test = (
        "has(c.resources) && ((has(c.resources.requests) && "
        "('nvidia.com/gpu' in c.resources.requests || "
        "'vramguard.io/gpumem' in c.resources.requests)) || "
        "(has(c.resources.limits) && "
        "('nvidia.com/gpu' in c.resources.limits || 'vramguard.io/gpumem' in c.resources.limits)))"
    )
    env = "has(c.env) && c.env.exists(e, e.name == 'NVIDIA_VISIBLE_DEVICES')"
    assert match_conditions(DEFAULT) == [
        {
            "name": CONDITION_NAME,
            "expression": f"object.spec.containers.exists(c, {test}) || "
            "(has(object.spec.initContainers) && "
            f"object.spec.initContainers.exists(c, {test})) || "
            f"object.spec.containers.exists(c, {env}) || "
            f"(has(object.spec.initContainers) && object.spec.initContainers.exists(c, {env})) || "
            "(has(object.spec.runtimeClassName) && object.spec.runtimeClassName in ['nvidia']) || "
            "(has(object.spec.resourceClaims) && size(object.spec.resourceClaims) > 0)",
        }
    ]


def test_names_are_the_gpu_resources_in_order_then_gpumem_each_once() -> None:
    policy = Policy.model_validate(
        {
            "gpuResourceNames": ["b.example/gpu", "a.example/gpu", "b.example/gpu"],
            "gpumemResourceName": "example.com/vram",
        }
    )
    assert resource_names(policy) == ("b.example/gpu", "a.example/gpu", "example.com/vram")


def test_a_name_added_to_the_policy_is_in_every_test_of_the_rendering() -> None:
    before, after = expression(resource_names(DEFAULT)), expression(resource_names(WITH_AMD))
    assert before != after
    assert "amd.com/gpu" not in before
    for field in ("requests", "limits"):
        # once for containers, once for initContainers
        assert after.count(f"'amd.com/gpu' in c.resources.{field}") == 2


def test_the_expression_is_its_lines_joined_with_single_spaces() -> None:
    lines = expression_lines(resource_names(WITH_AMD))
    assert expression(resource_names(WITH_AMD)) == " ".join(lines)
    assert match_conditions(WITH_AMD)[0]["expression"] == " ".join(condition_lines(WITH_AMD))
    for line in (*lines, *condition_lines(WITH_AMD)):
        assert line == line.strip()
        assert "  " not in line  # a folded scalar would keep a double space, the chart not


def test_too_many_names_are_refused() -> None:
    names = [f"vendor{i}.example/gpu" for i in range(MAX_NAMES)]  # + gpumem = one too many
    with pytest.raises(MatchConditionsError, match=f"at most {MAX_NAMES}"):
        resource_names(Policy.model_validate({"gpuResourceNames": names}))
    assert len(resource_names(Policy.model_validate({"gpuResourceNames": names[:-1]}))) == (
        MAX_NAMES
    )


def test_no_names_is_refused() -> None:
    with pytest.raises(MatchConditionsError):
        expression_lines(())


# --- the YAML block --------------------------------------------------------------------------

FILE = """\
webhooks:
  - name: pods.vramguard.io
    # a comment that stays
    # BEGIN matchConditions (stale)
    matchConditions:
      - name: old
        expression: "true"
    # END matchConditions
    failurePolicy: Fail
"""


def test_the_block_parses_back_to_the_conditions() -> None:
    document = yaml.safe_load(replace_block(FILE, WITH_AMD))
    (webhook,) = document["webhooks"]
    assert webhook["matchConditions"] == match_conditions(WITH_AMD)
    assert webhook["failurePolicy"] == "Fail"


def test_replace_block_keeps_everything_outside_the_markers() -> None:
    rendered = replace_block(FILE, DEFAULT)
    head = FILE.split("    # BEGIN", maxsplit=1)[0]
    tail = FILE.split("# END matchConditions\n", maxsplit=1)[1]
    assert rendered.startswith(head)
    assert rendered.endswith(tail)
    assert render_block(DEFAULT, indent=4) in rendered
    assert replace_block(rendered, DEFAULT) == rendered  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "webhooks: []\n",
        f"{BEGIN_MARKER}\n",
        f"{END_MARKER}\n{BEGIN_MARKER}\n",
        f"{BEGIN_MARKER}\n{END_MARKER}\n{BEGIN_MARKER}\n{END_MARKER}\n",
    ],
    ids=["no markers", "no end", "end first", "two blocks"],
)
def test_replace_block_needs_exactly_one_marked_block(text: str) -> None:
    with pytest.raises(MatchConditionsError):
        replace_block(text, DEFAULT)


def test_patch_merges_into_the_webhook_by_name() -> None:
    patch = strategic_merge_patch(WITH_AMD)
    assert patch["kind"] == "MutatingWebhookConfiguration"
    assert patch["metadata"] == {"name": "vramguard"}
    assert patch["webhooks"] == [
        {"name": "pods.vramguard.io", "matchConditions": match_conditions(WITH_AMD)}
    ]


# --- what the CEL decides --------------------------------------------------------------------

GPU = {"nvidia.com/gpu": "1"}
GPUMEM = {"vramguard.io/gpumem": "3000"}
CPU = {"cpu": "1", "memory": "1Gi"}

CASES = [
    pytest.param(pod(container()), False, id="no resources"),
    pytest.param(pod(container(resources={})), False, id="empty resources"),
    pytest.param(pod(container(requests=CPU, limits=CPU)), False, id="cpu and memory only"),
    pytest.param(pod(container(requests=GPU)), True, id="gpu request"),
    pytest.param(pod(container(limits=GPU)), True, id="gpu limit only"),
    pytest.param(pod(container(requests=GPUMEM)), True, id="gpumem request only"),
    pytest.param(pod(container(limits=GPUMEM)), True, id="gpumem limit only"),
    pytest.param(pod(container(requests=CPU, limits=GPU)), True, id="cpu request, gpu limit"),
    pytest.param(pod(container(), container("gpu", limits=GPU)), True, id="second container"),
    pytest.param(pod(container(), init=[]), False, id="empty initContainers"),
    pytest.param(pod(container(), init=[container("init")]), False, id="cpu init container"),
    pytest.param(pod(container(), init=[container("init", requests=GPU)]), True, id="gpu init"),
    pytest.param(
        pod(container(), init=[container("sidecar", limits=GPUMEM, restartPolicy="Always")]),
        True,
        id="gpumem sidecar",
    ),
    pytest.param(
        pod(container(requests={"nvidia.com/gpu.shared": "1", "nvidia.com/gpux": "1"})),
        False,
        id="names are matched exactly, not by prefix",
    ),
    pytest.param(pod(container(limits={"amd.com/gpu": "1"})), False, id="a name not in policy"),
]


@pytest.mark.parametrize(("sample", "sent"), CASES)
def test_which_pods_are_sent(sample: dict[str, Any], sent: bool) -> None:
    assert sends(DEFAULT, sample) is sent
    # ...and the webhook would count the same pods as GPU pods.
    assert read_demand(sample, DEFAULT.resource_names).is_gpu is sent


MIG = Policy.model_validate({"gpuResourceNames": ["nvidia.com/gpu", "nvidia.com/mig-*"]})


@pytest.mark.parametrize(
    ("resources", "sent"),
    [
        pytest.param({"limits": {"nvidia.com/mig-1g.10gb": "1"}}, True, id="a MIG profile"),
        pytest.param({"requests": {"nvidia.com/mig-3g.40gb": "1"}}, True, id="as a request"),
        pytest.param({"limits": {"nvidia.com/gpu.shared": "1"}}, False, id="another prefix"),
        pytest.param({"limits": {"nvidia.com/mig": "1"}}, False, id="the prefix less its dash"),
        pytest.param({"limits": {"cpu": "1"}}, False, id="cpu"),
    ],
)
def test_a_pattern_sends_every_name_it_matches(resources: dict[str, Any], sent: bool) -> None:
    sample = pod(container(), init=[{"name": "i", "image": "busybox", "resources": resources}])
    assert sends(MIG, sample) is sent
    assert read_demand(sample, MIG.resource_names).is_gpu is sent
    assert "c.resources.limits.exists(r, r.startsWith('nvidia.com/mig-'))" in (
        expression(resource_names(MIG))
    )


def test_a_name_added_to_the_policy_is_sent() -> None:
    amd = pod(container(), init=[container("init", limits={"amd.com/gpu": "1"})])
    assert not sends(DEFAULT, amd)
    assert sends(WITH_AMD, amd)


def test_the_guards_are_what_keeps_it_from_raising() -> None:
    """The same test without has(object.spec.initContainers) errors on a pod without init
    containers: the evaluator does tell a missing guard from a present one."""
    cel = expression(resource_names(DEFAULT))
    unguarded = cel.replace("(has(object.spec.initContainers) && ", "(")
    with pytest.raises(CELEvalError):
        evaluate(unguarded, pod(container(requests=CPU)))
    assert evaluate(cel, pod(container(requests=CPU))) is False


# Pods the generator can build: any mix of names (ours and others) in requests and limits,
# containers and init containers, with or without each optional field.
_NAMES = st.sampled_from(
    [
        "nvidia.com/gpu",
        "vramguard.io/gpumem",
        "amd.com/gpu",
        "cpu",
        "memory",
        "nvidia.com/mig",
        "nvidia.com/mig-2g.20gb",
    ]
)
_QUANTITIES = st.dictionaries(_NAMES, st.just("1"), max_size=3)
_RESOURCES = st.fixed_dictionaries({}, optional={"requests": _QUANTITIES, "limits": _QUANTITIES})
_CONTAINER = st.builds(
    lambda name, resources: (
        {"name": name, "image": "busybox"} | ({} if resources is None else {"resources": resources})
    ),
    st.sampled_from(["a", "b", "c"]),
    st.none() | _RESOURCES,
)
_SPEC = st.fixed_dictionaries(
    {"containers": st.lists(_CONTAINER, min_size=1, max_size=3)},
    optional={"initContainers": st.lists(_CONTAINER, max_size=2)},
)
_POLICIES = st.sampled_from([DEFAULT, WITH_AMD, MIG])


@settings(max_examples=150, deadline=None)
@given(spec=_SPEC, policy=_POLICIES)
def test_the_cel_sends_exactly_the_pods_the_webhook_counts(
    spec: dict[str, Any], policy: Policy
) -> None:
    sample = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
    assert sends(policy, sample) is read_demand(sample, policy.resource_names).is_gpu


# --- pods that may reach a GPU without a GPU request ----------------------------------------

ACCESS_SAMPLES = [
    pytest.param(
        pod(container(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])), True, id="env"
    ),
    pytest.param(
        pod(container(), init=[container("i", env=[{"name": "NVIDIA_VISIBLE_DEVICES"}])]),
        True,
        id="env on an init container",
    ),
    pytest.param(
        {**pod(container()), "spec": {**pod(container())["spec"], "runtimeClassName": "nvidia"}},
        True,
        id="runtime class",
    ),
    pytest.param(
        {**pod(container()), "spec": {**pod(container())["spec"], "runtimeClassName": "kata"}},
        False,
        id="another runtime class",
    ),
    pytest.param(
        {
            **pod(container()),
            "spec": {**pod(container())["spec"], "resourceClaims": [{"name": "g"}]},
        },
        True,
        id="a DRA claim",
    ),
    pytest.param(pod(container(env=[{"name": "OTHER", "value": "1"}])), False, id="other env"),
    pytest.param(pod(container()), False, id="a plain CPU pod"),
    pytest.param(pod(container(limits={"nvidia.com/gpu": "1"})), True, id="a GPU pod"),
]


@pytest.mark.parametrize(("sample", "sent"), ACCESS_SAMPLES)
def test_the_access_conditions_send_the_pods_the_webhook_judges(
    sample: dict[str, Any], sent: bool
) -> None:
    """Evaluated by cel-python: a pod the webhook would deny for reaching a GPU without a GPU
    request must be sent to it at all."""
    assert evaluate(expression_with_access(DEFAULT), sample) is sent
    assert sends(DEFAULT, sample) is sent


def test_the_access_conditions_follow_the_policy() -> None:
    policy = Policy.model_validate(
        {"deviceEnvNames": [], "gpuRuntimeClassNames": [], "allowResourceClaims": True}
    )
    assert access_parts(policy) == ()
    assert expression_with_access(policy) == expression(resource_names(policy))


_ENV = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "PATH"])},
        optional={"value": st.sampled_from(["all", "0", "void", "none", ""])},
    ),
    max_size=2,
)
_ACCESS_CONTAINER = st.builds(
    lambda name, resources, env: (
        {"name": name, "image": "busybox"}
        | ({} if resources is None else {"resources": resources})
        | ({} if env is None else {"env": env})
    ),
    st.sampled_from(["a", "b"]),
    st.none() | _RESOURCES,
    st.none() | _ENV,
)
_ACCESS_SPEC = st.fixed_dictionaries(
    {"containers": st.lists(_ACCESS_CONTAINER, min_size=1, max_size=2)},
    optional={
        "initContainers": st.lists(_ACCESS_CONTAINER, max_size=2),
        "runtimeClassName": st.sampled_from(["nvidia", "runc"]),
        "resourceClaims": st.lists(st.just({"name": "gpu"}), max_size=1),
    },
)


@settings(max_examples=150, deadline=None)
@given(spec=_ACCESS_SPEC)
def test_every_pod_the_webhook_judges_is_sent(spec: dict[str, Any]) -> None:
    """The webhook decides a pod it is sent: a GPU pod, or one it may deny for reaching a GPU
    without a request. Whatever it would deny or mutate must be sent; what it would leave
    alone may be (the CEL does not read env values), and is answered "not a GPU pod"."""
    from webhook.decide import decide  # noqa: PLC0415
    from webhook.models import AdmissionRequest  # noqa: PLC0415
    from webhook.view import ClusterView  # noqa: PLC0415

    sample = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
    request = AdmissionRequest.model_validate(
        {
            "uid": "u",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "tenant",
            "object": sample,
        }
    )
    reply = decide(request, DEFAULT, ClusterView())
    left_alone = reply.allowed and not reply.patch and not reply.warnings
    if not sends(DEFAULT, sample):
        assert left_alone, reply
