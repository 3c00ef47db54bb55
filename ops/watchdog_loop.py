"""The watchdog's loop: one cycle at a time, read (ops.readings), decide (gpumem.watchdog), act
(delete through a Pods port, or only log in a dry run), and one logfmt line per decision."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpumem.policy import Policy
from gpumem.state import PodView
from gpumem.watchdog import Recycled, WatchdogDecision, WatchdogLimits, decide
from gpumem.watchdog_facts import pod_facts
from ops import readings
from ops.common import CANNOT_TELL, FAILED, OK
from ops.watchdog_metrics import ErrorKind, RecycleResult, WatchdogMetrics

# The command's logger: its name is in every line the loop logs.
log = logging.getLogger("ops.watchdog")


@dataclass(frozen=True)
class Options:
    prometheus_url: str
    kubeconfig: Path | None
    interval: float
    floor_mib: int | None
    emergency_floor_mib: int | None
    cooldown_seconds: float
    nodes: tuple[str, ...]
    dry_run: bool

    def limits(self, policy: Policy) -> WatchdogLimits:
        return WatchdogLimits.of(
            policy,
            floor_mib=self.floor_mib,
            emergency_floor_mib=self.emergency_floor_mib,
            cooldown_seconds=self.cooldown_seconds,
        )


class Pods(Protocol):
    def delete(self, victim: PodView) -> tuple[RecycleResult, str]:
        """Delete the pod if it is still the one with the victim's UID; the result and, for
        an error, what went wrong."""
        ...

    def record_event(self, victim: PodView, message: str, now: float) -> str | None:
        """Record a VRAMWatchdogRecycled Event on the pod; None, or what went wrong."""
        ...


class Watchdog:
    """One cycle at a time: read, decide, act, log. Remembers the last recycle per node (per
    card on a node with several) for the cooldown (in memory: a restarted watchdog relies on
    terminating pods instead)."""

    def __init__(
        self,
        options: Options,
        pods: Pods,
        metrics: WatchdogMetrics,
        policy: Callable[[], Policy],
    ) -> None:
        self.options = options
        self.metrics = metrics
        self._pods = pods
        self._policy = policy
        self._recycled: dict[str, Recycled] = {}
        self.last_cycle_ended: float | None = None  # time.monotonic()

    def describe(self) -> str:
        o = self.options
        limits = o.limits(self._policy())
        floor = f"floor {limits.floor_mib} MiB" + (" (policy)" if o.floor_mib is None else "")
        scope = ", ".join(o.nodes) if o.nodes else "every GPU node"
        mode = (
            "DRY RUN: recycles are logged, nothing is deleted (--dry-run false or "
            "DRY_RUN=false to enforce)"
            if o.dry_run
            else "ENFORCING: pods over their budget are deleted"
        )
        return (
            f"watching {scope} every {o.interval:g}s: {floor}, emergency floor "
            f"{limits.emergency_floor_mib} MiB, cooldown {o.cooldown_seconds:g}s; {mode}"
        )

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.cycle()
            except Exception:  # a bug must not stop the backstop; it is logged and counted
                log.exception("cycle_error=internal")
                self.metrics.cycle_errors.labels("internal").inc()
                self.last_cycle_ended = time.monotonic()
            stop.wait(self.options.interval)

    def cycle(self) -> int:
        """One cycle; its exit status for --once (0, 1 a delete failed, 2 nothing read)."""
        try:
            return self._cycle()
        finally:
            self.last_cycle_ended = time.monotonic()

    def _cycle(self) -> int:
        started = time.monotonic()
        policy = self._policy()
        o = self.options
        try:
            nodes, pods = readings.list_cluster(o.kubeconfig)
        except readings.ReadError as err:
            return self._cannot_tell("cluster", str(err))
        now = readings.now()
        try:
            reading = readings.read_live(o.prometheus_url, policy, now)
        except readings.TelemetryUnavailable as err:
            return self._cannot_tell("telemetry", str(err))
        snapshot = readings.build_snapshot(policy, nodes, pods, reading, now)
        decisions = decide(
            snapshot,
            o.limits(policy),
            policy.extender,
            now,
            facts=pod_facts(pods, policy),
            recycled=self._recycled,
            only=o.nodes,
        )
        failed = False
        for decision in decisions:
            result: RecycleResult | None = None
            detail = ""
            if decision.recycles:
                result, detail = self._recycle(decision, now)
                failed |= result == "error"
            self.metrics.decided(decision)
            _log_decision(decision, o.dry_run, result, detail)
        self._forget(now)
        self.metrics.last_success.set(now)
        actions = [d.action for d in decisions]
        log.debug(
            "cycle nodes=%d recycle=%d none=%d took=%.2fs",
            len(decisions),
            actions.count("recycle"),
            actions.count("none"),
            time.monotonic() - started,
        )
        return FAILED if failed else OK

    def _recycle(self, decision: WatchdogDecision, now: float) -> tuple[RecycleResult, str]:
        victim = decision.victim
        assert victim is not None  # a recycle always names its victim
        if self.options.dry_run:
            result: RecycleResult = "dry-run"
            detail = ""
        else:
            result, detail = self._pods.delete(victim)
        self.metrics.recycles.labels(result).inc()
        if result == "error":
            return result, detail  # not remembered: the next cycle tries again
        card = decision.card
        remembered = Recycled(
            decision.node,
            victim.uid,
            victim.namespace,
            victim.name,
            now,
            None if card is None else card.uuid,
        )
        self._recycled[remembered.key] = remembered
        if result == "deleted":
            problem = self._pods.record_event(victim, decision.message, now)
            if problem is not None:
                log.warning(
                    "node=%s pod=%s event_error=%s", decision.node, decision.pod, _q(problem)
                )
        return result, detail

    def _forget(self, now: float) -> None:
        cooldown = self.options.cooldown_seconds
        for key in [k for k, r in self._recycled.items() if now - r.at >= cooldown]:
            del self._recycled[key]

    def _cannot_tell(self, kind: ErrorKind, message: str) -> int:
        log.warning("cycle_error=%s action=none msg=%s", kind, _q(message))
        self.metrics.cycle_errors.labels(kind).inc()
        return CANNOT_TELL


def _log_decision(
    decision: WatchdogDecision, dry_run: bool, result: RecycleResult | None, detail: str
) -> None:
    """One logfmt line per decision: recycles as warnings (errors as errors), other
    decisions that are not "ok" as info, "ok" at debug."""
    fields: list[tuple[str, object]] = [("node", decision.node)]
    card = decision.card
    if card is not None:  # a node with several cards: which one this is about
        fields += [("gpu", card.index), ("uuid", card.uuid or "-")]
    fields += [
        ("action", decision.action),
        ("reason", decision.reason),
        ("dry_run", "true" if dry_run else "false"),
    ]
    if decision.free_mib is not None:
        fields.append(("free", decision.free_mib))
    if decision.floor_mib is not None:
        fields.append(("floor", decision.floor_mib))
    victim = decision.victim
    if victim is not None:
        fields += [
            ("pod", decision.pod),
            ("uid", victim.uid),
            ("used", victim.used_mib),
            ("declared", victim.declared_mib),
        ]
    if result is not None:
        fields.append(("result", result))
    if detail:
        fields.append(("error", _q(detail)))
    fields.append(("msg", _q(decision.message)))
    line = " ".join(f"{key}={value}" for key, value in fields)
    if result == "error":
        level = logging.ERROR
    elif decision.recycles:
        level = logging.WARNING
    elif decision.reason == "ok":
        level = logging.DEBUG
    else:
        level = logging.INFO
    log.log(level, "%s", line)


def _q(text: str) -> str:
    """A logfmt value in double quotes (JSON string escaping)."""
    return json.dumps(text, ensure_ascii=False)
