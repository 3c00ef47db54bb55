"""Policy reload while serving: a broken edit keeps the last good policy and says so."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from tests.http.webhook.reviews import POLICY_YAML, decoded_patch, gpu_pod, review
from webhook.metrics import WebhookMetrics


def injected_gpumem(client: TestClient) -> str:
    reply = client.post(
        "/mutate",
        content=json.dumps(review(gpu_pod())),
        headers={"content-type": "application/json"},
    )
    response: dict[str, Any] = reply.json()["response"]
    values = {
        op["value"] for op in decoded_patch(response) if op["path"].endswith("vramguard.io~1gpumem")
    }
    assert len(values) == 1
    value = values.pop()
    assert isinstance(value, str)
    return value


def replace_file(path: Path, text: str) -> None:
    """Swap the file's content at once, as a ConfigMap volume update does: a reader never
    sees it half written."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(text)
    os.replace(staging, path)


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def sample(metrics: WebhookMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_broken_edit_keeps_the_last_good_policy(
    client: TestClient, metrics: WebhookMetrics, policy_path: Path
) -> None:
    assert injected_gpumem(client) == "3000"
    reloads = "vramguard_webhook_policy_reloads_total"
    last_ok = "vramguard_webhook_policy_last_reload_successful"

    replace_file(policy_path, "defaults: {gpumemMiB: -5}\n")
    eventually(lambda: sample(metrics, reloads, result="error") == 1)
    assert sample(metrics, last_ok) == 0
    assert injected_gpumem(client) == "3000", "the old policy still applies"
    metrics_text = client.get("/metrics").text
    assert 'vramguard_webhook_policy_reloads_total{result="error"} 1.0' in metrics_text

    replace_file(policy_path, POLICY_YAML.replace("gpumemMiB: 3000", "gpumemMiB: 4500"))
    eventually(lambda: sample(metrics, reloads, result="success") == 1)
    assert sample(metrics, last_ok) == 1
    assert injected_gpumem(client) == "4500", "the fixed policy applies"


def test_deleted_file_keeps_the_policy(
    client: TestClient, metrics: WebhookMetrics, policy_path: Path
) -> None:
    policy_path.unlink()
    reloads = "vramguard_webhook_policy_reloads_total"
    eventually(lambda: sample(metrics, reloads, result="error") == 1)
    assert injected_gpumem(client) == "3000"
    time.sleep(0.1)  # several polls of the missing file: still one failure
    assert sample(metrics, reloads, result="error") == 1


def test_edit_that_is_not_text_keeps_the_policy(
    client: TestClient, metrics: WebhookMetrics, policy_path: Path
) -> None:
    reloads = "vramguard_webhook_policy_reloads_total"
    policy_path.write_bytes(b"defaults: {gpumemMiB: 10}\n\xff\xfe\n")
    eventually(lambda: sample(metrics, reloads, result="error") == 1)
    assert sample(metrics, "vramguard_webhook_policy_last_reload_successful") == 0
    assert injected_gpumem(client) == "3000"
    time.sleep(0.1)
    assert sample(metrics, reloads, result="error") == 1, "counted once, not on every poll"
    replace_file(policy_path, POLICY_YAML.replace("gpumemMiB: 3000", "gpumemMiB: 2500"))
    eventually(lambda: injected_gpumem(client) == "2500")
    assert sample(metrics, "vramguard_webhook_policy_last_reload_successful") == 1
