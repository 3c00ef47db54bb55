"""The locked store and the snapshots it publishes (extender.store)."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from extender.store import ClusterStore
from gpumem.policy import Policy
from gpumem.state import Reservation
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    rfc3339,
)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store_with(*nodes: dict[str, Any], clock: Clock | None = None, **extender: Any) -> Any:
    store = ClusterStore(make_policy(**extender), clock=clock or Clock())
    store.replace_nodes(list(nodes))
    store.replace_pods([])
    return store


def declared(store: ClusterStore, node: str) -> int:
    state = store.snapshot().node(node)
    return 0 if state is None else state.declared_mib


def uid_of(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["uid"])


def reservation(pod: dict[str, Any], node: str, mib: int, expires_at: float) -> Reservation:
    meta = pod["metadata"]
    return Reservation(meta["uid"], meta["namespace"], meta["name"], node, mib, expires_at)


def test_pod_added_modified_deleted() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    pod = make_pod("a", 3000, node="gpu-1")
    store.apply_pod_event("ADDED", pod)
    assert declared(store, "gpu-1") == 3000

    store.apply_pod_event("ADDED", make_pod("b", 2000, node="gpu-1"))
    assert declared(store, "gpu-1") == 5000

    store.apply_pod_event("MODIFIED", make_pod("a", 3000, node="gpu-1", started_at=None))
    assert declared(store, "gpu-1") == 5000  # same pod, counted once

    store.apply_pod_event("DELETED", pod)
    assert declared(store, "gpu-1") == 2000
    assert [p.name for p in store.snapshot().node("gpu-1").pods] == ["b"]


def test_an_update_of_nothing_the_rule_reads_keeps_the_node_state() -> None:
    """A status heartbeat or a label on a bound GPU pod changes no figure: the node's state is
    not rebuilt (the object published before is kept), so the watch's churn costs no rebuild."""
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    pod = make_pod("a", 3000, node="gpu-1")
    store.apply_pod_event("ADDED", pod)
    before = store.snapshot().node("gpu-1")

    relabelled = make_pod("a", 3000, node="gpu-1")
    relabelled["metadata"]["labels"] = {"app": "a", "heartbeat": "2"}
    relabelled["metadata"]["resourceVersion"] = "4712"
    store.apply_pod_event("MODIFIED", relabelled)
    assert store.snapshot().node("gpu-1") is before

    store.apply_pod_event("MODIFIED", make_pod("a", 3000, node="gpu-1", started_at=None))
    after = store.snapshot().node("gpu-1")
    assert after is not before  # its warm-up changed: rebuilt
    assert after is not None
    assert after.declared_mib == 3000


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pods_drop_out(phase: str) -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    store.apply_pod_event("ADDED", make_pod("a", 3000, node="gpu-1"))
    store.apply_pod_event("MODIFIED", make_pod("a", 3000, node="gpu-1", phase=phase))
    assert declared(store, "gpu-1") == 0
    store.replace_pods([make_pod("b", 1000, node="gpu-1", phase=phase)])
    assert declared(store, "gpu-1") == 0


def test_pending_pods_count_nowhere_but_are_known_for_bind() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    pod = make_pod("a", 3000)
    store.apply_pod_event("ADDED", pod)
    assert declared(store, "gpu-1") == 0
    bindable = store.pod_for_bind(uid_of(pod))
    assert bindable is not None
    assert (bindable.need_mib, bindable.bound_node) == (3000, None)


def test_non_gpu_pods_are_not_counted() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    store.apply_pod_event("ADDED", make_pod("web", None, node="gpu-1", gpu=False))
    assert store.snapshot().node("gpu-1").pods == ()


def test_reservation_released_when_the_watch_shows_the_pod_bound() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    pod = make_pod("a", 3000)
    store.apply_pod_event("ADDED", pod)
    store.reserve(reservation(pod, "gpu-1", 3000, NOW + 60))
    node = store.snapshot().node("gpu-1")
    assert (node.declared_mib, node.reserved_mib(NOW)) == (0, 3000)

    store.apply_pod_event("MODIFIED", make_pod("a", 3000, node="gpu-1", started_at=None))
    node = store.snapshot().node("gpu-1")
    # Counted once: as a pod now, no longer as a reservation.
    assert (node.declared_mib, node.reserved_mib(NOW)) == (3000, 0)
    assert store.active_reservations() == 0


def test_reservation_released_when_the_pod_is_deleted() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    pod = make_pod("a", 3000)
    store.apply_pod_event("ADDED", pod)
    store.reserve(reservation(pod, "gpu-1", 3000, NOW + 60))
    store.apply_pod_event("DELETED", pod)
    assert store.snapshot().node("gpu-1").reservations == ()


def test_reservation_kept_while_the_pod_is_still_pending() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    pod = make_pod("a", 3000)
    store.apply_pod_event("ADDED", pod)
    store.reserve(reservation(pod, "gpu-1", 3000, NOW + 60))
    store.apply_pod_event("MODIFIED", pod)
    store.replace_pods([pod])  # a relist while the bind is in flight
    assert store.snapshot().node("gpu-1").reserved_mib(NOW) == 3000


def test_relist_drops_reservations_of_pods_gone_or_bound() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    gone, bound = make_pod("gone", 1000), make_pod("bound", 2000)
    store.reserve(reservation(gone, "gpu-1", 1000, NOW + 60))
    store.reserve(reservation(bound, "gpu-1", 2000, NOW + 60))
    store.replace_pods([make_pod("bound", 2000, node="gpu-1")])
    node = store.snapshot().node("gpu-1")
    assert node.reservations == ()
    assert node.declared_mib == 2000


def test_reservation_expires() -> None:
    clock = Clock()
    store = store_with(make_node("gpu-1", allocatable_mib=14000), clock=clock)
    pod = make_pod("a", 3000)
    store.reserve(reservation(pod, "gpu-1", 3000, NOW + 60))
    assert store.expire_reservations() == 0
    clock.now = NOW + 59
    assert store.snapshot().node("gpu-1").reserved_mib(clock.now) == 3000
    clock.now = NOW + 60
    # The fit rule ignores it from its expiry on; the sweep then forgets it.
    assert store.snapshot().node("gpu-1").reserved_mib(clock.now) == 0
    assert store.active_reservations() == 0
    assert store.expire_reservations() == 1
    assert store.snapshot().node("gpu-1").reservations == ()


def test_release_rolls_back() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    pod = make_pod("a", 3000)
    store.reserve(reservation(pod, "gpu-1", 3000, NOW + 60))
    assert store.release(uid_of(pod))
    assert not store.release(uid_of(pod))
    assert store.snapshot().node("gpu-1").reservations == ()


def test_node_heartbeats_do_not_rebuild() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    before = store.snapshot()
    heartbeat = make_node("gpu-1", allocatable_mib=14000)
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = rfc3339(NOW)
    store.apply_node_event("MODIFIED", heartbeat)
    assert store.snapshot() is before


def test_node_deleted_with_pods_left_is_unknown() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    store.apply_pod_event("ADDED", make_pod("a", 3000, node="gpu-1"))
    store.apply_node_event("DELETED", make_node("gpu-1"))
    node = store.snapshot().node("gpu-1")
    assert not node.known
    assert node.declared_mib == 3000


def test_snapshot_is_frozen_and_versioned() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    first = store.snapshot()
    assert store.snapshot() is first
    store.apply_pod_event("ADDED", make_pod("a", 3000, node="gpu-1"))
    second = store.snapshot()
    assert second.version > first.version
    assert first.node("gpu-1").declared_mib == 0
    with pytest.raises(TypeError):
        second.nodes["x"] = second.nodes["gpu-1"]


def test_snapshot_never_waits_for_a_writer() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    old = store.snapshot()
    store.apply_pod_event("ADDED", make_pod("a", 3000, node="gpu-1"))
    store._lock.acquire()  # a writer holding the lock (e.g. a telemetry rebuild)
    try:
        result: list[Any] = []
        reader = threading.Thread(target=lambda: result.append(store.snapshot()))
        reader.start()
        reader.join(timeout=2)
        assert result == [old]  # the previous snapshot, not a hang
    finally:
        store._lock.release()
    assert store.snapshot().node("gpu-1").declared_mib == 3000


def test_synced_after_both_lists() -> None:
    store = ClusterStore(make_policy())
    assert not store.synced
    store.replace_nodes([])
    assert not store.synced
    store.replace_pods([])
    assert store.synced


def test_telemetry_rebuilds_live_figures() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    assert store.snapshot().node("gpu-1").live is None
    store.apply_telemetry(dcgm_reading({"gpu-1": 9000}, age=8))
    live = store.snapshot().node("gpu-1").live
    assert (live.free_mib, live.age(NOW), live.source) == (9000, 8, "dcgm")


def test_policy_change_reapplies_capacity_and_reports_resource_name_changes() -> None:
    store = store_with(make_node("gpu-1", gfd_memory_mib=16384, gfd_count=1))
    assert store.snapshot().node("gpu-1").capacity.mib == 16384 - 1024
    assert not store.set_policy(make_policy(capacitySlackMiB=2048))
    assert store.snapshot().node("gpu-1").capacity.mib == 16384 - 2048
    assert store.set_policy(Policy(gpumem_resource_name="example.com/vram"))


def test_not_started_pod_warms_forever() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    store.apply_pod_event("ADDED", make_pod("a", 3000, node="gpu-1", started_at=None))
    node = store.snapshot().node("gpu-1")
    assert math.isinf(node.pods[0].warm_until)
    assert node.not_yet_using_mib(NOW + 10**6) == 3000


def test_remembered_demand_is_bounded() -> None:
    store = ClusterStore(make_policy())
    for i in range(5000):
        store.remember_demand(f"uid-{i}", "ns", f"p{i}", 100)
    assert store.pod_for_bind("uid-0") is None
    assert store.pod_for_bind("uid-4999") is not None


def test_a_pod_replacement_changes_nothing_until_it_is_committed() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    store.replace_pods([make_pod("old", 1000, node="gpu-1")])
    replacement = store.pod_replacement()
    for pod in (make_pod("a", 2000, node="gpu-1"), make_pod("b", 3000, node="gpu-1")):
        replacement.add(pod)
    assert declared(store, "gpu-1") == 1000  # a list half read (or failed) is not in
    assert store.pod_for_bind(uid_of(make_pod("a", 2000))) is None
    replacement.commit()
    assert declared(store, "gpu-1") == 5000
    assert store.pod_for_bind(uid_of(make_pod("old", 1000))) is None


def test_replace_pods_reads_its_pods_once() -> None:
    store = store_with(make_node("gpu-1", allocatable_mib=14000))
    store.replace_pods(make_pod(name, 1000, node="gpu-1") for name in ("a", "b"))
    assert declared(store, "gpu-1") == 2000
