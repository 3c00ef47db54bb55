from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gpumem.policy_file import PolicyFile
from tests.http.webhook.reviews import POLICY_YAML
from webhook.app import ClusterSource, Dependencies, FixedCluster, create_app
from webhook.metrics import WebhookMetrics
from webhook.settings import Settings
from webhook.view import ClusterView

KNOWN_CLUSTER = ClusterView(
    namespace_labels={"immich": {}},
    priority_classes=frozenset({"tier-1-gpu", "tier-2-gpu", "cluster-default"}),
    global_default_class="cluster-default",
)


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    return path


@pytest.fixture
def settings(policy_path: Path, tmp_path: Path) -> Settings:
    # The certificate is the serving layer's concern; the app never opens these files.
    return Settings(
        policy=policy_path,
        tls_cert=tmp_path / "tls.crt",
        tls_key=tmp_path / "tls.key",
        policy_reload_seconds=0.02,
    )


@pytest.fixture
def metrics() -> WebhookMetrics:
    return WebhookMetrics()


@pytest.fixture
def make_client(settings: Settings, metrics: WebhookMetrics) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(cluster: ClusterSource | None = None) -> TestClient:
        deps = Dependencies(
            policy_file=PolicyFile(settings.policy),
            cluster=cluster or FixedCluster(view=KNOWN_CLUSTER),
            metrics=metrics,
        )
        client = TestClient(create_app(settings, deps), raise_server_exceptions=True)
        client.__enter__()  # runs the lifespan: policy watch, cluster start
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
