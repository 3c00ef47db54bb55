"""Run an ASGI app under uvicorn with a hot-reloading certificate (or plain HTTP on loopback).

uvicorn builds its own SSLContext in ``Config.load()`` only when ssl_certfile/ssl_keyfile are
given, and ``Server.startup()`` passes ``config.ssl`` to ``loop.create_server``. So we load
the config without ssl_* options and then set ``config.ssl`` to the reloading context.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from certs.reloading import DEFAULT_INTERVAL, ReloadingTLS


class InsecureBindError(ValueError):
    """Plain HTTP was requested on an address reachable from outside the host."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP literals; any other name might resolve elsewhere."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def require_tls_unless_loopback(host: str, tls_enabled: bool) -> None:
    """Refuse plain HTTP on anything but loopback: admission reviews carry pod specs."""
    if not tls_enabled and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve plain HTTP on {host!r}: configure a TLS certificate "
            "or bind to a loopback address (127.0.0.1, ::1, localhost)"
        )


def build_server(
    app: ASGIApp,
    host: str,
    port: int,
    tls: ReloadingTLS | None,
    *,
    log_level: str = "info",
    **uvicorn_options: Any,
) -> uvicorn.Server:
    """A loaded uvicorn Server that serves ``tls.context``; extra options go to uvicorn.Config."""
    require_tls_unless_loopback(host, tls is not None)
    if any(key.startswith("ssl_") for key in uvicorn_options):
        raise ValueError("pass a ReloadingTLS instead of uvicorn ssl_* options")
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="on", log_level=log_level, **uvicorn_options
    )
    config.load()
    # Set after load(): load() resets config.ssl to None when no ssl_* file options are given.
    config.ssl = None if tls is None else tls.context
    return uvicorn.Server(config)


async def run_server(
    server: uvicorn.Server,
    tls: ReloadingTLS | None,
    watch_interval: float = DEFAULT_INTERVAL,
) -> None:
    """Run ``server`` until it exits, watching the certificate files meanwhile."""
    if tls is None:
        await server.serve()
        return
    watcher = asyncio.create_task(tls.watch(watch_interval), name="tls-watch")
    try:
        await server.serve()
    finally:
        watcher.cancel()
        # wait() instead of awaiting the task: a cancellation of *this* coroutine still
        # propagates rather than being mistaken for the watcher's own CancelledError.
        await asyncio.wait([watcher])


async def serve(
    app: ASGIApp,
    host: str,
    port: int,
    tls: ReloadingTLS | None,
    *,
    log_level: str = "info",
    watch_interval: float = DEFAULT_INTERVAL,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` on host:port until uvicorn is asked to stop (SIGINT/SIGTERM)."""
    server = build_server(app, host, port, tls, log_level=log_level, **uvicorn_options)
    await run_server(server, tls, watch_interval)
