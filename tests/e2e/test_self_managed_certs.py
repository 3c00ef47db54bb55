"""The default install's self-managed certificate, end to end, on the e2e kube-apiserver.

From a copy of manifests/ alone (no certs/out, nothing issued beforehand), the default
kustomization is built and applied for real with server-side apply. The webhook then runs as
a local process with the Deployment's own arguments and environment (only the paths of its
volumes, its listen address and the rotation timings changed), as the Deployment's
ServiceAccount with the applied RBAC (a token from the TokenRequest API), so a permission
the manifests forgot fails here. The bare control plane cannot route to a Service, so the
applied MutatingWebhookConfiguration's clientConfig is pointed at the process by URL, and
the webhook is told to name 127.0.0.1 in its certificate.

It creates its Secret and publishes its CA into the caBundle, a GPU pod created through the
API server comes back mutated, and a CA rotation forced with the annotation runs while GPU
pods are being created the whole time: none may fail, the caBundle goes from the old CA
through old + new to the new CA, and the served certificate changes.

Everything applied is deleted at the end, the webhook configuration first (as the uninstall
order in manifests/README.md says); the namespaces stay (no namespace controller runs here
to finalize them, and test_manifests_apply uses them too).
"""

from __future__ import annotations

import base64
import copy
import shutil
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from certs.rotation import CA_BUNDLE, PHASE, ROTATE, issuer_of
from tests.unit.manifests.conftest import DEFAULT, KUSTOMIZE, downward_env, install_directory

from .harness import ClusterBase, ControlPlane, ManagedProcess, free_port
from .harness.manifests import (
    HTTP_OK,
    Discovery,
    K8sObject,
    apply,
    delete,
    exists,
    identity,
    kustomize_build,
)
from .harness.process import url_ok, wait_until
from .harness.vramguard import metric_value

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
# Fast rotation: the bundle is trusted for 3 s before the new CA signs (the local API server
# loads a webhook configuration in well under a second), the old CA stays 15 s after that.
FAST_TIMINGS = {
    "--tls-sync-seconds": "1",
    "--tls-reload-seconds": "0.5",
    "--tls-propagation-seconds": "3",
    "--tls-overlap-seconds": "15",
}
CREATORS = 2
ROTATION_TIMEOUT = 90.0


@dataclass
class Installed:
    docs: list[K8sObject]
    api: Any
    discovery: Discovery
    directory: Path
    applied: list[K8sObject] = field(default_factory=list)

    def one(self, kind: str, name: str) -> K8sObject:
        (found,) = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return found


@dataclass
class Webhook:
    process: ManagedProcess
    port: int
    namespace: str
    secret: str
    configuration: str
    policy: Mapping[str, Any]

    @property
    def url(self) -> str:
        return f"https://{LOCALHOST}:{self.port}"

    def served(self) -> x509.Certificate:
        """The certificate a new connection gets now."""
        pem = ssl.get_server_certificate((LOCALHOST, self.port), timeout=5)
        return x509.load_pem_x509_certificate(pem.encode())


# --- install and the webhook process -----------------------------------------------------------


@pytest.fixture(scope="module")
def installed(
    control_plane: ClusterBase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """The default install, built from a copy of manifests/ alone and applied for real."""
    if not isinstance(control_plane, ControlPlane):
        pytest.skip("applies vramguard's webhook configuration: only on the local control plane")
    checkout = tmp_path_factory.mktemp("checkout")
    shutil.copytree(REPO / "manifests", checkout / "manifests")
    assert not (checkout / "certs").exists()
    docs = kustomize_build(KUSTOMIZE.find(), install_directory(checkout / "manifests", DEFAULT))
    api = control_plane.api_client()
    install = Installed(docs, api, Discovery(api), checkout)
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    try:
        for obj in [*namespaces, *(d for d in docs if d["kind"] != "Namespace")]:
            served = install.discovery.resource(obj["apiVersion"], obj["kind"])
            # The default install needs no CRD: every kind is the API server's own.
            assert served is not None, f"{identity(obj)}: not served by a bare API server"
            created = not exists(api, obj, served)
            answer = apply(api, obj, served, dry_run=False)
            assert answer.status in HTTP_OK, f"{identity(obj)}: {answer.message}"
            if created and obj["kind"] != "Namespace":
                install.applied.append(obj)
        yield install
    finally:
        _uninstall(install)


def _uninstall(install: Installed, kinds: frozenset[str] | None = None) -> None:
    """Delete what this test created (of these kinds), newest first."""
    chosen = [d for d in install.applied if kinds is None or d["kind"] in kinds]
    for obj in reversed(chosen):
        served = install.discovery.resource(obj["apiVersion"], obj["kind"])
        assert served is not None
        answer = delete(install.api, obj, served)
        assert answer.status in (200, 202, 404), f"{identity(obj)}: {answer.message}"
        install.applied.remove(obj)


@pytest.fixture(scope="module")
def webhook(control_plane: ClusterBase, installed: Installed, core_v1: Any) -> Iterator[Webhook]:
    """The webhook from the installed Deployment, running as its ServiceAccount."""
    assert isinstance(control_plane, ControlPlane)
    deployment = installed.one("Deployment", "vramguard-webhook")
    namespace = deployment["metadata"]["namespace"]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "webhook"]
    local = installed.directory / "pod"
    mounts = _volumes_as_directories(installed, spec, container, local)
    args = [_local_path(str(arg), mounts) for arg in container["args"]]
    port = free_port()
    args += [
        f"--host={LOCALHOST}",
        f"--port={port}",
        f"--kubeconfig={_service_account_kubeconfig(control_plane, core_v1, spec, local)}",
        f"--tls-extra-names={LOCALHOST}",
        "--log-format=text",
        *(f"{flag}={value}" for flag, value in FAST_TIMINGS.items()),
    ]
    env = {
        "PYTHONUNBUFFERED": "1",
        "NO_PROXY": LOCALHOST,
        "no_proxy": LOCALHOST,
        **downward_env(spec, container["name"], namespace),
    }
    process = ManagedProcess(
        "vramguard-webhook-self-managed",
        [sys.executable, "-m", "webhook", *args],
        control_plane.workdir / "logs" / "vramguard-webhook-self-managed.log",
        env=env,
        cwd=REPO,
    )
    policy_map = next(v for v in spec["volumes"] if v["name"] == "policy")["configMap"]["name"]
    hook = Webhook(
        process=process,
        port=port,
        namespace=namespace,
        secret=_flag(args, "--tls-secret"),
        configuration=_flag(args, "--webhook-configuration"),
        policy=yaml.safe_load(installed.one("ConfigMap", policy_map)["data"]["policy.yaml"]),
    )
    assert _flag(args, "--tls-mode") == "self-managed"
    assert hook.configuration == "vramguard"
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    # Reached by URL, not through the Service the bare control plane cannot route to.
    _point_configuration_at(installed, hook.configuration, f"{hook.url}/mutate")
    control_plane.start_process(
        process,
        ready=lambda: url_ok(f"{hook.url}/readyz", unverified),
        what=f"the self-managed webhook {hook.url}/readyz",
        timeout=90,
    )
    try:
        yield hook
    finally:
        # The uninstall order of manifests/README.md: the configuration before the webhook
        # (else GPU pod creation fails closed in between), the rest after (installed's
        # teardown), the Secret the webhook made with it.
        _uninstall(installed, frozenset({"MutatingWebhookConfiguration"}))
        control_plane.stop_process(process)
        _delete_secret(core_v1, namespace, hook.secret)


def _volumes_as_directories(
    installed: Installed, spec: Mapping[str, Any], container: Mapping[str, Any], local: Path
) -> dict[str, Path]:
    """A local directory per mount: a ConfigMap's files written into it, an emptyDir empty."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        directory = local / mount["name"]
        directory.mkdir(parents=True)
        source = volumes[mount["name"]]
        if "configMap" in source:
            config_map = installed.one("ConfigMap", source["configMap"]["name"])
            for key, value in config_map["data"].items():
                (directory / key).write_text(value)
        else:
            assert "emptyDir" in source, f"a volume the default webhook should not have: {source}"
        mounts[mount["mountPath"].rstrip("/")] = directory
    return mounts


def _local_path(arg: str, mounts: Mapping[str, Path]) -> str:
    for mount_path, directory in mounts.items():
        if arg.startswith(mount_path + "/"):
            return str(directory / arg.removeprefix(mount_path + "/"))
    return arg


def _service_account_kubeconfig(
    control_plane: ControlPlane, core_v1: Any, spec: Mapping[str, Any], local: Path
) -> Path:
    """A kubeconfig with a token of the Deployment's ServiceAccount (TokenRequest)."""
    account = spec["serviceAccountName"]
    token = core_v1.create_namespaced_service_account_token(
        account, "vramguard", {"spec": {"expirationSeconds": 3600}}
    ).status.token
    path = local / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {
                            "server": control_plane.server,
                            "certificate-authority": str(control_plane.ca_file),
                        },
                    }
                ],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": account}}],
                "current-context": "e2e",
            }
        )
    )
    path.chmod(0o600)
    return path


def _point_configuration_at(installed: Installed, name: str, url: str) -> None:
    from kubernetes import client  # noqa: PLC0415

    admission: Any = client.AdmissionregistrationV1Api(installed.api)
    configuration = admission.read_mutating_webhook_configuration(name)
    patch = [
        {"op": "replace", "path": f"/webhooks/{i}/clientConfig", "value": {"url": url}}
        for i in range(len(configuration.webhooks))
    ]
    admission.patch_mutating_webhook_configuration(name, patch)


def _delete_secret(core_v1: Any, namespace: str, name: str) -> None:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        core_v1.delete_namespaced_secret(name, namespace)
    except ApiException as err:
        if err.status != 404:
            raise


def _flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    values += [args[i + 1] for i, a in enumerate(args) if a == name]
    assert values, f"{name} not in {args}"
    return values[-1]


# --- what the cluster holds --------------------------------------------------------------------


def _secret(core_v1: Any, hook: Webhook) -> tuple[dict[str, bytes], dict[str, str]]:
    secret = core_v1.read_namespaced_secret(hook.secret, hook.namespace)
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    return data, dict(secret.metadata.annotations or {})


def _ca_bundle(installed: Installed, hook: Webhook) -> tuple[x509.Certificate, ...]:
    from kubernetes import client  # noqa: PLC0415

    admission: Any = client.AdmissionregistrationV1Api(installed.api)
    configuration = admission.read_mutating_webhook_configuration(hook.configuration)
    bundles = {w.client_config.ca_bundle or "" for w in configuration.webhooks}
    assert len(bundles) == 1, "every webhook of the configuration carries the same bundle"
    (encoded,) = bundles
    if not encoded:
        return ()
    return tuple(x509.load_pem_x509_certificates(base64.b64decode(encoded)))


def _gpu_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "pause",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ]
        },
    }


def _assert_mutated(pod: Any, policy: Mapping[str, Any]) -> None:
    defaults = policy["defaults"]
    assert pod.spec.scheduler_name == policy["schedulerName"]
    assert pod.spec.priority_class_name == defaults["priorityClassName"]
    resources = pod.spec.containers[0].resources
    budget = str(defaults["gpumemMiB"])
    assert resources.requests[policy["gpumemResourceName"]] == budget
    assert resources.limits[policy["gpumemResourceName"]] == budget


def _wait_for_admission(core_v1: Any, namespace: str, hook: Webhook) -> None:
    def mutated() -> bool:
        try:
            pod = core_v1.create_namespaced_pod(
                namespace, _gpu_pod(f"probe-{uuid.uuid4().hex[:8]}"), dry_run="All"
            )
        except Exception:  # 500 while the API server cannot verify the webhook yet
            return False
        return bool(pod.spec.scheduler_name == hook.policy["schedulerName"])

    wait_until(
        "the API server to call the self-managed webhook (dry-run GPU pod mutated)",
        mutated,
        timeout=60,
        interval=0.25,
        watch=[hook.process],
    )


@dataclass
class Creations:
    """GPU pods created in a loop by a few threads, until stopped."""

    control_plane: ClusterBase
    namespace: str
    policy: Mapping[str, Any]
    stopping: threading.Event = field(default_factory=threading.Event)
    created: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unmutated: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, count: int) -> None:
        for index in range(count):
            thread = threading.Thread(target=self._loop, args=(index,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self, index: int) -> None:
        from kubernetes import client  # noqa: PLC0415

        core: Any = client.CoreV1Api(self.control_plane.api_client())  # a pool of its own
        sequence = 0
        while not self.stopping.is_set():
            sequence += 1
            name = f"rotation-{index}-{sequence}"
            try:
                pod = core.create_namespaced_pod(self.namespace, _gpu_pod(name))
            except Exception as err:
                with self._lock:
                    self.failures.append(f"{name}: {err}")
                continue
            with self._lock:
                self.created.append(time.monotonic())
                if pod.spec.scheduler_name != self.policy["schedulerName"]:
                    self.unmutated.append(name)
            time.sleep(0.01)


# --- the test ----------------------------------------------------------------------------------


def test_the_default_install_manages_and_rotates_its_certificate(
    control_plane: ClusterBase,
    installed: Installed,
    webhook: Webhook,
    core_v1: Any,
    make_namespace: Callable[..., str],
) -> None:
    # The Secret, created by the webhook: the CA with its key, the serving pair, the bundle.
    data, annotations = _secret(core_v1, webhook)
    assert {"ca.crt", "ca.key", "tls.crt", "tls.key", CA_BUNDLE} <= set(data)
    assert annotations[PHASE] == "stable"
    first_ca = x509.load_pem_x509_certificate(data["ca.crt"])
    # Published into the configuration, whose service reference the test replaced by a URL.
    assert _ca_bundle(installed, webhook) == (first_ca,)
    # And served, for the Service's names and the address the test reaches it by.
    served = webhook.served()
    assert served == x509.load_pem_x509_certificate(data["tls.crt"])
    assert issuer_of(served, [first_ca]) == first_ca
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"vramguard-webhook.{webhook.namespace}.svc" in names.get_values_for_type(x509.DNSName)

    # A GPU pod created through the API server is mutated by it.
    namespace = make_namespace("self-managed")
    _wait_for_admission(core_v1, namespace, webhook)
    pod = core_v1.create_namespaced_pod(namespace, _gpu_pod("gpu-pod"))
    _assert_mutated(pod, webhook.policy)

    # A forced CA rotation while GPU pods are created the whole time.
    creations = Creations(control_plane, namespace, webhook.policy)
    creations.start(CREATORS)
    try:
        time.sleep(1)  # admissions in flight before the rotation starts
        core_v1.patch_namespaced_secret(
            webhook.secret, webhook.namespace, {"metadata": {"annotations": {ROTATE: "ca"}}}
        )
        rotation_started = time.monotonic()
        bundles, serials, moments = _follow_rotation(installed, webhook, first_ca)
        time.sleep(2)  # admissions after the old CA left the bundle
    finally:
        creations.stop()

    new_ca = bundles[-1][0]
    assert [len(b) for b in bundles] == [1, 2, 1], bundles
    assert bundles[0] == (first_ca,)
    assert bundles[1] == (first_ca, new_ca)
    assert new_ca != first_ca
    assert len(serials) == 2, "the served certificate changed once"
    assert issuer_of(webhook.served(), [new_ca]) == new_ca
    data, annotations = _secret(core_v1, webhook)
    assert x509.load_pem_x509_certificate(data["ca.crt"]) == new_ca
    assert (annotations[PHASE], ROTATE in annotations) == ("stable", False)

    during = [t for t in creations.created if t >= rotation_started]
    in_phases = _count_by_phase(during, moments)
    print(  # for the record: how many admissions each phase saw
        f"\nrotation: {len(during)} GPU pods created during it, {len(creations.failures)} "
        f"failed; by phase: {in_phases}"
    )
    assert creations.failures == [], creations.failures[:5]
    assert creations.unmutated == []
    assert all(count > 0 for count in in_phases.values()), in_phases

    metrics = _webhook_metrics(webhook)
    # Applying the manifests again (kubectl apply --server-side: the configuration as built,
    # pointed at the process as before) leaves the webhook's caBundle: its field manager owns it.
    _reapply_configuration(installed, webhook)
    assert _ca_bundle(installed, webhook) == (new_ca,)

    rotations = "vramguard_webhook_certificate_rotations_total"
    for step in ("new-ca", "switched-ca", "dropped-old-ca"):
        assert metric_value(metrics, rotations, {"step": step}) == 1, step
    assert metric_value(metrics, "vramguard_webhook_requests_total", {"decision": "errored"}) == 0
    core_v1.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


def _follow_rotation(
    installed: Installed, hook: Webhook, first_ca: x509.Certificate
) -> tuple[list[tuple[x509.Certificate, ...]], list[int], dict[str, float]]:
    """Watch the caBundle and the served certificate until the rotation has ended: every
    bundle seen in order, every served serial, and when each step was first seen."""
    bundles = [_ca_bundle(installed, hook)]
    serials = [hook.served().serial_number]
    moments: dict[str, float] = {}
    deadline = time.monotonic() + ROTATION_TIMEOUT
    while time.monotonic() < deadline:
        hook.process.check_alive()
        bundle = _ca_bundle(installed, hook)
        if bundle != bundles[-1]:
            bundles.append(bundle)
            moments["old+new trusted" if len(bundle) == 2 else "old dropped"] = time.monotonic()
        serial = hook.served().serial_number
        if serial != serials[-1]:
            serials.append(serial)
            moments["new served"] = time.monotonic()
        if len(bundles) >= 3 and first_ca not in bundle and "new served" in moments:
            return bundles, serials, moments
        time.sleep(0.1)
    raise AssertionError(
        f"the rotation did not end in {ROTATION_TIMEOUT:.0f}s: bundles {bundles}, "
        f"serials {serials}; log {hook.process.log_path}:\n{hook.process.log_tail()}"
    )


def _count_by_phase(created: list[float], moments: Mapping[str, float]) -> dict[str, int]:
    """Pods created in each phase: before the new CA was trusted, while both were, after the
    switch, after the old CA was dropped."""
    edges = [
        ("requested", float("-inf")),
        ("old+new trusted", moments["old+new trusted"]),
        ("new served", moments["new served"]),
        ("old dropped", moments["old dropped"]),
    ]
    counts = {name: 0 for name, _ in edges}
    for moment in created:
        phase = [name for name, start in edges if moment >= start][-1]
        counts[phase] += 1
    return counts


def _reapply_configuration(installed: Installed, hook: Webhook) -> None:
    configuration = copy.deepcopy(installed.one("MutatingWebhookConfiguration", hook.configuration))
    for each in configuration["webhooks"]:
        each["clientConfig"] = {"url": f"{hook.url}/mutate"}
    served = installed.discovery.resource(configuration["apiVersion"], configuration["kind"])
    assert served is not None
    answer = apply(installed.api, configuration, served, dry_run=False)
    assert answer.status in HTTP_OK, answer.message


def _webhook_metrics(hook: Webhook) -> str:
    import urllib.request  # noqa: PLC0415

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(f"{hook.url}/metrics", timeout=5) as response:
        return str(response.read().decode())
