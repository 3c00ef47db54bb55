"""Every manifest, as kustomize builds it, validated by the real kube-apiserver.

Each overlay (cert-manager; self-signed and kind, with a throwaway `python -m certs` output in
a copy of the tree) and the base with every component is built with kustomize, and every
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
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.manifests.conftest import (
    KUSTOMIZE,
    OVERLAYS,
    OVERLAYS_WITH_LOCAL_CERTS,
    WEBHOOK_DNS,
)

from .harness import ClusterBase

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
FIELD_MANAGER = "vramguard-e2e"
ALL_COMPONENTS = "base+every-component"
BUILDS = (*OVERLAYS, ALL_COMPONENTS)
NOT_SERVED_HERE = frozenset(
    {
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("cert-manager.io/v1", "Certificate"),
        ("cert-manager.io/v1", "Issuer"),
    }
)
HTTP_OK = (200, 201)

K8sObject = dict[str, Any]


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
        directory = every if build == ALL_COMPONENTS else root / "manifests" / "overlays" / build
        args = [str(kustomize), "build"]
        if build in OVERLAYS_WITH_LOCAL_CERTS:
            args += ["--load-restrictor", "LoadRestrictionsNone"]
        result = subprocess.run(
            [*args, str(directory)], capture_output=True, text=True, check=False, timeout=120
        )
        assert result.returncode == 0, f"kustomize build {build}:\n{result.stderr}"
        outputs[build] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return outputs


# --- talking to the API server ---------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: Mapping[str, Any]
    warnings: list[str]

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.body)


def request(
    api: Any,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = None,
    content_type: str | None = None,
) -> Answer:
    """One API call through the admin ApiClient, any status returned (not raised)."""
    headers = {"Accept": "application/json"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    serialized = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized, _request_timeout=30)
    data = response.read()
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = {"message": data.decode(errors="replace")}
    warnings = list(response.headers.getlist("Warning")) if response.headers else []
    return Answer(response.status, parsed if isinstance(parsed, dict) else {}, warnings)


@dataclass(frozen=True)
class Served:
    plural: str
    namespaced: bool


class Discovery:
    """Which kinds the API server serves, one discovery call per group version."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self._versions: dict[str, dict[str, Served]] = {}

    def resource(self, api_version: str, kind: str) -> Served | None:
        if api_version not in self._versions:
            answer = request(self._api, "GET", self.prefix(api_version))
            kinds: dict[str, Served] = {}
            if answer.status == 200:
                for item in answer.body.get("resources", []):
                    if "/" not in item["name"]:  # not a subresource
                        kinds[item["kind"]] = Served(item["name"], item["namespaced"])
            else:
                assert answer.status == 404, f"discovery of {api_version}: {answer.message}"
            self._versions[api_version] = kinds
        return self._versions[api_version].get(kind)

    @staticmethod
    def prefix(api_version: str) -> str:
        return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def object_path(obj: K8sObject, served: Served) -> str:
    metadata = obj["metadata"]
    scope = f"/namespaces/{metadata['namespace']}" if served.namespaced else ""
    return f"{Discovery.prefix(obj['apiVersion'])}{scope}/{served.plural}/{metadata['name']}"


def apply(api: Any, obj: K8sObject, served: Served, *, dry_run: bool = True) -> Answer:
    """Server-side apply, forcing conflicts: validation of what `kubectl apply
    --server-side --force-conflicts` would store."""
    query = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
    if dry_run:
        query["dryRun"] = "All"
    return request(
        api,
        "PATCH",
        object_path(obj, served),
        query=query,
        body=obj,
        content_type="application/apply-patch+yaml",
    )


def identity(obj: K8sObject) -> str:
    namespace = obj["metadata"].get("namespace")
    where = f"{namespace}/" if namespace else ""
    return f"{obj['kind']} {where}{obj['metadata']['name']} ({obj['apiVersion']})"


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
