"""parse_review: a body becomes an AdmissionRequest, or an InvalidReview that says why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhook.models import InvalidReview, parse_review


def review(**request_changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "immich",
        "operation": "CREATE",
        "userInfo": {"username": "alice", "extra": {"scopes": ["a"]}},
        "object": {"kind": "Pod", "spec": {"unknownField": [1]}},
        "dryRun": True,
    }
    request.update(request_changes)
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {k: v for k, v in request.items() if v is not None},
    }


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_a_valid_review() -> None:
    request = parse_review(body(review()))
    assert request.uid == "u-1"
    assert request.kind.kind == "Pod"
    assert request.operation == "CREATE"
    assert request.dry_run is True
    assert request.user_info.extra == {"scopes": ("a",)}
    assert request.object == {"kind": "Pod", "spec": {"unknownField": [1]}}
    assert request.is_pod_create


def test_unknown_review_fields_are_ignored() -> None:
    document = review(someFutureField={"x": 1})
    document["extraTopLevel"] = True
    assert parse_review(body(document)).uid == "u-1"


INVALID = [
    pytest.param(b"not json", "body is not valid JSON", id="not JSON"),
    pytest.param(b"", "body is not valid JSON", id="empty"),
    pytest.param(b"[1, 2]", "must be a JSON object", id="an array"),
    pytest.param(b'"text"', "must be a JSON object", id="a string"),
    pytest.param(
        body({**review(), "apiVersion": "admission.k8s.io/v1beta1"}),
        "apiVersion: must be 'admission.k8s.io/v1', got 'admission.k8s.io/v1beta1'",
        id="wrong apiVersion",
    ),
    pytest.param(
        body({**review(), "kind": "Pod"}),
        "kind: must be 'AdmissionReview', got 'Pod'",
        id="wrong kind",
    ),
    pytest.param(
        body({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
        "AdmissionReview has no request",
        id="no request",
    ),
    pytest.param(body(review(uid=None)), "request.uid: Field required", id="no uid"),
    pytest.param(
        body(review(uid="")), "request.uid: String should have at least 1", id="empty uid"
    ),
    pytest.param(
        body(review(uid=7)), "request.uid: Input should be a valid string", id="uid a number"
    ),
    pytest.param(body(review(kind=None)), "request.kind: Field required", id="no kind"),
    pytest.param(body(review(operation=None)), "request.operation: Field required", id="no op"),
    pytest.param(
        body(review(object=[1])),
        "request.object: Input should be an object",
        id="object not an object",
    ),
    pytest.param(
        body(review(object=None)),
        "a CREATE request must carry request.object",
        id="CREATE without object",
    ),
    pytest.param(
        body(review(dryRun="maybe")),
        "request.dryRun: Input should be a valid boolean",
        id="dryRun not a boolean",
    ),
]


@pytest.mark.parametrize(("raw", "message"), INVALID)
def test_invalid_reviews_say_why(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidReview) as caught:
        parse_review(raw)
    assert message in str(caught.value)


def test_delete_needs_no_object() -> None:
    request = parse_review(body(review(operation="DELETE", object=None, oldObject={"a": 1})))
    assert request.object is None
    assert not request.is_pod_create
