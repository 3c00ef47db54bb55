"""Admission responses, built like controller-runtime's: allowed, denied, patched, errored,
and one function (`complete`) that turns any of them into the AdmissionReview sent back.

Two error channels: a policy denial or an unexpected error is an AdmissionReview (HTTP 200,
allowed false, the code inside, the uid kept); a request that is not a usable AdmissionReview
gets an HTTP 4xx whose body is a metav1.Status, which the API server puts in its error.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

from webhook.models import (
    ADMISSION_API_VERSION,
    ADMISSION_KIND,
    AdmissionResponse,
    AdmissionReview,
    Status,
)
from webhook.patching import PatchOperation

Outcome = Literal["patched", "allowed", "denied"]


@dataclass(frozen=True)
class Reply:
    """An admission answer before it is tied to a request."""

    allowed: bool
    status: Status | None = None
    patch: tuple[PatchOperation, ...] = ()
    warnings: tuple[str, ...] = ()
    audit_annotations: Mapping[str, str] = field(default_factory=dict)
    # What was set on the pod, for the request log only (never sent): field -> value.
    changes: Mapping[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> Outcome:
        if not self.allowed:
            return "denied"
        return "patched" if self.patch else "allowed"

    @property
    def message(self) -> str:
        """What the request log says about the reply: the status message, else the outcome."""
        if self.status is not None and self.status.message:
            return self.status.message
        return self.outcome


def allowed(
    message: str = "",
    warnings: Sequence[str] = (),
    audit_annotations: Mapping[str, str] | None = None,
    changes: Mapping[str, str] | None = None,
) -> Reply:
    return Reply(
        allowed=True,
        status=Status(code=HTTPStatus.OK.value, message=message or None),
        warnings=tuple(warnings),
        audit_annotations=dict(audit_annotations or {}),
        changes=dict(changes or {}),
    )


def denied(message: str, code: int = HTTPStatus.FORBIDDEN.value) -> Reply:
    return Reply(
        allowed=False,
        status=Status(code=code, reason=_reason(code), message=message),
    )


def patched(
    patch: Sequence[PatchOperation],
    warnings: Sequence[str] = (),
    audit_annotations: Mapping[str, str] | None = None,
    changes: Mapping[str, str] | None = None,
) -> Reply:
    return Reply(
        allowed=True,
        patch=tuple(patch),
        warnings=tuple(warnings),
        audit_annotations=dict(audit_annotations or {}),
        changes=dict(changes or {}),
    )


def errored(code: int, message: str) -> Reply:
    """Something went wrong deciding: not allowed, and the code says it was not the pod."""
    return Reply(allowed=False, status=Status(code=code, message=message))


def internal_error(error_id: str) -> Reply:
    """An unexpected failure, answered without its details: the reply reaches whoever created
    the pod (and anything that can reach the webhook), and an exception's text can carry the
    request's contents or the service's internals. The log line that records the exception
    carries the same `error_id`, so the message leads an operator to it."""
    code = HTTPStatus.INTERNAL_SERVER_ERROR.value
    message = f"vramguard: internal error (error id {error_id}); the webhook's log has the details"
    return Reply(allowed=False, status=Status(code=code, reason=_reason(code), message=message))


def complete(reply: Reply, uid: str) -> AdmissionReview:
    """The AdmissionReview answering request `uid`: the uid echoed, a status code always set,
    and a non-empty patch encoded as base64 JSON with patchType JSONPatch."""
    status = reply.status or Status()
    if status.code is None:
        status = status.model_copy(update={"code": HTTPStatus.OK.value})
    patch = None
    if reply.patch:
        document = json.dumps(list(reply.patch), separators=(",", ":"))
        patch = base64.b64encode(document.encode()).decode("ascii")
    response = AdmissionResponse(
        uid=uid,
        allowed=reply.allowed,
        status=status,
        patch=patch,
        patch_type="JSONPatch" if patch is not None else None,
        audit_annotations=dict(reply.audit_annotations) or None,
        warnings=reply.warnings or None,
    )
    return AdmissionReview(
        api_version=ADMISSION_API_VERSION, kind=ADMISSION_KIND, response=response
    )


def review_json(review: AdmissionReview) -> bytes:
    return review.model_dump_json(by_alias=True, exclude_none=True).encode()


def failure_status_json(code: int, message: str) -> bytes:
    """A metav1.Status body for an HTTP error, the shape the API server's client decodes."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _reason(code),
        "code": code,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _reason(code: int) -> str:
    return _STATUS_REASONS.get(code, "")


# metav1.StatusReason for the codes this webhook sends.
_STATUS_REASONS = {
    HTTPStatus.BAD_REQUEST.value: "BadRequest",
    HTTPStatus.FORBIDDEN.value: "Forbidden",
    HTTPStatus.METHOD_NOT_ALLOWED.value: "MethodNotAllowed",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value: "RequestEntityTooLarge",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE.value: "UnsupportedMediaType",
    HTTPStatus.INTERNAL_SERVER_ERROR.value: "InternalError",
}
