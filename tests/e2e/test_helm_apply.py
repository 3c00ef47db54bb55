"""The Helm chart against the real kube-apiserver.

1. `helm template` with the default values and with each certificate mode (certManager with the
   monitoring objects, provided with a real CA), `helm test`'s hook objects included: every
   object is sent as a server-side apply with dryRun=All and fieldValidation=Strict, and a
   warning (Pod Security: the release namespace is labelled "restricted", as the README's Helm
   install labels it) fails, as test_manifests_apply.py does for the kustomize builds, with its
   helpers and its allow-list of the CRD kinds this API server lacks.

2. `helm upgrade` keeps the caBundle the self-managed webhook (or cert-manager's cainjector)
   injected: a real `helm install`, the bundle patched in with the webhook's own code
   (kube.secrets.ca_bundle_patch, through the store it writes with), then `helm upgrade` with a
   policy that changes the webhook's matchConditions and `helm rollback`. The release keeps
   only the MutatingWebhookConfiguration, renamed, with a namespaceSelector no namespace
   matches (a post-renderer does both), so it never stands in for, nor gets in the way of, the
   `vramguard` configuration the rest of the suite registers. A second release whose
   configuration carries an empty caBundle shows what the check catches: Helm's three-way
   merge then writes the empty value back at every upgrade.

3. The `helm test` hook's check itself, run against the suite's vramguard: it passes when the
   webhook patched its dry-run GPU pod, and fails when the pod never reached the webhook.

4. The pre-delete hook's command, with its RBAC as rendered and a token of its own
   ServiceAccount: it deletes the webhook configuration (gone already is done) and may delete
   no other.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from certs.authority import new_ca
from certs.rotation import GENERATION
from kube.secrets import ca_bundle_patch, ca_bundles, tls_store
from tests.unit.manifests.conftest import BASE, HELM
from tests.unit.manifests.test_helm_chart import CERT_MANAGER, CHART, NAMESPACE, render

from .harness import ClusterBase, Vramguard
from .harness.accounts import service_account_kubeconfig
from .harness.manifests import (
    HTTP_OK,
    Discovery,
    K8sObject,
    apply,
    exists,
    identity,
    request,
)
from .test_manifests_apply import NOT_SERVED_HERE

pytestmark = pytest.mark.e2e

MODES = ("selfManaged", "certManager", "provided")
# What the post-renderer keeps: one MutatingWebhookConfiguration, renamed (argv[1]), selecting
# only namespaces labelled with its name (none are), its caBundle emptied with argv[2] "empty".
POST_RENDERER = """
import sys
import yaml

name, ca_bundle = sys.argv[1], sys.argv[2]
kept = []
for doc in yaml.safe_load_all(sys.stdin):
    if not doc or doc["kind"] != "MutatingWebhookConfiguration":
        continue
    doc["metadata"]["name"] = name
    for webhook in doc["webhooks"]:
        webhook["namespaceSelector"] = {"matchLabels": {"vramguard.io/helm-e2e": name}}
        if ca_bundle == "empty":
            webhook["clientConfig"]["caBundle"] = ""
    kept.append(doc)
yaml.safe_dump_all(kept, sys.stdout)
"""
EXTRA_GPU = "example.com/gpu"
RELEASE_NAME = "vramguard"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[K8sObject]]:
    """The chart in each certificate mode, with the test hook's objects."""
    helm = HELM.find()
    ca = new_ca().cert_pem
    values: dict[str, Mapping[str, Any]] = {
        "selfManaged": {},
        "certManager": CERT_MANAGER,
        "provided": {
            "certificates": {
                "mode": "provided",
                "provided": {"secretName": "my-tls", "caBundle": base64.b64encode(ca).decode()},
            }
        },
    }
    return {mode: render(helm, values[mode]) for mode in MODES}


@pytest.fixture(scope="module")
def api(control_plane: ClusterBase) -> Any:
    return control_plane.api_client()


@pytest.fixture(scope="module")
def discovery(api: Any) -> Discovery:
    return Discovery(api)


def _ensure_namespace(api: Any, discovery: Discovery, namespace: K8sObject) -> None:
    """A dry run in a missing namespace fails: create it for real when absent (nothing runs in
    it here), else dry-run it too."""
    served = discovery.resource("v1", "Namespace")
    assert served is not None
    answer = apply(api, namespace, served, dry_run=exists(api, namespace, served))
    assert answer.status in HTTP_OK, f"{identity(namespace)}: {answer.message}"


@pytest.mark.parametrize("mode", MODES)
def test_every_object_passes_a_server_side_dry_run(
    mode: str, rendered: dict[str, list[K8sObject]], api: Any, discovery: Discovery
) -> None:
    docs = rendered[mode]
    # The release namespace as the README's Helm install labels it: base/namespace.yaml's.
    (release_namespace,) = yaml.safe_load_all((BASE / "namespace.yaml").read_text("utf-8"))
    assert release_namespace["metadata"]["name"] == NAMESPACE
    namespaces = [release_namespace, *(d for d in docs if d["kind"] == "Namespace")]
    for namespace in namespaces:
        _ensure_namespace(api, discovery, namespace)

    problems: list[str] = []
    validated = 0
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
            continue
        answer = apply(api, obj, served)
        if answer.status not in HTTP_OK:
            problems.append(f"{identity(obj)}: {answer.status} {answer.message}")
        elif answer.warnings:
            problems.append(f"{identity(obj)}: warnings {answer.warnings}")
        else:
            validated += 1
    assert not problems, "\n".join(problems)
    # Every kind but the CRDs': the workloads, RBAC, NetworkPolicies, the webhook and the hook.
    assert validated >= 40, f"only {validated} objects validated in mode {mode}"
    hooks = [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]
    assert {d["kind"] for d in hooks} >= {"Pod", "Role", "RoleBinding", "ServiceAccount"}


# --- helm upgrade and the caBundle ------------------------------------------------------------


class Helm:
    """The helm command against this cluster, with its own cache and configuration."""

    def __init__(self, binary: Path, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.binary), *args, "--kubeconfig", str(self.kubeconfig)],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
            timeout=180,
        )
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout


@pytest.fixture
def helm(control_plane: ClusterBase, tmp_path: Path) -> Helm:
    return Helm(HELM.find(), control_plane.kubeconfig, tmp_path / "helm")


@dataclass(frozen=True)
class Release:
    """One installed release: its namespace, the name its webhook configuration got, and the
    values and post-renderer arguments every later helm command repeats."""

    helm: Helm
    namespace: str
    configuration: str
    values_dir: Path
    post_renderer: tuple[str, ...]

    def run(self, command: str, *args: str, values: Mapping[str, Any]) -> str:
        file = self.values_dir / f"values-{uuid.uuid4().hex[:8]}.json"
        file.write_text(json.dumps(dict(values)))
        return self.helm(
            command,
            RELEASE_NAME,
            *args,
            "--namespace",
            self.namespace,
            "--values",
            str(file),
            *self.post_renderer,
        )

    def rollback(self, revision: int) -> str:
        """Back to a revision's stored manifest (post-rendered when it was installed)."""
        return self.helm("rollback", RELEASE_NAME, str(revision), "--namespace", self.namespace)

    def uninstall(self) -> None:
        # --no-hooks: the pre-delete hook is a Job, and no node here would run it (Helm would
        # wait for it until its timeout). What it runs is tested below, as its ServiceAccount.
        self.helm(
            "uninstall",
            RELEASE_NAME,
            "--namespace",
            self.namespace,
            "--ignore-not-found",
            "--no-hooks",
        )


@pytest.fixture
def release(
    helm: Helm, make_namespace: Callable[..., str], tmp_path: Path, api: Any
) -> Iterator[Callable[..., Release]]:
    """Factory: ``release(values, ca_bundle="keep"|"empty")`` installs a release whose only
    object is a renamed, harmless MutatingWebhookConfiguration. Uninstalled afterwards, and
    the configuration deleted should the uninstall have left it."""
    script = tmp_path / "post_renderer.py"
    script.write_text(POST_RENDERER)
    installed: list[Release] = []

    def make(values: Mapping[str, Any], ca_bundle: str = "keep") -> Release:
        name = f"vramguard-helm-e2e-{uuid.uuid4().hex[:8]}"
        made = Release(
            helm,
            make_namespace("helm-e2e"),
            name,
            tmp_path,
            (
                "--post-renderer",
                sys.executable,
                *(
                    arg
                    for value in (str(script), name, ca_bundle)
                    for arg in ("--post-renderer-args", value)
                ),
            ),
        )
        installed.append(made)
        made.run("install", str(CHART), values=values)
        return made

    yield make
    for made in installed:
        try:
            made.uninstall()
        finally:
            if request(api, "GET", _path(made.configuration)).status == 200:
                request(api, "DELETE", _path(made.configuration))


def _path(configuration: str) -> str:
    return f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{configuration}"


def _configuration(api: Any, name: str) -> dict[str, Any]:
    answer = request(api, "GET", _path(name))
    assert answer.status == 200, answer.message
    return dict(answer.body)


def _inject(api: Any, name: str) -> bytes:
    """What the self-managed webhook does: its bundle into every webhook's caBundle, with the
    generation annotation, through the same store and patch."""
    store = tls_store(api, namespace="unused", secret="unused", webhook_configuration=name)
    configuration = store.read_webhook_configuration()
    assert configuration is not None
    bundle = new_ca().cert_pem
    store.patch_webhook_configuration(ca_bundle_patch(configuration, bundle, {GENERATION: "7"}))
    assert [b for _, b in ca_bundles(_configuration(api, name))] == [bundle]
    return bundle


def _expression(configuration: Mapping[str, Any]) -> str:
    return str(configuration["webhooks"][0]["matchConditions"][0]["expression"])


@pytest.mark.parametrize("mode", ["selfManaged", "certManager"])
def test_helm_upgrade_keeps_the_injected_ca_bundle(
    mode: str, release: Callable[..., Release], api: Any
) -> None:
    values = {"certificates": {"mode": mode}}
    installed = release(values)
    name = installed.configuration
    assert [b for _, b in ca_bundles(_configuration(api, name))] == [b""]
    bundle = _inject(api, name)

    policy = {"policy": {"gpuResourceNames": ["nvidia.com/gpu", EXTRA_GPU]}}
    installed.run("upgrade", str(CHART), values={**values, **policy})
    upgraded = _configuration(api, name)
    assert EXTRA_GPU in _expression(upgraded)  # the upgrade did change the webhook
    assert [b for _, b in ca_bundles(upgraded)] == [bundle]
    assert upgraded["metadata"]["annotations"][GENERATION] == "7"

    installed.rollback(1)
    rolled_back = _configuration(api, name)
    assert EXTRA_GPU not in _expression(rolled_back)
    assert [b for _, b in ca_bundles(rolled_back)] == [bundle]

    # Uninstalling removes it (the release's only object here; the chart's uninstall order
    # is in manifests/README.md).
    installed.uninstall()
    assert request(api, "GET", _path(name)).status == 404


def test_an_empty_ca_bundle_in_the_chart_would_be_written_back(
    release: Callable[..., Release], api: Any
) -> None:
    """Why the template leaves caBundle out rather than empty: the check above has teeth."""
    installed = release({}, ca_bundle="empty")
    _inject(api, installed.configuration)
    policy = {"policy": {"gpuResourceNames": ["nvidia.com/gpu", EXTRA_GPU]}}
    installed.run("upgrade", str(CHART), values=policy)
    assert [b for _, b in ca_bundles(_configuration(api, installed.configuration))] == [b""]


# --- the `helm test` hook's check -------------------------------------------------------------


def test_the_helm_test_check_passes_only_when_the_webhook_patched_the_pod(
    rendered: dict[str, list[K8sObject]],
    vramguard: Vramguard,
    control_plane: ClusterBase,
    make_namespace: Callable[..., str],
) -> None:
    """The hook pod's script, run here with the admin kubeconfig instead of the pod's
    in-cluster credentials, against the suite's vramguard (whose webhook the API server calls):
    it passes on the webhook's patch, and fails for a pod the API server never sent it."""
    (pod,) = [d for d in rendered["selfManaged"] if d["kind"] == "Pod" and "helm.sh/hook" in str(d)]
    (check,) = pod["spec"]["containers"]
    in_cluster = "config.load_incluster_config()"
    script = str(check["args"][0])
    assert in_cluster in script
    script = script.replace(
        in_cluster, f"config.load_kube_config({str(control_plane.kubeconfig)!r})"
    )
    env = {item["name"]: item["value"] for item in check["env"]}
    env["TEST_NAMESPACE"] = make_namespace("helm-test")

    def run(**changes: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, **env, **changes},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    passed = run()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "the webhook answered: vramguard.io/gpumem" in passed.stdout
    # A resource the matchConditions do not name: the pod is created unpatched.
    missed = run(GPU_RESOURCE="example.com/not-in-the-policy")
    assert missed.returncode == 1, missed.stdout + missed.stderr
    assert "was the pod sent to the webhook?" in missed.stdout


# --- the pre-delete hook ---------------------------------------------------------------------


def test_the_uninstall_hook_deletes_its_configuration_and_no_other(
    api: Any, control_plane: ClusterBase, make_namespace: Callable[..., str], tmp_path: Path
) -> None:
    """The Job's command as the hook's ServiceAccount (a TokenRequest token, so the API server
    authenticates and authorizes it as it would the pod), with the rendered ClusterRole and
    binding. The configuration's name is made unique (here and in the role's resourceNames,
    which the chart's test keeps equal to the chart's configuration), so the suite's own
    `vramguard` configuration is never touched."""
    namespace = make_namespace("helm-uninstall")
    hooks = [
        d
        for d in render(HELM.find(), namespace=namespace)
        if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "pre-delete"
    ]
    (job,) = [d for d in hooks if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    target, bystander = (f"vramguard-uninstall-e2e-{uuid.uuid4().hex[:8]}" for _ in range(2))
    cleanups: list[Callable[[], Any]] = []
    try:
        cleanups += _create_hook_rbac(api, hooks, namespace, target)
        for name in (target, bystander):
            created = request(
                api, "POST", _path("").rstrip("/"), body=_harmless_configuration(name)
            )
            assert created.status == 201, created.message
            cleanups.append(functools.partial(_delete_if_there, api, name))
        account = job["spec"]["template"]["spec"]["serviceAccountName"]
        kubeconfig = service_account_kubeconfig(
            control_plane.kubeconfig, client.CoreV1Api(api), namespace, account, tmp_path
        )
        command = [*container["command"]]
        command[command.index("--name") + 1] = target

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            vramguard = str(Path(sys.executable).parent / command[0])
            return subprocess.run(
                [vramguard, *command[1:], *args, "--kubeconfig", str(kubeconfig)],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )

        deleted = _retry_while_forbidden(run)  # RBAC caches catch up within a second or two
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert f"deleted MutatingWebhookConfiguration {target}" in deleted.stdout
        assert request(api, "GET", _path(target)).status == 404
        again = run()
        assert again.returncode == 0, again.stdout + again.stderr
        assert "does not exist: nothing to do" in again.stdout
        refused = run("--name", bystander)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"deleting MutatingWebhookConfiguration {bystander}: 403" in refused.stderr
        assert request(api, "GET", _path(bystander)).status == 200
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except client.ApiException as err:
                if err.status != 404:
                    raise


def _create_hook_rbac(
    api: Any, hooks: list[K8sObject], namespace: str, target: str
) -> list[Callable[[], Any]]:
    """The hook's ServiceAccount, ClusterRole and binding as rendered, but for the hook
    annotations and the unique names; the cleanups of the cluster-wide ones."""
    rbac: Any = client.RbacAuthorizationV1Api(api)
    core: Any = client.CoreV1Api(api)
    cleanups: list[Callable[[], Any]] = []
    for rendered_obj in hooks:
        obj = copy.deepcopy(rendered_obj)
        obj["metadata"].pop("annotations")
        if obj["kind"] == "ServiceAccount":
            core.create_namespaced_service_account(namespace, obj)
        elif obj["kind"] == "ClusterRole":
            (rule,) = obj["rules"]
            rule["resourceNames"] = [target]
            obj["metadata"]["name"] = target
            rbac.create_cluster_role(obj)
            cleanups.append(functools.partial(rbac.delete_cluster_role, target))
        elif obj["kind"] == "ClusterRoleBinding":
            obj["metadata"]["name"] = obj["roleRef"]["name"] = target
            rbac.create_cluster_role_binding(obj)
            cleanups.append(functools.partial(rbac.delete_cluster_role_binding, target))
    return cleanups


def _harmless_configuration(name: str) -> dict[str, Any]:
    """A configuration no request ever matches (a namespace label nobody has)."""
    return {
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "pods.vramguard.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "clientConfig": {"url": "https://127.0.0.1:1/mutate"},
                "namespaceSelector": {"matchLabels": {"vramguard.io/helm-e2e": name}},
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
            }
        ],
    }


def _delete_if_there(api: Any, name: str) -> None:
    if request(api, "GET", _path(name)).status == 200:
        request(api, "DELETE", _path(name))


def _retry_while_forbidden(
    run: Callable[..., subprocess.CompletedProcess[str]],
) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + 10
    while True:
        result = run()
        if result.returncode == 0 or ": 403" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.5)
