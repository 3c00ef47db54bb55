"""Credentials of a ServiceAccount, for a test that must act as a component would: a token
from the TokenRequest API (the API server authenticates it and RBAC and admission see the
account, exactly as for the component's pod), in a kubeconfig beside the admin one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def service_account_kubeconfig(
    admin_kubeconfig: Path, core: Any, namespace: str, account: str, directory: Path
) -> Path:
    """A kubeconfig with the admin kubeconfig's cluster and a 10-minute token of
    ``namespace/account`` as its only credentials. ``core`` is a CoreV1Api."""
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    config = yaml.safe_load(admin_kubeconfig.read_text("utf-8"))
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    config["users"] = [{"name": context["context"]["user"], "user": {"token": str(token)}}]
    path = directory / f"{namespace}-{account}.kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    path.chmod(0o600)
    return path


def service_account_client(
    admin_kubeconfig: Path, core: Any, namespace: str, account: str, directory: Path
) -> Any:
    """A ``kubernetes.client.ApiClient`` authenticated as ``namespace/account``."""
    from kubernetes import config  # noqa: PLC0415 - keep imports light for non-users

    path = service_account_kubeconfig(admin_kubeconfig, core, namespace, account, directory)
    return config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
