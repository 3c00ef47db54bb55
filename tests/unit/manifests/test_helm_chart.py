"""The Helm chart (manifests/helm/vramguard): the same objects as the kustomize manifests.

The templates mirror manifests/base and manifests/components; what keeps them from drifting
is the comparison here: `helm template` with the default values against `kustomize build
manifests/` (the default install), with certificates.mode certManager (and the monitoring
objects) against overlays/cert-manager, and with certificates.mode provided against
overlays/self-signed. Object by object, after normalizing only what must differ
(``normalized``): Helm's own labels and resource policy, the generated ConfigMaps' hash
suffix, the release namespace's Namespace object (Helm's, not the chart's), the `helm test`
hook's objects, and three encodings of the same content. Any other difference fails.

Then what kustomize has no equivalent for: the values reach the objects they name, the
policy value is the base policy and drives the CEL matchConditions and the scheduler's
managedResources, values.schema.json refuses what it should, `helm lint --strict` is clean,
and the chart never writes the webhook's Secret nor an empty caBundle.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from certs.rotation import CA_BUNDLE
from gpumem.policy import Policy
from ops import build_parser
from tests.unit.manifests import helm_schema

from .conftest import BASE, DEFAULT, MANIFESTS, REPO, K8sObject, load_all

CHART = MANIFESTS / "helm" / "vramguard"
KUBE_VERSION = (REPO / "tests" / "e2e" / "controlplane" / "VERSION").read_text("utf-8").strip()
RELEASE = "vramguard"
NAMESPACE = "vramguard"
HELM_LABELS = {
    "helm.sh/chart": "vramguard-0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/instance": RELEASE,
}
# kustomize's configMapGenerator suffix (10 characters of its alphabet) and the chart's (10
# hex digits of the content's sha256): both mark the content, neither can equal the other.
GENERATED = re.compile(r"\b(vramguard-policy|vramguard-scheduler-config)-[a-z0-9]{10}\b")
HOOK = "helm.sh/hook"
RESOURCE_POLICY = "helm.sh/resource-policy"
WORKLOADS = {
    # values key -> (namespace, kind, name) of its pod-owning object
    "webhook": (NAMESPACE, "Deployment", "vramguard-webhook"),
    "scheduler": (NAMESPACE, "Deployment", "vramguard-scheduler"),
    "advertiser": (NAMESPACE, "Deployment", "vramguard-advertiser"),
    "watchdog": (NAMESPACE, "Deployment", "vramguard-watchdog"),
    "nodeAgent": ("vramguard-node", "DaemonSet", "vramguard-node-agent"),
}
CERT_MANAGER = {
    "certificates": {"mode": "certManager"},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}

Key = tuple[str, str, str | None, str]


class HelmFailed(AssertionError):
    """`helm template` refused the values; the message is helm's."""


def render(
    helm: Path,
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    hooks: bool = True,
) -> list[K8sObject]:
    """`helm template` of the chart with these values (merged over values.yaml), parsed."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as file:
        json.dump(dict(values or {}), file)
        file.flush()
        args = [
            str(helm),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            file.name,
        ]
        if not hooks:
            args.append("--no-hooks")
        result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise HelmFailed(result.stderr)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def key(obj: K8sObject) -> Key:
    metadata = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], metadata.get("namespace"), metadata["name"])


def find(docs: list[K8sObject], kind: str, name: str, namespace: str | None = None) -> K8sObject:
    matches = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(matches) == 1, f"expected one {kind} {namespace}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: K8sObject) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def container(obj: K8sObject, name: str) -> dict[str, Any]:
    spec = pod_spec(obj)
    (found,) = [
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
    ]
    return dict(found)


def is_hook(obj: K8sObject) -> bool:
    return HOOK in (obj["metadata"].get("annotations") or {})


# --- the comparison --------------------------------------------------------------------------


def normalized(obj: K8sObject, *, from_helm: bool) -> K8sObject:
    """One object with only what must differ between Helm and kustomize made equal."""
    # The generated ConfigMaps' names, wherever they appear (their own name, the volumes).
    obj = json.loads(GENERATED.sub(r"\1", json.dumps(obj)))
    metadata = obj["metadata"]
    if from_helm:
        labels = metadata.get("labels", {})
        for label in HELM_LABELS:
            labels.pop(label, None)
        if not labels:
            metadata.pop("labels", None)
        # Helm's own instruction (PriorityClasses outlive `helm uninstall`, as kustomize's
        # uninstall leaves them).
        annotations = metadata.get("annotations", {})
        annotations.pop(RESOURCE_POLICY, None)
        if not annotations:
            metadata.pop("annotations", None)
    if obj["kind"] == "ConfigMap":
        # Helm writes the files from parsed values (toYaml), kustomize copies them with their
        # comments: the same content in two texts.
        obj["data"] = {name: yaml.safe_load(text) for name, text in obj["data"].items()}
    if obj["kind"] == "MutatingWebhookConfiguration":
        # kustomize copies a Secret's data (base64 wrapped in lines), Helm the value as given.
        for webhook in obj["webhooks"]:
            client = webhook["clientConfig"]
            if "caBundle" in client:
                client["caBundle"] = base64.b64decode("".join(client["caBundle"].split()))
    if obj["kind"] == "PrometheusRule":
        # kustomize re-encodes a folded expression with more-indented lines as a literal one
        # with blank lines added (the chart, like PyYAML and Prometheus, reads the source as
        # written); PromQL does not read whitespace.
        for group in obj["spec"]["groups"]:
            for rule in group["rules"]:
                rule["expr"] = " ".join(str(rule["expr"]).split())
    return obj


def differences(
    kustomized: list[K8sObject], charted: list[K8sObject], *, not_in_chart: set[Key]
) -> list[str]:
    """What differs between the two sets of objects, by object, after normalizing."""
    ours = {key(n): n for n in (normalized(o, from_helm=False) for o in kustomized)}
    theirs = {key(n): n for n in (normalized(o, from_helm=True) for o in charted if not is_hook(o))}
    problems = [f"not in the chart: {k}" for k in sorted(set(ours) - set(theirs) - not_in_chart)]
    problems += [f"only in the chart: {k}" for k in sorted(set(theirs) - set(ours))]
    problems += [
        f"{k} is in the chart, but should not be" for k in sorted(not_in_chart & set(theirs))
    ]
    for k in sorted(set(ours) & set(theirs)):
        if ours[k] != theirs[k]:
            problems.append(f"{k} differs:\n{_diff(ours[k], theirs[k])}")
    return problems


def _diff(ours: K8sObject, theirs: K8sObject) -> str:
    import difflib  # noqa: PLC0415  (only for a failure's message)

    return "\n".join(
        difflib.unified_diff(
            yaml.safe_dump(ours).splitlines(),
            yaml.safe_dump(theirs).splitlines(),
            "kustomize",
            "helm",
            lineterm="",
        )
    )


# The release namespace: Helm creates it (--create-namespace) or finds it, and refuses to
# install a chart that templates it. The README's Helm section labels it as base/namespace.yaml
# does (test_readme_labels_the_release_namespace_like_the_base).
RELEASE_NAMESPACE: Key = ("v1", "Namespace", None, NAMESPACE)


@pytest.fixture(scope="module")
def chart(helm: Path) -> list[K8sObject]:
    return render(helm)


def test_default_values_render_the_default_install(
    chart: list[K8sObject], built: dict[str, list[K8sObject]]
) -> None:
    problems = differences(built[DEFAULT], chart, not_in_chart={RELEASE_NAMESPACE})
    assert not problems, "\n".join(problems)


def test_cert_manager_mode_renders_the_cert_manager_overlay(
    helm: Path, built: dict[str, list[K8sObject]]
) -> None:
    problems = differences(
        built["cert-manager"], render(helm, CERT_MANAGER), not_in_chart={RELEASE_NAMESPACE}
    )
    assert not problems, "\n".join(problems)


def test_provided_mode_renders_the_self_signed_overlay(
    helm: Path, built: dict[str, list[K8sObject]], workspace: Path
) -> None:
    """The overlay's Secret is the one object the chart leaves to the user in this mode."""
    ca = (workspace / "certs" / "out" / "ca.crt").read_bytes()
    values = {
        "certificates": {
            "mode": "provided",
            "provided": {
                "secretName": "vramguard-webhook-tls",
                "caBundle": base64.b64encode(ca).decode(),
            },
        }
    }
    secret: Key = ("v1", "Secret", NAMESPACE, "vramguard-webhook-tls")
    problems = differences(
        built["self-signed"], render(helm, values), not_in_chart={RELEASE_NAMESPACE, secret}
    )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"webhook": {"replicas": 3}}, "Deployment', 'vramguard', 'vramguard-webhook') differs"),
        ({"policy": {"defaults": {"gpumemMiB": 2048}}}, "'vramguard-policy') differs"),
        ({"commonLabels": {"team": "gpu"}}, "differs"),
        ({"priorityClasses": {"create": False}}, "not in the chart: ('scheduling.k8s.io/v1'"),
    ],
    ids=["replicas", "policy", "a label", "a missing object"],
)
def test_the_comparison_has_teeth(
    helm: Path, built: dict[str, list[K8sObject]], values: dict[str, Any], expected: str
) -> None:
    problems = differences(built[DEFAULT], render(helm, values), not_in_chart={RELEASE_NAMESPACE})
    assert any(expected in p for p in problems), problems


def test_helm_labels_are_on_every_object_and_nowhere_else(chart: list[K8sObject]) -> None:
    """The comparison drops these labels: they must be exactly Helm's, on every object's
    metadata and in no selector or pod template (selectors are immutable)."""
    for obj in chart:
        labels = obj["metadata"].get("labels", {})
        assert {k: labels.get(k) for k in HELM_LABELS} == HELM_LABELS, key(obj)
        template = obj.get("spec", {}).get("template", {}).get("metadata", {})
        selector = obj.get("spec", {}).get("selector", {})
        for where in (template.get("labels", {}), selector.get("matchLabels", selector)):
            assert not set(HELM_LABELS) & set(where or {}), key(obj)


def test_only_priority_classes_outlive_helm_uninstall(chart: list[K8sObject]) -> None:
    kept = {key(d) for d in chart if (d["metadata"].get("annotations") or {}).get(RESOURCE_POLICY)}
    assert kept == {key(d) for d in chart if d["kind"] == "PriorityClass"}
    assert len(kept) == 4
    for obj in chart:
        assert (obj["metadata"].get("annotations") or {}).get(RESOURCE_POLICY) in {None, "keep"}


def test_the_webhook_secret_is_never_templated(helm: Path) -> None:
    """The self-managed webhook creates and owns vramguard-webhook-tls; cert-manager or the
    user write it in the other modes. A templated one would be overwritten on every upgrade,
    and deleted (with the CA the API server trusts) by `helm uninstall`."""
    provided = {"mode": "provided", "provided": {"secretName": "mine", "caBundle": "Q0E="}}
    for certificates in ({"mode": "selfManaged"}, {"mode": "certManager"}, provided):
        docs = render(helm, {"certificates": certificates})
        assert not [d for d in docs if d["kind"] == "Secret"], certificates


# --- certificates ------------------------------------------------------------------------------


def _ca_bundles(docs: list[K8sObject]) -> list[Any]:
    webhook = find(docs, "MutatingWebhookConfiguration", "vramguard")
    return [w["clientConfig"].get("caBundle") for w in webhook["webhooks"]]


def test_self_managed_mode_leaves_the_ca_bundle_to_the_webhook(chart: list[K8sObject]) -> None:
    """No caBundle at all, not an empty one: `helm upgrade` then never touches the injected
    one (tests/e2e/test_helm_apply.py upgrades a release to show it)."""
    assert _ca_bundles(chart) == [None]
    args = container(find(chart, "Deployment", "vramguard-webhook"), "webhook")["args"]
    assert args[args.index("--tls-mode") + 1] == "self-managed"
    rules = find(chart, "ClusterRole", "vramguard-webhook-ca-bundle")["rules"]
    assert rules[0]["resourceNames"] == ["vramguard"]
    find(chart, "Role", "vramguard-webhook-tls", NAMESPACE)


def test_cert_manager_mode_injects_from_its_certificate(helm: Path) -> None:
    docs = render(helm, CERT_MANAGER)
    webhook = find(docs, "MutatingWebhookConfiguration", "vramguard")
    assert webhook["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/vramguard-webhook"
    }
    assert _ca_bundles(docs) == [None]
    certificate = find(docs, "Certificate", "vramguard-webhook", NAMESPACE)
    assert certificate["spec"]["secretName"] == "vramguard-webhook-tls"
    assert not [d for d in docs if d["metadata"]["name"] == "vramguard-webhook-ca-bundle"]


def test_provided_mode_needs_its_secret_and_ca(helm: Path) -> None:
    with pytest.raises(HelmFailed, match=r"certificates\.provided\.secretName is required"):
        render(helm, {"certificates": {"mode": "provided", "provided": {"caBundle": "Q0E="}}})
    with pytest.raises(HelmFailed, match=r"certificates\.provided\.caBundle .* is required"):
        render(helm, {"certificates": {"mode": "provided", "provided": {"secretName": "mine"}}})
    docs = render(
        helm,
        {
            "certificates": {
                "mode": "provided",
                "provided": {"secretName": "mine", "caBundle": "Q0E="},
            },
            "serviceMonitor": {"enabled": True},
        },
    )
    assert _ca_bundles(docs) == ["Q0E="]
    volume = next(
        v
        for v in pod_spec(find(docs, "Deployment", "vramguard-webhook"))["volumes"]
        if v["name"] == "tls"
    )
    assert volume["secret"]["secretName"] == "mine"
    monitor = find(docs, "ServiceMonitor", "vramguard-webhook")
    assert monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"]["name"] == "mine"


# --- the policy --------------------------------------------------------------------------------


def test_the_policy_value_is_the_base_policy() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
    assert values["policy"] == yaml.safe_load((BASE / "policy.yaml").read_text("utf-8"))


def _policy_file(docs: list[K8sObject]) -> dict[str, Any]:
    (configmap,) = [d for d in docs if d["metadata"]["name"].startswith("vramguard-policy-")]
    loaded: dict[str, Any] = yaml.safe_load(configmap["data"]["policy.yaml"])
    return loaded


def test_an_empty_scheduler_name_leaves_gpu_pods_on_their_scheduler(helm: Path) -> None:
    """The policy's schedulerName: null, which Helm cannot pass (it drops null keys: then the
    policy's default scheduler applies), said as "" in the values."""
    left = _policy_file(render(helm, {"policy": {"schedulerName": ""}}, hooks=False))
    assert "schedulerName" in left
    assert left["schedulerName"] is None
    assert Policy.model_validate(left).scheduler_name is None
    dropped = _policy_file(render(helm, {"policy": {"schedulerName": None}}, hooks=False))
    assert Policy.model_validate(dropped).scheduler_name == "vramguard-scheduler"
    kept = _policy_file(render(helm, {"policy": {"schedulerName": "other"}}, hooks=False))
    assert kept["schedulerName"] == "other"


def _match_conditions(docs: list[K8sObject]) -> list[dict[str, str]]:
    conditions: list[dict[str, str]] = find(docs, "MutatingWebhookConfiguration", "vramguard")[
        "webhooks"
    ][0]["matchConditions"]
    return conditions


POLICIES = [
    pytest.param({}, id="the base policy"),
    pytest.param({"gpuResourceNames": ["nvidia.com/gpu", "amd.com/gpu"]}, id="two GPU resources"),
    pytest.param(
        {"gpuResourceNames": ["nvidia.com/mig-1g.10gb"], "gpumemResourceName": "example.com/vram"},
        id="other names",
    ),
    pytest.param(
        {"gpuResourceNames": ["nvidia.com/gpu", "amd.com/gpu", "nvidia.com/gpu"]},
        id="repeated names",
    ),
    pytest.param(
        {"gpuResourceNames": ["nvidia.com/gpu", "nvidia.com/mig-*", "nvidia.com/gpu.*"]},
        id="patterns",
    ),
    pytest.param(
        {"deviceEnvNames": [], "gpuRuntimeClassNames": [], "allowResourceClaims": True},
        id="no access rules",
    ),
    pytest.param(
        {
            "deviceEnvNames": ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"],
            "gpuRuntimeClassNames": ["nvidia", "nvidia-cdi"],
        },
        id="more access rules",
    ),
    # Helm drops a key set to null: the policy's default applies, in the chart as in the file.
    pytest.param(
        {"deviceEnvNames": None, "gpuRuntimeClassNames": None, "allowResourceClaims": None},
        id="access rules left to the defaults",
    ),
]


@pytest.mark.parametrize("change", POLICIES)
def test_match_conditions_are_the_renderers(helm: Path, change: dict[str, Any]) -> None:
    """Byte for byte what gpumem.match_conditions writes into the kustomize base, for the
    same policy: a resource name added to the policy reaches the webhook either way."""
    from gpumem.match_conditions import match_conditions  # noqa: PLC0415

    base = yaml.safe_load((BASE / "policy.yaml").read_text("utf-8"))
    merged = {key: value for key, value in {**base, **change}.items() if value is not None}
    policy = Policy.model_validate(merged)
    assert _match_conditions(render(helm, {"policy": change})) == match_conditions(policy)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"gpuResourceNames": ["vramguard.io/gpumem"]}, "must not also be listed"),
        ({"gpumemResourceName": None}, "policy.gpumemResourceName is required"),
    ],
)
def test_a_policy_the_conditions_cannot_come_from_is_refused(
    helm: Path, policy: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmFailed, match=message):
        render(helm, {"policy": policy})


def test_match_conditions_equal_the_base_for_the_base_policy(chart: list[K8sObject]) -> None:
    (mwc,) = load_all(BASE / "mutatingwebhook.yaml")
    assert _match_conditions(chart) == mwc["webhooks"][0]["matchConditions"]


def _managed(docs: list[K8sObject]) -> list[dict[str, Any]]:
    configmap = next(
        d for d in docs if d["metadata"]["name"].startswith("vramguard-scheduler-config-")
    )
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    (extender,) = config["extenders"]
    managed: list[dict[str, Any]] = extender["managedResources"]
    return managed


def test_scheduler_manages_the_policys_resources(helm: Path) -> None:
    policy = {
        "gpuResourceNames": ["nvidia.com/gpu", "amd.com/gpu"],
        "gpumemResourceName": "x.io/mem",
    }
    assert _managed(render(helm, {"policy": policy})) == [
        {"name": name, "ignoredByScheduler": False}
        for name in ("x.io/mem", "nvidia.com/gpu", "amd.com/gpu")
    ]


def test_a_resource_pattern_is_not_a_managed_resource(helm: Path) -> None:
    """kube-scheduler takes only names; a pattern's pods reach the extender by the GPU memory
    the webhook gives every GPU pod (managed first)."""
    policy = {"gpuResourceNames": ["nvidia.com/gpu", "nvidia.com/mig-*"]}
    assert [m["name"] for m in _managed(render(helm, {"policy": policy}))] == [
        "vramguard.io/gpumem",
        "nvidia.com/gpu",
    ]


def test_a_policy_change_rolls_what_reads_it(helm: Path, chart: list[K8sObject]) -> None:
    """The ConfigMap's name follows its content, and every pod template that mounts it
    follows the name: the kustomize generator's behaviour."""
    changed = render(helm, {"policy": {"defaults": {"gpumemMiB": 2048}}})

    def policy_names(docs: list[K8sObject]) -> set[str]:
        names = set()
        for obj in docs:
            if obj["kind"] in {"Deployment", "DaemonSet"}:
                for volume in pod_spec(obj).get("volumes", []):
                    if volume["name"] == "policy":
                        names.add(volume["configMap"]["name"])
        return names

    (before,) = policy_names(chart)
    (after,) = policy_names(changed)
    assert before != after
    assert {d["metadata"]["name"] for d in changed if d["kind"] == "ConfigMap"} >= {after}
    readers = [
        d for d in chart if d["kind"] == "Deployment" and "policy" in json.dumps(pod_spec(d))
    ]
    assert len(readers) == 4  # webhook, scheduler, advertiser, watchdog


# --- the schema --------------------------------------------------------------------------------


def test_generated_files_are_current() -> None:
    stale = [
        str(path.relative_to(REPO))
        for path, content in helm_schema.generated().items()
        if not path.is_file() or path.read_bytes() != content
    ]
    assert not stale, f"{stale} are stale: run .venv/bin/python -m tests.unit.manifests.helm_schema"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"webhok": {"replicas": 3}}, "additional properties 'webhok' not allowed"),
        ({"webhook": {"replicas": "2"}}, "/webhook/replicas"),
        ({"webhook": {"replicas": 0}}, "/webhook/replicas"),
        ({"certificates": {"mode": "self-managed"}}, "/certificates/mode"),
        ({"images": {"vramguard": {"digest": "latest"}}}, "/images/vramguard/digest"),
        ({"policy": {"defaults": {"gpumemMiB": -1}}}, "/policy/defaults/gpumemMiB"),
        ({"policy": {"extender": {"scoring": "worst"}}}, "/policy/extender/scoring"),
        ({"policy": {"gpuResourceName": ["x"]}}, "additional properties 'gpuResourceName'"),
        ({"policy": {"namespaces": {"a": {"gpumemMib": 1}}}}, "/policy/namespaces/a"),
        ({"networkPolicy": {"apiServerCIDRs": ["10.0.0.1"]}}, "/networkPolicy/apiServerCIDRs/0"),
        ({"commonLabels": {"a": 1}}, "/commonLabels/a"),
    ],
)
def test_the_schema_refuses(helm: Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmFailed) as failure:
        render(helm, values)
    assert message in str(failure.value)
    assert "values don't meet the specifications of the schema" in str(failure.value)


def test_the_schema_embeds_the_policys_own() -> None:
    from gpumem.policy import policy_schema  # noqa: PLC0415

    schema = json.loads(helm_schema.SCHEMA.read_text("utf-8"))
    policy = policy_schema()
    assert set(schema["properties"]["policy"]["properties"]) == set(policy["properties"])
    assert {f"Policy{name}" for name in policy["$defs"]} <= set(schema["$defs"])
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema))
    assert refs
    assert all(ref.removeprefix("#/$defs/") in schema["$defs"] for ref in refs), refs


# --- helm lint --------------------------------------------------------------------------------


LINTED: list[dict[str, Any]] = [
    {},
    CERT_MANAGER,
    {
        "certificates": {
            "mode": "provided",
            "provided": {"secretName": "mine", "caBundle": "Q0E="},
        }
    },
    {
        "advertiser": {"enabled": False},
        "watchdog": {"enabled": False},
        "nodeAgent": {"enabled": False},
        "priorityClasses": {"create": False},
        "networkPolicy": {"enabled": False},
    },
]
LINTED_IDS = ["default", "cert-manager", "provided", "everything optional off"]


@pytest.mark.parametrize("values", LINTED, ids=LINTED_IDS)
@pytest.mark.parametrize("binary", ["helm", "helm4"])
def test_helm_lint_strict(
    binary: str, values: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    helm: Path = request.getfixturevalue(binary)
    file = tmp_path / "values.json"
    file.write_text(json.dumps(values))
    result = subprocess.run(
        [
            str(helm),
            "lint",
            "--strict",
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            str(file),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values", LINTED, ids=LINTED_IDS)
def test_helm_4_renders_what_helm_3_renders(
    helm: Path, helm4: Path, values: dict[str, Any]
) -> None:
    """The same objects, hooks included (Helm 4 lays the documents out and orders the kinds
    it knows a little differently)."""
    assert sorted(render(helm4, values), key=key) == sorted(render(helm, values), key=key)


def test_chart_version_is_the_projects() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text("utf-8"))
    pyproject = (REPO / "pyproject.toml").read_text("utf-8")
    (version,) = re.findall(r'^version = "([^"]+)"$', pyproject, re.MULTILINE)
    labels = yaml.safe_load((BASE / "kustomization.yaml").read_text("utf-8"))["labels"]
    assert chart["appVersion"] == chart["version"] == version
    assert labels[0]["pairs"]["app.kubernetes.io/version"] == version


# --- values reach the objects ------------------------------------------------------------------


def _pod_owners(docs: list[K8sObject]) -> Iterator[K8sObject]:
    yield from (d for d in docs if d["kind"] in {"Deployment", "DaemonSet"})


def test_images(helm: Path) -> None:
    digest = "sha256:" + "a" * 64
    docs = render(
        helm,
        {
            "images": {
                "vramguard": {
                    "repository": "ghcr.io/example/vramguard",
                    "tag": "9.9.9",
                    "digest": digest,
                    "pullPolicy": "Always",
                },
                "kubeScheduler": {"tag": "v1.35.1"},
                "pullSecrets": ["registry-a", "registry-b"],
            }
        },
    )
    images = set()
    for obj in _pod_owners(docs):
        spec = pod_spec(obj)
        assert spec["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}], key(
            obj
        )
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            images.add((c["image"], c["imagePullPolicy"]))
    assert images == {
        (f"ghcr.io/example/vramguard:9.9.9@{digest}", "Always"),
        ("registry.k8s.io/kube-scheduler:v1.35.1", "IfNotPresent"),
    }


def test_replicas_resources_and_placement(helm: Path) -> None:
    toleration = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    resources = {
        "requests": {"cpu": "1m", "memory": "1Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
                ]
            }
        }
    }
    values: dict[str, Any] = {
        workload: {
            "nodeSelector": {"pool": workload.lower()},
            "tolerations": [toleration],
            "affinity": affinity,
            "priorityClassName": f"class-{workload.lower()}",
        }
        for workload in WORKLOADS
    }
    values["webhook"] |= {"replicas": 3, "resources": resources}
    values["scheduler"] |= {
        "replicas": 4,
        "extender": {"resources": resources},
        "kubeScheduler": {"resources": resources},
    }
    for workload in ("advertiser", "watchdog", "nodeAgent"):
        values[workload]["resources"] = resources
    docs = render(helm, values)
    for workload, (namespace, kind, name) in WORKLOADS.items():
        obj = find(docs, kind, name, namespace)
        spec = pod_spec(obj)
        assert spec["nodeSelector"] == {"pool": workload.lower()}, workload
        assert spec["tolerations"] == [toleration], workload
        # Maps merge into the defaults: the webhook's anti-affinity stays beside the new term.
        assert spec["affinity"]["nodeAffinity"] == affinity["nodeAffinity"], workload
        assert spec["priorityClassName"] == f"class-{workload.lower()}", workload
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert c["resources"] == resources, (workload, c["name"])
    assert find(docs, "Deployment", "vramguard-webhook")["spec"]["replicas"] == 3
    assert find(docs, "Deployment", "vramguard-scheduler")["spec"]["replicas"] == 4
    assert "podAntiAffinity" in pod_spec(find(docs, "Deployment", "vramguard-webhook"))["affinity"]


def test_extra_labels_and_annotations(helm: Path, chart: list[K8sObject]) -> None:
    docs = render(
        helm,
        {
            "commonLabels": {"team": "gpu", "app.kubernetes.io/name": "not-vramguard"},
            "commonAnnotations": {"owner": "platform"},
            "podLabels": {"cost-center": "42", "app.kubernetes.io/component": "not-it"},
            "podAnnotations": {"example.com/scrape": "no"},
        },
    )
    own = {key(d): d["metadata"].get("labels", {}) for d in chart}
    for obj in docs:
        labels, annotations = obj["metadata"]["labels"], obj["metadata"]["annotations"]
        assert labels["team"] == "gpu", key(obj)
        assert annotations["owner"] == "platform", key(obj)
        # A common label never replaces one of the object's own (Services select on them).
        if "app.kubernetes.io/name" in own[key(obj)]:
            assert labels["app.kubernetes.io/name"] == "vramguard", key(obj)
    for obj in _pod_owners(docs):
        template = obj["spec"]["template"]["metadata"]
        assert template["labels"]["cost-center"] == "42", key(obj)
        # Nor a pod label one the selector needs.
        assert template["labels"] == {
            **template["labels"],
            **obj["spec"]["selector"]["matchLabels"],
        }
        assert template["annotations"]["example.com/scrape"] == "no", key(obj)


def test_components_switch_off_with_their_network_policies(
    helm: Path, chart: list[K8sObject]
) -> None:
    off = render(
        helm,
        {
            "advertiser": {"enabled": False},
            "watchdog": {"enabled": False},
            "nodeAgent": {"enabled": False},
            "priorityClasses": {"create": False},
        },
    )
    names = {(d["kind"], d["metadata"]["name"]) for d in off}
    for name in ("vramguard-advertiser", "vramguard-watchdog", "vramguard-node-agent"):
        assert not [n for n in names if n[1] == name], name
        assert [d for d in chart if d["metadata"]["name"] == name and d["kind"] == "NetworkPolicy"]
    assert "Namespace" not in {kind for kind, _ in names}
    assert "PriorityClass" not in {kind for kind, _ in names}
    no_policies = render(helm, {"networkPolicy": {"enabled": False}})
    assert not [d for d in no_policies if d["kind"] == "NetworkPolicy"]


def test_monitoring_carries_the_release_label(helm: Path) -> None:
    docs = render(
        helm,
        {
            "serviceMonitor": {
                "enabled": True,
                "release": "kube-prometheus-stack",
                "labels": {"a": "b"},
            },
            "prometheusRule": {"enabled": True, "release": "prom"},
        },
    )
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 4
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["metadata"]["labels"]["a"] == "b"
    rule = find(docs, "PrometheusRule", "vramguard")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert (
        "release"
        not in find(render(helm, CERT_MANAGER), "PrometheusRule", "vramguard")["metadata"]["labels"]
    )


@pytest.mark.parametrize(
    ("mode", "key"),
    # The self-managed Secret's bundle (old and new CA during a rotation); the Secrets
    # cert-manager writes and `make certs` makes carry ca.crt.
    [("selfManaged", CA_BUNDLE), ("certManager", "ca.crt")],
)
def test_the_webhooks_monitor_trusts_what_its_secret_carries(
    helm: Path, mode: str, key: str
) -> None:
    docs = render(helm, {"certificates": {"mode": mode}, "serviceMonitor": {"enabled": True}})
    monitor = find(docs, "ServiceMonitor", "vramguard-webhook")
    assert monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"] == {
        "name": "vramguard-webhook-tls",
        "key": key,
    }


def test_watchdog_dry_run_and_prometheus(helm: Path, chart: list[K8sObject]) -> None:
    def dry_run(docs: list[K8sObject]) -> str:
        env = container(find(docs, "Deployment", "vramguard-watchdog"), "watchdog")["env"]
        return str(next(e["value"] for e in env if e["name"] == "DRY_RUN"))

    assert dry_run(chart) == "true"
    url = "http://prometheus.example:9090"
    docs = render(
        helm, {"watchdog": {"dryRun": False}, "prometheus": {"url": url, "namespace": "obs"}}
    )
    assert dry_run(docs) == "false"
    for name, container_name in (
        ("vramguard-watchdog", "watchdog"),
        ("vramguard-scheduler", "extender"),
    ):
        args = container(find(docs, "Deployment", name), container_name)["args"]
        assert args[args.index("--prometheus-url") + 1] == url
    selectors = re.findall(
        r'"kubernetes.io/metadata.name": "([^"]+)"',
        json.dumps([d for d in docs if d["kind"] == "NetworkPolicy"]),
    )
    assert set(selectors) == {"obs"}


def test_api_server_cidrs(helm: Path) -> None:
    docs = render(helm, {"networkPolicy": {"apiServerCIDRs": ["10.0.0.0/24"]}})
    policy = find(docs, "NetworkPolicy", "vramguard-webhook-apiserver")
    assert policy["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]


def test_admission_policies_follow_the_release_and_the_policy(helm: Path) -> None:
    """The watchdog's and the advertiser's ValidatingAdmissionPolicies name their
    ServiceAccounts in the release namespace, protect the release's and the node agent's
    namespaces, and hold them to the policy's GPU-memory resource."""
    values = {
        "policy": {"gpumemResourceName": "example.com/vram"},
        "nodeAgent": {"namespace": "gpu-agents"},
    }
    docs = render(helm, values, namespace="gpu-system", hooks=False)
    watchdog = find(docs, "ValidatingAdmissionPolicy", "vramguard-watchdog-deletes")["spec"]
    advertiser = find(docs, "ValidatingAdmissionPolicy", "vramguard-advertiser-node-status")["spec"]
    for spec, account in ((watchdog, "vramguard-watchdog"), (advertiser, "vramguard-advertiser")):
        (condition,) = spec["matchConditions"]
        assert condition["expression"] == (
            f'request.userInfo.username == "system:serviceaccount:gpu-system:{account}"'
        )
    (declares,) = watchdog["variables"]
    assert declares["expression"].count('"example.com/vram" in c.resources.') == 2
    assert "vramguard.io/gpumem" not in json.dumps(watchdog["variables"])
    namespaces = watchdog["validations"][1]["expression"]
    assert namespaces == '!(request.namespace in ["kube-system", "gpu-system", "gpu-agents"])'
    resource = next(v for v in advertiser["variables"] if v["name"] == "resource")
    assert resource["expression"] == '"example.com/vram"'
    off = render(helm, {"watchdog": {"enabled": False}, "advertiser": {"enabled": False}})
    components = [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]
    # The base's own (ephemeral containers, test_ephemeral_policy_manifest) stays.
    assert {d["metadata"]["name"] for d in components} == {"vramguard-ephemeral-gpu-env"}


def test_another_release_namespace(helm: Path) -> None:
    """What the base puts in namespace vramguard, or names it by, follows the release's."""
    docs = render(helm, CERT_MANAGER, namespace="gpu-system", hooks=False)
    elsewhere = {"vramguard-node", "kube-system"}  # the node agent's, and kube-scheduler's reader
    for obj in docs:
        namespace = obj["metadata"].get("namespace")
        assert namespace is None or namespace == "gpu-system" or namespace in elsewhere, key(obj)
        for subject in obj.get("subjects", []):
            if subject["name"] != "vramguard-node-agent":
                assert subject["namespace"] == "gpu-system", key(obj)
    webhook = find(docs, "MutatingWebhookConfiguration", "vramguard")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].startswith(
        "gpu-system/"
    )
    (hook,) = webhook["webhooks"]
    assert hook["clientConfig"]["service"]["namespace"] == "gpu-system"
    # kube-system, the release's, the node agent's, then the policy's excludedNamespaces.
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "kube-system",
        "gpu-system",
        "vramguard-node",
        "vramguard",
        "gpu-operator",
        "gpu-operator-resources",
    ]
    certificate = find(docs, "Certificate", "vramguard-webhook")
    assert certificate["spec"]["dnsNames"][0] == "vramguard-webhook.gpu-system.svc"
    monitor = find(docs, "ServiceMonitor", "vramguard-webhook")
    assert (
        monitor["spec"]["endpoints"][0]["tlsConfig"]["serverName"]
        == certificate["spec"]["dnsNames"][0]
    )
    (configmap,) = [
        d for d in docs if d["metadata"]["name"].startswith("vramguard-scheduler-config-")
    ]
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config["leaderElection"]["resourceNamespace"] == "gpu-system"


# --- the test hook -----------------------------------------------------------------------------


def test_the_test_hook_dry_runs_a_gpu_pod(chart: list[K8sObject]) -> None:
    hooks = [d for d in chart if is_hook(d) and d["metadata"]["annotations"][HOOK] == "test"]
    pod = find(hooks, "Pod", "vramguard-helm-test")
    (test,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in test["env"]}
    assert env == {
        "TEST_NAMESPACE": "default",
        "GPU_RESOURCE": "nvidia.com/gpu",
        "GPUMEM_RESOURCE": "vramguard.io/gpumem",
        "EXPECTED_SCHEDULER": "vramguard-scheduler",
    }
    script = test["args"][0]
    assert 'dry_run="All"' in script
    compile(script, "helm-test", "exec")  # the script is valid Python
    # It may create pods (a dry run is authorized as a create) in the test namespace only.
    role = find(hooks, "Role", "vramguard-helm-test", "default")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    # default-deny covers it: it gets the API server and nothing else.
    policy = find(hooks, "NetworkPolicy", "vramguard-helm-test", NAMESPACE)
    assert [p["port"] for p in policy["spec"]["egress"][0]["ports"]] == [443, 6443]
    assert test["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("target", ["kube-system", NAMESPACE])
def test_the_test_hook_refuses_an_excluded_namespace(helm: Path, target: str) -> None:
    with pytest.raises(HelmFailed, match="is excluded from vramguard"):
        render(helm, {"tests": {"namespace": target}})


def test_no_hooks_but_the_test_and_the_uninstall(helm: Path) -> None:
    """Install and upgrade hooks would run outside `helm upgrade`'s three-way merge; the
    chart has none."""
    with_hooks = render(helm, CERT_MANAGER)
    without = render(helm, CERT_MANAGER, hooks=False)
    assert {key(d) for d in with_hooks} - {key(d) for d in without} == {
        key(d) for d in with_hooks if is_hook(d)
    }
    kinds = {d["metadata"]["annotations"][HOOK] for d in with_hooks if is_hook(d)}
    assert kinds == {"test", "pre-delete"}


# --- the uninstall hook ----------------------------------------------------------------------


def test_the_uninstall_hook_deletes_the_webhook_configuration_first(
    chart: list[K8sObject],
) -> None:
    """helm uninstall deletes the kinds it knows first (Services, Deployments, ...) and the
    MutatingWebhookConfiguration last; the pre-delete Job deletes it before anything else,
    with a ServiceAccount that may delete that one configuration and nothing else."""
    hooks = [d for d in chart if is_hook(d) and d["metadata"]["annotations"][HOOK] == "pre-delete"]
    assert {(d["kind"], d["metadata"]["name"]) for d in hooks} == {
        ("ServiceAccount", "vramguard-uninstall"),
        ("ClusterRole", "vramguard-uninstall"),
        ("ClusterRoleBinding", "vramguard-uninstall"),
        ("NetworkPolicy", "vramguard-uninstall"),
        ("Job", "vramguard-uninstall"),
    }
    job = find(hooks, "Job", "vramguard-uninstall", NAMESPACE)
    weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hooks}
    assert all(weights[kind] < weights["Job"] for kind in weights if kind != "Job")
    spec = pod_spec(job)
    (container,) = spec["containers"]
    assert container["command"][0] == "vramguard"
    args = build_parser().parse_args(container["command"][1:])
    configuration = find(chart, "MutatingWebhookConfiguration", "vramguard")
    assert args.command == "unregister-webhook"
    assert args.name == configuration["metadata"]["name"]
    assert (
        container["image"]
        == find(chart, "Deployment", "vramguard-webhook")["spec"]["template"]["spec"]["containers"][
            0
        ]["image"]
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["serviceAccountName"] == "vramguard-uninstall"
    role = find(hooks, "ClusterRole", "vramguard-uninstall")
    assert role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [configuration["metadata"]["name"]],
            "verbs": ["delete"],
        }
    ]
    binding = find(hooks, "ClusterRoleBinding", "vramguard-uninstall")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "vramguard-uninstall", "namespace": NAMESPACE}
    ]
    policy = find(hooks, "NetworkPolicy", "vramguard-uninstall", NAMESPACE)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= spec_labels(job).items()
    assert [p["port"] for p in policy["spec"]["egress"][0]["ports"]] == [443, 6443]


def spec_labels(workload: K8sObject) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_uninstall_hook_can_be_switched_off(helm: Path) -> None:
    docs = render(helm, {"uninstallHook": {"enabled": False}})
    assert not [
        d for d in docs if (d["metadata"].get("annotations") or {}).get(HOOK) == "pre-delete"
    ]


def test_readme_labels_the_release_namespace_like_the_base() -> None:
    """Helm cannot label the namespace it installs into: the README's Helm install does, with
    base/namespace.yaml's Pod Security labels (what the comparison leaves out)."""
    (namespace,) = load_all(BASE / "namespace.yaml")
    readme = (MANIFESTS / "README.md").read_text("utf-8")
    section = readme[readme.index("## Helm") :]
    for label, value in namespace["metadata"]["labels"].items():
        assert f"{label}={value}" in section, label


def test_normalizing_leaves_the_objects_alone(chart: list[K8sObject]) -> None:
    """`normalized` works on copies: the module's shared render stays as rendered."""
    before = copy.deepcopy(chart)
    for obj in chart:
        normalized(obj, from_helm=True)
    assert chart == before
