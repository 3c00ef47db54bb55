"""`python -m webhook --policy FILE --tls-cert FILE --tls-key FILE [--tls-mode files |
self-managed] [--host H] [--port 8443] [--kubeconfig FILE]`: serve the admission webhook over
HTTPS until SIGINT/SIGTERM.

With ``--tls-mode self-managed`` the certificate comes from the Secret the webhook keeps
itself (webhook.certificates): the process waits for it, retrying while the API cannot be
reached, before it opens the HTTPS listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from certs.reloading import CertificateLoadError, ReloadingTLS
from certs.serving import ConnectionLimits, ConnectionStats, serve
from gpumem.policy import PolicyError
from gpumem.policy_file import PolicyFile
from webhook.app import ClusterSource, Dependencies, FixedCluster, create_app
from webhook.certificate_metrics import CertificateMetrics
from webhook.logs import configure_logging
from webhook.metrics import WebhookMetrics
from webhook.settings import Settings, settings_from

if TYPE_CHECKING:
    from webhook.certificates import CertificateManager

log = logging.getLogger("webhook")

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from(argv)
    except ValidationError as err:
        return _fail(_describe(err))
    configure_logging(settings.log_format, settings.log_level)
    try:
        policy_file = PolicyFile(settings.policy)
    except PolicyError as err:
        return _fail(str(err))
    metrics = WebhookMetrics()
    certificate_metrics = CertificateMetrics(
        metrics.registry, self_managed=settings.tls_mode == "self-managed"
    )
    certificates = None
    if settings.tls_mode == "self-managed":
        try:
            certificates = _certificate_manager(settings, certificate_metrics)
        except Exception as err:  # a broken kubeconfig: the kubernetes client raises many types
            return _fail(f"cannot use kubeconfig {settings.kubeconfig}: {err}")
        if certificates is None:
            return _fail(
                "--tls-mode self-managed needs API access: run in a cluster (the pod's "
                "service account) or pass --kubeconfig"
            )
        if not _first_certificate(certificates, settings):
            return 0  # SIGTERM or SIGINT before there was anything to serve
    try:
        tls = ReloadingTLS(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    except CertificateLoadError as err:
        return _fail(str(err))
    certificate_metrics.follow_served(lambda: tls.not_after)
    certificate_metrics.follow_reloads(tls)
    limits = connection_limits(settings)
    connections = ConnectionStats()
    metrics.follow_connections(connections)
    try:
        cluster = _cluster_source(settings)
    except Exception as err:  # a broken kubeconfig: the kubernetes client raises many types
        return _fail(f"cannot use kubeconfig {settings.kubeconfig}: {err}")
    app = create_app(
        settings, Dependencies(policy_file=policy_file, cluster=cluster, metrics=metrics)
    )
    log.info(
        "serving",
        extra={
            "fields": {
                "address": f"https://{settings.host}:{settings.port}",
                "policy": str(settings.policy),
                "cluster_access": not isinstance(cluster, FixedCluster),
                "tls_mode": settings.tls_mode,
                "client_certificates": settings.tls_client_ca is not None,
                "max_connections": limits.max_connections,
                "max_body_bytes": settings.body_limit(),
            }
        },
    )
    if certificates is not None:
        # A rotation written to the files is served at once, not at the next file poll.
        certificates.on_served = tls.reload_if_changed
        certificates.start(settings.tls_sync_seconds)
    try:
        asyncio.run(
            _trimming(
                serve(
                    app,
                    settings.host,
                    settings.port,
                    tls,
                    log_level=settings.log_level,
                    watch_interval=settings.tls_reload_seconds,
                    limits=limits,
                    stats=connections,
                    access_log=False,  # one line per request comes from the app
                    timeout_keep_alive=settings.keep_alive_seconds,
                    timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
                    log_config=None,  # keep the handlers configure_logging installed
                    ws="none",  # no WebSocket route: an upgrade request is plain HTTP here
                ),
                connections,
                settings.malloc_trim_seconds,
            )
        )
    finally:
        if certificates is not None:
            certificates.stop()
    return 0


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=settings.connection_limit(),
        handshake_timeout=settings.tls_handshake_timeout_seconds,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_header_bytes=settings.max_header_bytes,
    )


async def _trimming(
    serving: Coroutine[Any, Any, None], connections: ConnectionStats, interval: float
) -> None:
    """Run `serving`; meanwhile, after connections closed, hand freed memory back.

    glibc keeps what a burst of connections freed in its heaps (RSS stays at the burst's
    peak); malloc_trim returns the free pages. Only after closes, so an idle webhook does
    no work."""
    trim = _malloc_trim()
    if trim is None or not interval:
        await serving
        return

    async def trim_after_closes() -> None:
        seen = connections.closed + sum(connections.limited.values())
        while True:
            await asyncio.sleep(interval)
            now = connections.closed + sum(connections.limited.values())
            if now != seen:
                seen = now
                await asyncio.to_thread(trim, 0)

    trimmer = asyncio.create_task(trim_after_closes(), name="malloc-trim")
    try:
        await serving
    finally:
        trimmer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trimmer


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another libc, e.g. musl)."""
    try:
        # The process's own symbols, libc's among them (no library search, no ldconfig).
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def _certificate_manager(
    settings: Settings, metrics: CertificateMetrics
) -> CertificateManager | None:
    # Imported here, as in _cluster_source: the files mode never loads the kubernetes client.
    from kube.client import InClusterUnusable, api_client  # noqa: PLC0415
    from kube.secrets import tls_store  # noqa: PLC0415
    from webhook.certificates import CertificateManager  # noqa: PLC0415

    try:
        # A client of its own: no urllib3 retries (the loop backs off and says so), and a
        # small pool, one request at a time.
        api = api_client(settings.kubeconfig, default_kubeconfig=False, pool_size=1, retries=0)
    except InClusterUnusable as err:
        log.warning("in-cluster API access is not usable: %s", err)
        return None
    if api is None:
        return None
    assert settings.namespace is not None  # the settings refuse self-managed without it
    store = tls_store(
        api,
        namespace=settings.namespace,
        secret=settings.tls_secret,
        webhook_configuration=settings.webhook_configuration,
    )
    return CertificateManager(
        store,
        names=settings.serving_names(),
        timings=settings.rotation_timings(),
        cert_file=settings.tls_cert,
        key_file=settings.tls_key,
        metrics=metrics,
    )


def _first_certificate(certificates: CertificateManager, settings: Settings) -> bool:
    """Wait (retrying, saying why) until the Secret gives a certificate to serve."""
    from webhook.certificates import stop_on_sigterm  # noqa: PLC0415

    log.info(
        "self-managed TLS: reading Secret %s/%s before serving",
        settings.namespace,
        settings.tls_secret,
        extra={
            "fields": {
                "webhook_configuration": settings.webhook_configuration,
                "names": list(settings.serving_names().dns),
            }
        },
    )
    stopping = threading.Event()
    try:
        with stop_on_sigterm(stopping):
            return certificates.wait_until_serving(stopping, settings.tls_sync_seconds)
    except KeyboardInterrupt:
        return False


def _cluster_source(settings: Settings) -> ClusterSource:
    # Imported here: the kubernetes client is large, and without API access it is not needed.
    from webhook.cluster import ClusterWatch, api_client  # noqa: PLC0415

    api = api_client(settings.kubeconfig)
    if api is None:
        log.warning(
            "no API access (no --kubeconfig, not in a cluster): the policy file alone decides; "
            "namespaceLabels, the globalDefault PriorityClass and PriorityClass existence are "
            "not checked"
        )
        return FixedCluster()
    return ClusterWatch.from_api(api)


def _describe(err: ValidationError) -> str:
    problems = []
    for item in err.errors(include_url=False):
        if not item["loc"]:  # a rule across several settings: its message names them
            problems.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        flag = "--" + "-".join(str(part) for part in item["loc"]).replace("_", "-")
        problems.append(f"{flag}: {item['msg']}")
    return "; ".join(problems)


def _fail(message: str) -> int:
    print(f"python -m webhook: error: {message}", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
