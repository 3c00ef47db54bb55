"""`python -m webhook --policy FILE --tls-cert FILE --tls-key FILE [--host H] [--port 8443]
[--kubeconfig FILE]`: serve the admission webhook over HTTPS until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from certs.reloading import CertificateLoadError, ReloadingTLS
from certs.serving import serve
from gpumem.policy import PolicyError
from gpumem.policy_file import PolicyFile
from webhook.app import ClusterSource, Dependencies, FixedCluster, create_app
from webhook.logs import configure_logging
from webhook.settings import Settings, settings_from

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
    try:
        tls = ReloadingTLS(settings.tls_cert, settings.tls_key)
    except CertificateLoadError as err:
        return _fail(str(err))
    try:
        cluster = _cluster_source(settings)
    except Exception as err:  # a broken kubeconfig: the kubernetes client raises many types
        return _fail(f"cannot use kubeconfig {settings.kubeconfig}: {err}")
    app = create_app(settings, Dependencies(policy_file=policy_file, cluster=cluster))
    log.info(
        "serving",
        extra={
            "fields": {
                "address": f"https://{settings.host}:{settings.port}",
                "policy": str(settings.policy),
                "cluster_access": not isinstance(cluster, FixedCluster),
            }
        },
    )
    asyncio.run(
        serve(
            app,
            settings.host,
            settings.port,
            tls,
            log_level=settings.log_level,
            watch_interval=settings.tls_reload_seconds,
            access_log=False,  # one line per request comes from the app, with the decision
            timeout_keep_alive=settings.keep_alive_seconds,
            timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
            log_config=None,  # keep the handlers configure_logging installed
        )
    )
    return 0


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
        flag = "--" + "-".join(str(part) for part in item["loc"]).replace("_", "-")
        problems.append(f"{flag}: {item['msg']}")
    return "; ".join(problems)


def _fail(message: str) -> int:
    print(f"python -m webhook: error: {message}", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
