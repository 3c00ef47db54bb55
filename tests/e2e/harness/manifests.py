"""The repository's manifests as kustomize builds them, and raw API calls to apply them:
server-side apply (dry run or real) and delete, any status returned rather than raised, with
the answer's warnings (Pod Security)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

K8sObject = dict[str, Any]
FIELD_MANAGER = "vramguard-e2e"
HTTP_OK = (200, 201)


def kustomize_build(
    kustomize: Path, directory: Path, *, load_restrictor_none: bool = False
) -> list[K8sObject]:
    """`kustomize build` of a directory, parsed; kustomize's own message when it fails."""
    args = [str(kustomize), "build"]
    if load_restrictor_none:
        args += ["--load-restrictor", "LoadRestrictionsNone"]
    result = subprocess.run(
        [*args, str(directory)], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize build {directory}:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@dataclass(frozen=True)
class Answer:
    status: int
    body: Mapping[str, Any]
    warnings: list[str]

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.body)


def request(
    api: Any,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Any = None,
    content_type: str | None = None,
) -> Answer:
    """One API call through an ApiClient, any status returned (not raised)."""
    headers = {"Accept": "application/json"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    serialized = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized, _request_timeout=30)
    data = response.read()
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = {"message": data.decode(errors="replace")}
    warnings = list(response.headers.getlist("Warning")) if response.headers else []
    return Answer(response.status, parsed if isinstance(parsed, dict) else {}, warnings)


@dataclass(frozen=True)
class Served:
    plural: str
    namespaced: bool


class Discovery:
    """Which kinds the API server serves, one discovery call per group version."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self._versions: dict[str, dict[str, Served]] = {}

    def resource(self, api_version: str, kind: str) -> Served | None:
        if api_version not in self._versions:
            answer = request(self._api, "GET", self.prefix(api_version))
            kinds: dict[str, Served] = {}
            if answer.status == 200:
                for item in answer.body.get("resources", []):
                    if "/" not in item["name"]:  # not a subresource
                        kinds[item["kind"]] = Served(item["name"], item["namespaced"])
            else:
                assert answer.status == 404, f"discovery of {api_version}: {answer.message}"
            self._versions[api_version] = kinds
        return self._versions[api_version].get(kind)

    @staticmethod
    def prefix(api_version: str) -> str:
        return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def object_path(obj: K8sObject, served: Served) -> str:
    metadata = obj["metadata"]
    scope = f"/namespaces/{metadata['namespace']}" if served.namespaced else ""
    return f"{Discovery.prefix(obj['apiVersion'])}{scope}/{served.plural}/{metadata['name']}"


def apply(api: Any, obj: K8sObject, served: Served, *, dry_run: bool = True) -> Answer:
    """Server-side apply, forcing conflicts: what `kubectl apply --server-side
    --force-conflicts` stores (nothing, with ``dry_run``), strictly validated."""
    query = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
    if dry_run:
        query["dryRun"] = "All"
    return request(
        api,
        "PATCH",
        object_path(obj, served),
        query=query,
        body=obj,
        content_type="application/apply-patch+yaml",
    )


def exists(api: Any, obj: K8sObject, served: Served) -> bool:
    return request(api, "GET", object_path(obj, served)).status == 200


def delete(api: Any, obj: K8sObject, served: Served) -> Answer:
    return request(api, "DELETE", object_path(obj, served))


def identity(obj: K8sObject) -> str:
    namespace = obj["metadata"].get("namespace")
    where = f"{namespace}/" if namespace else ""
    return f"{obj['kind']} {where}{obj['metadata']['name']} ({obj['apiVersion']})"
