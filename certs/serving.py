"""Run an ASGI app under uvicorn with a hot-reloading certificate (or plain HTTP on loopback).

uvicorn builds its own SSLContext in ``Config.load()`` only when ssl_certfile/ssl_keyfile are
given, and ``Server.startup()`` passes ``config.ssl`` to ``loop.create_server``. So we load
the config without ssl_* options and then set ``config.ssl`` to the reloading context.

With :class:`ConnectionLimits` the listener is plain TCP instead and each accepted connection
goes through a gate (:class:`_Gate`): over the cap it is closed at once, else its TLS
handshake runs under a deadline (``loop.start_tls``) and only then is it handed to uvicorn's
HTTP protocol, subclassed (:class:`LimitedHttpProtocol`) for header and body deadlines and a
header size cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from certs.reloading import DEFAULT_INTERVAL, ReloadingTLS

logger = logging.getLogger(__name__)


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


# -- connection limits -------------------------------------------------------------------------
# uvicorn has no connection cap (limit_concurrency answers 503 only once a request's headers
# are in, when the connection and its TLS state already cost memory), no deadline before a
# connection's first request nor for its headers and body (its keep-alive timer runs only
# between responses and the first byte of a request cancels it), and httptools no header size
# limit (it gathers a header's value however long it is). TLS is where idle connections' memory
# goes: the event loop's SSL protocol allocates a 256 KiB read buffer per connection when it is
# accepted, before any byte arrives. So with limits the handshake happens here, after the cap
# said yes, under a deadline.


@dataclass(frozen=True)
class ConnectionLimits:
    """What one listener accepts. A connection counts against ``max_connections`` from
    accept to close, its TLS handshake included."""

    max_connections: int
    handshake_timeout: float
    # From the end of the handshake (or the first byte of a later request on a kept-alive
    # connection) to the end of the request's headers.
    header_timeout: float
    # From the end of the headers to the end of the body.
    body_timeout: float
    # Request line and headers together.
    max_header_bytes: int


# Why a connection was refused or closed by the limits (label values of the metrics).
CLOSE_REASONS = (
    "connection-limit",
    "handshake-timeout",
    "handshake-failed",
    "header-timeout",
    "body-timeout",
    "header-too-large",
)


@dataclass
class ConnectionStats:
    """Counts of one listener, written by the event loop only, read by a metrics collector.

    open: accepted and not closed yet (handshaking ones included); accepted: TCP connections;
    handshakes: TLS handshakes completed, resumed: those that resumed an earlier session;
    closed: connections that had completed their handshake and have closed since;
    limited: connections refused or closed by a limit, by reason (CLOSE_REASONS).
    """

    open: int = 0
    accepted: int = 0
    handshakes: int = 0
    resumed: int = 0
    closed: int = 0
    limited: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLOSE_REASONS, 0))


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a body deadline and a header cap.

    The deadline is one timer: armed when the connection is handed over (a connection that
    sends nothing is closed after ``header_timeout``) or at the first byte of a later request,
    moved to ``body_timeout`` when the headers are complete, cancelled when the body is.
    Between requests uvicorn's own keep-alive timer applies.
    """

    limits: ConnectionLimits
    stats: ConnectionStats

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._in_headers = False
        self._made = False
        # Bytes the TLS layer delivered before the hand-over (see data_received).
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._made = True
        super().connection_made(transport)
        self._in_headers = True
        self._arm(self.limits.header_timeout, "header-timeout")
        early, self._early = self._early, []
        for data in early:
            if not transport.is_closing():
                self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # start_tls's SSL protocol reports a failed handshake to this protocol too, which
        # was never handed the connection: the gate counts that one.
        if not self._made:
            return
        self._made = False
        self._disarm()
        self.stats.open -= 1
        self.stats.closed += 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._made:
            # start_tls's SSL protocol passes on the request that came right behind the
            # handshake before start_tls has returned, so before connection_made.
            self._early.append(data)
            return
        if self._in_headers:
            if self._deadline is None:  # the first bytes of a later request
                self._arm(self.limits.header_timeout, "header-timeout")
            # Counted before parsing: httptools would gather any amount, a single header's
            # value included. The end of the headers is where the body (not counted) begins.
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large", "header-too-large")
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._arm(self.limits.body_timeout, "body-timeout")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        # Whatever comes next on this connection is the next request's headers.
        self._in_headers = True
        self._header_bytes = 0
        super().on_message_complete()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, reason: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if reason == "header-timeout" and not self._header_bytes:
            # Nothing sent at all: no answer is owed.
            self.stats.limited[reason] += 1
            self.transport.close()
            return
        self._refuse(408, "Request Timeout", reason)

    def _refuse(self, status: int, phrase: str, reason: str) -> None:
        if self.transport.is_closing():
            return
        self.stats.limited[reason] += 1
        logger.debug("closing connection from %s: %s", self.client, reason)
        # Only when no response has started on this connection: else just close it.
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            body = phrase.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body)
            )
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
        self.transport.close()


class _Gate(asyncio.Protocol):
    """The listener's protocol under limits: cap, TLS handshake with a deadline, hand-over."""

    limits: ConnectionLimits
    stats: ConnectionStats
    tls: ReloadingTLS | None
    http_class: type[LimitedHttpProtocol]

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._loop = _loop or asyncio.get_event_loop()
        self._http = self.http_class(
            config=config, server_state=server_state, app_state=app_state, _loop=_loop
        )
        self._handshake: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        stats = self.stats
        stats.accepted += 1
        if stats.open >= self.limits.max_connections:
            stats.limited["connection-limit"] += 1
            transport.abort()  # before any TLS state exists: this costs next to nothing
            return
        stats.open += 1
        if self.tls is None:
            self._http.connection_made(transport)
            return
        self._handshake = self._loop.create_task(self._start_tls(transport, self.tls.context))

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            # Our own deadline, so that a timeout is told apart from a failed handshake; the
            # loop's own one (later) only backs it up.
            async with asyncio.timeout(self.limits.handshake_timeout):
                tls_transport = await self._loop.start_tls(
                    transport,
                    self._http,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=self.limits.handshake_timeout + 1,
                )
        except TimeoutError:
            self._handshake_failed(transport, "handshake-timeout")
            return
        except (OSError, ssl.SSLError, ConnectionError, RuntimeError) as err:
            logger.debug("TLS handshake failed: %s", err)
            self._handshake_failed(transport, "handshake-failed")
            return
        assert tls_transport is not None
        self.stats.handshakes += 1
        ssl_object = tls_transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.session_reused:
            self.stats.resumed += 1
        self._http.connection_made(tls_transport)

    def _handshake_failed(self, transport: asyncio.Transport, reason: str) -> None:
        self.stats.open -= 1
        self.stats.limited[reason] += 1
        transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        # Only reached before start_tls took the transport over (it sets its own protocol):
        # the handshake's await then fails, which does the accounting.
        pass


def limited_protocol(
    limits: ConnectionLimits, stats: ConnectionStats, tls: ReloadingTLS | None
) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn.Config(http=...) that enforces ``limits``."""
    http_class = type("LimitedHttp", (LimitedHttpProtocol,), {"limits": limits, "stats": stats})
    return type(
        "LimitedGate",
        (_Gate,),
        {"limits": limits, "stats": stats, "tls": tls, "http_class": http_class},
    )


def build_server(
    app: ASGIApp,
    host: str,
    port: int,
    tls: ReloadingTLS | None,
    *,
    log_level: str = "info",
    limits: ConnectionLimits | None = None,
    stats: ConnectionStats | None = None,
    **uvicorn_options: Any,
) -> uvicorn.Server:
    """A loaded uvicorn Server that serves ``tls.context``; extra options go to uvicorn.Config.

    With ``limits`` (counted in ``stats``), connections are capped and deadlined (see the
    module docstring); without, uvicorn's defaults apply."""
    require_tls_unless_loopback(host, tls is not None)
    if any(key.startswith("ssl_") for key in uvicorn_options):
        raise ValueError("pass a ReloadingTLS instead of uvicorn ssl_* options")
    if limits is not None:
        if "http" in uvicorn_options:
            raise ValueError("limits choose the HTTP protocol; do not pass http=")
        uvicorn_options["http"] = limited_protocol(limits, stats or ConnectionStats(), tls)
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="on", log_level=log_level, **uvicorn_options
    )
    config.load()
    # Set after load(): load() resets config.ssl to None when no ssl_* file options are given.
    # Under limits the gate does the handshake, so the listener itself is plain TCP.
    config.ssl = None if tls is None or limits is not None else tls.context
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
    limits: ConnectionLimits | None = None,
    stats: ConnectionStats | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` on host:port until uvicorn is asked to stop (SIGINT/SIGTERM)."""
    server = build_server(
        app, host, port, tls, log_level=log_level, limits=limits, stats=stats, **uvicorn_options
    )
    await run_server(server, tls, watch_interval)
