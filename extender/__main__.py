"""`python -m extender --policy FILE --prometheus-url URL [...]`: serve the scheduler extender.

Plain HTTP only on loopback (kube-scheduler in the same pod); anywhere else HTTPS, requiring
client certificates when --client-ca is given. --metrics-port adds a second listener, in the
same process and event loop, serving only /metrics, /healthz and /readyz (plain HTTP, any
address): what Prometheus and the kubelet need, without exposing the verbs.
Pending GPU pods of the policy's schedulerName get a GPUMemoryUnavailable event with
vramguard's numbers (--no-explain-pending turns that off; see extender.pending).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp

from certs.reloading import CertificateLoadError, ReloadingTLS
from certs.serving import InsecureBindError, build_server, require_tls_unless_loopback, run_server
from extender.app import (
    BackgroundService,
    ExtenderDeps,
    create_app,
    create_metrics_app,
    describe_validation,
)
from extender.metrics import ExtenderMetrics
from extender.pending import (
    EVENT_COMPONENT,
    EVENT_REASON,
    FITS_CONDITION,
    FITS_REASON,
    PendingExplainer,
)
from extender.settings import Settings
from extender.store import ClusterStore
from extender.telemetry import PrometheusQuery, TelemetryPoller
from extender.watches import PodListener, node_watch, pod_watch
from gpumem.policy_file import PolicyError, PolicyFile
from kube.binder import KubernetesBinder
from kube.client import core_api
from kube.conditions import KubernetesNudger
from kube.events import KubernetesEvents

log = logging.getLogger("extender")

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extender",
        description="vramguard kube-scheduler extender. Every option can also be set in the "
        "environment as VRAMGUARD_EXTENDER_<OPTION> (e.g. VRAMGUARD_EXTENDER_PROMETHEUS_URL); "
        "the command line wins.",
    )
    # Defaults are left out (SUPPRESS) so that an option not given falls back to the
    # environment, then to Settings' default.
    add = parser.add_argument
    suppress = argparse.SUPPRESS
    add("--policy", default=suppress, help="policy file (YAML)")
    add("--prometheus-url", default=suppress, help="Prometheus base URL")
    add("--kubeconfig", default=suppress, help="kubeconfig (default: in-cluster)")
    add("--host", default=suppress, help="listen address (default 127.0.0.1)")
    add("--port", type=int, default=suppress, help="listen port (default 8888)")
    add("--tls-cert", default=suppress, help="serving certificate (PEM)")
    add("--tls-key", default=suppress, help="serving key (PEM)")
    add("--client-ca", default=suppress, help="CA that client certificates must chain to")
    add(
        "--metrics-port",
        type=int,
        default=suppress,
        help="also serve /metrics, /healthz, /readyz (only) in plain HTTP on this port",
    )
    add("--metrics-host", default=suppress, help="listen address of --metrics-port (0.0.0.0)")
    add(
        "--advertise-interval",
        action=_Removed,
        default=suppress,
        help=argparse.SUPPRESS,
    )
    add(
        "--explain-pending",
        action=argparse.BooleanOptionalAction,
        default=suppress,
        help="explain Pending GPU pods with a GPUMemoryUnavailable event giving vramguard's "
        "numbers (default: on)",
    )
    add(
        "--scheduler-name",
        default=suppress,
        help="the scheduler this extender serves when the policy's schedulerName is null "
        "(default vramguard-scheduler); otherwise the policy's is served",
    )
    add("--log-level", default=suppress, choices=["critical", "error", "warning", "info", "debug"])
    return parser


class _Removed(argparse.Action):
    """An option that no longer exists, refused with what to do instead rather than with
    argparse's bare "unrecognized arguments"."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        parser.error(
            "--advertise-interval was removed: the extender no longer advertises gpumem; run "
            "`vramguard advertise` (manifests/components/advertiser), the one advertiser"
        )


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the command line; exits 2 when invalid."""
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    try:
        return Settings(**options)
    except ValidationError as err:
        parser.error(describe_validation(err))


def make_binder(core: Any, timeout_seconds: float) -> KubernetesBinder:
    """The Binding creator /bind uses (and the benchmark's no-op extender, to bind the same
    way)."""
    return KubernetesBinder(core, timeout_seconds)


def build_deps(settings: Settings, policy_file: PolicyFile) -> ExtenderDeps:
    """The production wiring: the API and Prometheus clients, the watches and the poller."""
    metrics = ExtenderMetrics()
    store = ClusterStore(policy_file.current)
    core = core_api(str(settings.kubeconfig) if settings.kubeconfig else None)
    options = {"watch_timeout_seconds": settings.watch_timeout_seconds}
    services: list[BackgroundService] = []
    listeners: list[PodListener] = []
    if settings.explain_pending:
        explainer = PendingExplainer(
            store,
            KubernetesEvents(
                core, reason=EVENT_REASON, component=EVENT_COMPONENT, instance=socket.gethostname()
            ),
            metrics,
            nudger=KubernetesNudger(core, condition=FITS_CONDITION, reason=FITS_REASON),
            scheduler_name=settings.scheduler_name,
            min_interval=settings.explain_interval_seconds,
        )
        services.append(explainer)
        listeners.append(explainer)
    return ExtenderDeps(
        store=store,
        binder=make_binder(core, settings.bind_timeout_seconds),
        policy=policy_file,
        metrics=metrics,
        watches=[
            pod_watch(core, store, metrics, listeners=listeners, **options),
            node_watch(core, store, metrics, **options),
        ],
        telemetry=TelemetryPoller(
            PrometheusQuery(settings.prometheus_url, settings.prometheus_timeout_seconds),
            store,
            lambda: policy_file.current,
            metrics,
        ),
        services=services,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        require_tls_unless_loopback(settings.host, settings.tls_enabled)
        policy_file = PolicyFile(settings.policy)
        tls = (
            ReloadingTLS(settings.tls_cert, settings.tls_key, settings.client_ca)
            if settings.tls_cert is not None and settings.tls_key is not None
            else None
        )
    except (InsecureBindError, PolicyError, CertificateLoadError) as err:
        print(f"vramguard extender: {err}", file=sys.stderr)
        return USAGE_ERROR
    deps = build_deps(settings, policy_file)
    app = create_app(settings, deps)
    metrics_app = create_metrics_app(deps) if settings.metrics_port is not None else None
    asyncio.run(serve_extender(settings, app, tls, metrics_app))
    return 0


async def serve_extender(
    settings: Settings, app: ASGIApp, tls: ReloadingTLS | None, metrics_app: ASGIApp | None
) -> None:
    """Serve the extender until SIGTERM/SIGINT, and the metrics app beside it when given."""
    # No access log: kube-scheduler calls filter/prioritize for every GPU pod, and the app
    # already counts and times each request in /metrics.
    server = build_server(
        app, settings.host, settings.port, tls, log_level=settings.log_level, access_log=False
    )
    log.info("serving on %s:%d (%s)", settings.host, settings.port, "https" if tls else "http")
    metrics_server = None
    if metrics_app is not None and settings.metrics_port is not None:
        metrics_server = build_metrics_server(
            metrics_app, settings.metrics_host, settings.metrics_port, settings.log_level
        )
        log.info(
            "serving /metrics /healthz /readyz on %s:%d (http)",
            settings.metrics_host,
            settings.metrics_port,
        )
    await serve_together(server, tls, metrics_server)


async def serve_together(
    server: uvicorn.Server, tls: ReloadingTLS | None, metrics_server: uvicorn.Server | None
) -> None:
    """Run the main server and, beside it, the metrics server, in one event loop.

    The main server owns the signals and the lifespan (watches, poller, advertiser). The
    metrics server stops when the main one does; if it stops first (it could not bind, say),
    the main one is stopped too, so a half-working extender never lingers: the kubelet
    restarts it.
    """
    if metrics_server is None:
        await run_server(server, tls)
        return
    metrics_task = asyncio.create_task(metrics_server.serve(), name="metrics-server")

    def metrics_stopped(task: asyncio.Task[None]) -> None:
        if not server.should_exit:
            log.error("the metrics listener stopped; stopping the extender")
            server.should_exit = True

    metrics_task.add_done_callback(metrics_stopped)
    try:
        await run_server(server, tls)
    finally:
        metrics_server.should_exit = True
        await asyncio.wait([metrics_task])


class _QuietServer(uvicorn.Server):
    """A uvicorn Server that leaves signal handling to the main server of the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_metrics_server(app: ASGIApp, host: str, port: int, log_level: str) -> uvicorn.Server:
    """Plain HTTP on any address (certs.serving refuses that for the verbs, rightly): only
    counters and "ok" are served. No lifespan: the main app's runs the background work."""
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="off", log_level=log_level, access_log=False
    )
    config.load()
    return _QuietServer(config)


if __name__ == "__main__":
    sys.exit(main())
