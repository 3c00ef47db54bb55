"""A fake of the CoreV1Api and AdmissionregistrationV1Api calls kube.secrets makes, over
objects in memory with the API server's rules for them: create refuses an existing name (409),
replace and patch refuse a stale resourceVersion (409), every write bumps the version, and a
strategic merge patch merges the webhooks list by name."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from kube.secrets import STRATEGIC_MERGE
from tests.unit.kube.fakes import FakeResponse, api_error

RawObject = dict[str, Any]
Call = tuple[str, tuple[Any, ...], dict[str, Any]]


class FakeTLSAPI:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], RawObject] = {}
        self.configurations: dict[str, RawObject] = {}
        self.calls: list[Call] = []
        # Raised by every call while set (the API is down, or refuses).
        self.failure: Exception | None = None
        # Raised by the call of that name, once each, before anything else happens.
        self.fail_once: dict[str, Exception] = {}
        # Runs before each call (a test's way to interleave another replica's writes).
        self.before: Callable[[str], None] | None = None
        self._version = 100

    # -- what tests set up and look at ----------------------------------------------------

    def add_configuration(self, name: str = "vramguard", webhooks: int = 1) -> RawObject:
        configuration: RawObject = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": f"pods-{i}.vramguard.io",
                    "clientConfig": {"service": {"namespace": "vramguard", "name": "x"}},
                }
                for i in range(webhooks)
            ],
        }
        self._stamp(configuration)
        self.configurations[name] = configuration
        return configuration

    def secret(
        self, namespace: str = "vramguard", name: str = "vramguard-webhook-tls"
    ) -> RawObject:
        return self.secrets[(namespace, name)]

    def writes(self) -> list[str]:
        return [name for name, _, _ in self.calls if not name.startswith("read")]

    # -- CoreV1Api ------------------------------------------------------------------------

    def read_namespaced_secret(self, name: str, namespace: str, **kwargs: Any) -> FakeResponse:
        self._call("read_namespaced_secret", (name, namespace), kwargs)
        return self._answer(self._get(self.secrets, (namespace, name), "secrets", name))

    def create_namespaced_secret(
        self, namespace: str, body: RawObject, **kwargs: Any
    ) -> FakeResponse:
        self._call("create_namespaced_secret", (namespace, body), kwargs, write=True)
        name = body["metadata"]["name"]
        if (namespace, name) in self.secrets:
            raise api_error(409, "Conflict", f'secrets "{name}" already exists')
        stored = copy.deepcopy(body)
        self._stamp(stored)
        self.secrets[(namespace, name)] = stored
        return self._answer(stored)

    def replace_namespaced_secret(
        self, name: str, namespace: str, body: RawObject, **kwargs: Any
    ) -> FakeResponse:
        self._call("replace_namespaced_secret", (name, namespace, body), kwargs, write=True)
        current = self._get(self.secrets, (namespace, name), "secrets", name)
        self._check_version(body, current, "secrets", name)
        stored = copy.deepcopy(body)
        self._stamp(stored)
        self.secrets[(namespace, name)] = stored
        return self._answer(stored)

    # -- AdmissionregistrationV1Api -------------------------------------------------------

    def read_mutating_webhook_configuration(self, name: str, **kwargs: Any) -> FakeResponse:
        self._call("read_mutating_webhook_configuration", (name,), kwargs)
        return self._answer(
            self._get(self.configurations, name, "mutatingwebhookconfigurations", name)
        )

    def patch_mutating_webhook_configuration(
        self, name: str, body: RawObject, **kwargs: Any
    ) -> FakeResponse:
        self._call("patch_mutating_webhook_configuration", (name, body), kwargs, write=True)
        assert kwargs["_content_type"] == STRATEGIC_MERGE
        current = self._get(self.configurations, name, "mutatingwebhookconfigurations", name)
        if "resourceVersion" in body.get("metadata", {}):
            self._check_version(body, current, "mutatingwebhookconfigurations", name)
        merged = copy.deepcopy(current)
        annotations = merged["metadata"].setdefault("annotations", {})
        annotations.update(body.get("metadata", {}).get("annotations", {}))
        by_name = {webhook["name"]: webhook for webhook in merged["webhooks"]}
        for change in body.get("webhooks", []):
            webhook = by_name.get(change["name"])
            if webhook is None:  # the merge adds it; the code under test never should
                merged["webhooks"].append(copy.deepcopy(change))
                continue
            webhook["clientConfig"].update(change.get("clientConfig", {}))
        self._stamp(merged)
        self.configurations[name] = merged
        return self._answer(merged)

    # -- internals ------------------------------------------------------------------------

    def _call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, write: bool = False
    ) -> None:
        self.calls.append((name, args, kwargs))
        assert kwargs["_preload_content"] is False
        assert kwargs["_request_timeout"]
        if write:
            assert kwargs["field_manager"] == "vramguard-webhook"
        if self.before is not None:
            self.before(name)
        if name in self.fail_once:
            raise self.fail_once.pop(name)
        if self.failure is not None:
            raise self.failure

    def _get(self, objects: dict[Any, RawObject], key: Any, kind: str, name: str) -> RawObject:
        if key not in objects:
            raise api_error(404, "Not Found", f'{kind} "{name}" not found')
        return objects[key]

    def _check_version(self, body: RawObject, current: RawObject, kind: str, name: str) -> None:
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise api_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )

    def _stamp(self, obj: RawObject) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def _answer(self, obj: RawObject) -> FakeResponse:
        return FakeResponse(json.dumps(obj).encode())
