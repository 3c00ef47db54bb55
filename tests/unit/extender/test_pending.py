from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from extender.metrics import ExtenderMetrics
from extender.pending import (
    EventRequest,
    NudgeRequest,
    PendingExplainer,
)
from extender.store import ClusterStore
from extender.watches import pod_watch
from gpumem.policy import Policy
from kube.errors import EventExists, EventMissing, EventWriteError
from tests.unit.extender.factories import (
    NOW,
    dcgm_reading,
    make_node,
    make_pod,
    make_policy,
    unschedulable,
)

DECLARED = "node-a: declared 13300 + 1500 > capacity 14000 MiB"


class FakeSink:
    """An EventSink that records what it is asked and fails when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, EventRequest | NudgeRequest]] = []
        self.fail_with: list[Exception] = []
        self.written = threading.Event()

    def create(self, request: EventRequest, now: float) -> None:
        self._call("create", request)

    def refresh(self, request: EventRequest, now: float) -> None:
        self._call("refresh", request)

    def nudge(self, request: NudgeRequest, now: float) -> None:
        self._call("nudge", request)

    def events(self) -> list[tuple[str, EventRequest]]:
        """The calls, every one a create or a refresh of an Event."""
        calls: list[tuple[str, EventRequest]] = []
        for action, request in self.calls:
            assert isinstance(request, EventRequest), (action, request)
            calls.append((action, request))
        return calls

    def _call(self, action: str, request: EventRequest | NudgeRequest) -> None:
        self.calls.append((action, request))
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.written.set()


def bound(pod: dict[str, Any], node: str = "node-a") -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["spec"]["nodeName"] = node
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    return pod


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> ClusterStore:
    """node-a: 14000 MiB with 13300 declared (the seeds' card)."""
    store = ClusterStore(make_policy(), clock=clock)
    store.replace_nodes([make_node("node-a", allocatable_mib=14000)])
    store.replace_pods(
        [
            make_pod(name, mib, node="node-a")
            for name, mib in [("a", 3000), ("b", 5000), ("c", 2000), ("d", 1800), ("e", 1500)]
        ]
    )
    store.apply_telemetry(dcgm_reading({"node-a": 9000}, age=3))
    return store


def make_explainer(
    store: ClusterStore, sink: FakeSink, clock: Clock, **options: Any
) -> tuple[PendingExplainer, ExtenderMetrics]:
    metrics = ExtenderMetrics()
    explainer = PendingExplainer(
        store,
        sink,
        metrics,
        nudger=sink,
        scheduler_name="vramguard-scheduler",
        clock=clock,
        **options,
    )
    return explainer, metrics


def metric(metrics: ExtenderMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def explanations(metrics: ExtenderMetrics, result: str) -> float:
    return metric(metrics, "vramguard_extender_explanations_total", result=result)


def run_pass(explainer: PendingExplainer) -> int:
    """One evaluation and every queued write, as the two threads would do."""
    queued = explainer.evaluate_once()
    while explainer.record_once():
        pass
    return queued


def test_an_unschedulable_gpu_pod_gets_one_event_with_the_numbers(
    store: ClusterStore, clock: Clock
) -> None:
    sink = FakeSink()
    explainer, metrics = make_explainer(store, sink, clock)
    pod = unschedulable("incoming", 1500)
    explainer.apply_pod_event("ADDED", pod)
    # The watch's side queues nothing and writes nothing: that is the workers' job.
    assert sink.calls == []
    assert explainer.queued == 0
    assert metric(metrics, "vramguard_extender_unschedulable_gpu_pods") == 1

    assert run_pass(explainer) == 1
    [(action, request)] = sink.calls
    assert action == "create"
    assert isinstance(request, EventRequest)
    assert request.message == (
        f"vramguard: no node fits 1500 MiB of vramguard.io/gpumem: {DECLARED}"
    )
    assert (request.namespace, request.pod_name, request.pod_uid) == (
        "team-a",
        "incoming",
        pod["metadata"]["uid"],
    )
    assert request.name.startswith("incoming.")
    assert request.count == 1
    assert explanations(metrics, "created") == 1

    # The same explanation again, now or later: nothing more.
    for later in (0, 31, 120):
        clock.now = NOW + later
        explainer.apply_pod_event("MODIFIED", pod)
        assert run_pass(explainer) == 0
    assert len(sink.calls) == 1


def test_a_changed_explanation_is_said_again_but_not_within_30s(
    store: ClusterStore, clock: Clock
) -> None:
    sink = FakeSink()
    explainer, _ = make_explainer(store, sink, clock)
    explainer.apply_pod_event("ADDED", unschedulable("incoming", 1500))
    run_pass(explainer)
    store.apply_pod_event("ADDED", make_pod("f", 200, node="node-a"))  # 13500 declared now

    clock.now = NOW + 10
    assert run_pass(explainer) == 0
    clock.now = NOW + 30
    assert run_pass(explainer) == 1
    assert [r.message.split(": ", 2)[2] for _, r in sink.calls] == [
        DECLARED,
        "node-a: declared 13500 + 1500 > capacity 14000 MiB",
    ]
    assert sink.events()[0][1].name != sink.events()[1][1].name


def test_a_pod_that_fits_now_gets_no_event_but_one_nudge(store: ClusterStore, clock: Clock) -> None:
    """VRAM freed since kube-scheduler gave up: nothing else would tell it, so the pod's status
    gets a condition (a pod update, which requeues it), once per answer."""
    sink = FakeSink()
    explainer, metrics = make_explainer(store, sink, clock)
    small = unschedulable("small", 500)  # 13300 + 500 <= 14000
    explainer.apply_pod_event("ADDED", small)
    assert run_pass(explainer) == 1
    [(action, request)] = sink.calls
    assert action == "nudge"
    assert isinstance(request, NudgeRequest)
    uid = small["metadata"]["uid"]
    assert (request.namespace, request.pod_name, request.pod_uid) == ("team-a", "small", uid)
    assert request.message == ("vramguard: fits now on node-a; asking kube-scheduler to try again")
    assert explanations(metrics, "nudged") == 1
    assert metric(metrics, "vramguard_extender_unschedulable_gpu_pods") == 1

    # The same answer is not said again, however long the pod stays Pending.
    clock.now += 3600
    assert run_pass(explainer) == 0
    assert len(sink.calls) == 1


def test_a_failed_nudge_is_tried_again_after_min_interval(
    store: ClusterStore, clock: Clock
) -> None:
    sink = FakeSink()
    sink.fail_with = [EventWriteError("setting a condition: 403 forbidden")]
    explainer, metrics = make_explainer(store, sink, clock, min_interval=30)
    explainer.apply_pod_event("ADDED", unschedulable("small", 500))
    run_pass(explainer)
    assert explanations(metrics, "error") == 1
    clock.now += 10
    assert run_pass(explainer) == 0  # not hammering the API
    clock.now += 30
    assert run_pass(explainer) == 1
    assert [action for action, _ in sink.calls] == ["nudge", "nudge"]
    assert explanations(metrics, "nudged") == 1


def test_bound_and_deleted_pods_are_forgotten(store: ClusterStore, clock: Clock) -> None:
    sink = FakeSink()
    explainer, metrics = make_explainer(store, sink, clock)
    first, second = unschedulable("first", 1500), unschedulable("second", 1500)
    explainer.replace_pods([first, second, make_pod("running", 100, node="node-a")])
    assert {p.name for p in explainer.pending()} == {"first", "second"}
    assert run_pass(explainer) == 2

    explainer.apply_pod_event("MODIFIED", bound(first))
    explainer.apply_pod_event("DELETED", second)
    assert explainer.pending() == []
    assert metric(metrics, "vramguard_extender_unschedulable_gpu_pods") == 0
    run_pass(explainer)
    # Forgotten: should the same pod be Pending again, it is explained again.
    explainer.apply_pod_event("MODIFIED", first)
    clock.now = NOW + 1
    assert run_pass(explainer) == 1
    assert len(sink.calls) == 3


def test_only_the_served_schedulers_pods(store: ClusterStore, clock: Clock) -> None:
    sink = FakeSink()
    explainer, _ = make_explainer(store, sink, clock)
    other = unschedulable("other", 1500)
    other["spec"]["schedulerName"] = "default-scheduler"
    explainer.apply_pod_event("ADDED", other)
    assert explainer.pending() == []


def test_queue_full_drops_counts_and_tries_again(store: ClusterStore, clock: Clock) -> None:
    sink = FakeSink()
    explainer, metrics = make_explainer(store, sink, clock, queue_size=1)
    for name in ("p1", "p2", "p3"):
        explainer.apply_pod_event("ADDED", unschedulable(name, 1500))
    assert explainer.evaluate_once() == 1
    assert explainer.queued == 1
    assert explanations(metrics, "dropped") == 2
    assert sink.calls == []

    # The recorder catches up; the dropped ones go out on the next passes, not 30 s later.
    assert explainer.record_once()
    assert explainer.evaluate_once() == 1
    assert explainer.record_once()
    assert explainer.evaluate_once() == 1
    assert explainer.record_once()
    assert explainer.evaluate_once() == 0
    assert sorted(r.pod_name for _, r in sink.calls) == ["p1", "p2", "p3"]
    assert explanations(metrics, "created") == 3
    assert explanations(metrics, "dropped") == 3  # the third waited twice


def test_api_errors_are_counted_logged_once_and_retried(
    store: ClusterStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FakeSink()
    sink.fail_with = [
        EventWriteError("creating an event: 403 events is forbidden"),
        EventWriteError("creating an event: 403 events is forbidden"),
    ]
    explainer, metrics = make_explainer(store, sink, clock)
    explainer.apply_pod_event("ADDED", unschedulable("incoming", 1500))
    with caplog.at_level(logging.INFO, logger="extender.pending"):
        run_pass(explainer)
        clock.now = NOW + 10
        assert run_pass(explainer) == 0  # a failed write is tried again, but not at once
        clock.now = NOW + 30
        run_pass(explainer)
        clock.now = NOW + 60
        run_pass(explainer)
    assert explanations(metrics, "error") == 2
    assert explanations(metrics, "created") == 1
    assert len(sink.calls) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "403 events is forbidden" in warnings[0].getMessage()
    assert any(
        "writing GPUMemoryUnavailable events again" in r.getMessage() for r in caplog.records
    )


def test_an_event_written_already_counts_as_duplicate(store: ClusterStore, clock: Clock) -> None:
    sink = FakeSink()
    sink.fail_with = [EventExists("incoming.abc")]
    explainer, metrics = make_explainer(store, sink, clock)
    explainer.apply_pod_event("ADDED", unschedulable("incoming", 1500))
    run_pass(explainer)
    assert explanations(metrics, "duplicate") == 1
    clock.now = NOW + 60
    assert run_pass(explainer) == 0  # another replica said it: not said again


def test_refresh_bumps_the_count_and_recreates_an_expired_event(
    store: ClusterStore, clock: Clock
) -> None:
    sink = FakeSink()
    explainer, metrics = make_explainer(store, sink, clock, refresh_interval=600)
    explainer.apply_pod_event("ADDED", unschedulable("incoming", 1500))
    run_pass(explainer)
    clock.now = NOW + 600
    run_pass(explainer)
    sink.fail_with = [EventMissing("gone")]
    clock.now = NOW + 1200
    run_pass(explainer)
    assert [(a, r.count) for a, r in sink.events()] == [
        ("create", 1),
        ("refresh", 2),
        ("refresh", 3),
        ("create", 3),
    ]
    assert len({r.name for _, r in sink.events()}) == 1
    assert explanations(metrics, "refreshed") == 1
    assert explanations(metrics, "created") == 2


def test_no_explanation_before_the_watches_synced(clock: Clock) -> None:
    store = ClusterStore(make_policy(), clock=clock)
    sink = FakeSink()
    explainer, _ = make_explainer(store, sink, clock)
    explainer.apply_pod_event("ADDED", unschedulable("incoming", 1500))
    assert run_pass(explainer) == 0  # "no node advertises GPU memory" would be a lie
    store.replace_nodes([])
    store.replace_pods([])
    assert run_pass(explainer) == 1
    assert sink.calls[0][1].message.endswith("no node advertises GPU memory")


def test_no_explanation_before_telemetry_when_stale_mode_denies(clock: Clock) -> None:
    store = ClusterStore(make_policy(staleMode="deny"), clock=clock)
    store.replace_nodes([make_node("node-a", allocatable_mib=14000)])
    store.replace_pods([])
    sink = FakeSink()
    explainer, _ = make_explainer(store, sink, clock)
    explainer.apply_pod_event("ADDED", unschedulable("incoming", 1500))
    assert run_pass(explainer) == 0
    store.apply_telemetry(dcgm_reading({"node-a": 1000}, age=1))
    assert run_pass(explainer) == 1
    assert "live free 1000 MiB < need 1500 + floor 512 MiB" in sink.calls[0][1].message


def test_a_listener_bug_does_not_break_the_pod_watch(
    store: ClusterStore,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    explainer, _ = make_explainer(store, FakeSink(), clock)
    pod = unschedulable("incoming", 1500)
    pod["spec"]["nodeSelector"] = 42  # not a map: read as none, never raised
    explainer.apply_pod_event("ADDED", pod)
    assert [p.name for p in explainer.pending()] == ["incoming"]

    def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("extender.pending.pending_pod", broken)
    with caplog.at_level(logging.ERROR):
        explainer.apply_pod_event("MODIFIED", pod)
        explainer.apply_pod_event("MODIFIED", pod)
        explainer.replace_pods([pod])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # logged once, never raised into the watch
    assert explainer.pending() == []


def test_pod_watch_feeds_listeners_after_the_store(store: ClusterStore, clock: Clock) -> None:
    seen: list[tuple[str, int, int] | tuple[str, int]] = []

    class Replacement:
        def __init__(self) -> None:
            self.count = 0

        def add(self, raw: dict[str, Any]) -> None:
            self.count += 1

        def commit(self) -> None:
            # The store has swapped its pods in already.
            node = store.snapshot().node("node-a")
            assert node is not None
            seen.append(("replace", node.declared_mib, self.count))

    class Listener:
        def pod_replacement(self) -> Replacement:
            return Replacement()

        def apply_pod_event(self, event_type: str, raw: dict[str, Any]) -> None:
            # The store has applied the event already.
            node = store.snapshot().node("node-a")
            assert node is not None
            seen.append((event_type, node.declared_mib))

    core = type("Core", (), {"list_pod_for_all_namespaces": lambda **kw: None})()
    watch = pod_watch(core, store, ExtenderMetrics(), listeners=[Listener()])
    watch._apply("ADDED", make_pod("late", 700, node="node-a"))
    watch._replace(iter([make_pod("only", 100, node="node-a"), make_pod("cpu", None)]))
    assert seen == [("ADDED", 14000), ("replace", 100, 2)]


def test_the_pod_watch_feeds_the_explainer_every_pod_of_a_list(
    store: ClusterStore, clock: Clock
) -> None:
    explainer, _ = make_explainer(store, FakeSink(), clock)
    pages = [
        [unschedulable("first", 1500), make_pod("running", 100, node="node-a")],
        [unschedulable("second", 2500)],
    ]
    core = type("Core", (), {"list_pod_for_all_namespaces": lambda **kw: None})()
    watch = pod_watch(core, store, ExtenderMetrics(), listeners=[explainer])
    watch._replace(pod for page in pages for pod in page)  # read once, as a list streams
    assert sorted(p.name for p in explainer.pending()) == ["first", "second"]


def test_a_pending_replacement_never_committed_changes_nothing(
    store: ClusterStore, clock: Clock
) -> None:
    explainer, _ = make_explainer(store, FakeSink(), clock)
    explainer.replace_pods([unschedulable("kept", 1500)])
    replacement = explainer.pod_replacement()
    replacement.add(unschedulable("half-listed", 2500))
    assert [p.name for p in explainer.pending()] == ["kept"]
    replacement.commit()
    assert [p.name for p in explainer.pending()] == ["half-listed"]


def test_the_threads_write_an_event_and_stop(store: ClusterStore, clock: Clock) -> None:
    sink = FakeSink()
    explainer, _ = make_explainer(store, sink, clock, interval=60)
    explainer.start()
    try:
        # A nudge from the watch's side wakes the evaluator at once, not after 60 s.
        explainer.apply_pod_event("ADDED", unschedulable("incoming", 1500))
        assert sink.written.wait(5)
    finally:
        started = time.monotonic()
        explainer.stop()
        assert time.monotonic() - started < 3
    assert [a for a, _ in sink.calls] == ["create"]


def test_the_extenders_role_may_write_the_events() -> None:
    """KubernetesEvents creates core/v1 Events and merge-patches them (refresh)."""
    path = Path(__file__).resolve().parents[3] / "manifests" / "base" / "rbac-extender.yaml"
    [role] = [
        doc
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "ClusterRole" and doc["metadata"]["name"] == "vramguard-extender"
    ]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {("", "events", "create"), ("", "events", "patch")} <= granted


@pytest.mark.parametrize(
    ("policy_scheduler", "explained"),
    [("gpu-scheduler", True), (None, False)],
    ids=["the-policy-names-it", "null-policy-falls-back-to-the-flag"],
)
def test_the_served_scheduler_is_the_policys(
    store: ClusterStore, clock: Clock, policy_scheduler: str | None, explained: bool
) -> None:
    # The explainer was started for vramguard-scheduler (--scheduler-name's default), but the
    # policy, which the webhook sets on GPU pods, names the scheduler when it names one.
    store.set_policy(Policy.model_validate({"schedulerName": policy_scheduler}))
    explainer, _ = make_explainer(store, FakeSink(), clock)
    pod = unschedulable("incoming", 1500)
    pod["spec"]["schedulerName"] = "gpu-scheduler"
    explainer.apply_pod_event("ADDED", pod)
    assert [p.name for p in explainer.pending()] == (["incoming"] if explained else [])
