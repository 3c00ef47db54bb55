"""/bind: re-check the fit on the latest state, reserve, create the Binding, roll back on error.

Locking: the per-node lock covers only "read the node's latest state, check, record the
reservation", microseconds. It is released before the Binding API call. Once recorded, the
reservation counts in every later check on that node, so two concurrent binds cannot both take
the last free MiB, and a slow or hung apiserver call never holds a node lock (the stuck node
locks HAMi users know). The price: while a Binding is in flight its reservation may refuse
another pod, even if that Binding then fails and is rolled back; the scheduler retries that pod.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from extender.models import ExtenderBindingArgs
from extender.store import ClusterStore
from gpumem.fit import PREFIX, check_node, no_budget_message
from gpumem.policy import ExtenderSettings
from gpumem.state import Reservation
from kube.errors import BindError

log = logging.getLogger(__name__)

BindResult = Literal["bound", "refused", "unknown-pod", "api-error"]


class Binder(Protocol):
    """Creates the Binding (kube.binder.KubernetesBinder in production)."""

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Bind the pod to the node (blocking); raise BindError on failure."""


@dataclass(frozen=True)
class BindOutcome:
    result: BindResult
    error: str = ""


class NodeLocks:
    """One lock per node name, striped: node names hash into a fixed set of locks, so the set
    does not grow with node churn; two nodes sharing a stripe only wait for each other's
    microsecond check."""

    def __init__(self, stripes: int = 256) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def for_node(self, name: str) -> threading.Lock:
        digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
        return self._locks[int.from_bytes(digest, "big") % len(self._locks)]


class BindCoordinator:
    """Runs one bind, blocking: call it from a worker thread."""

    def __init__(
        self,
        store: ClusterStore,
        binder: Binder,
        clock: Callable[[], float] = time.time,
        locks: NodeLocks | None = None,
    ) -> None:
        self._store = store
        self._binder = binder
        self._clock = clock
        self._locks = locks or NodeLocks()

    def bind(self, args: ExtenderBindingArgs, settings: ExtenderSettings) -> BindOutcome:
        uid, namespace, name, node = args.pod_uid, args.pod_namespace, args.pod_name, args.node
        pod = self._store.pod_for_bind(uid)
        if pod is None:
            # Neither the watch nor a /filter call has shown this pod: its demand is unknown.
            # The scheduler retries the pod, by which time the watch will have it.
            return BindOutcome(
                "unknown-pod",
                f"{PREFIX}pod {namespace}/{name} ({uid}) is not in vramguard's cache yet",
            )
        if pod.is_gpu and pod.need_mib <= 0 and pod.bound_node is None:
            # /filter refuses it on every node; a bind that comes anyway is refused too, or
            # the pod would hold a card's memory without any of it counted.
            return BindOutcome(
                "refused", no_budget_message(self._store.policy.resource_names.gpumem)
            )
        reserved = False
        # A pod the watch already shows on a node is counted there: reserving again would
        # count it twice. The apiserver answers such a bind itself (409 Conflict).
        if pod.need_mib > 0 and pod.bound_node is None:
            with self._locks.for_node(node):
                now = self._clock()
                fit = check_node(pod.need_mib, node, self._store.node_state(node), settings, now)
                if fit.refusal is not None:
                    return BindOutcome("refused", fit.refusal.message)
                self._store.reserve(
                    Reservation(
                        uid=uid,
                        namespace=namespace,
                        name=name,
                        node=node,
                        mib=pod.need_mib,
                        expires_at=now + settings.reservation_ttl_seconds,
                    )
                )
                reserved = True
        try:
            self._binder.bind(namespace, name, uid, node)
        except BindError as err:
            if reserved:
                self._store.release(uid)
            log.warning("bind failed, reservation rolled back: %s", err)
            return BindOutcome("api-error", f"{PREFIX}{err}")
        log.info("bound %s/%s to %s (%d MiB)", namespace, name, node, pod.need_mib)
        return BindOutcome("bound")
