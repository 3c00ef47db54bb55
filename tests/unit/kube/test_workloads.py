"""kube.workloads: every kind listed page by page as raw JSON, failures as one sentence."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gpumem.workloads import CONTROLLER_KINDS
from kube.client import api_client
from kube.workloads import WorkloadLister, WorkloadListError, workload_lister
from tests.unit.kube.fakes import FakeResponse, api_error, obj


class FakeList:
    """One kind's list function: answers its pages in turn, recording the arguments."""

    def __init__(self, *pages: list[dict[str, Any]], failure: Exception | None = None) -> None:
        self.pages = list(pages)
        self.calls: list[dict[str, Any]] = []
        self.failure = failure
        self.responses: list[FakeResponse] = []

    def __call__(self, **kwargs: Any) -> FakeResponse:
        self.calls.append(kwargs)
        if self.failure is not None:
            raise self.failure
        index = len(self.calls) - 1
        more = index + 1 < len(self.pages)
        body = {
            "items": self.pages[index],
            "metadata": {"continue": f"page-{index + 1}"} if more else {},
        }
        response = FakeResponse(json.dumps(body).encode())
        self.responses.append(response)
        return response


def lister(**lists: FakeList) -> WorkloadLister:
    functions = {kind: lists.get(kind, FakeList([])) for kind in CONTROLLER_KINDS}
    return WorkloadLister(functions, "https://10.0.0.1:6443", timeout_seconds=7)


def test_every_kind_is_listed_across_pages_and_the_connections_go_back() -> None:
    replica_sets = FakeList([obj("a-1"), obj("a-2")], [obj("a-3")])
    cron_jobs = FakeList([obj("bake")])
    listed = lister(ReplicaSet=replica_sets, CronJob=cron_jobs).list_controllers()
    assert list(listed) == list(CONTROLLER_KINDS)
    assert [o["metadata"]["name"] for o in listed["ReplicaSet"]] == ["a-1", "a-2", "a-3"]
    assert [o["metadata"]["name"] for o in listed["CronJob"]] == ["bake"]
    assert listed["Deployment"] == []
    first, second = replica_sets.calls
    assert first == {"limit": 500, "_preload_content": False, "_request_timeout": 7}
    assert second["_continue"] == "page-1"
    assert all(response.released for response in replica_sets.responses)


def test_a_refused_list_says_which_kind_and_why() -> None:
    denied = FakeList(failure=api_error(403, "Forbidden", 'cronjobs.batch is forbidden: "ops"'))
    with pytest.raises(WorkloadListError) as failed:
        lister(CronJob=denied).list_controllers()
    assert str(failed.value) == 'listing CronJobs: 403 cronjobs.batch is forbidden: "ops"'


def test_an_unreachable_api_names_the_server() -> None:
    down = FakeList(failure=ConnectionRefusedError(111, "Connection refused"))
    with pytest.raises(WorkloadListError, match=r"^listing ReplicaSets: cannot reach"):
        lister(ReplicaSet=down).list_controllers()


def test_the_lister_of_a_client_lists_apps_and_batch(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    built = workload_lister(api_client(kubeconfig, retries=0), timeout_seconds=1)
    with pytest.raises(WorkloadListError, match=re.escape("at https://127.0.0.1:1: ")):
        built.list_controllers()
