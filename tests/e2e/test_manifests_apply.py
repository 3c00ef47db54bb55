"""Every manifest, as kustomize builds it, validated by the real kube-apiserver.

The default install (manifests/), each overlay (cert-manager, kind; self-signed with a
throwaway `python -m certs` output in a copy of the tree) and the base with every component
is built with kustomize, and every
object is sent to the API server as a server-side apply with dryRun=All (fieldManager
vramguard-e2e, fieldValidation=Strict): the server's own schema, defaulting, validation and
admission run, nothing is stored. A misspelt field, a wrong type or an invalid value fails
here, in CI, not at install time. Warnings fail too: the `vramguard` namespace warns on the
restricted Pod Security Standard, which a workload's pod template must meet.

A dry run of a namespaced object in a missing namespace fails, so the `vramguard` Namespace
is created for real when absent (harmless: nothing runs in it here) and dry-run otherwise.

Kinds from CRDs that the bare API server lacks (PrometheusRule and ServiceMonitor of the
prometheus-operator, cert-manager's Certificate and Issuer) cannot be validated by it: they
are listed in NOT_SERVED_HERE, a fixed allow-list, so that any other kind the server does not
serve (a new CRD, a typo in apiVersion) fails the test. Where the server does serve one of
them (an existing cluster with those CRDs, VRAMGUARD_E2E_KUBECONFIG), it is validated too.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.manifests.conftest import (
    INSTALLS,
    KUSTOMIZE,
    OVERLAYS_WITH_LOCAL_CERTS,
    WEBHOOK_DNS,
    install_directory,
)

from .harness import ClusterBase
from .harness.manifests import (
    HTTP_OK,
    Discovery,
    K8sObject,
    apply,
    identity,
    kustomize_build,
    object_path,
    request,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
ALL_COMPONENTS = "base+every-component"
BUILDS = (*INSTALLS, ALL_COMPONENTS)
NOT_SERVED_HERE = frozenset(
    {
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("cert-manager.io/v1", "Certificate"),
        ("cert-manager.io/v1", "Issuer"),
    }
)


# --- building --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[K8sObject]]:
    """Every build's objects. The tree is copied next to a fresh certs/out (never the real
    one, which may be absent and must not be written by tests)."""
    kustomize = KUSTOMIZE.find()
    root = tmp_path_factory.mktemp("manifests-apply")
    shutil.copytree(MANIFESTS, root / "manifests")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "certs",
            "--out",
            str(root / "certs" / "out"),
            *[arg for name in WEBHOOK_DNS for arg in ("--dns", name)],
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    # The base with every component, so a component no overlay includes is checked too.
    every = root / "every-component"
    every.mkdir()
    components = sorted(p.name for p in (MANIFESTS / "components").iterdir() if p.is_dir())
    (every / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../manifests/base"],
                "components": [f"../manifests/components/{name}" for name in components],
            }
        )
    )
    outputs: dict[str, list[K8sObject]] = {}
    for build in BUILDS:
        directory = (
            every if build == ALL_COMPONENTS else install_directory(root / "manifests", build)
        )
        outputs[build] = kustomize_build(
            kustomize, directory, load_restrictor_none=build in OVERLAYS_WITH_LOCAL_CERTS
        )
    return outputs


# --- talking to the API server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def api(control_plane: ClusterBase) -> Any:
    return control_plane.api_client()


@pytest.fixture(scope="module")
def discovery(api: Any) -> Discovery:
    return Discovery(api)


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_every_object_passes_a_server_side_dry_run(
    build: str, built: dict[str, list[K8sObject]], api: Any, discovery: Discovery
) -> None:
    docs = built[build]
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    # vramguard-node: components/node-agent's, in every overlay.
    assert [d["metadata"]["name"] for d in namespaces] == ["vramguard", "vramguard-node"]
    for namespace in namespaces:
        served = discovery.resource("v1", "Namespace")
        assert served is not None
        exists = request(api, "GET", object_path(namespace, served)).status == 200
        answer = apply(api, namespace, served, dry_run=exists)
        assert answer.status in HTTP_OK, f"{identity(namespace)}: {answer.message}"

    problems: list[str] = []
    unvalidated: set[tuple[str, str]] = set()
    for obj in docs:
        if obj["kind"] == "Namespace":
            continue
        served = discovery.resource(obj["apiVersion"], obj["kind"])
        if served is None:
            if (obj["apiVersion"], obj["kind"]) not in NOT_SERVED_HERE:
                problems.append(
                    f"{identity(obj)}: the API server does not serve this kind, and it is not "
                    "in NOT_SERVED_HERE"
                )
            unvalidated.add((obj["apiVersion"], obj["kind"]))
            continue
        answer = apply(api, obj, served)
        if answer.status not in HTTP_OK:
            problems.append(f"{identity(obj)}: {answer.status} {answer.message}")
        elif answer.warnings:
            problems.append(f"{identity(obj)}: warnings {answer.warnings}")
    assert not problems, "\n".join(problems)
    validated = (
        len(docs)
        - len(namespaces)
        - sum(1 for d in docs if (d["apiVersion"], d["kind"]) in unvalidated)
    )
    assert validated >= 10, f"only {validated} objects validated in {build}"


def test_the_allow_list_names_only_kinds_the_manifests_use(
    built: dict[str, list[K8sObject]],
) -> None:
    """NOT_SERVED_HERE must not rot into a blanket exemption."""
    used = {(d["apiVersion"], d["kind"]) for docs in built.values() for d in docs}
    assert used >= NOT_SERVED_HERE, NOT_SERVED_HERE - used


def test_a_schema_error_is_caught(api: Any, discovery: Discovery) -> None:
    """The check has teeth: an unknown field and an invalid value are refused."""
    served = discovery.resource("apps/v1", "Deployment")
    assert served is not None
    deployment: K8sObject = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "vramguard-e2e-typo", "namespace": "default"},
        "spec": {
            "replica": 1,  # misspelt
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }
    answer = apply(api, deployment, served)
    # Server-side apply refuses it while converting to the typed schema (a 500 on
    # v1.36: "field not declared in schema"; a 400 "unknown field" with other versions).
    assert answer.status >= 400, answer
    assert "spec.replica" in answer.message
    deployment["spec"].pop("replica")
    deployment["spec"]["template"]["spec"]["containers"][0]["name"] = "Not_A_DNS_Label"
    answer = apply(api, deployment, served)
    assert answer.status == 422, answer
    assert "Not_A_DNS_Label" in answer.message


def test_a_pod_security_violation_is_caught(
    built: dict[str, list[K8sObject]], api: Any, discovery: Discovery
) -> None:
    """A workload whose pods break the restricted standard is stored with a warning only
    (the pods would be refused later, by the ReplicaSet controller): warnings must fail."""
    (namespace,) = [
        d
        for d in built[ALL_COMPONENTS]
        if d["kind"] == "Namespace" and d["metadata"]["name"] == "vramguard"
    ]
    served_namespace = discovery.resource("v1", "Namespace")
    assert served_namespace is not None
    if request(api, "GET", object_path(namespace, served_namespace)).status != 200:
        assert apply(api, namespace, served_namespace, dry_run=False).status in HTTP_OK
    served = discovery.resource("apps/v1", "Deployment")
    assert served is not None
    (deployment,) = [
        d
        for d in built[ALL_COMPONENTS]
        if d["metadata"]["name"] == "vramguard-advertiser" and d["kind"] == "Deployment"
    ]
    assert apply(api, deployment, served).warnings == []
    deployment = copy.deepcopy(deployment)  # the builds are shared by the module's tests
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    answer = apply(api, deployment, served)
    assert answer.status in HTTP_OK, answer
    assert any("would violate PodSecurity" in w for w in answer.warnings), answer.warnings
