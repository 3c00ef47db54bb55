"""The ways around vramguard's checks that a pod could take through the webhook's HTTP API
(issue 17), each answered over the wire: a zero budget, a pod bound by name, another
scheduler, and a quantity too long to parse (once an uncaught ValueError, a 500)."""

from __future__ import annotations

import copy
import json
from typing import Any

from starlette.testclient import TestClient

from tests.http.webhook.reviews import decoded_patch, gpu_pod, patched, review
from tests.http.webhook.test_wire import JSON_HEADERS, post


def denial(response: dict[str, Any]) -> str:
    assert response["allowed"] is False, response
    assert response["status"]["code"] == 403
    message: str = response["status"]["message"]
    return message


def test_a_zero_budget_is_denied(client: TestClient) -> None:
    response = post(client, review(gpu_pod(requests="0", limits="0")))
    assert "vramguard.io/gpumem=0 MiB, below the minimum of 1 MiB (minGpumemMiB)" in denial(
        response
    )


def test_a_gpu_pod_bound_by_name_is_denied(client: TestClient) -> None:
    pod = gpu_pod()
    pod["spec"]["nodeName"] = "gpu-1"
    assert "may not set spec.nodeName (gpu-1)" in denial(post(client, review(pod)))


def test_another_scheduler_is_replaced(client: TestClient) -> None:
    pod = gpu_pod()
    pod["spec"]["schedulerName"] = "my-own-scheduler"
    response = post(client, review(pod))
    assert response["allowed"] is True
    assert {"op": "replace", "path": "/spec/schedulerName", "value": "vramguard-scheduler"} in (
        decoded_patch(response)
    )


def test_a_quantity_of_thousands_of_digits_is_denied_not_a_500(client: TestClient) -> None:
    pod = copy.deepcopy(gpu_pod(limits="9" * 5000))
    reply = client.post("/mutate", content=json.dumps(review(pod)), headers=JSON_HEADERS)
    assert reply.status_code == 200, reply.text
    message = denial(reply.json()["response"])
    assert "5000 characters long, more than 64" in message


def test_a_tenants_own_class_is_replaced(client: TestClient) -> None:
    """system-node-critical in a tenant namespace could preempt anyone: the namespace's class
    replaces it (allowedPriorityClasses is empty by default)."""
    pod = gpu_pod()
    pod["spec"]["priorityClassName"] = "system-node-critical"
    pod["spec"]["priority"] = 2000001000
    response = post(client, review(pod))
    assert response["allowed"] is True
    spec = patched(pod, response)["spec"]
    assert spec["priorityClassName"] == "tier-1-gpu"
    assert "priority" not in spec
    assert any(
        "priorityClassName system-node-critical replaced" in warning
        for warning in response["warnings"]
    )


def _cpu_pod() -> dict[str, Any]:
    pod = gpu_pod()
    for section in ("limits", "requests"):
        del pod["spec"]["containers"][0]["resources"][section]["nvidia.com/gpu"]
    return pod


def test_nvidia_visible_devices_without_a_gpu_is_denied(client: TestClient) -> None:
    pod = _cpu_pod()
    pod["spec"]["containers"][0]["env"].append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"})
    message = denial(post(client, review(pod)))
    assert "container ml sets NVIDIA_VISIBLE_DEVICES=all without requesting a GPU" in message


def test_the_nvidia_runtime_class_without_a_gpu_is_denied(client: TestClient) -> None:
    pod = _cpu_pod()
    pod["spec"]["runtimeClassName"] = "nvidia"
    assert "runtimeClassName nvidia exposes GPUs" in denial(post(client, review(pod)))


def test_a_dra_claim_is_denied(client: TestClient) -> None:
    pod = gpu_pod()
    pod["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]
    assert "spec.resourceClaims (Dynamic Resource Allocation)" in denial(post(client, review(pod)))
