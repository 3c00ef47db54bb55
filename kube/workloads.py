"""The controllers that own pods, listed as raw JSON for `vramguard recommend`: ReplicaSets,
Deployments, StatefulSets and DaemonSets (apps/v1), Jobs and CronJobs (batch/v1), every
namespace, page by page. Which pod belongs to which workload is worked out from them by
gpumem.workloads; this module only reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpumem.workloads import CONTROLLER_KINDS
from kube.client import ApiClient, read_json
from kube.errors import api_message, cause

RawObject = dict[str, Any]
PAGE_SIZE = 500


class WorkloadListError(Exception):
    """A list failed; the message says which and why, for a person."""


class WorkloadLister:
    """Lists the controllers of CONTROLLER_KINDS: `lists` maps each kind to its generated
    client's list-for-all-namespaces function (workload_lister builds them from a client)."""

    def __init__(
        self, lists: Mapping[str, Callable[..., Any]], host: str, timeout_seconds: float = 30.0
    ) -> None:
        self._lists = lists
        self._host = host
        self._timeout = timeout_seconds

    def list_controllers(self) -> dict[str, list[RawObject]]:
        """kind -> its objects, for every kind of CONTROLLER_KINDS."""
        return {kind: self._list(kind, self._lists[kind]) for kind in CONTROLLER_KINDS}

    def _list(self, kind: str, function: Callable[..., Any]) -> list[RawObject]:
        items: list[RawObject] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "limit": PAGE_SIZE,
                "_preload_content": False,
                "_request_timeout": self._timeout,
            }
            if token:
                kwargs["_continue"] = token
            what = f"listing {kind}s"
            try:
                page = read_json(function(**kwargs))
            except ApiException as err:
                raise WorkloadListError(f"{what}: {err.status} {api_message(err)}") from err
            except ValueError as err:
                raise WorkloadListError(f"{what}: unreadable answer: {err}") from err
            except Exception as err:  # urllib3 and socket errors: the API cannot be reached
                raise WorkloadListError(
                    f"{what}: cannot reach the API server at {self._host}: {cause(err, limit=300)}"
                ) from err
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items


def workload_lister(api: ApiClient, timeout_seconds: float = 30.0) -> WorkloadLister:
    """A WorkloadLister over one API client (apps/v1 and batch/v1)."""
    apps = client.AppsV1Api(api)
    batch = client.BatchV1Api(api)
    host = getattr(getattr(api, "configuration", None), "host", None)
    return WorkloadLister(
        {
            "ReplicaSet": apps.list_replica_set_for_all_namespaces,
            "Deployment": apps.list_deployment_for_all_namespaces,
            "StatefulSet": apps.list_stateful_set_for_all_namespaces,
            "DaemonSet": apps.list_daemon_set_for_all_namespaces,
            "Job": batch.list_job_for_all_namespaces,
            "CronJob": batch.list_cron_job_for_all_namespaces,
        },
        host if isinstance(host, str) else "?",
        timeout_seconds,
    )
