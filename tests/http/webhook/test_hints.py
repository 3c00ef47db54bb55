"""Enforcement hints over the wire: the env in the patch, the warnings and the audit
annotations of the AdmissionReview the API server gets back."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.http.webhook.reviews import POLICY_YAML, decoded_patch, gpu_pod, patched, review
from tests.http.webhook.test_policy_reload import eventually, replace_file

# reviews.POLICY_YAML's immich with every hint on, the seeds' T4 as the card size; a dry-run
# namespace; and kube-system listed with hints although it is excluded.
HINT_POLICY = (
    POLICY_YAML.replace(
        "immich: {priorityClassName: tier-1-gpu, gpumemMiB: 3000}",
        "immich: {priorityClassName: tier-1-gpu, gpumemMiB: 3000, hints: {containerToolkit: "
        "true, mps: true, jax: true, tensorflow: true, cupy: true, cardMiB: 15360}}",
    )
    + """  rehearsal: {gpumemMiB: 2000, hints: {containerToolkit: true, dryRun: true}}
  no-card: {gpumemMiB: 2000, hints: {jax: true}}
  kube-system: {hints: {containerToolkit: true}}
"""
)
IMMICH_ENV = {
    "NVIDIA_GPU_MEMORY_REQUEST": "3000",
    "NVIDIA_GPU_MEMORY_LIMIT": "3000",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=3000M",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.195",
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "CUPY_GPU_MEMORY_LIMIT": str(3000 * 1024 * 1024),
}
JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(HINT_POLICY)
    return path


def post(client: TestClient, document: Any) -> dict[str, Any]:
    reply = client.post("/mutate", content=json.dumps(document), headers=JSON_HEADERS)
    assert reply.status_code == 200, reply.text
    response: dict[str, Any] = reply.json()["response"]
    return response


def env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0].get("env", [])}


def test_every_hint_reaches_the_pod(client: TestClient) -> None:
    response = post(client, review(gpu_pod()))
    result = patched(gpu_pod(), response)
    assert env(result) == {"MACHINE_LEARNING_WORKERS": "1", **IMMICH_ENV}
    settings = " ".join(f"{k}={v}" for k, v in IMMICH_ENV.items())
    assert (
        f"vramguard: set {settings} on container ml (enforcement hints, namespace immich)"
        in response["warnings"]
    )
    assert response["auditAnnotations"]["hints"] == f"ml: {settings}"
    # Appended after the pod's own variable: the patch never resends it.
    env_ops = [op for op in decoded_patch(response) if "/env" in op["path"]]
    assert [op["path"] for op in env_ops] == [
        f"/spec/containers/0/env/{index}" for index in range(1, 1 + len(IMMICH_ENV))
    ]


def test_reinvocation_returns_no_patch(client: TestClient) -> None:
    first = post(client, review(gpu_pod()))
    again = post(client, review(patched(gpu_pod(), first)))
    assert again["allowed"] is True
    assert "patch" not in again
    assert "auditAnnotations" not in again or "hints" not in again["auditAnnotations"]
    assert set(again.get("warnings", [])) <= set(first["warnings"])


def test_the_pods_own_value_is_kept_and_the_warning_says_so(client: TestClient) -> None:
    pod = gpu_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "XLA_CLIENT_MEM_FRACTION", "value": ".40"})
    response = post(client, review(pod))
    result = env(patched(pod, response))
    assert result["XLA_CLIENT_MEM_FRACTION"] == ".40"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in result, "jaxlib refuses both spellings"
    assert result["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert (
        "vramguard: container ml sets XLA_CLIENT_MEM_FRACTION itself (.40): jax hint "
        "XLA_PYTHON_CLIENT_MEM_FRACTION=0.195 left alone"
    ) in response["warnings"]
    assert response["auditAnnotations"]["hints-left-alone"] == "ml: XLA_PYTHON_CLIENT_MEM_FRACTION"


def test_dry_run_namespace_gets_warnings_and_no_env(client: TestClient) -> None:
    response = post(client, review(gpu_pod(namespace="rehearsal")))
    assert all("/env" not in op["path"] for op in decoded_patch(response))
    settings = "NVIDIA_GPU_MEMORY_REQUEST=2000 NVIDIA_GPU_MEMORY_LIMIT=2000"
    assert (
        f"vramguard: dry run: would set {settings} on container ml "
        "(enforcement hints, namespace rehearsal)"
    ) in response["warnings"]
    assert response["auditAnnotations"]["hints-dry-run"] == f"ml: {settings}"


def test_no_card_size_is_a_warning_not_a_guess(client: TestClient) -> None:
    response = post(client, review(gpu_pod(namespace="no-card")))
    result = env(patched(gpu_pod(namespace="no-card"), response))
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in result
    assert result["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert any("no card size is known (hints.cardMiB)" in w for w in response["warnings"])


def test_excluded_namespace_is_left_alone(client: TestClient) -> None:
    document = review(gpu_pod(namespace="kube-system"))
    assert post(client, document) == {
        "uid": document["request"]["uid"],
        "allowed": True,
        "status": {"code": 200, "message": "namespace kube-system is excluded"},
    }


def test_the_request_log_names_the_hints(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook.app")
    post(client, review(gpu_pod()))
    (record,) = [r for r in caplog.records if r.name == "webhook.app"]
    changes = record.fields["changes"]  # type: ignore[attr-defined]
    assert changes["hints[ml]"] == " ".join(f"{k}={v}" for k, v in IMMICH_ENV.items())


def test_hints_follow_a_policy_edit(client: TestClient, policy_path: Path) -> None:
    assert env(patched(gpu_pod(), post(client, review(gpu_pod())))) != {
        "MACHINE_LEARNING_WORKERS": "1"
    }
    replace_file(policy_path, POLICY_YAML)

    def hints_gone() -> bool:
        pod = copy.deepcopy(gpu_pod())
        return env(patched(pod, post(client, review(pod)))) == {"MACHINE_LEARNING_WORKERS": "1"}

    eventually(hints_gone)
