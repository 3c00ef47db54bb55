"""The one client factory: a kubeconfig file, else the in-cluster service account, else the
default kubeconfig, with the caller's connection pool size and no urllib3 retries."""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client, config


def core_api(kubeconfig: str | None, pool_size: int = 32) -> Any:
    """A CoreV1Api from a kubeconfig file, else the in-cluster service account, else the
    default kubeconfig. A Configuration of its own: load_kube_config would change the global
    default that other code in the process might use."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # Two long-lived watch connections plus concurrent binds.
    configuration.connection_pool_maxsize = pool_size
    # No urllib3 retries: the watches back off and relist themselves, and a Binding POST
    # retried after a lost answer would report 409 for a bind that succeeded.
    configuration.retries = 0
    return client.CoreV1Api(client.ApiClient(configuration))
