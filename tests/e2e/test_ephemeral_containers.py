"""manifests/base/ephemeral-containers-policy.yaml in the real kube-apiserver: an ephemeral
container (`kubectl debug`) that sets NVIDIA_VISIBLE_DEVICES to cards is refused, one that
sets it to void is added, and vramguard's excluded namespaces are not judged.

Ephemeral containers are added by a PATCH of the pods/ephemeralcontainers subresource (what
`kubectl debug` sends: a strategic merge patch of spec.ephemeralContainers), which the webhook
is never sent; the ValidatingAdmissionPolicy is the API server's own. The pods here are never
scheduled (no kubelet runs them): the API server admits ephemeral containers into a Pending
pod all the same, so the requests below are real ones, not only dry runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.unit.manifests.conftest import MANIFESTS, K8sObject, objects

from .conftest import unique_name
from .harness import ClusterBase, gpu_pod
from .harness.manifests import Answer, request

pytestmark = pytest.mark.e2e

POLICY_FILE = MANIFESTS / "base" / "ephemeral-containers-policy.yaml"
POLICY_PATH = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDING_PATH = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
PATHS = {"ValidatingAdmissionPolicy": POLICY_PATH, "ValidatingAdmissionPolicyBinding": BINDING_PATH}
HTTP_OK = 200
HTTP_CREATED = 201
HTTP_FORBIDDEN = 403
HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409


@pytest.fixture(scope="module")
def admin(control_plane: ClusterBase) -> Any:
    return control_plane.api_client()


def _install(admin: Any) -> Callable[[], None]:
    """The policy and its binding, as the base has them (one left by an interrupted run is
    replaced); returns their deletion."""
    created: list[str] = []
    for obj in objects(POLICY_FILE):
        path = PATHS[obj["kind"]]
        url = f"{path}/{obj['metadata']['name']}"
        answer = request(admin, "POST", path, body=obj, query={"fieldValidation": "Strict"})
        if answer.status == HTTP_CONFLICT:
            request(admin, "DELETE", url)
            answer = request(admin, "POST", path, body=obj, query={"fieldValidation": "Strict"})
        assert answer.status == HTTP_CREATED, f"{obj['kind']}: {answer.message}"
        created.append(url)

    def delete() -> None:
        for url in reversed(created):
            assert request(admin, "DELETE", url).status in (HTTP_OK, HTTP_NOT_FOUND)

    return delete


@pytest.fixture
def install(admin: Any) -> Iterator[Callable[[], None]]:
    """`install()` puts the policy in place when the test says so; it goes afterwards."""
    deletions: list[Callable[[], None]] = []
    yield lambda: deletions.append(_install(admin))
    for delete in deletions:
        delete()


def debug(
    name: str, value: str | None = "all", variable: str = "NVIDIA_VISIBLE_DEVICES"
) -> K8sObject:
    """An ephemeral container as `kubectl debug --env` makes it (None: from valueFrom)."""
    env: dict[str, Any] = {"name": variable}
    if value is None:
        env["valueFrom"] = {"fieldRef": {"fieldPath": "metadata.name"}}
    else:
        env["value"] = value
    return {
        "name": name,
        "image": "busybox",
        "imagePullPolicy": "Never",
        "stdin": True,
        "tty": True,
        "env": [env],
    }


def add(
    admin: Any, namespace: str, pod: str, container: K8sObject, *, dry_run: bool = False
) -> Answer:
    return request(
        admin,
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{pod}/ephemeralcontainers",
        query={"dryRun": "All"} if dry_run else None,
        body={"spec": {"ephemeralContainers": [container]}},
        content_type="application/strategic-merge-patch+json",
    )


def refused(admin: Any, namespace: str, pod: str, container: K8sObject) -> Answer:
    """The refusal of adding `container`. A new policy reaches admission within a second or
    two of being created, so dry runs (admitted like the real thing, nothing stored) repeat
    until one is refused; then the request itself must be refused too."""
    deadline = time.monotonic() + 20
    while True:
        answer = add(admin, namespace, pod, container, dry_run=True)
        if answer.status != HTTP_OK:
            break
        assert time.monotonic() < deadline, "the policy never refused the ephemeral container"
        time.sleep(0.3)
    assert answer.status == HTTP_FORBIDDEN, answer.message
    real = add(admin, namespace, pod, container)
    assert real.status == HTTP_FORBIDDEN, real.message
    assert real.body.get("reason") == "Forbidden", real.body
    return real


def ephemeral_names(core: Any, namespace: str, pod: str) -> list[str]:
    spec = core.read_namespaced_pod(pod, namespace).spec
    return [c.name for c in spec.ephemeral_containers or []]


def test_ephemeral_containers_are_held_to_the_device_variable_rule(
    admin: Any,
    make_namespace: Callable[..., str],
    install: Callable[[], None],
) -> None:
    core: Any = client.CoreV1Api(admin)
    tenant = make_namespace("ephemeral")
    core.create_namespaced_pod(tenant, gpu_pod("gpu", namespace=tenant))

    # Before the policy: the API server alone lets a debug container reach every card. It
    # stays in the pod (ephemeral containers are never removed), and is not judged again.
    before = add(admin, tenant, "gpu", debug("before"))
    assert before.status == HTTP_OK, before.message

    install()
    denied = refused(admin, tenant, "gpu", debug("all-cards"))
    assert (
        f"ephemeral container all-cards sets NVIDIA_VISIBLE_DEVICES=all: ephemeral containers "
        f"cannot request a GPU, so the container runtime would hand it those cards outside any "
        f"GPU-memory budget; leave the variable out or set it to void (namespace {tenant})"
    ) in denied.message
    assert "vramguard-ephemeral-gpu-env" in denied.message

    one_card = add(admin, tenant, "gpu", debug("one-card", "0"))
    assert one_card.status == HTTP_FORBIDDEN, one_card.message
    from_field = add(admin, tenant, "gpu", debug("from-field", None))
    assert from_field.status == HTTP_FORBIDDEN, from_field.message
    assert "sets NVIDIA_VISIBLE_DEVICES from valueFrom:" in from_field.message

    # No card: added, next to the one from before the policy (only new containers count).
    for name, value in (("void", "void"), ("none", "none"), ("empty", "")):
        answer = add(admin, tenant, "gpu", debug(name, value))
        assert answer.status == HTTP_OK, f"{name}: {answer.message}"
    other = add(admin, tenant, "gpu", debug("path", "/bin", variable="PATH"))
    assert other.status == HTTP_OK, other.message
    # (A strategic merge patch puts the patch's items first: compared as a set.)
    assert set(ephemeral_names(core, tenant, "gpu")) == {"before", "void", "none", "empty", "path"}


def test_excluded_namespaces_are_not_judged(
    admin: Any, make_namespace: Callable[..., str], install: Callable[[], None]
) -> None:
    """kube-system (always excluded, as are vramguard's own namespaces and the policy's
    excludedNamespaces): the same container is added there."""
    core: Any = client.CoreV1Api(admin)
    tenant = make_namespace("ephemeral")
    core.create_namespaced_pod(tenant, gpu_pod("gpu", namespace=tenant))
    system = unique_name("gpu")
    core.create_namespaced_pod("kube-system", gpu_pod(system, namespace="kube-system"))
    try:
        install()
        refused(admin, tenant, "gpu", debug("all-cards"))  # the policy is in force
        answer = add(admin, "kube-system", system, debug("all-cards"))
        assert answer.status == HTTP_OK, answer.message
        assert ephemeral_names(core, "kube-system", system) == ["all-cards"]
    finally:
        core.delete_namespaced_pod(system, "kube-system", grace_period_seconds=0)
