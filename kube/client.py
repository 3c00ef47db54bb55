"""The one client factory: credentials from a kubeconfig file, else the in-cluster service
account, else (as the caller says) the default kubeconfig or no API access at all.

Each client gets a Configuration of its own: load_kube_config without one would change the
global default that other code in the process might use.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, overload

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from kube.errors import WriteError, api_message, cause

ApiClient = client.ApiClient


class InClusterUnusable(Exception):
    """In a cluster (KUBERNETES_SERVICE_HOST is set) but the service account cannot be read."""


@overload
def api_client(
    kubeconfig: str | Path | None,
    *,
    default_kubeconfig: Literal[True] = True,
    pool_size: int | None = None,
    retries: int | None = None,
) -> ApiClient: ...


@overload
def api_client(
    kubeconfig: str | Path | None,
    *,
    default_kubeconfig: bool,
    pool_size: int | None = None,
    retries: int | None = None,
) -> ApiClient | None: ...


def api_client(
    kubeconfig: str | Path | None,
    *,
    default_kubeconfig: bool = True,
    pool_size: int | None = None,
    retries: int | None = None,
) -> ApiClient | None:
    """A client from the kubeconfig file, else from the in-cluster service account, else from
    the default kubeconfig (~/.kube/config) or, without `default_kubeconfig`, None: no API
    access. A broken kubeconfig raises what the kubernetes client raises; without
    `default_kubeconfig` an unusable service account raises InClusterUnusable. `pool_size`
    and `retries` (urllib3's) are the client's defaults unless given."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except ConfigException as err:
            if default_kubeconfig:
                raise
            raise InClusterUnusable(str(err)) from err
    elif default_kubeconfig:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        return None
    if pool_size is not None:
        configuration.connection_pool_maxsize = pool_size
    if retries is not None:
        configuration.retries = retries
    return client.ApiClient(configuration)


def core_api(kubeconfig: str | None, pool_size: int = 32) -> Any:
    """The CoreV1Api of the extender and the operator commands: the default kubeconfig as the
    last resort, and no urllib3 retries: the watches back off and relist themselves, and a
    Binding POST retried after a lost answer would report 409 for a bind that succeeded. The
    extender's pool: two long-lived watch connections plus concurrent binds."""
    return core_v1(api_client(kubeconfig, pool_size=pool_size, retries=0))


def core_v1(api: ApiClient) -> Any:
    return client.CoreV1Api(api)


def scheduling_v1(api: ApiClient) -> Any:
    return client.SchedulingV1Api(api)


def read_json(response: Any) -> Mapping[str, Any]:
    """The JSON object of a raw (`_preload_content=False`) answer; the connection goes back
    to the pool."""
    try:
        body = json.loads(response.data)
    finally:
        release(response)
    if not isinstance(body, dict):
        raise ValueError(f"list answer is not an object: {str(body)[:200]}")
    return body


def release(response: Any) -> None:
    """Give a raw answer's connection back to the pool (a fake answer may have none)."""
    release_conn = getattr(response, "release_conn", None)
    if release_conn is not None:
        release_conn()


@contextlib.contextmanager
def written_as(
    error: type[WriteError], what: str, known: Mapping[int, Exception] | None = None
) -> Iterator[None]:
    """A write's failures as `error`: "what: 403 <the API's message>", or "what: <cause>"
    when the API was not reached; a status in `known` raises its own exception instead."""
    try:
        yield
    except ApiException as err:
        if known and err.status in known:
            raise known[err.status] from err
        raise error(f"{what}: {err.status} {api_message(err)}") from err
    except Exception as err:  # urllib3 and socket errors
        raise error(f"{what}: {cause(err)}") from err


__all__ = [
    "ApiClient",
    "ApiException",  # what an API call raises for an answer that is not 2xx
    "InClusterUnusable",
    "api_client",
    "core_api",
    "core_v1",
    "read_json",
    "release",
    "scheduling_v1",
    "written_as",
]
