"""Reading a raw Pod as the store counts it (gpumem.pods)."""

from __future__ import annotations

from gpumem.pods import pod_record
from gpumem.policy import Policy
from tests.unit.extender.factories import NOW, make_pod

NAMES = Policy().resource_names


def test_pod_record_of_a_running_pod() -> None:
    record = pod_record(make_pod("a", 3000, node="gpu-1", started_at=NOW - 50), NAMES)
    assert record is not None
    assert (record.node, record.declared_mib, record.warm_from) == ("gpu-1", 3000, NOW - 50)


def test_warm_up_starts_at_the_later_of_scheduling_and_container_start() -> None:
    pod = make_pod("a", 3000, node="gpu-1", started_at=NOW - 9000)
    record = pod_record(pod, NAMES)
    assert record is not None
    assert record.warm_from == NOW - 7000  # PodScheduled


def test_waiting_gpu_container_has_not_started() -> None:
    record = pod_record(make_pod("a", 3000, node="gpu-1", started_at=None), NAMES)
    assert record is not None
    assert record.warm_from is None


def test_restarted_container_warms_up_again() -> None:
    pod = make_pod("a", 3000, node="gpu-1", started_at=NOW - 10)
    pod["status"]["containerStatuses"][0]["restartCount"] = 3
    record = pod_record(pod, NAMES)
    assert record is not None
    assert record.warm_from == NOW - 10


def test_only_gpu_containers_decide_warm_up() -> None:
    pod = make_pod("a", 3000, node="gpu-1", started_at=NOW - 500)
    pod["spec"]["initContainers"] = [
        {"name": "fetch-model", "image": "busybox", "resources": {}},
    ]
    pod["spec"]["containers"].append({"name": "sidecar", "image": "envoy", "resources": {}})
    pod["status"]["initContainerStatuses"] = [
        {"name": "fetch-model", "state": {"terminated": {"exitCode": 0}}}
    ]
    pod["status"]["containerStatuses"].append(
        {"name": "sidecar", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    )
    record = pod_record(pod, NAMES)
    assert record is not None
    assert record.warm_from == NOW - 500


def test_pod_without_uid_or_gpu_is_not_recorded() -> None:
    no_uid = make_pod("a", 3000, node="gpu-1")
    del no_uid["metadata"]["uid"]
    assert pod_record(no_uid, NAMES) is None
    assert pod_record(make_pod("web", None, node="gpu-1", gpu=False), NAMES) is None


def test_gpu_pod_without_gpumem_counts_zero() -> None:
    record = pod_record(make_pod("a", None, node="gpu-1"), NAMES)
    assert record is not None
    assert record.declared_mib == 0
