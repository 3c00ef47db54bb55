"""Explain Pending GPU pods with an Event on the pod (reason GPUMemoryUnavailable).

Three parts, each on its own thread:

- the pod watch (extender.watches) hands every pod to `PendingExplainer.apply_pod_event`,
  which keeps the set of the served scheduler's unschedulable GPU pods: a few dict operations,
  and for a pod that just became unschedulable a nudge to the evaluator. No fit work there.
- the evaluator wakes on a nudge and every `interval` seconds, evaluates the pods that may get
  an Event (gpumem.explain.explain_pod over the store's snapshot), and puts what is worth
  saying (EventThrottle) on a small bounded queue; when the queue is full the Event is dropped,
  counted, and tried again on the next pass.
- the recorder takes Events off the queue and writes them through an EventSink
  (kube.events.KubernetesEvents), the only API calls of the feature. A failure is counted
  and logged once per change of what goes wrong.

A Pending pod that fits somewhere now (VRAM freed since the scheduler gave up) gets no Event
but a nudge: a `vramguard.io/GPUMemoryFits` condition in its status. Nothing else tells
kube-scheduler that live VRAM came free, so the pod would wait for an unrelated cluster event
or podMaxInUnschedulablePodsDuration (5 minutes); the status update is a pod update, which
requeues a pod that only the extender refused (kube-scheduler's queueing hints, on by default
since 1.32). One nudge per pod and set of fitting nodes, at most one per min_interval.

No API read anywhere: the pod watch and the snapshot are all it knows.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from extender.metrics import ExtenderMetrics
from extender.store import ClusterStore
from extender.throttle import EventAction, EventThrottle, event_name
from gpumem.explain import explain_pod
from gpumem.fit import PREFIX
from gpumem.pending import PendingPod, pending_pod
from gpumem.policy import Policy
from kube.errors import EventExists, EventMissing, WriteError
from kube.threads import Threads

log = logging.getLogger(__name__)

EVENT_REASON = "GPUMemoryUnavailable"
EVENT_COMPONENT = "vramguard-extender"
QUEUE_SIZE = 32
FITS_CONDITION = "vramguard.io/GPUMemoryFits"
FITS_REASON = "FitsNow"
Result = Literal["created", "refreshed", "duplicate", "dropped", "error", "nudged"]


@dataclass(frozen=True, slots=True)
class EventRequest:
    """One Event to write (create) or to bump (refresh: count and last timestamp)."""

    action: EventAction
    name: str
    namespace: str
    pod_name: str
    pod_uid: str
    message: str
    count: int
    key: str


@dataclass(frozen=True, slots=True)
class NudgeRequest:
    """Tell kube-scheduler that a Pending pod fits now (a condition in the pod's status)."""

    namespace: str
    pod_name: str
    pod_uid: str
    message: str


class EventSink(Protocol):
    def create(self, request: EventRequest, now: float) -> None:
        """Create the Event; raise EventExists or EventWriteError."""

    def refresh(self, request: EventRequest, now: float) -> None:
        """Set its count, message and last timestamp; raise EventMissing or EventWriteError."""


class Nudger(Protocol):
    def nudge(self, request: NudgeRequest, now: float) -> None:
        """Set the pod's FITS_CONDITION (kube.conditions.KubernetesNudger); raise NudgeError."""


class PendingExplainer:
    """The watch listener, the evaluator and the recorder; a BackgroundService of the app."""

    def __init__(
        self,
        store: ClusterStore,
        sink: EventSink,
        metrics: ExtenderMetrics,
        *,
        nudger: Nudger,
        scheduler_name: str,
        min_interval: float = 30.0,
        refresh_interval: float | None = 600.0,
        interval: float = 5.0,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._sink = sink
        self._nudger = nudger
        self._metrics = metrics
        self._scheduler_name = scheduler_name
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, PendingPod] = {}
        self._throttle = EventThrottle(min_interval, refresh_interval)
        self._throttle_lock = threading.Lock()
        self._queue: queue.Queue[EventRequest | NudgeRequest] = queue.Queue(maxsize=queue_size)
        # uid -> (the nodes it was said to fit on, when): one nudge per pod and answer.
        self._nudged: dict[str, tuple[str, float]] = {}
        self._min_interval = min_interval
        self._wake = threading.Event()
        self._threads = Threads()
        self._stop = self._threads.stopping
        self._write_problem: str | None = None
        self._listener_failed = False
        self._names_of: Policy | None = None
        self._names = store.policy.resource_names
        metrics.unschedulable_pods.set_function(lambda: len(self._pending))

    # -- the pod watch's side (its thread: cheap, never blocks on the API) --

    def replace_pods(self, raw_pods: Iterable[dict[str, Any]]) -> None:
        replacement = self.pod_replacement()
        for raw in raw_pods:
            replacement.add(raw)
        replacement.commit()

    def pod_replacement(self) -> PendingReplacement:
        """A fresh pod list read one pod at a time (the pod watch feeds it with the store's in
        one pass), swapped in whole by its `commit`."""
        return PendingReplacement(self)

    def _replace_pending(self, pending: dict[str, PendingPod]) -> None:
        with self._lock:
            self._pending = pending
        self._wake.set()

    def apply_pod_event(self, event_type: str, raw: dict[str, Any]) -> None:
        pod = None if event_type == "DELETED" else self._read(raw)
        if pod is None:
            uid = (raw.get("metadata") or {}).get("uid")
            if (
                isinstance(uid, str) and uid in self._pending
            ):  # a dict lookup for every pod that is not tracked
                with self._lock:
                    self._pending.pop(uid, None)
            return
        with self._lock:
            old = self._pending.get(pod.uid)
            self._pending[pod.uid] = pod
        if (
            old is None
            or old.need_mib != pod.need_mib
            or old.scheduler_message != pod.scheduler_message
        ):
            self._wake.set()

    def _read(self, raw: dict[str, Any]) -> PendingPod | None:
        # A bug here must not stop the pod watch that the fit rule depends on.
        try:
            policy = self._store.policy
            if policy is not self._names_of:  # built once per policy, not once per event
                self._names, self._names_of = policy.resource_names, policy
            # The policy names the scheduler (the webhook sets it on GPU pods); the flag only
            # stands in when the policy leaves pods' schedulerName alone (null).
            served = policy.scheduler_name or self._scheduler_name
            return pending_pod(raw, served, self._names)
        except Exception:
            if not self._listener_failed:
                self._listener_failed = True
                log.exception("reading a pod for explanations failed (logged once)")
            return None

    # -- the evaluator --

    def evaluate_once(self) -> int:
        """One pass over the pending pods; returns how many Events and nudges were queued."""
        now = self._clock()
        with self._lock:
            pending = list(self._pending.values())
        snapshot = self._store.snapshot()
        policy = self._store.policy
        settings = policy.extender
        if not snapshot.synced or (
            settings.stale_mode == "deny" and not snapshot.telemetry.fetched_once
        ):
            return 0  # an incomplete picture would explain refusals that are not there
        queued = 0
        with self._throttle_lock:
            self._throttle.retain(pod.uid for pod in pending)
            keep = {pod.uid for pod in pending}
            for uid in [u for u in self._nudged if u not in keep]:
                del self._nudged[uid]
        for pod in pending:
            with self._throttle_lock:
                if not self._throttle.due(pod.uid, now):
                    continue
            explanation = explain_pod(
                pod, snapshot.nodes, settings, now, resource=policy.gpumem_resource_name
            )
            if not explanation.explains:
                # It fits somewhere now: ask kube-scheduler to try again.
                queued += self._nudge(pod, explanation.fits_on, now)
                continue
            key = explanation.key
            with self._throttle_lock:
                action = self._throttle.decide(pod.uid, key, now)
                if action is None:
                    continue
                request = EventRequest(
                    action=action,
                    name=event_name(pod.name, pod.uid, key),
                    namespace=pod.namespace,
                    pod_name=pod.name,
                    pod_uid=pod.uid,
                    message=explanation.message,
                    count=self._throttle.next_count(pod.uid, action),
                    key=key,
                )
                try:
                    self._queue.put_nowait(request)
                except queue.Full:
                    # Not recorded as said: the next pass tries again.
                    self._count("dropped")
                    continue
                self._throttle.said(pod.uid, key, now, action)
            queued += 1
        return queued

    def _nudge(self, pod: PendingPod, fits_on: tuple[str, ...], now: float) -> int:
        key = ",".join(fits_on)
        with self._throttle_lock:
            said = self._nudged.get(pod.uid)
            if said is not None and (said[0] == key or now - said[1] < self._min_interval):
                return 0
            more = len(fits_on) - 3
            shown = ", ".join(fits_on[:3]) + (f" and {more} more" if more > 0 else "")
            request = NudgeRequest(
                namespace=pod.namespace,
                pod_name=pod.name,
                pod_uid=pod.uid,
                message=f"{PREFIX}fits now on {shown}; asking kube-scheduler to try again",
            )
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                self._count("dropped")
                return 0
            self._nudged[pod.uid] = (key, now)
        return 1

    # -- the recorder --

    def record_once(self, timeout: float = 0.0) -> bool:
        """Write one queued Event; False when none came within timeout."""
        try:
            request = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return False
        try:
            self._write(request)
        finally:
            self._queue.task_done()
        return True

    def _write(self, request: EventRequest | NudgeRequest) -> None:
        now = self._clock()
        result: Result
        try:
            if isinstance(request, NudgeRequest):
                self._nudger.nudge(request, now)
                result = "nudged"
            elif request.action == "refresh":
                try:
                    self._sink.refresh(request, now)
                    result = "refreshed"
                except EventMissing:
                    self._sink.create(request, now)
                    result = "created"
            else:
                self._sink.create(request, now)
                result = "created"
        except EventExists:
            result = "duplicate"
        except WriteError as err:  # an Event's (EventWriteError) or a nudge's (NudgeError)
            self._count("error")
            with self._throttle_lock:
                if isinstance(request, NudgeRequest):
                    # Said to nothing: again once min_interval has passed.
                    said = self._nudged.get(request.pod_uid)
                    if said is not None:
                        self._nudged[request.pod_uid] = ("", said[1])
                else:
                    self._throttle.failed(request.pod_uid, request.key)
            if err.problem != self._write_problem:
                self._write_problem = err.problem
                log.warning(
                    "cannot write %s events (logged once until it changes): %s",
                    EVENT_REASON,
                    err.problem,
                )
            return
        self._count(result)
        if self._write_problem is not None:
            self._write_problem = None
            log.info("writing %s events again", EVENT_REASON)
        if result != "duplicate":
            log.info(
                "%s/%s: %s (event %s)",
                request.namespace,
                request.pod_name,
                request.message,
                result,
            )

    def _count(self, result: Result) -> None:
        self._metrics.explanations.labels(result=result).inc()

    # -- BackgroundService --

    def start(self) -> None:
        self._stop.clear()
        self._threads.start("vramguard-explain", self._evaluate_loop)
        self._threads.start("vramguard-events", self._record_loop)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        # A write in flight ends within its API timeout; daemon threads, so do not wait.
        self._threads.stop()

    def _evaluate_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.evaluate_once()
            except Exception:
                log.exception("explaining pending GPU pods failed; trying again")

    def _record_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.record_once(timeout=0.5)
            except Exception:
                log.exception("writing an explanation event failed unexpectedly")

    # -- introspection, for tests and /debug --

    def pending(self) -> list[PendingPod]:
        with self._lock:
            return list(self._pending.values())

    @property
    def queued(self) -> int:
        return self._queue.qsize()


class PendingReplacement:
    """A pod list being read (PendingExplainer.pod_replacement): `add` keeps the pending GPU
    pods of the raw pods it is handed, `commit` swaps them in at once; one never committed
    (the list failed half way) changes nothing."""

    def __init__(self, explainer: PendingExplainer) -> None:
        self._explainer = explainer
        self._pending: dict[str, PendingPod] = {}

    def add(self, raw: dict[str, Any]) -> None:
        pod = self._explainer._read(raw)
        if pod is not None:
            self._pending[pod.uid] = pod

    def commit(self) -> None:
        self._explainer._replace_pending(self._pending)
