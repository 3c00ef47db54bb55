"""The extender's HTTP apps: POST /filter /prioritize /bind /preempt for kube-scheduler, and
GET /healthz /readyz /metrics /debug/snapshot; and a metrics-only app (GET /metrics /healthz
/readyz) for a listener that Prometheus and the kubelet's probes can reach.

Requests read the store's frozen snapshot and never call the API or Prometheus; the one
exception is the Binding that /bind creates, in a worker thread. Filter, prioritize and preempt
run on the event loop: they are pure CPU work of a millisecond or two, less than a hop to a
thread would cost, and the snapshot read never waits for a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from extender.binding import BindCoordinator, Binder
from extender.debug import describe_snapshot
from extender.fit_memo import FitMemo, RecentFits
from extender.metrics import ExtenderMetrics
from extender.models import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    node_name,
    pod_key,
    pod_uid,
)
from extender.scheduling import FilterResult, filter_nodes, need_mib, score_nodes, vet_preemption
from extender.settings import Settings
from extender.store import ClusterStore
from gpumem.demand import DemandError, PodDemand, read_demand
from gpumem.fit import Limits
from gpumem.policy import Policy
from gpumem.policy_file import ReloadOutcome

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
STALE_LOG_INTERVAL_SECONDS = 60.0
Handler = Callable[[Request], Awaitable[Response]]


class PolicySource(Protocol):
    """gpumem.policy_file.PolicyFile, or a fixed policy in tests."""

    @property
    def current(self) -> Policy: ...

    def watch(
        self, interval: float, on_outcome: Callable[[ReloadOutcome], None]
    ) -> Coroutine[Any, Any, None]: ...


class BackgroundService(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class Watch(BackgroundService, Protocol):
    def request_relist(self) -> None: ...


@dataclass
class FixedPolicy:
    """A policy that never changes (tests, benchmarks)."""

    policy: Policy

    @property
    def current(self) -> Policy:
        return self.policy

    async def watch(self, interval: float, on_outcome: Callable[[ReloadOutcome], None]) -> None:
        await asyncio.Event().wait()


@dataclass
class ExtenderDeps:
    """Everything the app talks to; tests pass fakes. Background services start and stop with
    the app's lifespan."""

    store: ClusterStore
    binder: Binder
    policy: PolicySource
    metrics: ExtenderMetrics = field(default_factory=ExtenderMetrics)
    watches: Sequence[Watch] = ()
    telemetry: BackgroundService | None = None
    # Anything else that runs beside the app (the GPU-memory advertiser).
    services: Sequence[BackgroundService] = ()
    clock: Callable[[], float] = time.time


class BadRequest(Exception):
    """A request that cannot be read; answered 400 with the message."""


def create_app(settings: Settings, deps: ExtenderDeps) -> Starlette:
    deps.metrics.observe_store(deps.store, deps.clock)
    endpoints = Endpoints(deps, max_preemption_nodes=settings.max_preemption_nodes)

    def verb(path: str, name: str, handler: Handler, method: str = "POST") -> Route:
        return Route(path, endpoints.instrumented(name, handler), methods=[method])

    routes = [
        verb("/filter", "filter", endpoints.filter),
        verb("/prioritize", "prioritize", endpoints.prioritize),
        verb("/bind", "bind", endpoints.bind),
        verb("/preempt", "preempt", endpoints.preempt),
        *endpoints.probe_routes(),
        verb("/debug/snapshot", "debug", endpoints.debug_snapshot, method="GET"),
    ]
    return Starlette(
        routes=routes,
        lifespan=lambda app: lifespan(settings, deps),
        max_body_size=settings.max_body_bytes,
    )


def create_metrics_app(deps: ExtenderDeps) -> Starlette:
    """GET /metrics, /healthz and /readyz, and nothing else, over the same registry and
    readiness as the main app (whose lifespan runs the background services; this one has
    none). Served in plain HTTP on the pod network: no pod spec and no verb crosses it, only
    counters and "ok", so it needs neither TLS nor the loopback-only rule of the verbs."""
    deps.metrics.observe_store(deps.store, deps.clock)
    return Starlette(routes=Probes(deps).probe_routes(), max_body_size=64 * 1024)


class Probes:
    """/healthz, /readyz and /metrics, shared by the main app and the metrics app."""

    def __init__(self, deps: ExtenderDeps) -> None:
        self._deps = deps
        self._store = deps.store
        self._metrics = deps.metrics
        self._clock = deps.clock

    def probe_routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        problems = not_ready_because(self._store, self._deps.policy.current)
        if problems:
            return PlainTextResponse("not ready: " + "; ".join(problems) + "\n", status_code=503)
        return PlainTextResponse("ok")

    async def metrics(self, request: Request) -> Response:
        # In a thread: the gauges read the store, whose lock a writer may hold.
        body = await run_in_threadpool(self._metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


class Endpoints(Probes):
    def __init__(self, deps: ExtenderDeps, *, max_preemption_nodes: int = 1000) -> None:
        super().__init__(deps)
        self._max_preemption_nodes = max_preemption_nodes
        self._binds = BindCoordinator(deps.store, deps.binder, deps.clock)
        self._stale_logged_at = -math.inf
        self._fits = RecentFits()

    async def filter(self, request: Request) -> Response:
        args = await parse_extender_args(request)
        policy = self._deps.policy.current
        demand = read_pod(args.pod, policy)
        namespace, name = pod_key(args.pod)
        uid = pod_uid(args.pod)
        need = need_mib(demand)
        self._store.remember_demand(uid, namespace, name, need, is_gpu=demand.is_gpu)
        snapshot, now = self._store.snapshot(), self._clock()
        result = filter_nodes(
            demand,
            args.candidate_names(),
            snapshot,
            policy.extender,
            now,
            gpumem_resource=policy.resource_names.gpumem,
        )
        if result.headrooms:
            memo = FitMemo(need, Limits.of(policy.extender), now, snapshot.nodes, result.headrooms)
            self._fits.keep(uid, memo)
        self._count_filter(result, f"{namespace}/{name}")
        # model_construct: the result is built from validated data, and validating a
        # thousand node names again would cost more than the fit rule.
        if args.nodes is None:
            # ExtenderFilterResult's wire form, encoded directly: a model of thousands of
            # names costs more to serialize than the fit rule does to decide them.
            return json_bytes(
                {
                    "Nodes": None,
                    "NodeNames": list(result.passed),
                    "FailedNodes": result.failed,
                    "FailedAndUnresolvableNodes": result.unresolvable,
                    "Error": "",
                }
            )
        # The passing subset in the form it came in, every field of each Node kept.
        passed = set(result.passed)
        items = [node for node in args.nodes.items if node_name(node) in passed]
        body = ExtenderFilterResult.model_construct(
            nodes=args.nodes.model_copy(update={"items": items}),
            node_names=None,
            failed_nodes=result.failed,
            failed_and_unresolvable_nodes=result.unresolvable,
            error="",
        )
        return json_model(body)

    def _count_filter(self, result: FilterResult, pod: str) -> None:
        metrics = self._metrics
        for kind, count in result.refusals_by_kind.items():
            metrics.nodes_filtered_out.labels(reason=kind).inc(count)
        if result.live_skipped:
            metrics.stale_decisions.labels(mode="budget-only").inc(result.live_skipped)
            # Once a minute at most: with a Prometheus outage every GPU pod would log it.
            now = time.monotonic()
            if now - self._stale_logged_at >= STALE_LOG_INTERVAL_SECONDS:
                self._stale_logged_at = now
                log.info(
                    "%s: live check skipped on %d node(s): telemetry stale or missing, "
                    "staleMode budget-only (logged once a minute at most)",
                    pod,
                    result.live_skipped,
                )
        stale_refusals = result.refusals_by_kind.get("stale", 0)
        if stale_refusals:
            metrics.stale_decisions.labels(mode="deny").inc(stale_refusals)

    async def prioritize(self, request: Request) -> Response:
        args = await parse_extender_args(request)
        policy = self._deps.policy.current
        scores = score_nodes(
            read_pod(args.pod, policy),
            args.candidate_names(),
            self._store.snapshot(),
            policy.extender,
            self._clock(),
            memo=self._fits.get(pod_uid(args.pod)),
        )
        # HostPriorityList's wire form, encoded directly (see filter).
        return json_bytes([{"Host": host, "Score": score} for host, score in scores])

    async def bind(self, request: Request) -> Response:
        args = await parse(request, ExtenderBindingArgs)
        settings = self._deps.policy.current.extender
        outcome = await run_in_threadpool(self._binds.bind, args, settings)
        self._metrics.bind_results.labels(result=outcome.result).inc()
        return json_model(ExtenderBindingResult(error=outcome.error))

    async def preempt(self, request: Request) -> Response:
        body = await request.body()
        args, left_out = parse_preemption(body, self._max_preemption_nodes)
        policy = self._deps.policy.current
        victims = args.victims_by_node()
        vetting = vet_preemption(
            read_pod(args.pod, policy),
            {node: [pod.uid for pod in v.pods] for node, v in victims.items()},
            self._store.snapshot(),
            policy.extender,
            self._clock(),
            gpumem_resource=policy.resource_names.gpumem,
        )
        pod = "/".join(pod_key(args.pod))
        # One line per preemption, not one per node: a big cluster proposes thousands.
        if vetting.refused:
            node, reason = next(iter(vetting.refused.items()))
            log.info(
                "preemption for %s refused on %d of %d node(s) (%s: %s)",
                pod,
                len(vetting.refused),
                len(victims),
                node,
                reason,
            )
        if left_out:
            self._metrics.preemption_nodes_left_out.inc(left_out)
            log.warning(
                "preemption for %s: %d candidate node(s) left out, beyond the %d vetted "
                "(VRAMGUARD_EXTENDER_MAX_PREEMPTION_NODES; fewest PDB violations, then fewest "
                "victims, first)",
                pod,
                left_out,
                self._max_preemption_nodes,
            )
        return json_model(
            ExtenderPreemptionResult(
                node_name_to_meta_victims={node: victims[node] for node in vetting.kept}
            )
        )

    async def debug_snapshot(self, request: Request) -> Response:
        node = request.query_params.get("node")
        snapshot = self._store.snapshot()
        body = await run_in_threadpool(describe_snapshot, snapshot, self._clock(), node)
        return JSONResponse(body)

    def instrumented(self, verb: str, handler: Handler) -> Handler:
        """Count and time a verb; a BadRequest becomes a 400, anything else a logged 500."""
        metrics = self._metrics

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
                result = "ok"
            except BadRequest as err:
                response = error_response(400, str(err))
                result = "bad-request"
            except Exception:
                log.exception("/%s failed", verb)
                response = error_response(500, f"{verb}: internal error, see the extender log")
                result = "error"
            metrics.requests.labels(verb=verb, result=result).inc()
            metrics.latency.labels(verb=verb).observe(time.perf_counter() - started)
            return response

        return endpoint


@contextlib.asynccontextmanager
async def lifespan(settings: Settings, deps: ExtenderDeps) -> AsyncIterator[None]:
    """Start the watches and the telemetry poller, watch the policy file, sweep expired
    reservations; stop it all on shutdown."""
    store, metrics = deps.store, deps.metrics
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def apply_policy() -> None:
        if store.set_policy(deps.policy.current):
            log.info("resource names changed: relisting pods")
            for watch in deps.watches:
                watch.request_relist()

    def on_reload(outcome: ReloadOutcome) -> None:
        metrics.policy_reloads.labels(result="ok" if outcome.ok else "error").inc()
        if outcome.ok:
            # Rebuilding every node's state is too slow for the event loop.
            spawn(asyncio.to_thread(apply_policy), "policy-apply")

    async def sweep_reservations() -> None:
        while True:
            await asyncio.sleep(settings.reservation_sweep_seconds)
            await asyncio.to_thread(store.expire_reservations)

    services: list[BackgroundService] = [*deps.watches]
    if deps.telemetry is not None:
        services.append(deps.telemetry)
    services.extend(deps.services)
    for service in services:
        service.start()
    spawn(deps.policy.watch(settings.policy_poll_seconds, on_reload), "policy-watch")
    spawn(sweep_reservations(), "reservation-sweep")
    try:
        yield
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for service in services:
            await asyncio.to_thread(service.stop)


def read_pod(pod: dict[str, Any], policy: Policy) -> PodDemand:
    try:
        return read_demand(pod, policy.resource_names)
    except DemandError as err:
        raise BadRequest(f"Pod: {err}") from err


async def parse(request: Request, model: type[M]) -> M:
    """Read the body as `model`; anything else is a BadRequest naming each bad field."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise BadRequest(f"malformed {model.__name__}: {describe_validation(err)}") from err


PREEMPTION_MAPS = ("NodeNameToVictims", "NodeNameToMetaVictims")


def parse_preemption(body: bytes, limit: int) -> tuple[ExtenderPreemptionArgs, int]:
    """ExtenderPreemptionArgs with at most `limit` candidate nodes (both forms together), and
    how many were left out. The candidates kept are the scheduler's best by its own order:
    fewest PDB violations, then fewest victims, then name. Only the kept ones are validated:
    100,000 proposed nodes would otherwise take seconds to read and vet."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raw = None
    trimmed = None
    left_out = 0
    if isinstance(raw, dict):
        entries: list[tuple[tuple[int, int, str], str, str]] = []
        for key in PREEMPTION_MAPS:
            victims = raw.get(key)
            if isinstance(victims, dict) and victims:
                entries.extend(
                    (_preemption_rank(name, v), key, name) for name, v in victims.items()
                )
        if len(entries) > limit:
            entries.sort()
            kept: dict[str, dict[str, Any]] = {key: {} for key in PREEMPTION_MAPS}
            for _, key, name in entries[:limit]:
                kept[key][name] = raw[key][name]
            left_out = len(entries) - limit
            trimmed = {**raw, **kept}
    try:
        if trimmed is None:  # as sent: the model reads the JSON and names any bad field
            return ExtenderPreemptionArgs.model_validate_json(body), 0
        return ExtenderPreemptionArgs.model_validate(trimmed), left_out
    except ValidationError as err:
        raise BadRequest(f"malformed ExtenderPreemptionArgs: {describe_validation(err)}") from err


def _preemption_rank(name: str, victims: object) -> tuple[int, int, str]:
    if not isinstance(victims, dict):
        return (0, 0, name)  # validated (and refused) if kept
    violations = victims.get("NumPDBViolations")
    pods = victims.get("Pods")
    return (
        violations if isinstance(violations, int) else 0,
        len(pods) if isinstance(pods, list) else 0,
        name,
    )


async def parse_extender_args(request: Request) -> ExtenderArgs:
    """ExtenderArgs, decoding only what the verbs read: the body as JSON (orjson), and where it
    has the nodeCacheCapable shape (a Pod object, NodeNames a list of strings, no Nodes) the
    model built without validating it again; any other shape goes through the model, whose
    errors name the bad field. The pod stays a raw dict either way (gpumem.demand reads it)."""
    body = await request.body()
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raw = None  # the model says what is wrong with it
    if isinstance(raw, dict):
        pod, names = raw.get("Pod"), raw.get("NodeNames")
        if (
            isinstance(pod, dict)
            and raw.get("Nodes") is None
            and isinstance(names, list)
            and set(map(type, names)) <= {str}
        ):
            return ExtenderArgs.model_construct(pod=pod, nodes=None, node_names=names)
    try:
        return ExtenderArgs.model_validate_json(body)
    except ValidationError as err:
        raise BadRequest(f"malformed ExtenderArgs: {describe_validation(err)}") from err


def json_bytes(content: object) -> Response:
    return Response(orjson.dumps(content), media_type="application/json")


def describe_validation(err: ValidationError, limit: int = 5) -> str:
    problems = []
    for item in err.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "(body)"
        problems.append(f"{where}: {item['msg']}")
    more = err.error_count() - limit
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def json_model(model: BaseModel) -> Response:
    return Response(model.model_dump_json(by_alias=True), media_type="application/json")


def error_response(status: int, message: str) -> Response:
    # Shaped like the verbs' results, whose Error field a person reading it looks for.
    return JSONResponse({"Error": message}, status_code=status)


def not_ready_because(store: ClusterStore, policy: Policy) -> list[str]:
    problems = []
    if not store.synced:
        problems.append("pod and node watches have not listed yet")
    telemetry = store.telemetry_status
    if not telemetry.fetched_once and policy.extender.stale_mode == "deny":
        problems.append("no telemetry fetched yet and staleMode is deny")
    return problems


__all__ = ["ExtenderDeps", "FixedPolicy", "create_app", "create_metrics_app"]
