"""The rendered matchConditions (gpumem.match_conditions) as the real kube-apiserver takes and
evaluates them.

- It accepts the conditions of a policy at the renderer's largest number of names (every
  condition is compiled, and checked, when a configuration is written).
- It sends a pod to the webhook exactly when the webhook would count the pod as a GPU pod
  (gpumem.demand), a resource pattern included, or the pod could reach a GPU without asking
  (a device variable, a GPU RuntimeClass, a DRA claim: what the webhook denies). A probe
  webhook with the rendered conditions, scoped to one fresh namespace, points at an address
  where nothing listens, so a pod it is sent to is refused naming it (failurePolicy Fail) and
  any other pod is admitted. Pods are created with dryRun=All, so nothing is stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gpumem.demand import read_demand
from gpumem.match_conditions import MAX_NAMES, match_conditions
from gpumem.policy import Policy

from .conftest import unique_name
from .harness import ClusterBase

pytestmark = pytest.mark.e2e

PROBE = "cel-probe.vramguard.io"
# A RuntimeClass of its own: the API server refuses a pod naming a class that does not exist
# before any webhook is asked.
RUNTIME_CLASS = unique_name("cel-gpu-runtime")
POLICY = Policy.model_validate(
    {
        "gpuResourceNames": ["nvidia.com/gpu", "amd.com/gpu", "nvidia.com/mig-*"],
        "gpuRuntimeClassNames": [RUNTIME_CLASS],
    }
)


def configuration(name: str, namespace: str, policy: Policy) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": PROBE,
                "admissionReviewVersions": ["v1"],
                # Nothing listens on port 1: a call fails at once.
                "clientConfig": {"url": "https://127.0.0.1:1/mutate"},
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "In",
                            "values": [namespace],
                        }
                    ]
                },
                "matchConditions": match_conditions(policy),
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "timeoutSeconds": 1,
            }
        ],
    }


@pytest.fixture
def admission(control_plane: ClusterBase) -> Any:
    from kubernetes import client  # noqa: PLC0415

    return client.AdmissionregistrationV1Api(control_plane.api_client())


def test_the_api_server_accepts_the_most_names_the_renderer_writes(admission: Any) -> None:
    names = [f"vendor{i}.example.com/gpu" for i in range(MAX_NAMES - 1)]
    policy = Policy.model_validate({"gpuResourceNames": names})
    body = configuration(unique_name("cel-limit"), "nowhere", policy)
    created = admission.create_mutating_webhook_configuration(body, dry_run="All")
    (webhook,) = created.webhooks
    (condition,) = webhook.match_conditions
    assert condition.expression == match_conditions(policy)[0]["expression"]


@pytest.fixture
def probe(admission: Any, make_namespace: Callable[..., str]) -> Iterator[str]:
    """A namespace whose pod creations go through the probe webhook; yields its name."""
    from kubernetes import client  # noqa: PLC0415

    namespace = make_namespace("cel")
    node_v1 = client.NodeV1Api(admission.api_client)
    node_v1.create_runtime_class(
        client.V1RuntimeClass(metadata=client.V1ObjectMeta(name=RUNTIME_CLASS), handler="runc")
    )
    # Named to sort before "vramguard": mutating webhooks run in the order of their
    # configurations' names, so the probe is asked first if vramguard's is registered too.
    name = unique_name("cel-probe")
    admission.create_mutating_webhook_configuration(configuration(name, namespace, POLICY))
    try:
        yield namespace
    finally:
        admission.delete_mutating_webhook_configuration(name)
        node_v1.delete_runtime_class(RUNTIME_CLASS)


def sent_to_probe(core_v1: Any, namespace: str, pod: dict[str, Any]) -> bool:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    body = {**pod, "metadata": {"name": unique_name("p"), "namespace": namespace}}
    try:
        core_v1.create_namespaced_pod(namespace, body, dry_run="All")
    except ApiException as err:
        if PROBE in str(err.body):
            return True
        raise
    return False


def container(name: str, **resources: dict[str, str]) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "busybox"}
    if resources:
        c["resources"] = resources
    return c


def spec(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": list(containers)}
    if init is not None:
        pod_spec["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "spec": pod_spec}


GPU = {"nvidia.com/gpu": "1"}
AMD = {"amd.com/gpu": "1"}
GPUMEM = {"vramguard.io/gpumem": "3000"}
CPU = {"cpu": "100m"}
# Valid pods only (extended resources as limits, or request == limit), so that a pod not sent
# is admitted rather than refused by validation.
SAMPLES = {
    "no resources": spec(container("a")),
    "empty resources": spec({"name": "a", "image": "busybox", "resources": {}}),
    "cpu only": spec(container("a", requests=CPU, limits=CPU)),
    "gpu limit": spec(container("a", limits=GPU)),
    "gpu request and limit": spec(container("a", requests=GPU, limits=GPU)),
    "gpumem limit": spec(container("a", limits=GPUMEM)),
    "cpu request, amd limit": spec(container("a", requests=CPU, limits=AMD)),
    "second container": spec(container("a"), container("b", limits=GPU)),
    "cpu init container": spec(container("a"), init=[container("i", limits=CPU)]),
    "gpu init container": spec(container("a"), init=[container("i", limits=GPU)]),
    "gpumem sidecar": spec(
        container("a"), init=[{**container("s", limits=GPUMEM), "restartPolicy": "Always"}]
    ),
    "a prefix of a name": spec(container("a", limits={"nvidia.com/gpu.shared": "1"})),
    "a MIG profile (pattern)": spec(container("a", limits={"nvidia.com/mig-1g.10gb": "1"})),
    "all cards by env": spec({**container("a"), "env": [{"name": "NVIDIA_VISIBLE_DEVICES"}]}),
    "env on an init container": spec(
        container("a"),
        init=[{**container("i"), "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}],
    ),
    "other env": spec({**container("a"), "env": [{"name": "CUDA_VISIBLE_DEVICES"}]}),
    "the GPU runtime class": {
        **spec(container("a")),
        "spec": {**spec(container("a"))["spec"], "runtimeClassName": RUNTIME_CLASS},
    },
    "a DRA claim": {
        **spec(container("a")),
        "spec": {
            **spec(container("a"))["spec"],
            "resourceClaims": [{"name": "gpu", "resourceClaimName": "some-claim"}],
        },
    },
}


def reaches_a_gpu_unasked(pod: dict[str, Any], policy: Policy) -> bool:
    """What the access conditions are to send, said plainly."""
    pod_spec = pod["spec"]
    containers = [*pod_spec["containers"], *pod_spec.get("initContainers", [])]
    return (
        any(e["name"] in policy.device_env_names for c in containers for e in c.get("env", []))
        or pod_spec.get("runtimeClassName") in policy.gpu_runtime_class_names
        or bool(pod_spec.get("resourceClaims"))
    )


def test_a_pod_reaches_the_webhook_exactly_when_the_webhook_judges_it(
    core_v1: Any, probe: str
) -> None:
    # The API server's webhook list follows a watch: wait until the probe is asked.
    deadline = time.monotonic() + 30
    while not sent_to_probe(core_v1, probe, SAMPLES["gpu limit"]):
        assert time.monotonic() < deadline, "the probe webhook was never called"
        time.sleep(0.2)
    sent = {name: sent_to_probe(core_v1, probe, pod) for name, pod in SAMPLES.items()}
    expected = {
        name: read_demand(pod, POLICY.resource_names).is_gpu or reaches_a_gpu_unasked(pod, POLICY)
        for name, pod in SAMPLES.items()
    }
    assert sent == expected
    assert {name for name, value in sent.items() if value} == {
        "gpu limit",
        "gpu request and limit",
        "gpumem limit",
        "cpu request, amd limit",
        "second container",
        "gpu init container",
        "gpumem sidecar",
        "a MIG profile (pattern)",
        "all cards by env",
        "env on an init container",
        "the GPU runtime class",
        "a DRA claim",
    }
