"""The app's body limits: 413 before reading it all (declared or streamed), the connection
closed after it, and counted; the default limit follows the memory limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gpumem.policy_file import PolicyFile
from tests.http.webhook.reviews import POLICY_YAML
from webhook.app import Dependencies, create_app
from webhook.metrics import WebhookMetrics
from webhook.settings import Settings

JSON = {"content-type": "application/json"}
LIMIT = 100_000


@pytest.fixture
def metrics() -> WebhookMetrics:
    return WebhookMetrics()


@pytest.fixture
def client(tmp_path: Path, metrics: WebhookMetrics) -> Iterator[TestClient]:
    (tmp_path / "policy.yaml").write_text(POLICY_YAML)
    settings = Settings(
        policy=tmp_path / "policy.yaml",
        tls_cert=tmp_path / "tls.crt",
        tls_key=tmp_path / "tls.key",
        max_body_bytes=LIMIT,
    )
    deps = Dependencies(policy_file=PolicyFile(settings.policy), metrics=metrics)
    with TestClient(create_app(settings, deps)) as client:
        yield client


def oversized(metrics: WebhookMetrics, detected: str) -> float:
    value = metrics.registry.get_sample_value(
        "vramguard_webhook_oversized_bodies_total", {"detected": detected}
    )
    assert value is not None
    return value


def chunks(body: bytes, size: int = 10_000) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_declared_oversized_body_is_413_and_closes(
    client: TestClient, metrics: WebhookMetrics
) -> None:
    reply = client.post("/mutate", content=b"[" + b"{}," * LIMIT + b"{}]", headers=JSON)
    assert reply.status_code == 413
    assert f"over the {LIMIT} byte limit" in reply.json()["message"]
    assert reply.headers["connection"] == "close"
    assert oversized(metrics, "content-length") == 1
    assert oversized(metrics, "streamed") == 0


def test_streamed_oversized_body_is_cut_off_at_the_limit(
    client: TestClient, metrics: WebhookMetrics
) -> None:
    reply = client.post("/mutate", content=chunks(b"{" + b" " * 2 * LIMIT + b"}"), headers=JSON)
    assert reply.status_code == 413
    assert reply.headers["connection"] == "close"
    assert oversized(metrics, "streamed") == 1


def test_a_body_at_the_limit_is_read(client: TestClient) -> None:
    reply = client.post("/mutate", content=b"{" + b" " * (LIMIT - 2) + b"}", headers=JSON)
    assert reply.status_code == 400  # read and parsed: not an AdmissionReview
    assert "connection" not in reply.headers


def test_a_content_length_of_thousands_of_digits_is_a_413(
    client: TestClient, metrics: WebhookMetrics
) -> None:
    """int() refuses more than 4300 digits: the length is compared first, so such a header is
    a 413 like any other oversized declaration, not a 500."""
    headers = {**JSON, "content-length": "9" * 5000}
    reply = client.post("/mutate", content=b"{}", headers=headers)
    assert reply.status_code == 413, reply.text
    assert oversized(metrics, "content-length") == 1
