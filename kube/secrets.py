"""The webhook's self-managed TLS Secret and its MutatingWebhookConfiguration's caBundle.

Replicas coordinate through the API server alone, with no leader election: a create that
finds the Secret there already loses (AlreadyExists), an update or a patch carries the
resourceVersion it was computed from and loses to any write in between (Conflict); the loser
reads again and plans from what won. Objects travel as raw JSON dicts (``_preload_content``
off), so fields this code does not know survive a round trip.

Only the Secret and the webhook configuration named at construction are ever read or written
(the RBAC in manifests/base/rbac-webhook.yaml allows no other).
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from kube.client import read_json
from kube.errors import HTTP_CONFLICT, HTTP_NOT_FOUND, api_message, cause

RawObject = dict[str, Any]

# managedFields show which writes are the webhook's (kubectl's apply never takes them over).
FIELD_MANAGER = "vramguard-webhook"
API_TIMEOUT_SECONDS = 10.0
SECRET_TYPE = "kubernetes.io/tls"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


class TLSStoreError(Exception):
    """A read or write failed; the message says which, and why, for a person."""


class AlreadyExists(TLSStoreError):
    """The Secret was created by someone else first (another replica)."""


class Conflict(TLSStoreError):
    """The object changed since it was read: read it again."""


class KubernetesTLSStore:
    """The Secret and the webhook configuration over a CoreV1Api and an
    AdmissionregistrationV1Api."""

    def __init__(
        self,
        core: Any,
        admission: Any,
        *,
        namespace: str,
        secret: str,
        webhook_configuration: str,
        timeout_seconds: float = API_TIMEOUT_SECONDS,
    ) -> None:
        self._core = core
        self._admission = admission
        self.namespace = namespace
        self.secret = secret
        self.webhook_configuration = webhook_configuration
        self._timeout = timeout_seconds

    @property
    def secret_path(self) -> str:
        return f"Secret {self.namespace}/{self.secret}"

    @property
    def configuration_path(self) -> str:
        return f"MutatingWebhookConfiguration {self.webhook_configuration}"

    def read_secret(self) -> RawObject | None:
        """The Secret, or None when there is none."""
        return self._read(
            f"reading {self.secret_path}",
            self._core.read_namespaced_secret,
            self.secret,
            self.namespace,
        )

    def create_secret(self, body: RawObject) -> RawObject:
        return self._write(
            f"creating {self.secret_path}",
            self._core.create_namespaced_secret,
            self.namespace,
            body,
            on_conflict=AlreadyExists,
        )

    def replace_secret(self, body: RawObject) -> RawObject:
        """Replace the Secret; ``body`` carries the resourceVersion it was read at."""
        if not body.get("metadata", {}).get("resourceVersion"):
            raise ValueError("a replace without a resourceVersion would overwrite blindly")
        return self._write(
            f"updating {self.secret_path}",
            self._core.replace_namespaced_secret,
            self.secret,
            self.namespace,
            body,
            on_conflict=Conflict,
        )

    def read_webhook_configuration(self) -> RawObject | None:
        """The webhook configuration, or None when there is none."""
        return self._read(
            f"reading {self.configuration_path}",
            self._admission.read_mutating_webhook_configuration,
            self.webhook_configuration,
        )

    def patch_webhook_configuration(self, patch: RawObject) -> RawObject:
        """A strategic merge patch (ca_bundle_patch), refused with Conflict when the
        configuration changed since the resourceVersion the patch carries."""
        return self._write(
            f"patching {self.configuration_path}",
            self._admission.patch_mutating_webhook_configuration,
            self.webhook_configuration,
            patch,
            on_conflict=Conflict,
            content_type=STRATEGIC_MERGE,
        )

    def _read(self, what: str, function: Callable[..., Any], *args: Any) -> RawObject | None:
        try:
            response = function(*args, _preload_content=False, _request_timeout=self._timeout)
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                return None
            raise TLSStoreError(f"{what}: {err.status} {api_message(err)}") from err
        except Exception as err:  # urllib3 and socket errors: the API cannot be reached
            raise TLSStoreError(f"{what}: {self._unreachable(err)}") from err
        return self._answer(what, response)

    def _write(
        self,
        what: str,
        function: Callable[..., Any],
        *args: Any,
        on_conflict: type[TLSStoreError],
        content_type: str | None = None,
    ) -> RawObject:
        extra = {} if content_type is None else {"_content_type": content_type}
        try:
            response = function(
                *args,
                field_manager=FIELD_MANAGER,
                _preload_content=False,
                _request_timeout=self._timeout,
                **extra,
            )
        except ApiException as err:
            if err.status == HTTP_CONFLICT:
                raise on_conflict(f"{what}: {api_message(err)}") from err
            raise TLSStoreError(f"{what}: {err.status} {api_message(err)}") from err
        except Exception as err:  # urllib3 and socket errors
            raise TLSStoreError(f"{what}: {self._unreachable(err)}") from err
        return self._answer(what, response)

    def _answer(self, what: str, response: Any) -> RawObject:
        try:
            return dict(read_json(response))
        except ValueError as err:
            raise TLSStoreError(f"{what}: unreadable answer: {err}") from err

    def _unreachable(self, err: Exception) -> str:
        configuration = getattr(getattr(self._core, "api_client", None), "configuration", None)
        where = f" at {configuration.host}" if configuration is not None else ""
        return f"cannot reach the API server{where}: {cause(err)}"


# --- the objects' shapes (pure) --------------------------------------------------------------


def secret_data(secret: Mapping[str, Any]) -> tuple[dict[str, bytes], list[str]]:
    """The Secret's data, decoded, and the keys that were not base64 (left out)."""
    decoded: dict[str, bytes] = {}
    bad: list[str] = []
    data = secret.get("data")
    for key, value in (data if isinstance(data, Mapping) else {}).items():
        try:
            decoded[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            bad.append(str(key))
    return decoded, bad


def object_annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    metadata = obj.get("metadata")
    found = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    if not isinstance(found, Mapping):
        return {}
    return {str(k): str(v) for k, v in found.items()}


def resource_version(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    return str(metadata.get("resourceVersion") or "") if isinstance(metadata, Mapping) else ""


def secret_body(
    *,
    namespace: str,
    name: str,
    data: Mapping[str, bytes | None],
    annotations: Mapping[str, str | None],
    labels: Mapping[str, str],
    existing: Mapping[str, Any] | None = None,
) -> RawObject:
    """The Secret to create, or ``existing`` with these data keys and annotations set (None
    removes one) and everything else kept: other keys, labels, annotations and the
    resourceVersion that makes the replace conditional."""
    body: RawObject = (
        copy.deepcopy(dict(existing))
        if existing is not None
        else {"apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE}
    )
    body.pop("status", None)
    metadata = body.setdefault("metadata", {})
    metadata.update(name=name, namespace=namespace)
    metadata.pop("managedFields", None)
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    merged = {**(metadata.get("annotations") or {}), **annotations}
    metadata["annotations"] = {k: v for k, v in merged.items() if v is not None}
    current = dict(body.get("data") or {})
    for key, value in data.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = base64.b64encode(value).decode()
    body["data"] = current
    return body


def ca_bundles(configuration: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """Each webhook's name and decoded caBundle (empty when it has none or it is not base64)."""
    found: list[tuple[str, bytes]] = []
    for webhook in configuration.get("webhooks") or []:
        if not isinstance(webhook, Mapping):
            continue
        client = webhook.get("clientConfig")
        raw = client.get("caBundle") if isinstance(client, Mapping) else None
        try:
            bundle = base64.b64decode(str(raw or ""), validate=True)
        except (binascii.Error, ValueError):
            bundle = b""
        found.append((str(webhook.get("name") or ""), bundle))
    return found


def ca_bundle_patch(
    configuration: Mapping[str, Any], bundle: bytes, annotations: Mapping[str, str]
) -> RawObject:
    """A strategic merge patch setting every webhook's clientConfig.caBundle (the list merges
    by webhook name) and the annotations, conditional on the resourceVersion read."""
    version = resource_version(configuration)
    if not version:
        raise ValueError("the webhook configuration has no resourceVersion")
    encoded = base64.b64encode(bundle).decode()
    return {
        "metadata": {"resourceVersion": version, "annotations": dict(annotations)},
        "webhooks": [
            {"name": name, "clientConfig": {"caBundle": encoded}}
            for name, _ in ca_bundles(configuration)
            if name
        ],
    }


def tls_store(
    api: Any, *, namespace: str, secret: str, webhook_configuration: str
) -> KubernetesTLSStore:
    """The store over an ApiClient (kube.client.api_client)."""
    from kubernetes import client  # noqa: PLC0415  (the API classes are large)

    return KubernetesTLSStore(
        client.CoreV1Api(api),
        client.AdmissionregistrationV1Api(api),
        namespace=namespace,
        secret=secret,
        webhook_configuration=webhook_configuration,
    )
