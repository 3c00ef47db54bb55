"""The HTTP edge: POST /mutate, health, readiness and metrics.

Handlers do no blocking I/O: the policy and the cluster view are read from memory (kept
current by the lifespan's policy watch and the cluster watches' threads), and deciding is
pure CPU work well under a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gpumem.policy_file import PolicyFile
from webhook import responses
from webhook.decide import decide
from webhook.logs import FIELDS
from webhook.metrics import WebhookMetrics
from webhook.models import AdmissionRequest, InvalidReview, parse_review
from webhook.settings import Settings
from webhook.view import ClusterView

log = logging.getLogger(__name__)

JSON = "application/json"


class ClusterSource(Protocol):
    """Where the ClusterView comes from (ClusterWatch, or FixedCluster without API access)."""

    @property
    def view(self) -> ClusterView: ...

    @property
    def synced(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class FixedCluster:
    """A cluster view that never changes. The default, unknown view is the one used without
    API access: namespace labels, the globalDefault class and class existence are not checked."""

    view: ClusterView = field(default_factory=ClusterView)
    synced: bool = True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass(frozen=True)
class Dependencies:
    policy_file: PolicyFile
    cluster: ClusterSource = field(default_factory=FixedCluster)
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics)


class RequestRejected(Exception):
    """A request that gets an HTTP error instead of an AdmissionReview."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(settings: Settings, deps: Dependencies) -> Starlette:
    metrics = deps.metrics
    metrics.cluster_synced.set_function(lambda: float(deps.cluster.synced))
    body_limit = settings.body_limit()
    # The bytes of all bodies being read, together: many large bodies at once are refused
    # (503) rather than waited for, so that slow senders cannot hold everyone else back.
    # Parsing and deciding are synchronous: one review at a time is parsed whatever this is.
    buffered = _BodyBudget(settings.max_buffered_bodies * body_limit)

    async def mutate(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await _read_body(request, body_limit, buffered, metrics)
            admission = parse_review(body)
            del body  # the parsed review is what the rest needs; the bytes can go now
        except ClientDisconnect:
            # The caller went away (or a body deadline closed the connection): nobody to
            # answer. Counted, logged, and the empty response goes nowhere.
            metrics.errors.labels("disconnected").inc()
            log.info("client disconnected before sending its whole body")
            return Response(status_code=HTTPStatus.BAD_REQUEST)
        except (RequestRejected, InvalidReview) as err:
            rejected = (
                err
                if isinstance(err, RequestRejected)
                else RequestRejected(HTTPStatus.BAD_REQUEST, str(err))
            )
            return _rejected(rejected, metrics, started)

        fields: dict[str, Any] = _request_fields(admission)
        try:
            reply = decide(admission, deps.policy_file.current, deps.cluster.view)
            fields.update(decision=reply.outcome, message=reply.message)
            if reply.changes:
                fields["changes"] = dict(reply.changes)
        except Exception as err:
            # The pod is not admitted (failurePolicy would fail it too); the uid is kept so
            # the API server shows this message instead of a transport error. The reply says
            # only that it failed and under which id; the exception stays in the log, under
            # the same id.
            error_id = secrets.token_hex(6)
            error = f"{type(err).__name__}: {err}"
            log.exception(
                "deciding %s failed (error id %s)",
                admission.uid,
                error_id,
                extra={FIELDS: {"uid": admission.uid, "error_id": error_id, "error": error}},
            )
            metrics.errors.labels("internal").inc()
            reply = responses.internal_error(error_id)
            fields.update(decision="errored", message=reply.message, error_id=error_id)
        body = responses.review_json(responses.complete(reply, admission.uid))
        elapsed = time.perf_counter() - started
        metrics.requests.labels(fields["decision"]).inc()
        metrics.latency.observe(elapsed)
        fields["duration_ms"] = round(elapsed * 1000, 3)
        log.info("admission", extra={FIELDS: fields})
        return Response(body, media_type=JSON)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        if not deps.cluster.synced:
            return PlainTextResponse(
                "not ready: Namespace and PriorityClass watches not synced yet",
                status_code=HTTPStatus.SERVICE_UNAVAILABLE,
            )
        return PlainTextResponse("ok")

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        deps.cluster.start()
        reload = asyncio.create_task(
            _watch_policy(deps.policy_file, settings.policy_reload_seconds, metrics),
            name="policy-watch",
        )
        try:
            yield
        finally:
            reload.cancel()
            await asyncio.wait([reload])
            await asyncio.to_thread(deps.cluster.stop)

    return Starlette(
        routes=[
            Route("/mutate", mutate, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


class _BodyBudget:
    """Bytes of request bodies held in memory by this app, all requests together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


async def _read_body(
    request: Request, limit: int, budget: _BodyBudget, metrics: WebhookMetrics
) -> bytes:
    """The body of an application/json request of at most `limit` bytes."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != JSON:
        raise RequestRejected(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"content type must be {JSON}, got {content_type or 'none'!r}",
        )
    declared = request.headers.get("content-length")
    # Length first: int() refuses more than 4300 digits (a ValueError, not a 413).
    if (
        declared is not None
        and declared.isdigit()
        and (len(declared) > len(str(limit)) or int(declared) > limit)
    ):
        metrics.oversized_bodies.labels("content-length").inc()
        raise RequestRejected(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"body of {declared} bytes is over the {limit} byte limit",
        )
    chunks = []
    size = 0
    try:
        # Streamed, so a body without (or lying about) Content-Length is cut off at the limit.
        async for chunk in request.stream():
            size += len(chunk)
            budget.used += len(chunk)
            if size > limit:
                metrics.oversized_bodies.labels("streamed").inc()
                raise RequestRejected(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body is over the {limit} byte limit"
                )
            if budget.used > budget.limit:
                metrics.errors.labels("busy").inc()
                raise RequestRejected(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "too many large reviews are being read at once; retry",
                )
            chunks.append(chunk)
    finally:
        budget.used -= size
    if not size:
        raise RequestRejected(HTTPStatus.BAD_REQUEST, "body is empty; expected an AdmissionReview")
    return b"".join(chunks)


def _rejected(err: RequestRejected, metrics: WebhookMetrics, started: float) -> Response:
    elapsed = time.perf_counter() - started
    metrics.requests.labels("invalid").inc()
    if err.status != HTTPStatus.SERVICE_UNAVAILABLE:  # busy: counted as such where it is found
        metrics.errors.labels("invalid").inc()
    metrics.latency.observe(elapsed)
    log.warning(
        "rejected request",
        extra={
            FIELDS: {
                "decision": "invalid",
                "status": err.status.value,
                "message": err.message,
                "duration_ms": round(elapsed * 1000, 3),
            }
        },
    )
    # After a 413 the rest of the body is still on its way: closing the connection stops it
    # instead of reading (and discarding) it.
    close = err.status in (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.SERVICE_UNAVAILABLE)
    return Response(
        responses.failure_status_json(err.status.value, err.message),
        status_code=err.status.value,
        media_type=JSON,
        headers={"connection": "close"} if close else None,
    )


def _request_fields(request: AdmissionRequest) -> dict[str, Any]:
    metadata = request.object.get("metadata") if request.object else None
    name = request.name
    if not name and isinstance(metadata, Mapping):
        # A pod created from a template has only generateName until it is stored.
        name = str(metadata.get("name") or metadata.get("generateName") or "")
    return {
        "uid": request.uid,
        "namespace": request.namespace,
        "name": name,
        "kind": request.kind.kind,
        "operation": request.operation,
        "dry_run": bool(request.dry_run),
    }


async def _watch_policy(policy_file: PolicyFile, interval: float, metrics: WebhookMetrics) -> None:
    """Follow the policy file; a broken edit keeps the last good policy (PolicyFile logs it and
    reports each failure once)."""
    await policy_file.watch(interval, lambda outcome: metrics.policy_reloaded(outcome.ok))
