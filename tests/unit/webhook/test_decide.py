"""decide(): every rule of the webhook as a table of pods and what they become."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gpumem.policy import parse_policy
from tests.unit.webhook.factories import (
    ALL_CLASSES,
    CLUSTER,
    GPU,
    GPUMEM,
    NO_API,
    applied,
    container,
    decide_pod,
    gpu_container,
    gpumem_of,
    make_policy,
    pod,
)
from webhook.responses import Reply
from webhook.view import ClassPriority, ClusterView


def summary(original: dict[str, Any], decision: Reply) -> dict[str, Any]:
    """What the decision did to the pod, in the terms the tables below use."""
    result = applied(original, decision) if decision.allowed else original
    spec = result["spec"]
    return {
        "allowed": decision.allowed,
        "patched": bool(decision.patch),
        "class": spec.get("priorityClassName"),
        "priority": spec.get("priority"),
        "preemptionPolicy": spec.get("preemptionPolicy"),
        "scheduler": spec.get("schedulerName"),
        "gpumem": gpumem_of(result),
    }


def check(original: dict[str, Any], decision: Reply, expected: dict[str, Any]) -> None:
    got = summary(original, decision)
    assert {key: got[key] for key in expected} == expected, decision


# --- priorityClassName --------------------------------------------------------------------

CLASS_CASES = [
    pytest.param(
        pod(),
        CLUSTER,
        {"class": "tier-1-gpu", "priority": None, "preemptionPolicy": None},
        id="no class: namespace class injected, priority and preemptionPolicy removed",
    ),
    pytest.param(
        pod(priorityClassName="mine", priority=500),
        CLUSTER,
        {"class": "tier-1-gpu", "priority": None, "preemptionPolicy": None},
        id="the pod's own class, not allowed by default: replaced by the namespace's",
    ),
    pytest.param(
        pod(priorityClassName="cluster-default", priority=1000),
        CLUSTER,
        {"class": "tier-1-gpu", "priority": None, "preemptionPolicy": None},
        id="the cluster's globalDefault class is replaced",
    ),
    pytest.param(
        pod(priorityClassName="cluster-default", priority=1000),
        NO_API,
        {"class": "tier-1-gpu", "priority": None},
        id="without API access the globalDefault is unknown: not allowed either, replaced",
    ),
    pytest.param(
        pod(priorityClassName="tier-1-gpu", priority=100000),
        CLUSTER,
        {"class": "tier-1-gpu", "priority": 100000, "preemptionPolicy": "PreemptLowerPriority"},
        id="class already the namespace class: priority untouched (reinvocation)",
    ),
    pytest.param(
        pod(priorityClassName=""),
        CLUSTER,
        {"class": "tier-1-gpu"},
        id="empty class counts as none",
    ),
    pytest.param(
        pod(priority=None, preemptionPolicy=None),
        CLUSTER,
        {"class": "tier-1-gpu", "priority": None, "preemptionPolicy": None},
        id="no priority fields to remove",
    ),
    pytest.param(
        pod(),
        ClusterView(priority_classes=frozenset({"tier-2-gpu"})),
        {"class": None, "priority": 0, "preemptionPolicy": "PreemptLowerPriority"},
        id="class missing from the cluster: skipped, priority kept",
    ),
    pytest.param(
        pod(),
        NO_API,
        {"class": "tier-1-gpu"},
        id="without API access class existence is not checked",
    ),
    pytest.param(
        pod(namespace="labelled"),
        CLUSTER,
        {"class": "tier-0-core"},
        id="namespaceLabels: tier=0 picks its class",
    ),
    pytest.param(
        pod(namespace="labelled"),
        NO_API,
        {"class": "tier-2-gpu"},
        id="namespaceLabels: labels unknown without API access, defaults apply",
    ),
    pytest.param(
        pod(namespace="unseen"),
        CLUSTER,
        {"class": "tier-2-gpu"},
        id="namespace not seen by the watch yet: defaults apply",
    ),
    pytest.param(
        pod(namespace="classless"),
        CLUSTER,
        {"class": None, "priority": 0},
        id="namespace with priorityClassName null: no class injected",
    ),
]


# With the classes' values known (the webhook's PriorityClass watch), the webhook sets what the
# Priority admission plugin would: the plugin, run again after the webhook, changes nothing,
# so the API server does not call the webhook a second time.
VALUES = ClusterView(
    namespace_labels=CLUSTER.namespace_labels,
    priority_classes=CLUSTER.priority_classes,
    global_default_class="cluster-default",
    class_priorities={
        "tier-1-gpu": ClassPriority(800000, "PreemptLowerPriority"),
        "tier-2-gpu": ClassPriority(600000, "Never"),
        "cluster-default": ClassPriority(100),
    },
)
CLASS_CASES += [
    pytest.param(
        pod(),
        VALUES,
        {"class": "tier-1-gpu", "priority": 800000, "preemptionPolicy": "PreemptLowerPriority"},
        id="class values known: priority and preemptionPolicy are the class's",
    ),
    pytest.param(
        pod(namespace="other", priorityClassName="cluster-default", priority=100),
        VALUES,
        {"class": "tier-2-gpu", "priority": 600000, "preemptionPolicy": "Never"},
        id="globalDefault replaced: the new class's values, Never included",
    ),
    pytest.param(
        pod(namespace="labelled"),
        VALUES,
        {"class": "tier-0-core", "priority": None, "preemptionPolicy": None},
        id="class known by name only: priority fields removed for the plugin to compute",
    ),
    pytest.param(
        pod(namespace="other", preemptionPolicy=None),
        ClusterView(
            priority_classes=frozenset({"tier-2-gpu"}),
            class_priorities={"tier-2-gpu": ClassPriority(600000)},
        ),
        {"class": "tier-2-gpu", "priority": 600000, "preemptionPolicy": None},
        id="class without preemptionPolicy: none set",
    ),
]


@pytest.mark.parametrize(("obj", "cluster", "expected"), CLASS_CASES)
def test_priority_class(
    obj: dict[str, Any], cluster: ClusterView, expected: dict[str, Any]
) -> None:
    check(obj, decide_pod(obj, cluster=cluster), expected)


# --- a class the pod names itself: allowedPriorityClasses, maxPriority ----------------------

CEILING = ClusterView(
    priority_classes=ALL_CLASSES | {"system-node-critical"},
    global_default_class="cluster-default",
    class_priorities={
        "mine": ClassPriority(500),
        "tier-0-core": ClassPriority(1000000),
        "system-node-critical": ClassPriority(2000001000),
    },
)
OWN_CLASS_CASES = [
    pytest.param(
        {},
        pod(priorityClassName="system-node-critical", priority=2000001000),
        {"allowed": True, "class": "tier-1-gpu", "priority": None},
        id="default: no class of its own, system-node-critical replaced",
    ),
    pytest.param(
        {"allowedPriorityClasses": ["mine"]},
        pod(priorityClassName="mine", priority=500),
        {"allowed": True, "class": "mine", "priority": 500},
        id="a listed class is kept with its priority",
    ),
    pytest.param(
        {"allowedPriorityClasses": ["mine"]},
        pod(priorityClassName="tier-0-core"),
        {"allowed": True, "class": "tier-1-gpu"},
        id="an unlisted class is replaced",
    ),
    pytest.param(
        {"allowedPriorityClasses": None, "maxPriority": 1000},
        pod(priorityClassName="mine", priority=500),
        {"allowed": True, "class": "mine"},
        id="any class under the ceiling is kept",
    ),
    pytest.param(
        {"allowedPriorityClasses": None, "maxPriority": 1000},
        pod(priorityClassName="system-node-critical"),
        {"allowed": True, "class": "tier-1-gpu"},
        id="a class above the ceiling is replaced",
    ),
    pytest.param(
        {"allowedPriorityClasses": ["mine", "unseen"], "maxPriority": 1000},
        pod(priorityClassName="unseen"),
        {"allowed": True, "class": "tier-1-gpu"},
        id="listed, but its value is unknown under a ceiling: replaced (fail closed)",
    ),
    pytest.param(
        {"disallowedPriorityClass": "deny"},
        pod(priorityClassName="system-node-critical"),
        {"allowed": False},
        id="deny instead of replace",
    ),
    pytest.param(
        {"priorityClassName": None},
        pod(priorityClassName="system-node-critical", priority=2000001000),
        {"allowed": True, "class": None, "priority": None, "preemptionPolicy": None},
        id="no namespace class to put instead: removed, the Priority plugin decides",
    ),
]


@pytest.mark.parametrize(("override", "obj", "expected"), OWN_CLASS_CASES)
def test_a_class_of_its_own(
    override: dict[str, Any], obj: dict[str, Any], expected: dict[str, Any]
) -> None:
    """A tenant's pod naming its own class (system-node-critical, a core tier) could preempt
    every pod below it: kept only within the namespace's list and ceiling."""
    policy = parse_policy(
        "namespaces: {immich: " + json.dumps({"priorityClassName": "tier-1-gpu", **override}) + "}"
    )
    check(obj, decide_pod(obj, policy, CEILING), expected)


def test_a_refused_class_is_named_in_the_denial_and_the_warning() -> None:
    obj = pod(priorityClassName="system-node-critical")
    denied = decide_pod(
        obj,
        parse_policy(
            "defaults: {maxPriority: 1000, disallowedPriorityClass: deny, "
            "allowedPriorityClasses: null}"
        ),
        CEILING,
    )
    assert denied.status is not None
    assert (
        "PriorityClass system-node-critical has value 2000001000, above the ceiling of 1000 "
        "(maxPriority) for namespace immich" in denied.message
    )
    replaced = decide_pod(obj, cluster=CEILING)
    assert (
        "vramguard: priorityClassName system-node-critical replaced: PriorityClass "
        "system-node-critical is not allowed in namespace immich (allowedPriorityClasses: none "
        "besides the policy's own)" in replaced.warnings
    )


def test_namespace_entry_beats_namespace_labels() -> None:
    cluster = ClusterView(namespace_labels={"immich": {"tier": "0"}}, priority_classes=None)
    check(pod(), decide_pod(pod(), cluster=cluster), {"class": "tier-1-gpu"})


def test_missing_class_is_a_warning_and_an_audit_annotation() -> None:
    decision = decide_pod(pod(), cluster=ClusterView(priority_classes=frozenset()))
    assert decision.allowed
    assert (
        "vramguard: PriorityClass tier-1-gpu (namespaces.immich) does not exist; "
        "priorityClassName left unset"
    ) in decision.warnings
    assert decision.audit_annotations["priority-class-skipped"] == "tier-1-gpu"


# --- GPU memory ----------------------------------------------------------------------------

GPUMEM_CASES = [
    pytest.param(
        pod(gpu_container("app")),
        {"gpumem": {"app": ("3000", "3000")}},
        id="none declared: namespace budget injected as request and limit",
    ),
    pytest.param(
        pod(container("proxy"), gpu_container("model"), gpu_container("other")),
        {"gpumem": {"model": ("3000", "3000")}},
        id="injected on the first GPU container only",
    ),
    pytest.param(
        pod(container("app"), init_containers=[gpu_container("warmup")]),
        {"gpumem": {"warmup": ("3000", "3000")}},
        id="only an initContainer uses the GPU: injected there",
    ),
    pytest.param(
        pod(container("app", limits={"amd.com/gpu": "1"})),
        {"gpumem": {"app": ("3000", "3000")}},
        id="any gpuResourceName makes a GPU pod (limits only)",
    ),
    pytest.param(
        pod(container("app", requests={GPUMEM: "3000"}, limits={GPUMEM: "3000"})),
        {"gpumem": {"app": ("3000", "3000")}, "patched": True},
        id="declared in integer MiB: kept (class and scheduler still set)",
    ),
    pytest.param(
        pod(container("app", requests={GPUMEM: "5Gi"}, limits={GPUMEM: "5Gi"})),
        {"gpumem": {"app": ("5120", "5120")}},
        id="binary suffix is bytes: 5Gi -> 5120",
    ),
    pytest.param(
        pod(container("app", requests={GPUMEM: "5k"}, limits={GPUMEM: "5k"})),
        {"gpumem": {"app": ("5000", "5000")}},
        id="decimal suffix counts MiB: 5k -> 5000",
    ),
    pytest.param(
        pod(container("app", requests={GPUMEM: "1.5Gi"}, limits={GPUMEM: "1536"})),
        {"gpumem": {"app": ("1536", "1536")}},
        id="equal after normalization: 1.5Gi == 1536",
    ),
    pytest.param(
        pod(container("app", requests={GPUMEM: 2048}, limits={GPUMEM: 2048})),
        {"gpumem": {"app": ("2048", "2048")}},
        id="JSON number rewritten as the integer string",
    ),
    pytest.param(
        pod(container("app", requests={GPUMEM: "2000", "cpu": "1"})),
        {"gpumem": {"app": ("2000", "2000")}},
        id="request only: limit completed",
    ),
    pytest.param(
        pod(container("app", limits={GPUMEM: "2Gi"})),
        {"gpumem": {"app": ("2048", "2048")}},
        id="limit only: request completed",
    ),
    pytest.param(
        pod(
            container("a", limits={GPUMEM: "1Gi"}),
            gpu_container("b"),
            init_containers=[container("init", requests={GPUMEM: "500"})],
        ),
        {"gpumem": {"init": ("500", "500"), "a": ("1024", "1024")}},
        id="declared somewhere: each declaration normalized, nothing injected",
    ),
    pytest.param(
        pod(
            container("app", requests={GPUMEM: "20000"}, limits={GPUMEM: "20000"}),
            namespace="uncapped",
        ),
        {"allowed": True, "gpumem": {"app": ("20000", "20000")}},
        id="namespace without a cap",
    ),
    pytest.param(
        pod(container("app", requests={GPUMEM: "8Gi"}, limits={GPUMEM: "8Gi"})),
        {"allowed": True, "gpumem": {"app": ("8192", "8192")}},
        id="exactly at the cap is allowed",
    ),
    pytest.param(
        pod(
            container("app", requests={GPUMEM: "2000"}, limits={GPUMEM: "2000"}), namespace="strict"
        ),
        {"allowed": True, "gpumem": {"app": ("2000", "2000")}},
        id="requireDeclaration satisfied",
    ),
    pytest.param(
        pod({"name": "app", "resources": {"requests": None, "limits": {GPU: "1"}}}),
        {"gpumem": {"app": ("3000", "3000")}},
        id="requests: null becomes an object",
    ),
    pytest.param(
        pod({"name": "app", "resources": {"requests": {GPUMEM: "1k"}, "limits": []}}),
        {"gpumem": {"app": ("1000", "1000")}},
        id="limits of the wrong type become an object (found by the fuzz test)",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), GPUMEM_CASES)
def test_gpumem(obj: dict[str, Any], expected: dict[str, Any]) -> None:
    check(obj, decide_pod(obj), expected)


DENIALS = [
    pytest.param(
        pod(container("app", requests={GPUMEM: "10Gi"}, limits={GPUMEM: "10Gi"})),
        [
            "vramguard: pod declares vramguard.io/gpumem=10240 MiB, above the cap of 8192 MiB",
            "namespace immich",
        ],
        id="above maxGpumemMiB: namespace, value and cap named",
    ),
    pytest.param(
        pod(
            container("a", limits={GPUMEM: "5000"}),
            container("b", limits={GPUMEM: "5000"}),
        ),
        ["=10000 MiB", "cap of 8192 MiB"],
        id="the cap applies to the pod's total",
    ),
    pytest.param(
        pod(container("app", requests={GPUMEM: "2000"}, limits={GPUMEM: "3000"})),
        ["container 'app'", "request 2000 MiB differs from limit 3000 MiB", "request equal"],
        id="request != limit",
    ),
    pytest.param(
        pod(gpu_container(), namespace="strict"),
        ["namespace strict requires GPU pods to declare vramguard.io/gpumem", "declares none"],
        id="requireDeclaration with nothing declared",
    ),
    pytest.param(
        pod(container("app", limits={GPUMEM: "lots"})),
        ["container 'app'", "'lots' is not a Kubernetes quantity", "namespace immich"],
        id="unparsable quantity",
    ),
    pytest.param(
        pod(container("app", limits={GPUMEM: "-1"})),
        ["is negative"],
        id="negative quantity",
    ),
]


@pytest.mark.parametrize(("obj", "fragments"), DENIALS)
def test_denials(obj: dict[str, Any], fragments: list[str]) -> None:
    decision = decide_pod(obj)
    assert not decision.allowed
    assert decision.outcome == "denied"
    assert not decision.patch
    for fragment in fragments:
        assert fragment in decision.message


# --- schedulerName -------------------------------------------------------------------------

SCHEDULER_CASES = [
    pytest.param(pod(schedulerName=None), "vramguard-scheduler", id="none: set"),
    pytest.param(pod(), "vramguard-scheduler", id="default-scheduler: replaced"),
    pytest.param(pod(schedulerName=""), "vramguard-scheduler", id="empty: set"),
    pytest.param(
        pod(schedulerName="my-scheduler"), "vramguard-scheduler", id="another scheduler: replaced"
    ),
    pytest.param(pod(schedulerName="batch-gpu"), "batch-gpu", id="an allowed scheduler: kept"),
]


@pytest.mark.parametrize(("obj", "scheduler"), SCHEDULER_CASES)
def test_scheduler_name(obj: dict[str, Any], scheduler: str) -> None:
    """A GPU pod that names another scheduler would be placed without vramguard's checks:
    only the policy's allowedSchedulerNames are kept."""
    policy = make_policy(allowed_scheduler_names=("batch-gpu",))
    check(obj, decide_pod(obj, policy), {"scheduler": scheduler})


def test_a_replaced_scheduler_is_named_in_the_warning() -> None:
    decision = decide_pod(pod(schedulerName="my-scheduler"))
    assert (
        "vramguard: set schedulerName=vramguard-scheduler (was my-scheduler, not in "
        "allowedSchedulerNames)" in decision.warnings
    )


# --- minGpumemMiB -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "allowed"),
    [("0", False), ("1n", True), ("0.5", True), ("1", True), ("100", True)],
    ids=["0", "1n (rounds up to 1)", "0.5", "1", "100"],
)
def test_a_budget_below_the_minimum_is_denied(declared: str, allowed: bool) -> None:
    """0 fits every node and card, so such a pod would pass every check and still use the
    card. (Declarations round up to whole MiB: 1n is 1 MiB.)"""
    obj = pod(container("app", requests={GPUMEM: declared}, limits={GPUMEM: declared}))
    decision = decide_pod(obj)
    assert decision.allowed is allowed, decision
    if not allowed:
        assert decision.status is not None
        assert "below the minimum of 1 MiB (minGpumemMiB)" in decision.message


def test_the_minimum_is_the_policys() -> None:
    obj = pod(container("app", requests={GPUMEM: "100"}, limits={GPUMEM: "100"}))
    decision = decide_pod(obj, make_policy(min_gpumem_mib=256))
    assert decision.allowed is False
    assert decision.status is not None
    assert "app declares vramguard.io/gpumem=100 MiB, below the minimum of 256" in (
        decision.message
    )
    # An injected budget is the namespace's, which the policy keeps at or above the minimum.
    assert decide_pod(pod(), make_policy(min_gpumem_mib=256)).allowed


# --- spec.nodeName ------------------------------------------------------------------------


def test_a_gpu_pod_bound_by_name_is_denied() -> None:
    """It would skip the scheduler and the extender: only the kubelet's node-level count of
    budgets would remain."""
    decision = decide_pod(pod(nodeName="gpu-1"))
    assert decision.allowed is False
    assert decision.status is not None
    assert "may not set spec.nodeName (gpu-1) in namespace immich" in decision.message
    assert decide_pod(pod(nodeName="gpu-1"), make_policy(allow_node_name=True)).allowed
    assert decide_pod(pod(nodeName="")).allowed
    # A pod that uses no GPU is not vramguard's business, bound or not.
    assert decide_pod(pod(container("cpu"), nodeName="gpu-1")).allowed


def test_scheduler_name_left_alone_when_policy_names_none() -> None:
    decision = decide_pod(pod(), make_policy(scheduler_name=None))
    check(pod(), decision, {"scheduler": "default-scheduler"})


# --- pods and requests left alone ----------------------------------------------------------

UNTOUCHED = [
    pytest.param(pod(namespace="kube-system"), {}, id="excluded namespace"),
    pytest.param(pod(container("web", requests={"cpu": "1"})), {}, id="not a GPU pod"),
    pytest.param(pod(container("web")), {}, id="no resources at all"),
    pytest.param(pod(), {"operation": "UPDATE"}, id="UPDATE"),
    pytest.param(pod(), {"operation": "DELETE"}, id="DELETE"),
    pytest.param(pod(), {"operation": "CONNECT"}, id="CONNECT"),
    pytest.param(pod(), {"kind": "Deployment", "group": "apps"}, id="not a Pod"),
    pytest.param(pod(), {"kind": "Pod", "group": "example.com"}, id="a Pod of another group"),
    pytest.param(pod(), {"sub_resource": "ephemeralcontainers"}, id="a pods subresource"),
]


@pytest.mark.parametrize(("obj", "request_fields"), UNTOUCHED)
def test_left_alone(obj: dict[str, Any], request_fields: dict[str, Any]) -> None:
    decision = decide_pod(obj, **request_fields)
    assert decision.allowed
    assert decision.patch == ()
    assert decision.warnings == ()
    assert decision.outcome == "allowed"


def test_namespace_from_the_object_when_the_request_has_none() -> None:
    decision = decide_pod(pod(namespace="kube-system"), namespace="")
    assert decision.patch == ()


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(pod(), id="GPU pod"),
        pytest.param(pod(namespace="strict"), id="denied pod"),
        pytest.param(pod(container("web")), id="non-GPU pod"),
    ],
)
def test_dry_run_gets_the_same_answer(obj: dict[str, Any]) -> None:
    assert decide_pod(obj, dry_run=True) == decide_pod(obj, dry_run=False)


# --- the patch -----------------------------------------------------------------------------

IDEMPOTENT = [
    pytest.param(pod(), CLUSTER, id="injected everything"),
    pytest.param(pod(priorityClassName="cluster-default", priority=1000), CLUSTER, id="default"),
    pytest.param(
        pod(container("a", limits={GPUMEM: "5Gi"}), container("b", requests={GPUMEM: "1k"})),
        CLUSTER,
        id="normalized",
    ),
    pytest.param(pod(container("a"), init_containers=[gpu_container("i")]), NO_API, id="init"),
    pytest.param(pod(namespace="labelled"), CLUSTER, id="label class"),
    pytest.param(pod(), ClusterView(priority_classes=frozenset()), id="class skipped"),
]


@pytest.mark.parametrize(("obj", "cluster"), IDEMPOTENT)
def test_reinvocation_is_idempotent(obj: dict[str, Any], cluster: ClusterView) -> None:
    first = decide_pod(obj, cluster=cluster)
    assert first.patch
    again = decide_pod(applied(obj, first), cluster=cluster)
    assert again.allowed
    assert again.patch == ()


def test_patch_escapes_slash_in_resource_names() -> None:
    decision = decide_pod(pod())
    paths = {op["path"] for op in decision.patch}
    assert "/spec/containers/0/resources/limits/vramguard.io~1gpumem" in paths
    assert "/spec/containers/0/resources/requests/vramguard.io~1gpumem" in paths


def test_patch_is_a_diff_that_keeps_unknown_fields_and_the_original() -> None:
    obj = pod(gpu_container(futureField={"a": [1, 2]}), someNewSpecField=True)
    obj["x-extension"] = {"kept": True}
    before = copy.deepcopy(obj)
    decision = decide_pod(obj)
    assert obj == before, "the submitted object is never modified"
    result = applied(obj, decision)
    assert result["x-extension"] == {"kept": True}
    assert result["spec"]["someNewSpecField"] is True
    assert result["spec"]["containers"][0]["futureField"] == {"a": [1, 2]}
    assert all("futureField" not in op["path"] for op in decision.patch)


def test_exact_patch_for_a_plain_gpu_pod() -> None:
    decision = decide_pod(pod())
    assert sorted(decision.patch, key=lambda op: op["path"]) == [
        {
            "op": "add",
            "path": "/spec/containers/0/resources/limits/vramguard.io~1gpumem",
            "value": "3000",
        },
        {
            "op": "add",
            "path": "/spec/containers/0/resources/requests/vramguard.io~1gpumem",
            "value": "3000",
        },
        {"op": "remove", "path": "/spec/preemptionPolicy"},
        {"op": "remove", "path": "/spec/priority"},
        {"op": "add", "path": "/spec/priorityClassName", "value": "tier-1-gpu"},
        {"op": "replace", "path": "/spec/schedulerName", "value": "vramguard-scheduler"},
    ]


def test_nothing_to_change_sends_no_patch() -> None:
    done = pod(
        container("app", requests={GPU: "1", GPUMEM: "3000"}, limits={GPU: "1", GPUMEM: "3000"}),
        priorityClassName="tier-1-gpu",
        schedulerName="vramguard-scheduler",
    )
    decision = decide_pod(done)
    assert decision.allowed
    assert decision.patch == ()
    assert decision.outcome == "allowed"


# --- warnings and audit annotations --------------------------------------------------------


def test_warnings_and_audit_annotations_say_what_was_injected() -> None:
    decision = decide_pod(pod())
    assert decision.warnings == (
        "vramguard: injected vramguard.io/gpumem=3000 (namespace immich)",
        "vramguard: set priorityClassName=tier-1-gpu (namespaces.immich)",
        "vramguard: set schedulerName=vramguard-scheduler",
    )
    assert decision.audit_annotations == {
        "gpumem": "3000",
        "priority-class": "tier-1-gpu",
        "scheduler-name": "vramguard-scheduler",
    }
    assert decision.changes == {
        "gpumem": "3000",
        "priorityClassName": "tier-1-gpu",
        "schedulerName": "vramguard-scheduler",
    }


def test_normalization_warning_shows_what_was_there() -> None:
    decision = decide_pod(pod(container("llm", limits={GPUMEM: "5Gi"})))
    assert (
        "vramguard: set vramguard.io/gpumem=5120 on container llm (was request unset, limit 5Gi)"
        in decision.warnings
    )


def test_audit_keys_hold_no_slash() -> None:
    # The API server prefixes "<webhook name>/" and drops keys that then have two slashes.
    decision = decide_pod(pod())
    assert all("/" not in key for key in decision.audit_annotations)


def test_warnings_are_printable_even_for_odd_container_names() -> None:
    decision = decide_pod(pod(container("bad\nname\x00", limits={GPUMEM: "1Gi"})))
    assert all(warning.isprintable() for warning in decision.warnings)


# --- GPUs reached without a GPU request ---------------------------------------------------


def _env(name: str, value: str | None = None, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, **fields}
    if value is not None:
        entry["value"] = value
    return entry


ACCESS_CASES = [
    pytest.param(
        pod(container("cuda", env=[_env("NVIDIA_VISIBLE_DEVICES", "all")])),
        "container cuda sets NVIDIA_VISIBLE_DEVICES=all without requesting a GPU",
        id="env all on a pod without a GPU",
    ),
    pytest.param(
        pod(container("cuda", env=[_env("NVIDIA_VISIBLE_DEVICES", "0,1")]), namespace="other"),
        "NVIDIA_VISIBLE_DEVICES=0,1",
        id="env with indexes",
    ),
    pytest.param(
        pod(gpu_container(), container("side", env=[_env("NVIDIA_VISIBLE_DEVICES", "all")])),
        "container side sets NVIDIA_VISIBLE_DEVICES=all",
        id="a GPU pod's container without a GPU of its own",
    ),
    pytest.param(
        pod(
            container("app"),
            init_containers=[container("i", env=[_env("NVIDIA_VISIBLE_DEVICES", "all")])],
        ),
        "container i sets",
        id="an init container",
    ),
    pytest.param(
        pod(
            container(
                "cuda",
                env=[_env("NVIDIA_VISIBLE_DEVICES", valueFrom={"configMapKeyRef": {"name": "x"}})],
            )
        ),
        "NVIDIA_VISIBLE_DEVICES from valueFrom",
        id="env from valueFrom: not knowable, denied",
    ),
    pytest.param(
        pod(container("cuda"), runtimeClassName="nvidia"),
        "runtimeClassName nvidia exposes GPUs, and this pod requests none",
        id="the nvidia RuntimeClass without a GPU",
    ),
    pytest.param(
        pod(gpu_container(), resourceClaims=[{"name": "gpu", "resourceClaimName": "a100"}]),
        "spec.resourceClaims (Dynamic Resource Allocation) are not admitted",
        id="a DRA claim",
    ),
]


@pytest.mark.parametrize(("obj", "fragment"), ACCESS_CASES)
def test_gpus_reached_without_a_gpu_request_are_denied(obj: dict[str, Any], fragment: str) -> None:
    decision = decide_pod(obj)
    assert decision.allowed is False
    assert fragment in decision.message


ACCESS_ALLOWED = [
    pytest.param(pod(container("c", env=[_env("NVIDIA_VISIBLE_DEVICES", v)])), make_policy(), id=v)
    for v in ("void", "none", "")
] + [
    pytest.param(
        pod(gpu_container(env=[_env("NVIDIA_VISIBLE_DEVICES", "all")])),
        make_policy(),
        id="a GPU container: the device plugin's value wins",
    ),
    pytest.param(pod(gpu_container(), runtimeClassName="nvidia"), make_policy(), id="GPU + nvidia"),
    pytest.param(pod(container("c"), runtimeClassName="kata"), make_policy(), id="another runtime"),
    pytest.param(
        pod(container("c"), runtimeClassName="nvidia"),
        make_policy(gpu_runtime_class_names=()),
        id="no GPU runtime classes in the policy",
    ),
    pytest.param(
        pod(gpu_container(), resourceClaims=[{"name": "gpu", "resourceClaimName": "a"}]),
        make_policy(allow_resource_claims=True),
        id="DRA allowed by the policy",
    ),
    pytest.param(
        pod(container("c", env=[_env("NVIDIA_VISIBLE_DEVICES", "all")]), namespace="kube-system"),
        make_policy(),
        id="excluded namespace",
    ),
]


@pytest.mark.parametrize(("obj", "policy"), ACCESS_ALLOWED)
def test_gpu_access_that_is_allowed(obj: dict[str, Any], policy: Any) -> None:
    assert decide_pod(obj, policy).allowed


def test_a_resource_pattern_makes_a_gpu_pod_and_a_gpu_request() -> None:
    """gpuResourceNames: nvidia.com/mig-*: a MIG profile's pod gets its budget, and its
    container may carry the device variable (the device plugin sets it to the MIG device)."""
    policy = parse_policy(
        "gpuResourceNames: [nvidia.com/gpu, nvidia.com/mig-*]\n"
        "defaults: {priorityClassName: tier-2-gpu, gpumemMiB: 1024}\n",
        "test policy",
    )
    mig = {"nvidia.com/mig-1g.10gb": "1"}
    obj = pod(
        container("cuda", requests=mig, limits=mig, env=[_env("NVIDIA_VISIBLE_DEVICES", "all")])
    )
    reply = decide_pod(obj, policy)
    assert reply.allowed, reply
    assert gpumem_of(applied(obj, reply))["cuda"] == ("1024", "1024")
    # Without the pattern the same pod is no GPU pod, and its variable is denied.
    denied = decide_pod(obj, make_policy())
    assert not denied.allowed
    assert "sets NVIDIA_VISIBLE_DEVICES=all without requesting a GPU" in denied.message
