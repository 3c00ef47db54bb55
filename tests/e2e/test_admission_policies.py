"""The ValidatingAdmissionPolicies that narrow the watchdog's and the advertiser's rights, in
the real kube-apiserver, as their ServiceAccounts.

RBAC lets the watchdog delete any pod and the advertiser patch any node's status; the
policies (components/watchdog, components/advertiser) let the watchdog delete only GPU pods
outside vramguard's and the system's namespaces, and the advertiser change only the
GPU-memory resource in a node's capacity and allocatable. Each component's ServiceAccount,
ClusterRole and binding are created from the same files, and each request is made with a
TokenRequest token of the ServiceAccount, so authentication, RBAC and admission are the API
server's own. The admin (anyone else) is not held by them.

Type errors in the CEL are reported in a policy's status by kube-controller-manager, which does
not run here; an expression that fails at run time fails closed (failurePolicy Fail), so the
requests each test expects to pass show that every expression evaluates.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.unit.manifests.conftest import MANIFESTS, K8sObject, objects

from .conftest import unique_name
from .harness import ClusterBase, GPUNodeSpec, create_gpu_node, delete_node, gpu_pod
from .harness.accounts import service_account_client
from .harness.manifests import request

pytestmark = pytest.mark.e2e

NAMESPACE = "vramguard"
POLICY_PATH = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDING_PATH = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
HTTP_FORBIDDEN = 403
HTTP_UNPROCESSABLE = 422


def component(name: str) -> list[K8sObject]:
    return [
        *objects(MANIFESTS / "components" / name / f"{name}.yaml"),
        *objects(MANIFESTS / "components" / name / "admission-policy.yaml"),
    ]


@pytest.fixture(scope="module")
def admin(control_plane: ClusterBase) -> Any:
    return control_plane.api_client()


def _create(admin: Any, obj: K8sObject) -> Callable[[], None]:
    """Create a cluster object or one in NAMESPACE (an existing one is replaced by deleting
    it first: an earlier run may have left it); returns its deletion."""
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    rbac: Any = client.RbacAuthorizationV1Api(admin)
    core: Any = client.CoreV1Api(admin)
    calls: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "ServiceAccount": (
            lambda: core.create_namespaced_service_account(NAMESPACE, obj),
            lambda: core.delete_namespaced_service_account(name, NAMESPACE),
        ),
        "ClusterRole": (
            lambda: rbac.create_cluster_role(obj),
            lambda: rbac.delete_cluster_role(name),
        ),
        "ClusterRoleBinding": (
            lambda: rbac.create_cluster_role_binding(obj),
            lambda: rbac.delete_cluster_role_binding(name),
        ),
        "ValidatingAdmissionPolicy": (
            lambda: _post(admin, POLICY_PATH, obj),
            lambda: request(admin, "DELETE", f"{POLICY_PATH}/{name}"),
        ),
        "ValidatingAdmissionPolicyBinding": (
            lambda: _post(admin, BINDING_PATH, obj),
            lambda: request(admin, "DELETE", f"{BINDING_PATH}/{name}"),
        ),
    }
    create, delete = calls[kind]
    try:
        create()
    except ApiException as err:
        if err.status != 409:  # Conflict: left by an interrupted run
            raise
        delete()
        create()
    return lambda: _ignore_missing(delete)


def _post(admin: Any, path: str, obj: K8sObject) -> None:
    answer = request(admin, "POST", path, body=obj, query={"fieldValidation": "Strict"})
    if answer.status == 409:
        raise ApiException(status=409, reason="exists")
    assert answer.status == 201, f"{obj['kind']} {obj['metadata']['name']}: {answer.message}"


def _ignore_missing(delete: Callable[[], Any]) -> None:
    try:
        delete()
    except ApiException as err:
        if err.status != 404:
            raise


@pytest.fixture(scope="module")
def installed(admin: Any) -> Iterator[None]:
    """The two components' accounts, RBAC and admission policies (not their Deployments)."""
    core: Any = client.CoreV1Api(admin)
    # As the base makes it, Pod Security labels included: other tests (the manifests' dry
    # runs) rely on what the namespace enforces.
    (namespace,) = objects(MANIFESTS / "base" / "namespace.yaml")
    assert namespace["metadata"]["name"] == NAMESPACE
    try:
        core.create_namespace(namespace)
    except ApiException as err:
        if err.status != 409:  # it stays from an earlier test (no finalizer runs)
            raise
    kinds = (
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    )
    deletions: list[Callable[[], None]] = []
    try:
        for name in ("watchdog", "advertiser"):
            for obj in component(name):
                if obj["kind"] in kinds:
                    deletions.append(_create(admin, obj))
        yield
    finally:
        for delete in reversed(deletions):
            delete()


def _refused(attempt: Callable[..., Any], timeout: float = 20.0) -> ApiException:
    """The refusal a request meets. A new policy reaches the API server's admission within a
    second or two of being created, so dry runs (admitted like the real thing, nothing
    stored) repeat until one is refused; then the request itself must be refused too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            attempt(dry_run="All")
        except ApiException as err:
            if err.status not in (HTTP_FORBIDDEN, HTTP_UNPROCESSABLE):
                raise
            break
        assert time.monotonic() < deadline, "the policy never refused the request"
        time.sleep(0.3)
    with pytest.raises(ApiException) as refused:
        attempt()
    assert refused.value.status in (HTTP_FORBIDDEN, HTTP_UNPROCESSABLE), refused.value
    return refused.value


def _account(control_plane: ClusterBase, admin: Any, account: str, tmp_path: Path) -> Any:
    return service_account_client(
        control_plane.kubeconfig, client.CoreV1Api(admin), NAMESPACE, account, tmp_path
    )


@pytest.mark.usefixtures("installed")
def test_the_watchdog_may_delete_only_gpu_pods_outside_the_system(
    control_plane: ClusterBase,
    admin: Any,
    make_namespace: Callable[..., str],
    tmp_path: Path,
) -> None:
    core: Any = client.CoreV1Api(admin)
    tenant = make_namespace("watchdog-vap")
    watchdog: Any = client.CoreV1Api(_account(control_plane, admin, "vramguard-watchdog", tmp_path))

    # A pod that declares no GPU memory: the RBAC allows the delete, the policy does not.
    core.create_namespaced_pod(tenant, gpu_pod("cpu-only", namespace=tenant, gpus=0))
    refused = _refused(functools.partial(watchdog.delete_namespaced_pod, "cpu-only", tenant))
    assert "may delete only GPU pods that declare vramguard.io/gpumem" in str(refused.body)
    assert f"{tenant}/cpu-only declares none" in str(refused.body)
    core.read_namespaced_pod("cpu-only", tenant)  # still there

    # A GPU pod with its declaration (what the webhook gives every GPU pod): deleted.
    core.create_namespaced_pod(tenant, gpu_pod("over-budget", namespace=tenant, gpumem_mib=3000))
    watchdog.delete_namespaced_pod("over-budget", tenant, grace_period_seconds=0)

    # Never in the system's namespaces, even a GPU pod (kube-system here: vramguard's own
    # namespaces enforce Pod Security "restricted", which this placeholder pod does not meet;
    # the unit tests keep all of them in the same list).
    system = unique_name("gpu")
    core.create_namespaced_pod(
        "kube-system", gpu_pod(system, namespace="kube-system", gpumem_mib=100)
    )
    try:
        refused = _refused(functools.partial(watchdog.delete_namespaced_pod, system, "kube-system"))
        assert "may not delete pods in kube-system" in str(refused.body)
    finally:
        core.delete_namespaced_pod(system, "kube-system", grace_period_seconds=0)

    # The admin is not the watchdog: the policy does not look at its deletes.
    core.delete_namespaced_pod("cpu-only", tenant, grace_period_seconds=0)


@pytest.mark.usefixtures("installed")
def test_the_advertiser_may_change_only_gpumem_in_a_nodes_status(
    control_plane: ClusterBase, admin: Any, tmp_path: Path
) -> None:
    core: Any = client.CoreV1Api(admin)
    node = unique_name("advertiser-vap")
    create_gpu_node(core, GPUNodeSpec(name=node))
    advertiser: Any = client.CoreV1Api(
        _account(control_plane, admin, "vramguard-advertiser", tmp_path)
    )

    def patch(*ops: dict[str, Any], **options: Any) -> Any:
        return advertiser.patch_node_status(node, list(ops), **options)

    try:
        refusals: dict[str, tuple[dict[str, Any], str]] = {
            "another resource": (
                {"op": "replace", "path": "/status/allocatable/nvidia.com~1gpu", "value": "64"},
                "may change only vramguard.io/gpumem",
            ),
            "a removed resource": (
                {"op": "remove", "path": "/status/capacity/cpu"},
                "may change only vramguard.io/gpumem",
            ),
            "the addresses": (
                {
                    "op": "replace",
                    "path": "/status/addresses",
                    "value": [{"type": "InternalIP", "address": "192.0.2.66"}],
                },
                "may not change the addresses",
            ),
            "the conditions": (
                {"op": "replace", "path": "/status/conditions/0/status", "value": "False"},
                "may not change the addresses, conditions",
            ),
        }
        for what, (op, message) in refusals.items():
            refused = _refused(functools.partial(patch, op))
            assert message in str(refused.body), what
        # Now that the policy refuses: what `vramguard advertise` writes
        # (gpumem.advertise.status_patch) is allowed.
        gpumem = "/status/{}/vramguard.io~1gpumem"
        patch(
            {"op": "add", "path": gpumem.format("capacity"), "value": "14336"},
            {"op": "add", "path": gpumem.format("allocatable"), "value": "14336"},
        )
        assert core.read_node(node).status.allocatable["vramguard.io/gpumem"] == "14336"

        status = core.read_node(node).status
        assert status.allocatable["nvidia.com/gpu"] == "4"
        assert "cpu" in status.capacity
        assert status.addresses[0].address != "192.0.2.66"

        # The admin (here for the kubelet) is not held by the policy.
        core.patch_node_status(
            node, [{"op": "replace", "path": "/status/allocatable/nvidia.com~1gpu", "value": "8"}]
        )
    finally:
        delete_node(core, node)
