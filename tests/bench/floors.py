"""The floors of the benchmark table: what any webhook and any extender on vramguard's server
stack cost, so a ratio tells protocol cost from vramguard's own.

    .venv/bin/python -m tests.bench.floors webhook --port P --tls-cert C --tls-key K [--patch F]
    .venv/bin/python -m tests.bench.floors extender --port P --kubeconfig KUBECONFIG

Both run on the project's own stack, not a second one: certs.serving.build_server and
run_server (uvicorn), a starlette app, certs.reloading.ReloadingTLS for the webhook's TLS
context (the files vramguard's webhook serves), the webhook's uvicorn options.

- webhook: POST /noop answers allowed, no patch; POST /patch answers allowed with a fixed
  JSONPatch (the --patch file: the bench writes vramguard's own patch for its GPU pod there,
  so the API server applies a patch of the same size and shape). Both read the review as the
  real webhook must (its uid) and nothing else. GET /calls counts the calls per path, which
  the bench reads to know the API server sends pods to the floor it registered.
- extender: POST /filter passes every candidate (NodeNames in, NodeNames out; Nodes in,
  Nodes out), /prioritize scores each 0, /bind creates the Binding through the same binder
  vramguard's extender uses (kube.binder), in a worker thread as vramguard does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

LOCALHOST = "127.0.0.1"


def webhook_app(patch: bytes | None) -> Starlette:
    """/noop and /patch (the fixed JSONPatch, or none when not given), /calls, /readyz."""
    calls: Counter[str] = Counter()
    patch_b64 = base64.b64encode(patch).decode() if patch else None

    def review(uid: str, with_patch: bool) -> Response:
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        if with_patch and patch_b64 is not None:
            response["patchType"] = "JSONPatch"
            response["patch"] = patch_b64
        body = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    async def noop(request: Request) -> Response:
        calls["noop"] += 1
        uid = json.loads(await request.body())["request"]["uid"]
        return review(uid, with_patch=False)

    async def fixed_patch(request: Request) -> Response:
        calls["patch"] += 1
        uid = json.loads(await request.body())["request"]["uid"]
        return review(uid, with_patch=True)

    async def count(request: Request) -> Response:
        return JSONResponse(dict(calls))

    async def ready(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/noop", noop, methods=["POST"]),
            Route("/patch", fixed_patch, methods=["POST"]),
            Route("/calls", count, methods=["GET"]),
            Route("/readyz", ready, methods=["GET"]),
            Route("/healthz", ready, methods=["GET"]),
        ]
    )


def extender_app(binder: Any) -> Starlette:
    """The no-op extender: every node passes, every score 0, /bind creates the Binding."""

    async def filter_(request: Request) -> Response:
        args = json.loads(await request.body())
        if args.get("Nodes") is not None:
            result: dict[str, Any] = {"Nodes": args["Nodes"], "NodeNames": None}
        else:
            result = {"Nodes": None, "NodeNames": args.get("NodeNames") or []}
        result.update(FailedNodes={}, FailedAndUnresolvableNodes={}, Error="")
        return Response(json.dumps(result), media_type="application/json")

    async def prioritize(request: Request) -> Response:
        args = json.loads(await request.body())
        if args.get("Nodes") is not None:
            names = [node["metadata"]["name"] for node in args["Nodes"].get("items") or ()]
        else:
            names = args.get("NodeNames") or []
        scores = [{"Host": name, "Score": 0} for name in names]
        return Response(json.dumps(scores), media_type="application/json")

    async def bind(request: Request) -> Response:
        args = json.loads(await request.body())
        error = ""
        try:
            await run_in_threadpool(
                binder.bind, args["PodNamespace"], args["PodName"], args["PodUID"], args["Node"]
            )
        except Exception as err:  # BindError, as vramguard answers it
            error = str(err)
        return Response(json.dumps({"Error": error}), media_type="application/json")

    async def ready(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/filter", filter_, methods=["POST"]),
            Route("/prioritize", prioritize, methods=["POST"]),
            Route("/bind", bind, methods=["POST"]),
            Route("/readyz", ready, methods=["GET"]),
            Route("/healthz", ready, methods=["GET"]),
        ]
    )


def serve_webhook(port: int, cert: Path, key: Path, patch: bytes | None) -> None:
    from certs.reloading import ReloadingTLS  # noqa: PLC0415
    from certs.serving import ConnectionStats, build_server, run_server  # noqa: PLC0415
    from webhook.__main__ import connection_limits  # noqa: PLC0415
    from webhook.settings import Settings  # noqa: PLC0415

    # The webhook's defaults (no validation: only the serving options are read), and the
    # listener it builds from them: connection cap, TLS handshake under a deadline, header
    # and body deadlines, header cap; the uvicorn options webhook/__main__.py passes.
    settings = Settings.model_construct(tls_cert=cert, tls_key=key)
    tls = ReloadingTLS(cert, key)
    server = build_server(
        webhook_app(patch),
        LOCALHOST,
        port,
        tls,
        log_level="warning",
        limits=connection_limits(settings),
        stats=ConnectionStats(),
        access_log=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
    )
    asyncio.run(run_server(server, tls))


def serve_extender(port: int, kubeconfig: Path) -> None:
    from certs.serving import build_server, run_server  # noqa: PLC0415
    from extender.__main__ import make_binder  # noqa: PLC0415
    from extender.settings import Settings  # noqa: PLC0415
    from kube.client import core_api  # noqa: PLC0415

    # The same binder, on the same kind of client, as vramguard's extender.
    timeout = Settings.model_fields["bind_timeout_seconds"].default
    server = build_server(
        extender_app(make_binder(core_api(str(kubeconfig)), timeout)),
        LOCALHOST,
        port,
        None,
        log_level="warning",
        access_log=False,
    )
    asyncio.run(run_server(server, None))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    kinds = parser.add_subparsers(dest="kind", required=True)
    webhook = kinds.add_parser("webhook")
    webhook.add_argument("--port", type=int, required=True)
    webhook.add_argument("--tls-cert", type=Path, required=True)
    webhook.add_argument("--tls-key", type=Path, required=True)
    webhook.add_argument("--patch", type=Path, help="the JSONPatch /patch answers with")
    extender = kinds.add_parser("extender")
    extender.add_argument("--port", type=int, required=True)
    extender.add_argument("--kubeconfig", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.kind == "webhook":
        patch = args.patch.read_bytes() if args.patch else None
        serve_webhook(args.port, args.tls_cert, args.tls_key, patch)
    else:
        serve_extender(args.port, args.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
