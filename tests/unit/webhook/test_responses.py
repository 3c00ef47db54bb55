"""Responses: the helpers and `complete`, which ties a reply to its request."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from webhook import responses

PATCH = ({"op": "add", "path": "/spec/a~1b", "value": "1"},)


def completed(reply: responses.Reply) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(responses.review_json(responses.complete(reply, "u-9")))
    assert document["apiVersion"] == "admission.k8s.io/v1"
    assert document["kind"] == "AdmissionReview"
    response: dict[str, Any] = document["response"]
    return response


CASES = [
    pytest.param(
        responses.allowed(),
        {"uid": "u-9", "allowed": True, "status": {"code": 200}},
        id="allowed",
    ),
    pytest.param(
        responses.denied("too big"),
        {
            "uid": "u-9",
            "allowed": False,
            "status": {"code": 403, "reason": "Forbidden", "message": "too big"},
        },
        id="denied",
    ),
    pytest.param(
        responses.errored(500, "boom"),
        {"uid": "u-9", "allowed": False, "status": {"code": 500, "message": "boom"}},
        id="errored keeps the uid, allowed false, code inside",
    ),
    pytest.param(
        responses.patched(PATCH, ["w"], {"gpumem": "1"}),
        {
            "uid": "u-9",
            "allowed": True,
            "status": {"code": 200},
            "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(list(PATCH)).encode()).decode(),
            "warnings": ["w"],
            "auditAnnotations": {"gpumem": "1"},
        },
        id="patched",
    ),
    pytest.param(
        responses.patched(()),
        {"uid": "u-9", "allowed": True, "status": {"code": 200}},
        id="an empty patch is no patch",
    ),
]


@pytest.mark.parametrize(("reply", "expected"), CASES)
def test_complete(reply: responses.Reply, expected: dict[str, Any]) -> None:
    response = completed(reply)
    if "patch" in expected:
        assert json.loads(base64.b64decode(response["patch"])) == list(PATCH)
        expected = {**expected, "patch": response["patch"]}
    assert response == expected


def test_decision_replies() -> None:
    # decide builds its reply with these helpers (there is no separate Decision to translate).
    denial = responses.denied("no")
    assert completed(denial)["status"] == {"code": 403, "reason": "Forbidden", "message": "no"}
    unchanged = responses.allowed("not a GPU pod")
    assert completed(unchanged) == {
        "uid": "u-9",
        "allowed": True,
        "status": {"code": 200, "message": "not a GPU pod"},
    }
    change = responses.patched(PATCH, ("w",))
    assert completed(change)["patchType"] == "JSONPatch"


def test_failure_status_is_a_kubernetes_status() -> None:
    status = json.loads(responses.failure_status_json(415, "wrong content type"))
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "wrong content type",
        "reason": "UnsupportedMediaType",
        "code": 415,
    }


def test_internal_error_names_its_id_and_nothing_else() -> None:
    response = completed(responses.internal_error("0123456789ab"))
    assert response == {
        "uid": "u-9",
        "allowed": False,
        "status": {
            "code": 500,
            "reason": "InternalError",
            "message": "vramguard: internal error (error id 0123456789ab); "
            "the webhook's log has the details",
        },
    }
