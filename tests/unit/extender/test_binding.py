from __future__ import annotations

from typing import Any

import pytest

from extender.binding import BindCoordinator, NodeLocks
from extender.models import ExtenderBindingArgs
from kube.errors import BindError
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    make_store,
)


class RecordingBinder:
    def __init__(self, failure: str | None = None) -> None:
        self.failure = failure
        self.bound: list[tuple[str, str, str, str]] = []

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        if self.failure:
            raise BindError(self.failure)
        self.bound.append((namespace, name, uid, node))


def args_for(pod: dict[str, Any], node: str) -> ExtenderBindingArgs:
    meta = pod["metadata"]
    return ExtenderBindingArgs(
        pod_name=meta["name"], pod_namespace=meta["namespace"], pod_uid=meta["uid"], node=node
    )


def setup(binder: RecordingBinder, *pods: dict[str, Any], free: int = 14000) -> Any:
    policy = make_policy()
    store = make_store(
        policy,
        [make_node("gpu-1", allocatable_mib=14000)],
        list(pods),
        dcgm_reading({"gpu-1": free}),
    )
    return BindCoordinator(store, binder, clock=lambda: NOW), store, policy.extender


def test_bind_reserves_then_binds() -> None:
    binder = RecordingBinder()
    pod = make_pod("a", 3000)
    coordinator, store, settings = setup(binder, pod)
    outcome = coordinator.bind(args_for(pod, "gpu-1"), settings)
    assert outcome.result == "bound"
    assert outcome.error == ""
    assert binder.bound == [("team-a", "a", pod["metadata"]["uid"], "gpu-1")]
    reservation = store.snapshot().node("gpu-1").reservations[0]
    assert (reservation.mib, reservation.expires_at) == (3000, NOW + 60)


def test_bind_refuses_when_it_no_longer_fits() -> None:
    binder = RecordingBinder()
    pod = make_pod("a", 3000)
    coordinator, store, settings = setup(binder, pod, make_pod("b", 12000, node="gpu-1"))
    outcome = coordinator.bind(args_for(pod, "gpu-1"), settings)
    assert outcome.result == "refused"
    assert outcome.error == "vramguard: declared 12000 + 3000 > capacity 14000 MiB"
    assert binder.bound == []
    assert store.snapshot().node("gpu-1").reservations == ()


def test_bind_refuses_on_live_shortage() -> None:
    binder = RecordingBinder()
    pod = make_pod("a", 3000)
    coordinator, _, settings = setup(binder, pod, free=1000)
    outcome = coordinator.bind(args_for(pod, "gpu-1"), settings)
    assert outcome.result == "refused"
    assert outcome.error.startswith("vramguard: live free 1000 MiB < need 3000")


def test_api_error_rolls_the_reservation_back() -> None:
    binder = RecordingBinder(failure="binding team-a/a to gpu-1: 500 etcd timeout")
    pod = make_pod("a", 3000)
    coordinator, store, settings = setup(binder, pod)
    outcome = coordinator.bind(args_for(pod, "gpu-1"), settings)
    assert outcome.result == "api-error"
    assert outcome.error == "vramguard: binding team-a/a to gpu-1: 500 etcd timeout"
    assert store.snapshot().node("gpu-1").reservations == ()


def test_unknown_pod_is_refused_for_a_retry() -> None:
    binder = RecordingBinder()
    coordinator, _, settings = setup(binder)
    outcome = coordinator.bind(args_for(make_pod("ghost", 1000), "gpu-1"), settings)
    assert outcome.result == "unknown-pod"
    assert "not in vramguard's cache yet" in outcome.error
    assert binder.bound == []


def test_pod_seen_only_by_filter_binds_with_its_demand() -> None:
    binder = RecordingBinder()
    coordinator, store, settings = setup(binder)
    pod = make_pod("fresh", 2000)
    store.remember_demand(pod["metadata"]["uid"], "team-a", "fresh", 2000)
    assert coordinator.bind(args_for(pod, "gpu-1"), settings).result == "bound"
    assert store.snapshot().node("gpu-1").reserved_mib(NOW) == 2000


def test_pod_without_gpu_demand_binds_without_reservation() -> None:
    binder = RecordingBinder()
    coordinator, store, settings = setup(binder)
    pod = make_pod("web", None, gpu=False)
    store.remember_demand(pod["metadata"]["uid"], "team-a", "web", 0)
    assert coordinator.bind(args_for(pod, "gpu-1"), settings).result == "bound"
    assert store.snapshot().node("gpu-1").reservations == ()


@pytest.mark.parametrize("declared", [None, 0])
def test_gpu_pod_without_a_budget_is_refused_at_bind(declared: int | None) -> None:
    """Issue 17: /bind skipped the fit check and the reservation for a need of 0, so a GPU pod
    that declares no GPU memory was bound wherever the scheduler asked."""
    binder = RecordingBinder()
    coordinator, store, settings = setup(binder)
    pod = make_pod("sneaky", declared, gpu=True)
    store.apply_pod_event("ADDED", pod)  # the watch shows it: a GPU pod with 0 MiB
    outcome = coordinator.bind(args_for(pod, "gpu-1"), settings)
    assert outcome.result == "refused"
    assert "declares no GPU memory" in outcome.error
    assert binder.bound == []
    # The same when only /filter has shown the pod.
    other = make_pod("sneaky-2", declared, gpu=True)
    store.remember_demand(other["metadata"]["uid"], "team-a", "sneaky-2", 0, is_gpu=True)
    assert coordinator.bind(args_for(other, "gpu-1"), settings).result == "refused"


def test_pod_already_bound_is_not_counted_twice() -> None:
    binder = RecordingBinder()
    pod = make_pod("a", 3000, node="gpu-1")
    coordinator, store, settings = setup(binder, pod, make_pod("b", 11000, node="gpu-1"))
    # Full as far as a new pod goes, but this pod is already counted: the API decides.
    assert coordinator.bind(args_for(pod, "gpu-1"), settings).result == "bound"
    assert store.snapshot().node("gpu-1").reservations == ()


def test_node_locks_are_stable_and_striped() -> None:
    locks = NodeLocks(stripes=4)
    assert locks.for_node("gpu-1") is locks.for_node("gpu-1")
    assert len({id(locks.for_node(f"n{i}")) for i in range(100)}) == 4
