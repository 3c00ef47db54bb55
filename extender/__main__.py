"""`python -m extender --policy FILE --prometheus-url URL [...]`: serve the scheduler extender.

Plain HTTP only on loopback (kube-scheduler in the same pod); anywhere else HTTPS, requiring
client certificates when --client-ca is given.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from certs.reloading import CertificateLoadError, ReloadingTLS
from certs.serving import InsecureBindError, require_tls_unless_loopback, serve
from extender.app import ExtenderDeps, create_app, describe_validation
from extender.cluster import KubernetesBinder, core_api, node_watch, pod_watch
from extender.metrics import ExtenderMetrics
from extender.settings import Settings
from extender.snapshot import ClusterStore
from extender.telemetry import PrometheusQuery, TelemetryPoller
from gpumem.policy_file import PolicyError, PolicyFile

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
    add("--log-level", default=suppress, choices=["critical", "error", "warning", "info", "debug"])
    return parser


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the command line; exits 2 when invalid."""
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    try:
        return Settings(**options)
    except ValidationError as err:
        parser.error(describe_validation(err))


def build_deps(settings: Settings, policy_file: PolicyFile) -> ExtenderDeps:
    """The production wiring: the API and Prometheus clients, the watches and the poller."""
    metrics = ExtenderMetrics()
    store = ClusterStore(policy_file.current)
    core = core_api(str(settings.kubeconfig) if settings.kubeconfig else None)
    options = {"watch_timeout_seconds": settings.watch_timeout_seconds}
    return ExtenderDeps(
        store=store,
        binder=KubernetesBinder(core, settings.bind_timeout_seconds),
        policy=policy_file,
        metrics=metrics,
        watches=[
            pod_watch(core, store, metrics, **options),
            node_watch(core, store, metrics, **options),
        ],
        telemetry=TelemetryPoller(
            PrometheusQuery(settings.prometheus_url, settings.prometheus_timeout_seconds),
            store,
            lambda: policy_file.current,
            metrics,
        ),
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
    app = create_app(settings, build_deps(settings, policy_file))
    log.info("serving on %s:%d (%s)", settings.host, settings.port, "https" if tls else "http")
    asyncio.run(serve(app, settings.host, settings.port, tls, log_level=settings.log_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
