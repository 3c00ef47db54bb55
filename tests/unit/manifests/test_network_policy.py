"""components/network-policy: who can reach the webhook. Only the API server (by address, the
one rule an overlay narrows) and Prometheus from namespace monitoring, and only on the HTTPS
port; the example patch narrows the API server's rule and leaves the rest alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .conftest import BASE, MANIFESTS, K8sObject, named, objects, of_kind

COMPONENT = MANIFESTS / "components" / "network-policy"
POLICIES = COMPONENT / "networkpolicies.yaml"
EXAMPLE = COMPONENT / "apiserver-cidr.example.yaml"
WEBHOOK_LABELS = {"app.kubernetes.io/name": "vramguard", "app.kubernetes.io/component": "webhook"}
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
EVERY_ADDRESS = [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]


def selects_webhook(policy: K8sObject) -> bool:
    selector = policy["spec"]["podSelector"]
    labels = selector.get("matchLabels", {})
    return not selector or all(WEBHOOK_LABELS.get(k) == v for k, v in labels.items())


def webhook_ingress(docs: list[K8sObject]) -> list[dict[str, Any]]:
    """Every ingress rule of every NetworkPolicy that selects the webhook's pods."""
    return [
        rule
        for policy in of_kind(docs, "NetworkPolicy")
        if selects_webhook(policy)
        for rule in policy["spec"].get("ingress", [])
    ]


def https_port() -> int:
    (deployment,) = [
        d for d in of_kind(objects(BASE / "webhook.yaml"), "Deployment") if "webhook" in str(d)
    ]
    (webhook,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "webhook"
    ]
    (port,) = [p for p in webhook["ports"] if p["name"] == "https"]
    number: int = port["containerPort"]
    return number


def test_only_the_api_server_and_prometheus_reach_the_webhook() -> None:
    rules = webhook_ingress(objects(POLICIES))
    assert rules, "the webhook must be reachable by the API server"
    for rule in rules:
        # A rule without `from` admits every source: no such rule for the webhook.
        assert rule.get("from"), rule
        assert rule["ports"] == [{"protocol": "TCP", "port": https_port()}], rule
    sources = [source for rule in rules for source in rule["from"]]
    assert MONITORING in sources
    for source in sources:
        # Prometheus by its namespace; the API server by address. Nothing by pod selector.
        assert source == MONITORING or set(source) == {"ipBlock"}, source


def test_the_api_server_rule_is_an_object_of_its_own() -> None:
    """An overlay replaces its one rule with a strategic-merge patch (ingress has no merge
    key), without repeating Prometheus' rule or touching egress."""
    policy = named(objects(POLICIES), "NetworkPolicy", "vramguard-webhook-apiserver")
    assert policy["spec"]["podSelector"] == {"matchLabels": WEBHOOK_LABELS}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == EVERY_ADDRESS
    webhook = named(objects(POLICIES), "NetworkPolicy", "vramguard-webhook")
    assert webhook["spec"]["ingress"] == [
        {"from": [MONITORING], "ports": [{"protocol": "TCP", "port": https_port()}]}
    ]


def test_the_example_patch_narrows_the_api_server_rule(kustomize: Path, tmp_path: Path) -> None:
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copy(EXAMPLE, overlay / "apiserver-cidr.yaml")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../manifests/base"],
                "components": ["../manifests/components/network-policy"],
                "patches": [{"path": "apiserver-cidr.yaml"}],
            }
        )
    )
    result = subprocess.run(
        [str(kustomize), "build", str(overlay)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (example,) = objects(EXAMPLE)
    narrowed = named(docs, "NetworkPolicy", "vramguard-webhook-apiserver")
    assert narrowed["spec"]["ingress"] == example["spec"]["ingress"]
    assert narrowed["spec"]["podSelector"] == {"matchLabels": WEBHOOK_LABELS}
    # Prometheus' rule and the rest of the component are as shipped.
    shipped = {p["metadata"]["name"]: p for p in objects(POLICIES)}
    for policy in of_kind(docs, "NetworkPolicy"):
        if policy["metadata"]["name"] != "vramguard-webhook-apiserver":
            assert policy == shipped[policy["metadata"]["name"]]
    sources = [s for rule in webhook_ingress(docs) for s in rule["from"]]
    assert {"ipBlock": {"cidr": "0.0.0.0/0"}} not in sources


def test_the_example_is_not_applied_by_the_component() -> None:
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text("utf-8"))
    assert EXAMPLE.name not in kustomization.get("resources", [])
    assert EXAMPLE.name not in str(kustomization.get("patches", []))
