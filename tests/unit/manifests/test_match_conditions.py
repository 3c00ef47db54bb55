"""manifests/base/mutatingwebhook.yaml's matchConditions are the rendering of
manifests/base/policy.yaml (gpumem.match_conditions), and an overlay with its own policy can
render its own through the generator's patch."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpumem.match_conditions import match_conditions, replace_block
from gpumem.policy import load_policy

from .conftest import BASE, build_policy_overlay, named, objects, policy_generator

WEBHOOK_FILE = BASE / "mutatingwebhook.yaml"
POLICY_FILE = BASE / "policy.yaml"


def test_the_webhook_file_is_the_rendering_of_the_base_policy() -> None:
    text = WEBHOOK_FILE.read_text("utf-8")
    assert replace_block(text, load_policy(POLICY_FILE)) == text, (
        "manifests/base/mutatingwebhook.yaml differs from policy.yaml: run `make match-conditions`"
    )
    (configuration,) = objects(WEBHOOK_FILE)
    (webhook,) = configuration["webhooks"]
    assert webhook["matchConditions"] == match_conditions(load_policy(POLICY_FILE))


def test_check_fails_when_the_policy_names_another_resource(tmp_path: Path) -> None:
    policy = yaml.safe_load(POLICY_FILE.read_text("utf-8"))
    policy["gpuResourceNames"] = [*policy["gpuResourceNames"], "amd.com/gpu"]
    changed = tmp_path / "policy.yaml"
    changed.write_text(yaml.safe_dump(policy))

    current = policy_generator("--policy", str(POLICY_FILE), "--check", str(WEBHOOK_FILE))
    assert current.returncode == 0
    stale = policy_generator("--policy", str(changed), "--check", str(WEBHOOK_FILE))
    assert stale.returncode == 1
    assert "make match-conditions" in stale.stderr

    copy = tmp_path / "mutatingwebhook.yaml"
    copy.write_text(WEBHOOK_FILE.read_text("utf-8"))
    assert policy_generator("--policy", str(changed), "--write", str(copy)).returncode == 0
    assert "'amd.com/gpu' in c.resources.limits" in copy.read_text("utf-8")
    assert policy_generator("--policy", str(changed), "--check", str(copy)).returncode == 0


def test_an_invalid_policy_is_reported_not_rendered(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text('gpuResourceNames: ["it\'s"]\n')
    result = policy_generator("--policy", str(bad))
    assert result.returncode == 1
    assert "is neither a valid resource name nor a pattern" in result.stderr


def test_an_overlay_with_its_own_policy_patches_its_conditions(
    kustomize: Path, tmp_path: Path
) -> None:
    """The recipe in mutatingwebhook.yaml's comment, built: the overlay's policy replaces the
    base's, and the generated patch gives the webhook that policy's names."""
    policy = yaml.safe_load(POLICY_FILE.read_text("utf-8"))
    policy["gpuResourceNames"] = ["nvidia.com/gpu", "amd.com/gpu"]
    policy_map = {
        "configMapGenerator": [
            {
                "name": "vramguard-policy",
                "namespace": "vramguard",
                "behavior": "merge",
                "files": ["policy.yaml"],
            }
        ]
    }
    overlay, docs = build_policy_overlay(kustomize, tmp_path, policy, "--patch", policy_map)
    (webhook,) = named(docs, "MutatingWebhookConfiguration", "vramguard")["webhooks"]
    assert webhook["matchConditions"] == match_conditions(load_policy(overlay / "policy.yaml"))
    # The rest of the webhook is the base's, untouched by the patch.
    (base_webhook,) = objects(WEBHOOK_FILE)[0]["webhooks"]
    assert {k: v for k, v in webhook.items() if k != "matchConditions"} == {
        k: v for k, v in base_webhook.items() if k != "matchConditions"
    }


def test_the_namespaces_never_sent_are_the_policys_excluded_ones() -> None:
    """The API server never calls the webhook for the policy's excludedNamespaces (the GPU
    stack's own pods, which the access conditions would otherwise send), and for nothing
    else: a namespace excluded here but not in the policy would escape with no trace."""
    (configuration,) = objects(WEBHOOK_FILE)
    (webhook,) = configuration["webhooks"]
    (selector,) = webhook["namespaceSelector"]["matchExpressions"]
    assert (selector["key"], selector["operator"]) == ("kubernetes.io/metadata.name", "NotIn")
    policy = load_policy(POLICY_FILE)
    assert selector["values"] == list(policy.excluded_namespaces)
    assert {"kube-system", "vramguard", "vramguard-node"} <= set(selector["values"])
