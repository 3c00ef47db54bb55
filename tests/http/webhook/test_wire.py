"""POST /mutate and the operational endpoints, over the wire (starlette TestClient)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.http.webhook.reviews import decoded_patch, gpu_pod, patched, review, web_pod
from webhook.app import FixedCluster
from webhook.metrics import WebhookMetrics
from webhook.settings import MAX_BODY_BYTES
from webhook.view import ClusterView

JSON_HEADERS = {"content-type": "application/json"}
ClientFactory = Callable[..., TestClient]


def post(client: TestClient, document: Any) -> dict[str, Any]:
    reply = client.post("/mutate", content=json.dumps(document), headers=JSON_HEADERS)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    body: dict[str, Any] = reply.json()
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    response: dict[str, Any] = body["response"]
    return response


def metric(metrics: WebhookMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_gpu_pod_is_patched(client: TestClient, metrics: WebhookMetrics) -> None:
    response = post(client, review(gpu_pod(), uid="uid-1"))
    assert response["uid"] == "uid-1"
    assert response["allowed"] is True
    assert sorted(decoded_patch(response), key=lambda op: op["path"]) == [
        {
            "op": "add",
            "path": "/spec/containers/0/resources/limits/vramguard.io~1gpumem",
            "value": "3000",
        },
        {
            "op": "add",
            "path": "/spec/containers/0/resources/requests/vramguard.io~1gpumem",
            "value": "3000",
        },
        {"op": "remove", "path": "/spec/preemptionPolicy"},
        {"op": "remove", "path": "/spec/priority"},
        {"op": "add", "path": "/spec/priorityClassName", "value": "tier-1-gpu"},
        {"op": "replace", "path": "/spec/schedulerName", "value": "vramguard-scheduler"},
    ]
    assert "vramguard: injected vramguard.io/gpumem=3000 (namespace immich)" in response["warnings"]
    assert response["auditAnnotations"] == {
        "gpumem": "3000",
        "priority-class": "tier-1-gpu",
        "scheduler-name": "vramguard-scheduler",
    }
    assert metric(metrics, "vramguard_webhook_requests_total", decision="patched") == 1


def test_patched_pod_is_not_patched_again(client: TestClient) -> None:
    first = post(client, review(gpu_pod()))
    again = post(client, review(patched(gpu_pod(), first)))
    assert again["allowed"] is True
    assert "patch" not in again
    assert "patchType" not in again


def test_declared_quantity_is_rewritten_in_mib(client: TestClient) -> None:
    response = post(client, review(gpu_pod(limits="5Gi", requests="5Gi")))
    resources = patched(gpu_pod(limits="5Gi", requests="5Gi"), response)["spec"]["containers"][0]
    assert resources["resources"]["limits"]["vramguard.io/gpumem"] == "5120"
    assert resources["resources"]["requests"]["vramguard.io/gpumem"] == "5120"


def test_denial_is_http_200_with_403_inside(client: TestClient, metrics: WebhookMetrics) -> None:
    response = post(client, review(gpu_pod(limits="12Gi", requests="12Gi"), uid="uid-2"))
    assert response["uid"] == "uid-2"
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert response["status"]["reason"] == "Forbidden"
    assert "12288 MiB, above the cap of 8192 MiB" in response["status"]["message"]
    assert "namespace immich" in response["status"]["message"]
    assert "patch" not in response
    assert metric(metrics, "vramguard_webhook_requests_total", decision="denied") == 1


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        pytest.param(review(web_pod()), "not a GPU pod", id="non-GPU pod"),
        pytest.param(
            review(gpu_pod(namespace="kube-system")),
            "namespace kube-system is excluded",
            id="excluded namespace",
        ),
        pytest.param(review(gpu_pod(), operation="UPDATE"), "not a Pod CREATE", id="UPDATE"),
        pytest.param(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                    "kind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                    "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                    "subResource": "scale",
                    "requestKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                    "requestResource": {
                        "group": "apps",
                        "version": "v1",
                        "resource": "deployments",
                    },
                    "requestSubResource": "scale",
                    "name": "my-deployment",
                    "namespace": "my-namespace",
                    "operation": "UPDATE",
                    "userInfo": {
                        "username": "admin",
                        "uid": "014fbff9a07c",
                        "groups": ["system:authenticated", "my-admin-group"],
                        "extra": {"some-key": ["some-value1", "some-value2"]},
                    },
                    "object": {"apiVersion": "autoscaling/v1", "kind": "Scale"},
                    "oldObject": {"apiVersion": "autoscaling/v1", "kind": "Scale"},
                    "options": {"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"},
                    "dryRun": False,
                },
            },
            "not a Pod CREATE",
            id="the Kubernetes docs' example (Scale UPDATE)",
        ),
    ],
)
def test_left_alone(client: TestClient, document: dict[str, Any], reason: str) -> None:
    response = post(client, document)
    assert response == {
        "uid": document["request"]["uid"],
        "allowed": True,
        "status": {"code": 200, "message": reason},
    }


def test_dry_run_gets_the_same_answer(client: TestClient) -> None:
    wet = post(client, review(gpu_pod()))
    dry = post(client, review(gpu_pod(), dry_run=True))
    assert dry == wet


def test_unknown_class_is_skipped_with_a_warning(make_client: ClientFactory) -> None:
    cluster = FixedCluster(view=ClusterView(priority_classes=frozenset({"other"})))
    response = post(make_client(cluster), review(gpu_pod()))
    assert response["allowed"] is True
    assert all(op["path"] != "/spec/priorityClassName" for op in decoded_patch(response))
    assert any("PriorityClass tier-1-gpu" in warning for warning in response["warnings"])


# --- bad input: an HTTP 4xx with a message, never a 500, never a patch ----------------------

VALID = json.dumps(review(gpu_pod())).encode()


def _chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


BAD_INPUT = [
    pytest.param(b"{not json", JSON_HEADERS, (400, "body is not valid JSON"), id="not JSON"),
    pytest.param(b"", JSON_HEADERS, (400, "body is empty"), id="empty body"),
    pytest.param(b"[]", JSON_HEADERS, (400, "must be a JSON object"), id="JSON array"),
    pytest.param(
        VALID.replace(b"admission.k8s.io/v1", b"admission.k8s.io/v1beta1"),
        JSON_HEADERS,
        (400, "apiVersion: must be 'admission.k8s.io/v1'"),
        id="wrong apiVersion",
    ),
    pytest.param(
        VALID.replace(b'"kind": "AdmissionReview"', b'"kind": "Pod"'),
        JSON_HEADERS,
        (400, "kind: must be 'AdmissionReview'"),
        id="wrong kind",
    ),
    pytest.param(
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
        JSON_HEADERS,
        (400, "AdmissionReview has no request"),
        id="no request",
    ),
    pytest.param(
        VALID.replace(b'"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", ', b""),
        JSON_HEADERS,
        (400, "request.uid: Field required"),
        id="no uid",
    ),
    pytest.param(
        VALID,
        {"content-type": "text/plain"},
        (415, "content type must be application/json"),
        id="wrong content type",
    ),
    pytest.param(VALID, {}, (415, "got 'none'"), id="no content type"),
    pytest.param(
        b"{" + b" " * MAX_BODY_BYTES + b"}",
        JSON_HEADERS,
        (413, f"over the {MAX_BODY_BYTES} byte limit"),
        id="body over the limit",
    ),
]


@pytest.mark.parametrize(("body", "headers", "expected"), BAD_INPUT)
def test_bad_input_is_a_4xx_with_a_message(
    client: TestClient,
    metrics: WebhookMetrics,
    body: bytes,
    headers: dict[str, str],
    expected: tuple[int, str],
) -> None:
    status, message = expected
    reply = client.post("/mutate", content=body, headers=headers)
    assert reply.status_code == status
    document = reply.json()
    assert document["kind"] == "Status"
    assert document["code"] == status
    assert message in document["message"]
    assert "patch" not in reply.text
    assert metric(metrics, "vramguard_webhook_requests_total", decision="invalid") == 1
    assert metric(metrics, "vramguard_webhook_errors_total", kind="invalid") == 1


def test_streamed_body_over_the_limit_without_content_length(client: TestClient) -> None:
    oversized = b"{" + b" " * MAX_BODY_BYTES + b"}"
    reply = client.post("/mutate", content=_chunks(oversized), headers=JSON_HEADERS)
    assert reply.status_code == 413
    assert f"over the {MAX_BODY_BYTES} byte limit" in reply.json()["message"]


def test_content_type_with_charset_is_json(client: TestClient) -> None:
    reply = client.post(
        "/mutate", content=VALID, headers={"content-type": "Application/JSON; charset=utf-8"}
    )
    assert reply.status_code == 200


def test_other_methods_and_paths(client: TestClient) -> None:
    assert client.get("/mutate").status_code == 405
    assert client.post("/validate", content=VALID, headers=JSON_HEADERS).status_code == 404


def test_unexpected_error_keeps_the_uid_and_its_details_in_the_log(
    client: TestClient,
    metrics: WebhookMetrics,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("secret-token-in-the-message")

    monkeypatch.setattr("webhook.app.decide", broken)
    caplog.set_level(logging.INFO, logger="webhook.app")
    response = post(client, review(gpu_pod(), uid="uid-3"))
    assert response["uid"] == "uid-3"
    assert response["allowed"] is False
    assert response["status"]["code"] == 500
    assert response["status"]["reason"] == "InternalError"
    message = response["status"]["message"]
    # The caller learns that it failed and under which id, never the exception.
    match = re.fullmatch(
        r"vramguard: internal error \(error id ([0-9a-f]{12})\); "
        r"the webhook's log has the details",
        message,
    )
    assert match is not None, message
    assert "secret-token" not in message
    assert "RuntimeError" not in message
    assert "patch" not in response
    # The log line with the traceback carries the same id, so an operator can find it.
    error_id = match.group(1)
    (failure,) = [r for r in caplog.records if r.exc_info is not None]
    assert error_id in failure.getMessage()
    assert failure.fields["error_id"] == error_id  # type: ignore[attr-defined]
    assert failure.fields["error"] == "RuntimeError: secret-token-in-the-message"  # type: ignore[attr-defined]
    assert failure.exc_info is not None
    assert isinstance(failure.exc_info[1], RuntimeError)
    (request_line,) = [r for r in caplog.records if r.getMessage() == "admission"]
    assert request_line.fields["error_id"] == error_id  # type: ignore[attr-defined]
    assert request_line.fields["message"] == message  # type: ignore[attr-defined]
    assert metric(metrics, "vramguard_webhook_errors_total", kind="internal") == 1
    assert metric(metrics, "vramguard_webhook_requests_total", decision="errored") == 1


def test_each_unexpected_error_gets_its_own_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("webhook.app.decide", broken)
    messages = {
        post(client, review(gpu_pod(), uid=f"uid-{i}"))["status"]["message"] for i in range(3)
    }
    assert len(messages) == 3


# --- logs, health, readiness, metrics ----------------------------------------------------------


def test_one_structured_log_line_per_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook.app")
    post(client, review(gpu_pod(), uid="uid-4", dry_run=True))
    records = [r for r in caplog.records if r.name == "webhook.app"]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["uid"] == "uid-4"
    assert fields["namespace"] == "immich"
    assert fields["name"] == "immich-ml-7d9c8b-"
    assert fields["operation"] == "CREATE"
    assert fields["decision"] == "patched"
    assert fields["dry_run"] is True
    assert fields["changes"] == {
        "gpumem": "3000",
        "priorityClassName": "tier-1-gpu",
        "schedulerName": "vramguard-scheduler",
    }
    assert fields["duration_ms"] >= 0


def test_healthz(client: TestClient) -> None:
    reply = client.get("/healthz")
    assert (reply.status_code, reply.text) == (200, "ok")


class UnsyncedCluster:
    view = ClusterView()
    synced = False
    started = stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def test_readyz_waits_for_the_cluster_watches(make_client: ClientFactory) -> None:
    cluster = UnsyncedCluster()
    client = make_client(cluster)
    assert cluster.started
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert "watches not synced" in reply.text
    cluster.synced = True
    assert client.get("/readyz").status_code == 200


def test_readyz_without_api_access(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200


def test_lifespan_stops_the_cluster_watches(make_client: ClientFactory) -> None:
    cluster = UnsyncedCluster()
    client = make_client(cluster)
    client.__exit__(None, None, None)
    assert cluster.stopped


def test_metrics(client: TestClient) -> None:
    post(client, review(gpu_pod()))
    post(client, review(web_pod()))
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    assert 'vramguard_webhook_requests_total{decision="patched"} 1.0' in text
    assert 'vramguard_webhook_requests_total{decision="allowed"} 1.0' in text
    assert "vramguard_webhook_request_duration_seconds_count 2.0" in text
    assert 'vramguard_webhook_request_duration_seconds_bucket{le="0.001"}' in text
    assert 'vramguard_webhook_policy_reloads_total{result="error"} 0.0' in text
    assert "vramguard_webhook_policy_last_reload_successful 1.0" in text
    assert "vramguard_webhook_cluster_synced 1.0" in text
    assert 'vramguard_webhook_errors_total{kind="internal"} 0.0' in text


def test_each_app_has_its_own_registry(make_client: ClientFactory) -> None:
    assert WebhookMetrics().registry is not WebhookMetrics().registry
    first = make_client()
    post(first, review(gpu_pod()))
    fresh = WebhookMetrics()
    assert (
        fresh.registry.get_sample_value("vramguard_webhook_requests_total", {"decision": "patched"})
        == 0
    )
