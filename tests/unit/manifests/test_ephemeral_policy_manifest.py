"""manifests/base/ephemeral-containers-policy.yaml is the rendering of manifests/base/policy.yaml
(gpumem.ephemeral_policy), the default install holds it, `make match-conditions` covers it, an
overlay with its own policy can patch it, and the Helm chart renders the same objects, the CEL
byte for byte, from its policy value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpumem.ephemeral_policy import POLICY_NAME, policy_spec, replace_block
from gpumem.policy import Policy, load_policy

from .conftest import (
    BASE,
    DEFAULT,
    MAKEFILE,
    REPO,
    K8sObject,
    build_policy_overlay,
    named,
    objects,
    policy_generator,
)
from .test_helm_chart import find, render

POLICY_FILE = BASE / "policy.yaml"
VAP_FILE = BASE / "ephemeral-containers-policy.yaml"
BINDING = {"policyName": POLICY_NAME, "validationActions": ["Deny"]}


def _pair(docs: list[K8sObject]) -> tuple[K8sObject, K8sObject]:
    return (
        named(docs, "ValidatingAdmissionPolicy", POLICY_NAME),
        named(docs, "ValidatingAdmissionPolicyBinding", POLICY_NAME),
    )


def test_the_file_is_the_rendering_of_the_base_policy() -> None:
    text = VAP_FILE.read_text("utf-8")
    assert replace_block(text, load_policy(POLICY_FILE)) == text, (
        f"{VAP_FILE.relative_to(REPO)} differs from policy.yaml: run `make match-conditions`"
    )
    vap, binding = _pair(objects(VAP_FILE))
    assert vap["spec"] == policy_spec(load_policy(POLICY_FILE))
    assert binding["spec"] == BINDING


def test_the_default_install_holds_it(built: dict[str, list[K8sObject]]) -> None:
    vap, binding = _pair(built[DEFAULT])
    assert vap["spec"] == policy_spec(load_policy(POLICY_FILE))
    assert binding["spec"] == BINDING
    assert (
        "ephemeral-containers-policy.yaml"
        in yaml.safe_load((BASE / "kustomization.yaml").read_text("utf-8"))["resources"]
    )


def test_make_match_conditions_renders_it() -> None:
    text = MAKEFILE.read_text("utf-8")
    recipe = text[text.index("\nmatch-conditions:") :].split("\n\n", 1)[0]
    assert "manifests/base/ephemeral-containers-policy.yaml" in recipe
    assert "manifests/base/mutatingwebhook.yaml" in recipe


def test_check_and_write_follow_the_policy(tmp_path: Path) -> None:
    policy = yaml.safe_load(POLICY_FILE.read_text("utf-8"))
    policy["deviceEnvNames"] = ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"]
    changed = tmp_path / "policy.yaml"
    changed.write_text(yaml.safe_dump(policy))
    webhook = BASE / "mutatingwebhook.yaml"

    assert policy_generator("--policy", str(POLICY_FILE), "--check", str(VAP_FILE)).returncode == 0
    stale = policy_generator("--policy", str(changed), "--check", str(webhook), str(VAP_FILE))
    assert stale.returncode == 1
    assert f"{VAP_FILE}: the rendered CEL differs" in stale.stderr
    assert "make match-conditions" in stale.stderr

    copy = tmp_path / VAP_FILE.name
    copy.write_text(VAP_FILE.read_text("utf-8"))
    assert policy_generator("--policy", str(changed), "--write", str(copy)).returncode == 0
    assert "['NVIDIA_VISIBLE_DEVICES', 'CUDA_VISIBLE_DEVICES']" in copy.read_text("utf-8")
    assert policy_generator("--policy", str(changed), "--check", str(copy)).returncode == 0
    (vap, _) = _pair(objects(copy))
    assert vap["spec"] == policy_spec(load_policy(changed))


def test_a_file_without_markers_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("kind: ConfigMap\n")
    result = policy_generator("--policy", str(POLICY_FILE), "--check", str(plain))
    assert result.returncode == 1
    assert "block to render" in result.stderr


def test_an_overlay_with_its_own_policy_patches_it(kustomize: Path, tmp_path: Path) -> None:
    """The recipe in the file's comment, built: the patch gives the overlay's policy object the
    overlay policy's variables and namespaces, and leaves the rest as the base has it."""
    policy = yaml.safe_load(POLICY_FILE.read_text("utf-8"))
    policy["deviceEnvNames"] = ["CUDA_VISIBLE_DEVICES"]
    policy["excludedNamespaces"] = ["kube-system", "research"]
    overlay, docs = build_policy_overlay(kustomize, tmp_path, policy, "--patch-ephemeral", {})
    vap, binding = _pair(docs)
    assert vap["spec"] == policy_spec(load_policy(overlay / "policy.yaml"))
    assert binding["spec"] == BINDING


# --- the Helm chart --------------------------------------------------------------------------

POLICIES = [
    pytest.param({}, id="the base policy"),
    pytest.param(
        {"deviceEnvNames": ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"]}, id="two names"
    ),
    pytest.param({"deviceEnvNames": []}, id="no names"),
    pytest.param({"deviceEnvNames": None}, id="names dropped: the policy's default"),
    pytest.param({"excludedNamespaces": ["kube-system", "research", "vramguard"]}, id="excluded"),
    pytest.param({"excludedNamespaces": []}, id="nothing excluded"),
]


def _chart_spec(helm: Path, change: dict[str, Any], **values: Any) -> dict[str, Any]:
    docs = render(helm, {"policy": change, **values}, hooks=False)
    binding = find(docs, "ValidatingAdmissionPolicyBinding", POLICY_NAME)
    assert binding["spec"] == BINDING
    spec: dict[str, Any] = find(docs, "ValidatingAdmissionPolicy", POLICY_NAME)["spec"]
    return spec


@pytest.mark.parametrize("change", POLICIES)
def test_the_chart_renders_the_renderers_policy(helm: Path, change: dict[str, Any]) -> None:
    """The whole spec, CEL strings byte for byte, is gpumem.ephemeral_policy's for the same
    policy (as the webhook reads it: Helm drops a key set to null, so does the policy file)."""
    base = yaml.safe_load(POLICY_FILE.read_text("utf-8"))
    merged = {key: value for key, value in {**base, **change}.items() if value is not None}
    assert _chart_spec(helm, change) == policy_spec(Policy.model_validate(merged))


def test_the_chart_keeps_out_its_release_and_node_agent_namespaces(helm: Path) -> None:
    docs = render(
        helm, {"nodeAgent": {"namespace": "gpu-agents"}}, namespace="gpu-system", hooks=False
    )
    spec = find(docs, "ValidatingAdmissionPolicy", POLICY_NAME)["spec"]
    base = load_policy(POLICY_FILE)
    assert spec == policy_spec(base, "gpu-system", "gpu-agents")
    (expression,) = spec["matchConstraints"]["namespaceSelector"]["matchExpressions"]
    assert expression["values"][:3] == ["kube-system", "gpu-system", "gpu-agents"]


def test_the_chart_object_is_the_base_object(helm: Path) -> None:
    assert _chart_spec(helm, {}) == objects(VAP_FILE)[0]["spec"]
