from __future__ import annotations

from typing import Any

import pytest

from gpumem.pending import pending_pod, scheduling_pod
from tests.unit.extender.factories import NAMES, make_pod

GPUMEM = "vramguard.io/gpumem"


# --- which pods ---------------------------------------------------------------------------


def unschedulable(pod: dict[str, Any], reason: str = "Unschedulable") -> dict[str, Any]:
    pod["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": "0/1 nodes are available: 1 Insufficient vramguard.io/gpumem.",
        }
    ]
    return pod


def with_spec(pod: dict[str, Any], **spec: Any) -> dict[str, Any]:
    pod["spec"].update(spec)
    return pod


def with_metadata(pod: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    pod["metadata"].update(metadata)
    return pod


PODS = {
    "unschedulable-gpu-pod": (unschedulable(make_pod("p", 1500)), 1500),
    "not-tried-yet": (make_pod("p", 1500), None),
    "bound": (unschedulable(make_pod("p", 1500, node="gpu-1")), None),
    "other-scheduler": (with_spec(unschedulable(make_pod("p", 1500)), schedulerName="x"), None),
    "default-scheduler-when-unset": (
        unschedulable(make_pod("p", 1500)) | {"spec": {"containers": []}},
        None,
    ),
    "scheduler-error-not-unschedulable": (
        unschedulable(make_pod("p", 1500), reason="SchedulerError"),
        None,
    ),
    "no-gpumem": (unschedulable(make_pod("p", None)), None),
    "not-a-gpu-pod": (unschedulable(make_pod("p", None, gpu=False)), None),
    "terminating": (
        with_metadata(unschedulable(make_pod("p", 1500)), deletionTimestamp="2024-01-01T00:00:00Z"),
        None,
    ),
    "failed": (unschedulable(make_pod("p", 1500, phase="Failed")), None),
    "no-uid": (with_metadata(unschedulable(make_pod("p", 1500)), uid=None), None),
    "garbage": ({"spec": "nope", "metadata": 3}, None),
}


@pytest.mark.parametrize(("raw", "need"), PODS.values(), ids=PODS.keys())
def test_pending_pod(raw: dict[str, Any], need: int | None) -> None:
    pod = pending_pod(raw, "vramguard-scheduler", NAMES)
    assert (pod.need_mib if pod is not None else None) == need
    if pod is not None:
        assert (pod.namespace, pod.name) == ("team-a", "p")
        assert pod.scheduler_message.startswith("0/1 nodes are available")


def test_pending_pod_reads_selectors() -> None:
    terms = [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["t4"]}]}]
    raw = with_spec(
        unschedulable(make_pod("p", 1500)),
        nodeSelector={"kubernetes.io/os": "linux"},
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
            }
        },
    )
    pod = pending_pod(raw, "vramguard-scheduler", NAMES)
    assert pod is not None
    assert pod.node_selector == {"kubernetes.io/os": "linux"}
    assert pod.affinity_terms == tuple(terms)
    assert pod.admits("n", {"kubernetes.io/os": "linux", "pool": "t4"})
    assert not pod.admits("n", {"kubernetes.io/os": "linux", "pool": "a100"})
    assert not pod.admits("n", {"pool": "t4"})


# --- any pod, as scheduling reads it --------------------------------------------------------


def test_scheduling_pod_reads_an_unschedulable_pod_like_pending_pod() -> None:
    raw = with_spec(unschedulable(make_pod("p", 1500)), nodeSelector={"pool": "t4"})
    pod = scheduling_pod(raw, NAMES)
    assert (pod.namespace, pod.name, pod.need_mib, pod.gpu) == ("team-a", "p", 1500, True)
    assert (pod.scheduler_name, pod.node_name, pod.phase) == (
        "vramguard-scheduler",
        None,
        "Pending",
    )
    assert pod.scheduler_message == "0/1 nodes are available: 1 Insufficient vramguard.io/gpumem."
    assert pod.pending_for("vramguard-scheduler")
    assert not pod.pending_for("other")
    assert pod.as_pending() == pending_pod(raw, "vramguard-scheduler", NAMES)


SCHEDULING = {
    "not-tried-yet": (make_pod("p", 1500), {"scheduler_message": None, "need_mib": 1500}),
    "bound": (
        make_pod("p", 1500, node="gpu-1"),
        {"node_name": "gpu-1", "phase": "Running", "scheduler_message": None},
    ),
    "other-scheduler": (
        with_spec(make_pod("p", 1500), schedulerName="default-scheduler"),
        {"scheduler_name": "default-scheduler"},
    ),
    "scheduler-unset-is-the-default": (
        make_pod("p", 1500) | {"spec": {"containers": []}},
        {"scheduler_name": "default-scheduler", "need_mib": 0, "gpu": False},
    ),
    "no-gpumem": (make_pod("p", None), {"need_mib": 0, "gpu": True}),
    "not-a-gpu-pod": (make_pod("p", None, gpu=False), {"need_mib": 0, "gpu": False}),
    "terminating": (
        with_metadata(make_pod("p", 1500), deletionTimestamp="2024-01-01T00:00:00Z"),
        {"terminating": True},
    ),
    "succeeded": (make_pod("p", 1500, node="gpu-1", phase="Succeeded"), {"terminated": True}),
    "garbage": (
        {"spec": "nope", "metadata": 3, "status": []},
        {"name": "", "uid": "", "need_mib": 0, "phase": "", "scheduler_name": "default-scheduler"},
    ),
}


@pytest.mark.parametrize(("raw", "expected"), SCHEDULING.values(), ids=SCHEDULING.keys())
def test_scheduling_pod_reads_any_pod(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    pod = scheduling_pod(raw, NAMES)
    for attribute, value in expected.items():
        assert getattr(pod, attribute) == value, attribute
    assert not pod.pending_for("vramguard-scheduler")


def test_scheduling_pod_keeps_an_unreadable_declaration_as_an_error() -> None:
    raw = unschedulable(make_pod("p", 1500))
    raw["spec"]["containers"][0]["resources"]["limits"][GPUMEM] = "lots"
    raw["spec"]["containers"][0]["resources"]["requests"][GPUMEM] = "lots"
    pod = scheduling_pod(raw, NAMES)
    assert (pod.need_mib, pod.gpu) == (0, True)
    assert pod.demand_error is not None
    assert GPUMEM in pod.demand_error
    assert pending_pod(raw, "vramguard-scheduler", NAMES) is None
