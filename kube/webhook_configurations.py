"""Deleting vramguard's MutatingWebhookConfiguration: the first step of an uninstall.

The configuration fails closed (failurePolicy Fail), so once the webhook's Service or pods are
gone every GPU pod create is refused until the configuration is gone too. Deleting it first
lets GPU pods be created (unmutated) while the rest is removed.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from kube.client import ApiClient, release, written_as
from kube.errors import WriteError

HTTP_NOT_FOUND = 404


class _Absent(Exception):
    """The configuration does not exist (any more)."""


def delete_mutating_webhook_configuration(
    api: ApiClient, name: str, *, timeout_seconds: float = 30.0
) -> bool:
    """Delete the configuration `name`: True when this call deleted it, False when there was
    none (deleted before: the step is done). Anything else raises WriteError saying why."""
    admission: Any = client.AdmissionregistrationV1Api(api)
    try:
        with written_as(
            WriteError, f"deleting MutatingWebhookConfiguration {name}", {HTTP_NOT_FOUND: _Absent()}
        ):
            response = admission.delete_mutating_webhook_configuration(
                name, _preload_content=False, _request_timeout=timeout_seconds
            )
    except _Absent:
        return False
    release(response)
    return True
