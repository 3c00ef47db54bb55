"""The advertiser's node client (ops.advertiser.NodeClient): GPU nodes read as raw JSON,
status patched through the status subresource with a JSON patch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from gpumem.nodes import GFD_MEMORY_LABEL
from kube.client import read_json, release
from kube.errors import HTTP_NOT_FOUND, NodeAPIError, api_message, cause

# The field manager of the advertiser's status patches (managedFields show who set gpumem).
ADVERTISE_FIELD_MANAGER = "vramguard-advertise"
RawObject = dict[str, Any]


class KubernetesNodes:
    """ops.advertiser.NodeClient over a CoreV1Api. Every failure becomes a NodeAPIError
    whose message a person can act on (no urllib3 object reprs)."""

    def __init__(self, core: Any, timeout_seconds: float = 30.0) -> None:
        self._core = core
        self._timeout = timeout_seconds

    def list_gpu_nodes(self) -> list[RawObject]:
        items: list[RawObject] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                # Existence selector: only nodes GPU Feature Discovery labelled; on a large
                # cluster the CPU nodes are never transferred.
                "label_selector": GFD_MEMORY_LABEL,
                "limit": 500,
                "_preload_content": False,
                "_request_timeout": self._timeout,
            }
            if token:
                kwargs["_continue"] = token
            page = self._call("listing nodes", self._core.list_node, **kwargs)
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def read_node(self, name: str) -> RawObject | None:
        try:
            return dict(
                self._call(
                    f"reading node {name}",
                    self._core.read_node,
                    name,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
            )
        except _NotFound:
            return None

    def patch_status(self, name: str, patch: Sequence[Mapping[str, Any]]) -> None:
        response = self._call_raw(
            f"patching node {name} status",
            self._core.patch_node_status,
            name,
            [dict(op) for op in patch],
            field_manager=ADVERTISE_FIELD_MANAGER,
            _content_type="application/json-patch+json",
            _preload_content=False,
            _request_timeout=self._timeout,
        )
        release(response)

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        response = self._call_raw(what, function, *args, **kwargs)
        try:
            return read_json(response)
        except ValueError as err:
            raise NodeAPIError(f"{what}: unreadable answer: {err}") from err

    def _call_raw(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ApiException as err:
            if err.status == HTTP_NOT_FOUND:
                raise _NotFound(what) from err
            raise NodeAPIError(f"{what}: {err.status} {api_message(err)}") from err
        except Exception as err:  # urllib3 and socket errors: the API cannot be reached
            host = getattr(getattr(self._core, "api_client", None), "configuration", None)
            where = f" at {host.host}" if host is not None else ""
            raise NodeAPIError(f"{what}: cannot reach the API server{where}: {cause(err)}") from err


class _NotFound(Exception):
    pass
