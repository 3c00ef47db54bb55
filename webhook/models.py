"""AdmissionReview admission.k8s.io/v1, parsed once at the HTTP edge.

Field names follow the API (camelCase aliases). `request.object` and `request.oldObject` stay
raw dicts: the patch is a diff of exactly what the API server sent, so fields this code does
not model (or that a newer Kubernetes adds) survive untouched. Unknown review fields are
ignored for the same reason.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

ADMISSION_API_VERSION = "admission.k8s.io/v1"
ADMISSION_KIND = "AdmissionReview"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class GroupVersionKind(_Model):
    group: str = ""
    version: str = ""
    kind: str


class GroupVersionResource(_Model):
    group: str = ""
    version: str = ""
    resource: str


class UserInfo(_Model):
    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = {}


class AdmissionRequest(_Model):
    """What the API server asks about one operation. uid, kind and operation are always sent;
    the rest is optional here so that a request missing them is answered, not refused."""

    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    resource: GroupVersionResource | None = None
    sub_resource: str = ""
    request_kind: GroupVersionKind | None = None
    request_resource: GroupVersionResource | None = None
    request_sub_resource: str = ""
    name: str = ""
    namespace: str = ""
    # A str, not an enum: an operation added by a later Kubernetes is simply not mutated.
    operation: str
    user_info: UserInfo = UserInfo()
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    dry_run: bool | None = None
    options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _writes_carry_the_object(self) -> AdmissionRequest:
        if self.operation in ("CREATE", "UPDATE") and self.object is None:
            raise ValueError(f"a {self.operation} request must carry request.object")
        return self

    @property
    def is_pod_create(self) -> bool:
        """A Pod being created (not a pods/* subresource such as binding or eviction)."""
        return (
            self.operation == "CREATE"
            and self.kind.group == ""
            and self.kind.kind == "Pod"
            and not self.sub_resource
        )


class Status(_Model):
    """The metav1.Status subset an admission response carries."""

    code: int | None = None
    message: str | None = None
    reason: str | None = None


class AdmissionResponse(_Model):
    uid: str
    allowed: bool
    status: Status | None = None
    patch: str | None = None  # base64 of the JSONPatch document
    patch_type: Literal["JSONPatch"] | None = None
    audit_annotations: dict[str, str] | None = None
    warnings: tuple[str, ...] | None = None


class AdmissionReview(_Model):
    api_version: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest | None = None
    response: AdmissionResponse | None = None


class InvalidReview(ValueError):
    """A body that is not a usable AdmissionReview; the message says what is wrong."""


def parse_review(body: bytes) -> AdmissionRequest:
    """Parse a request body into the AdmissionRequest it carries, or raise InvalidReview."""
    try:
        review = AdmissionReview.model_validate_json(body)
    except ValidationError as err:
        raise InvalidReview(_describe(err)) from None
    if review.request is None:
        raise InvalidReview("AdmissionReview has no request")
    return review.request


def _describe(err: ValidationError) -> str:
    problems = []
    for item in err.errors(include_url=False):
        if item["type"] == "json_invalid":
            return f"body is not valid JSON: {item['msg'].removeprefix('Invalid JSON: ')}"
        if item["type"] == "model_type" and not item["loc"]:
            return "body must be a JSON object (an AdmissionReview)"
        where = ".".join(str(part) for part in item["loc"])
        problems.append(f"{where}: {_message(item)}")
    return "invalid AdmissionReview: " + "; ".join(problems[:5])


def _message(item: Any) -> str:
    if item["type"] == "literal_error":
        return f"must be {item['ctx']['expected']}, got {_short(item['input'])}"
    return str(item["msg"])


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
