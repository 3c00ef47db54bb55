"""`vramguard watchdog`: the seeds' backstop as a loop. When a card's live free VRAM is below the
floor and something needs it, recycle (delete) the pod furthest over its declared budget.

    vramguard watchdog --prometheus-url URL [--policy FILE] [--kubeconfig FILE]
                       [--interval SECONDS] [--floor MIB] [--emergency-floor MIB]
                       [--cooldown SECONDS] [--node NAME]... [--dry-run true|false]
                       [--once] [--metrics-port PORT]

Every --interval seconds: one list of nodes and pods and one telemetry read (the extender's
own code, ops.readings), the rule of extender.watchdog per GPU node, and for each
node whose decision is not "ok" one log line with the numbers:

    node=gpu-1 action=recycle reason=over-budget dry_run=true free=400 floor=1024
    pod=immich/immich-ml used=6100 declared=3000 result=dry-run msg="live free 400 MiB < ..."

A dry run (the default, as the seeds shipped it: observe, then enforce) logs the recycles it
would do and deletes nothing. --dry-run false, or DRY_RUN=false in the environment (the flag
wins), deletes the pod with a UID precondition, so a pod recreated under the same name is
never hit, and records a VRAMWatchdogRecycled Event on it. Prometheus or the API server
unreachable: one log line, counted, no action; the loop goes on.

Exit status: 0 (--once: the cycle ran, whatever it decided; a loop: stopped by SIGTERM or
SIGINT), 1 (--once: a delete was refused), 2 (usage error: bad arguments or DRY_RUN, an
unreadable policy or kubeconfig; --once: the cluster or Prometheus could not be read).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from extender.snapshot import PodView
from extender.watchdog import (
    NONE_REASONS,
    RECYCLE_REASONS,
    Decision,
    Recycled,
    WatchdogLimits,
    decide,
    pod_facts,
)
from gpumem.policy import Policy
from gpumem.policy_file import PolicyError, PolicyFile
from kube.pods import kubernetes_pods
from ops import common, readings
from ops.probes import TEXT, ProbeServer

log = logging.getLogger("ops.watchdog")

FAILED = 1
CANNOT_TELL = 2  # also a usage error
DEFAULT_INTERVAL_SECONDS = 30.0
DEFAULT_COOLDOWN_SECONDS = 300.0
METRICS_PREFIX = "vramguard_watchdog_"

RecycleResult = Literal["dry-run", "deleted", "gone", "conflict", "error"]
RECYCLE_RESULTS: tuple[RecycleResult, ...] = ("dry-run", "deleted", "gone", "conflict", "error")
ErrorKind = Literal["cluster", "telemetry", "internal"]
ERROR_KINDS: tuple[ErrorKind, ...] = ("cluster", "telemetry", "internal")


def register(subcommands: Any) -> None:
    parser: argparse.ArgumentParser = subcommands.add_parser(
        "watchdog",
        help="recycle the pod most over its GPU-memory budget when a card runs low "
        "(dry run by default)",
        description="Every --interval seconds, per GPU node: when live free VRAM is below the "
        "floor and a GPU pod is Pending for lack of live VRAM (or free is below the emergency "
        "floor), delete the pod with the largest used - declared among pods using more than "
        "they declared. Never a pod without a declaration. Dry run by default (DRY_RUN=true): "
        "the recycle is logged, nothing is deleted. Needs per-pod usage telemetry "
        "(pod-exporter preset or a podUsedMiB query).",
    )
    add = parser.add_argument
    add("--prometheus-url", required=True, metavar="URL", help="Prometheus base URL")
    common.add_cluster_options(parser)
    add(
        "--interval",
        type=common.seconds(positive=True),
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between cycles (default {DEFAULT_INTERVAL_SECONDS:g})",
    )
    add(
        "--floor",
        type=common.mib,
        metavar="MIB",
        help="act only below this much live free VRAM (default: the policy's "
        "extender.floorMiB, following reloads)",
    )
    add(
        "--emergency-floor",
        type=common.mib,
        metavar="MIB",
        help="below this, act even when no pod is Pending (default: half the floor)",
    )
    add(
        "--cooldown",
        type=common.seconds(positive=False),
        default=DEFAULT_COOLDOWN_SECONDS,
        metavar="SECONDS",
        help="after a recycle on a node, wait this long before the next one there, for the "
        f"freed VRAM to show in telemetry (default {DEFAULT_COOLDOWN_SECONDS:g})",
    )
    add(
        "--node",
        dest="nodes",
        action="append",
        default=[],
        metavar="NAME",
        help="only this node (repeat for several; default: every GPU node)",
    )
    add(
        "--dry-run",
        type=common.boolean,
        metavar="true|false",
        help="log recycles without deleting anything (default: $DRY_RUN, else true)",
    )
    add("--once", action="store_true", help="one cycle, then exit")
    add(
        "--metrics-port",
        type=common.port,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz in plain HTTP on this port",
    )
    parser.set_defaults(run=run)


# --- Options -------------------------------------------------------------------------------------


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


def run(args: argparse.Namespace) -> int:
    try:
        dry_run = args.dry_run if args.dry_run is not None else _dry_run_from_environment()
    except ValueError as err:
        return _fail(str(err), CANNOT_TELL)
    if (
        args.floor is not None
        and args.emergency_floor is not None
        and args.emergency_floor > args.floor
    ):
        return _fail(
            f"--emergency-floor {args.emergency_floor} is above --floor {args.floor}", CANNOT_TELL
        )
    try:
        policy_file = PolicyFile(args.policy) if args.policy is not None else None
    except PolicyError as err:
        return _fail(str(err), CANNOT_TELL)
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        return _fail(f"kubeconfig {args.kubeconfig}: no such file", CANNOT_TELL)
    try:
        pods = kubernetes_pods(args.kubeconfig)
    except Exception as err:  # kubernetes.config raises several kinds, all a setup problem
        return _fail(f"cannot load Kubernetes credentials: {err}", CANNOT_TELL)

    def current_policy() -> Policy:
        if policy_file is None:
            return Policy()
        policy_file.reload_if_changed()  # a broken edit is logged and the last good one kept
        return policy_file.current

    options = Options(
        prometheus_url=args.prometheus_url,
        kubeconfig=args.kubeconfig,
        interval=args.interval,
        floor_mib=args.floor,
        emergency_floor_mib=args.emergency_floor,
        cooldown_seconds=args.cooldown,
        nodes=tuple(args.nodes),
        dry_run=dry_run,
    )
    metrics = WatchdogMetrics(dry_run=dry_run)
    watchdog = Watchdog(options, pods, metrics, current_policy)
    log.info("%s", watchdog.describe())
    if args.once:
        return watchdog.cycle()
    server = None
    if args.metrics_port is not None:
        # Alive while cycles keep ending: a cycle is bounded by its API and Prometheus
        # timeouts (60 s a list page, 10 s a query, 30 s a delete).
        server = MetricsServer(watchdog, args.metrics_port, stale_after=3 * args.interval + 180)
        server.start()
    stop = threading.Event()
    common.stop_on_signals(stop)
    try:
        watchdog.loop(stop)
    finally:
        if server is not None:
            server.stop()
    log.info("stopped")
    return 0


def _dry_run_from_environment() -> bool:
    text = os.environ.get("DRY_RUN")
    if text is None or not text.strip():
        return True
    try:
        return common.parse_boolean(text)
    except ValueError:
        raise ValueError(f"DRY_RUN={text!r}: not true or false") from None


# --- Metrics -------------------------------------------------------------------------------------


class WatchdogMetrics:
    """The watchdog's metrics, in a registry of its own. Every label value it can take starts
    at 0, so that increase() sees the first recycle."""

    def __init__(self, *, dry_run: bool) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.dry_run_label = "true" if dry_run else "false"
        self.decisions = Counter(
            METRICS_PREFIX + "decisions_total",
            "Decisions per GPU node and cycle, by action (none, recycle), reason and dry_run.",
            ["action", "reason", "dry_run"],
            registry=r,
        )
        self.recycles = Counter(
            METRICS_PREFIX + "recycles_total",
            "Pods chosen for recycling, by result: dry-run (logged only), deleted, gone (404: "
            "already deleted), conflict (409: the name now belongs to another pod), error.",
            ["result"],
            registry=r,
        )
        self.cycle_errors = Counter(
            METRICS_PREFIX + "cycle_errors_total",
            "Cycles that decided nothing, by what failed: cluster (the API server), telemetry "
            "(Prometheus), internal (a bug; logged with its traceback).",
            ["kind"],
            registry=r,
        )
        self.last_success = Gauge(
            METRICS_PREFIX + "last_success_timestamp_seconds",
            "Unix time of the last cycle that read the cluster and telemetry and decided "
            "(0: none yet).",
            registry=r,
        )
        self.dry_run = Gauge(
            METRICS_PREFIX + "dry_run",
            "1 when recycles are only logged (DRY_RUN), 0 when pods are deleted.",
            registry=r,
        )
        self.dry_run.set(1 if dry_run else 0)
        for reason in NONE_REASONS:
            self.decisions.labels("none", reason, self.dry_run_label)
        for reason in RECYCLE_REASONS:
            self.decisions.labels("recycle", reason, self.dry_run_label)
        for result in RECYCLE_RESULTS:
            self.recycles.labels(result)
        for kind in ERROR_KINDS:
            self.cycle_errors.labels(kind)

    def decided(self, decision: Decision) -> None:
        self.decisions.labels(decision.action, decision.reason, self.dry_run_label).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- Deleting pods -------------------------------------------------------------------------------


class Pods(Protocol):
    def delete(self, victim: PodView) -> tuple[RecycleResult, str]:
        """Delete the pod if it is still the one with the victim's UID; the result and, for
        an error, what went wrong."""
        ...

    def record_event(self, victim: PodView, message: str, now: float) -> str | None:
        """Record a VRAMWatchdogRecycled Event on the pod; None, or what went wrong."""
        ...


# --- The loop ------------------------------------------------------------------------------------


class Watchdog:
    """One cycle at a time: read, decide, act, log. Remembers the last recycle per node for
    the cooldown (in memory: a restarted watchdog relies on terminating pods instead)."""

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
        return FAILED if failed else 0

    def _recycle(self, decision: Decision, now: float) -> tuple[RecycleResult, str]:
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
        self._recycled[decision.node] = Recycled(
            decision.node, victim.uid, victim.namespace, victim.name, now
        )
        if result == "deleted":
            problem = self._pods.record_event(victim, decision.message, now)
            if problem is not None:
                log.warning(
                    "node=%s pod=%s event_error=%s", decision.node, decision.pod, _q(problem)
                )
        return result, detail

    def _forget(self, now: float) -> None:
        cooldown = self.options.cooldown_seconds
        for node in [n for n, r in self._recycled.items() if now - r.at >= cooldown]:
            del self._recycled[node]

    def _cannot_tell(self, kind: ErrorKind, message: str) -> int:
        log.warning("cycle_error=%s action=none msg=%s", kind, _q(message))
        self.metrics.cycle_errors.labels(kind).inc()
        return CANNOT_TELL


def _log_decision(
    decision: Decision, dry_run: bool, result: RecycleResult | None, detail: str
) -> None:
    """One logfmt line per decision: recycles as warnings (errors as errors), other
    decisions that are not "ok" as info, "ok" at debug."""
    fields: list[tuple[str, object]] = [
        ("node", decision.node),
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


# --- Serving metrics -----------------------------------------------------------------------------


class MetricsServer(ProbeServer):
    """GET /metrics; /healthz: 200 while cycles keep ending (one ended within `stale_after`
    seconds, or the first is still running); /readyz: 200 while serving, so that a watchdog
    that cannot read the cluster or Prometheus stays scraped and its error counters seen.
    Plain HTTP on every address: counters and "ok", nothing else."""

    def __init__(self, watchdog: Watchdog, port: int, *, stale_after: float) -> None:
        self._watchdog = watchdog
        self._stale_after = stale_after
        self._started = time.monotonic()
        super().__init__(self.answer, port, name="vramguard-watchdog-metrics")

    def answer(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self._watchdog.metrics.render()
        if path == "/healthz":
            ended = self._watchdog.last_cycle_ended
            since = time.monotonic() - (ended if ended is not None else self._started)
            if since <= self._stale_after:
                return 200, TEXT, b"ok\n"
            return 503, TEXT, f"no cycle ended in the last {self._stale_after:g} s\n".encode()
        if path == "/readyz":
            return 200, TEXT, b"ok\n"
        return 404, TEXT, b"not found\n"


def _fail(message: str, status: int) -> int:
    print(f"vramguard watchdog: {message}", file=sys.stderr, flush=True)
    return status


__all__ = ["Watchdog", "WatchdogMetrics", "register", "run"]
