"""vramguard itself, wired into the cluster under test.

``LocalVramguard`` runs everything as local processes next to the local control plane,
from the repository's own manifests with only addresses changed:

- the GPU exporter (``gpu_exporter``, the only fake) and a real Prometheus scraping it;
- the webhook (``python -m webhook``, HTTPS with a serving cert from the ``certs``
  package) registered from ``manifests/base/mutatingwebhook.yaml`` with
  ``clientConfig.url`` = ``https://127.0.0.1:<port>/mutate`` and that cert's CA;
- the extender (``python -m extender``, plain HTTP on 127.0.0.1);
- a second kube-scheduler, ``vramguard-scheduler``, with
  ``manifests/base/scheduler-config.yaml`` (extender ``urlPrefix``, kubeconfig and leader
  election changed);
- the PriorityClasses of ``manifests/components/priority-classes``;
- one policy file, ``manifests/base/policy.yaml`` with fast extender timings, that tests
  may rewrite (``update_policy``): both services reload it live.

``DeployedVramguard`` stands for vramguard already deployed in an existing cluster
(VRAMGUARD_E2E_KUBECONFIG): nothing is started and nothing local can be controlled, so
tests that need the exporter, the policy file or the processes skip there.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from .controlplane import ClusterBase, ControlPlaneError
from .gpu_exporter import GPUExporter
from .process import ManagedProcess, ProcessError, free_port, url_ok, wait_until
from .prometheus import Prometheus

REPO_ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = REPO_ROOT / "manifests"
BASE_POLICY = MANIFESTS / "base" / "policy.yaml"
WEBHOOK_CONFIGURATION = MANIFESTS / "base" / "mutatingwebhook.yaml"
SCHEDULER_CONFIGURATION = MANIFESTS / "base" / "scheduler-config.yaml"
PRIORITY_CLASSES = MANIFESTS / "components" / "priority-classes" / "priorityclasses.yaml"

SCHEDULER_NAME = "vramguard-scheduler"
LOCALHOST = "127.0.0.1"
PROBE_NAMESPACE = "vramguard-e2e-probe"

# Fast timings so scenarios take seconds: telemetry refreshed every second (Prometheus
# scrapes every second too), no warm-up window (a pod the fake kubelet reports running is
# taken to hold its VRAM at once; a bound pod not running yet still counts as "not yet
# using"), and a generous maxAge so a busy 2-core machine does not turn samples stale.
E2E_EXTENDER_SETTINGS: Mapping[str, Any] = {
    "refreshSeconds": 1,
    "maxAgeSeconds": 15,
    "warmupSeconds": 0,
    "staleMode": "budget-only",
}
# How often the services look at the policy file (their default is every 5 s).
POLICY_POLL_SECONDS = "0.5"
_CHILD_ENV = {
    "NO_PROXY": f"{LOCALHOST},localhost",
    "no_proxy": f"{LOCALHOST},localhost",
    "PYTHONUNBUFFERED": "1",
}


class Vramguard:
    """What tests may use whichever way vramguard runs."""

    scheduler_name = SCHEDULER_NAME

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class DeployedVramguard(Vramguard):
    """vramguard as deployed in an existing cluster (manifests applied): nothing to start."""


class LocalVramguard(Vramguard):
    """Exporter, Prometheus, webhook, extender and vramguard-scheduler as local processes."""

    def __init__(
        self,
        cluster: ClusterBase,
        *,
        extender_settings: Mapping[str, Any] = E2E_EXTENDER_SETTINGS,
        start_timeout: float = 90.0,
    ) -> None:
        self._cluster = cluster
        self._extender_settings = dict(extender_settings)
        self._timeout = start_timeout
        self._exporter = GPUExporter()
        self._prometheus: Prometheus | None = None
        self._webhook: ManagedProcess | None = None
        self._extender: ManagedProcess | None = None
        self._webhook_port = free_port()
        self._extender_port = free_port()
        self._policy: dict[str, Any] = {}
        self._webhook_tls: ssl.SSLContext | None = None
        self._webhook_configuration: str | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._cluster.workdir / "vramguard"

    @property
    def policy_path(self) -> Path:
        return self.directory / "policy.yaml"

    def start(self) -> None:
        from kubernetes import client  # noqa: PLC0415

        self.directory.mkdir(parents=True, exist_ok=True)
        api = self._cluster.api_client()
        self._exporter.start()
        self._prometheus = Prometheus(self._cluster, [self._exporter.address])
        self._prometheus.start(timeout=self._timeout)

        policy = yaml.safe_load(BASE_POLICY.read_text())
        policy.setdefault("extender", {}).update(self._extender_settings)
        self._write_policy(policy)
        ca_bundle = self._issue_webhook_certificate()
        apply_priority_classes(client.SchedulingV1Api(api))
        _ensure_namespace(client.CoreV1Api(api), PROBE_NAMESPACE)

        self._webhook = ManagedProcess(
            "vramguard-webhook",
            [
                sys.executable,
                "-m",
                "webhook",
                f"--policy={self.policy_path}",
                f"--tls-cert={self.directory / 'webhook-tls' / 'tls.crt'}",
                f"--tls-key={self.directory / 'webhook-tls' / 'tls.key'}",
                f"--host={LOCALHOST}",
                f"--port={self._webhook_port}",
                f"--kubeconfig={self._cluster.kubeconfig}",
            ],
            self._cluster.workdir / "logs" / "vramguard-webhook.log",
            env={**_CHILD_ENV, "VRAMGUARD_WEBHOOK_POLICY_RELOAD_SECONDS": POLICY_POLL_SECONDS},
            cwd=REPO_ROOT,
        )
        self._extender = ManagedProcess(
            "vramguard-extender",
            [
                sys.executable,
                "-m",
                "extender",
                f"--policy={self.policy_path}",
                f"--prometheus-url={self._prometheus.url}",
                f"--kubeconfig={self._cluster.kubeconfig}",
                f"--host={LOCALHOST}",
                f"--port={self._extender_port}",
            ],
            self._cluster.workdir / "logs" / "vramguard-extender.log",
            env={**_CHILD_ENV, "VRAMGUARD_EXTENDER_POLICY_POLL_SECONDS": POLICY_POLL_SECONDS},
            cwd=REPO_ROOT,
        )
        self.start_webhook(register=False)
        self.start_extender()
        self._webhook_configuration = register_webhook(
            client.AdmissionregistrationV1Api(api),
            url=f"{self.webhook_url}/mutate",
            ca_bundle=ca_bundle,
        )
        self.wait_for_admission()
        self._cluster.start_scheduler(
            SCHEDULER_NAME,
            scheduler_configuration(self.extender_url, self._cluster.kubeconfig),
            timeout=self._timeout,
        )

    def stop(self) -> None:
        """Stop the exporter and unregister the webhook; the cluster stops the processes."""
        if self._webhook_configuration is not None:
            with contextlib.suppress(Exception):  # the control plane may be gone already
                from kubernetes import client  # noqa: PLC0415

                admission = client.AdmissionregistrationV1Api(self._cluster.api_client())
                admission.delete_mutating_webhook_configuration(self._webhook_configuration)
            self._webhook_configuration = None
        self._exporter.stop()

    # -- the pieces, for tests that stop and restart them ---------------------------------

    @property
    def exporter(self) -> GPUExporter:
        return self._exporter

    @property
    def prometheus(self) -> Prometheus:
        if self._prometheus is None:
            raise ControlPlaneError("vramguard not started")
        return self._prometheus

    @property
    def webhook_url(self) -> str:
        return f"https://{LOCALHOST}:{self._webhook_port}"

    @property
    def extender_url(self) -> str:
        return f"http://{LOCALHOST}:{self._extender_port}"

    @property
    def webhook_process(self) -> ManagedProcess:
        if self._webhook is None:
            raise ControlPlaneError("vramguard not started")
        return self._webhook

    @property
    def extender_process(self) -> ManagedProcess:
        if self._extender is None:
            raise ControlPlaneError("vramguard not started")
        return self._extender

    def stop_webhook(self) -> None:
        self._cluster.stop_process(self.webhook_process)

    def start_webhook(self, *, register: bool = True) -> None:
        """Start the webhook (again) and wait until it is ready and, once registered, until
        the API server's calls reach it."""
        tls = self._webhook_tls
        self._cluster.start_process(
            self.webhook_process,
            ready=lambda: url_ok(f"{self.webhook_url}/readyz", tls),
            what=f"vramguard webhook {self.webhook_url}/readyz",
            timeout=self._timeout,
        )
        if register:
            self.wait_for_admission()

    def stop_extender(self) -> None:
        self._cluster.stop_process(self.extender_process)

    def start_extender(self) -> None:
        self._cluster.start_process(
            self.extender_process,
            ready=lambda: url_ok(f"{self.extender_url}/readyz"),
            what=f"vramguard extender {self.extender_url}/readyz",
            timeout=self._timeout,
        )

    def wait_for_admission(self, timeout: float | None = None) -> None:
        """Wait until the API server sends GPU pods through the webhook: a dry-run GPU pod
        comes back with vramguard's schedulerName."""
        from kubernetes import client  # noqa: PLC0415

        core: Any = client.CoreV1Api(self._cluster.api_client())
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"probe-{uuid.uuid4().hex[:8]}"},
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "pause",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }
                ]
            },
        }

        def mutated() -> bool:
            try:
                pod = core.create_namespaced_pod(PROBE_NAMESPACE, probe, dry_run="All")
            except Exception:  # the API server answers 500 while the webhook is unreachable
                return False
            return bool(pod.spec.scheduler_name == SCHEDULER_NAME)

        wait_until(
            "the API server to call the vramguard webhook (dry-run GPU pod mutated)",
            mutated,
            timeout=timeout or self._timeout,
            interval=0.5,
            watch=[self.webhook_process],
        )

    # -- policy ----------------------------------------------------------------------------

    @property
    def policy(self) -> dict[str, Any]:
        """A copy of the policy as last written."""
        return copy.deepcopy(self._policy)

    def update_policy(
        self, change: Callable[[dict[str, Any]], None], timeout: float = 30.0
    ) -> None:
        """Edit the policy (``change`` mutates a copy), write it, and wait until both the
        webhook and the extender have reloaded it."""
        policy = self.policy
        change(policy)
        if policy == self._policy:
            return
        before_webhook = self.webhook_metric("vramguard_webhook_policy_reloads_total")
        before_extender = self.extender_metric("vramguard_extender_policy_reloads_total")
        self._write_policy(policy)
        wait_until(
            "the webhook and the extender to reload the policy",
            lambda: (
                self.webhook_metric("vramguard_webhook_policy_reloads_total") > before_webhook
                and self.extender_metric("vramguard_extender_policy_reloads_total")
                > before_extender
            ),
            timeout=timeout,
            watch=[self.webhook_process, self.extender_process],
        )
        errors = self.webhook_metric("vramguard_webhook_policy_reloads_total", result="error")
        if errors:
            raise ProcessError(f"the webhook rejected the policy; see {self.policy_path}")

    def add_namespaces(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Add ``namespaces:`` entries (name -> override) to the policy."""

        def change(policy: dict[str, Any]) -> None:
            namespaces = policy.setdefault("namespaces", {}) or {}
            namespaces.update({name: dict(entry) for name, entry in entries.items()})
            policy["namespaces"] = namespaces

        self.update_policy(change)

    def exclude_namespaces(self, names: list[str]) -> None:
        def change(policy: dict[str, Any]) -> None:
            excluded = list(policy.get("excludedNamespaces") or [])
            policy["excludedNamespaces"] = excluded + [n for n in names if n not in excluded]

        self.update_policy(change)

    @contextlib.contextmanager
    def extender_settings(self, **settings: Any) -> Iterator[None]:
        """Override ``extender:`` settings (camelCase keys) for the duration."""
        saved = self.policy.get("extender", {})

        def override(policy: dict[str, Any]) -> None:
            policy.setdefault("extender", {}).update(settings)

        def restore(policy: dict[str, Any]) -> None:
            policy["extender"] = copy.deepcopy(saved)

        self.update_policy(override)
        try:
            yield
        finally:
            self.update_policy(restore)

    def _write_policy(self, policy: dict[str, Any]) -> None:
        # Atomically: a service polling the file must never read half of it.
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(policy, sort_keys=False))
        os.replace(tmp, self.policy_path)
        self._policy = copy.deepcopy(policy)

    # -- what the services say ---------------------------------------------------------------

    def extender_get(self, path: str) -> str:
        return _http_get(f"{self.extender_url}{path}")

    def webhook_get(self, path: str) -> str:
        return _http_get(f"{self.webhook_url}{path}", self._webhook_tls)

    def extender_metric(self, sample: str, **labels: str) -> float:
        """Sum of the extender's samples named ``sample`` whose labels include ``labels``."""
        return metric_value(self.extender_get("/metrics"), sample, labels)

    def webhook_metric(self, sample: str, **labels: str) -> float:
        return metric_value(self.webhook_get("/metrics"), sample, labels)

    def extender_snapshot(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = json.loads(self.extender_get("/debug/snapshot"))
        return snapshot

    def extender_node(self, node: str) -> dict[str, Any] | None:
        """What the extender's snapshot says about one node (None: not in it)."""
        query = urllib.parse.urlencode({"node": node})
        snapshot = json.loads(self.extender_get(f"/debug/snapshot?{query}"))
        found: dict[str, Any] | None = snapshot["nodes"].get(node)
        return found

    def wait_for_node(
        self,
        node: str,
        *,
        live: bool = True,
        check: Callable[[dict[str, Any]], bool] | None = None,
        what: str = "",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until the extender knows the node with a capacity (and, with ``live``,
        fresh live telemetry for it) and ``check`` holds; return its snapshot entry."""
        max_age = float(self._policy.get("extender", {}).get("maxAgeSeconds", 60))
        seen: dict[str, Any] = {}

        def ready() -> bool:
            state = self.extender_node(node)
            if state is None or not state["known"] or state["capacityMiB"] is None:
                return False
            seen.clear()
            seen.update(state)
            if live and (
                state["liveFreeMiB"] is None
                or state["telemetryAgeSeconds"] is None
                or state["telemetryAgeSeconds"] > max_age
            ):
                return False
            return check is None or check(state)

        try:
            wait_until(
                f"the extender to see node {node}{' ' + what if what else ''}",
                ready,
                timeout=timeout,
                interval=0.25,
                watch=[self.extender_process],
            )
        except ProcessError as err:
            raise ProcessError(f"{err}\nlast seen: {json.dumps(seen)}") from None
        return dict(seen)

    def set_card(self, node: str, *, total_mib: int, used_mib: int, timeout: float = 30.0) -> None:
        """Make the exporter report the node's card, and wait until the extender sees it."""
        self._exporter.set_node(node, total_mib=total_mib, used_mib=used_mib)
        free = max(0, total_mib - used_mib)
        self.wait_for_node(
            node,
            check=lambda state: state["liveFreeMiB"] == free,
            what=f"with {free} MiB live free",
            timeout=timeout,
        )

    def log_mentions(self, process: ManagedProcess, text: str) -> bool:
        try:
            return text in process.log_path.read_text(errors="replace")
        except OSError:
            return False

    # -- internals -----------------------------------------------------------------------

    def _issue_webhook_certificate(self) -> str:
        """The webhook's serving cert from the certs package; returns the caBundle."""
        from certs.authority import issue_bundle, subject_names  # noqa: PLC0415
        from certs.files import write_bundle  # noqa: PLC0415

        bundle = issue_bundle(subject_names(["localhost"], [LOCALHOST]), days=2)
        directory = self.directory / "webhook-tls"
        write_bundle(directory, bundle)
        self._webhook_tls = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        return base64.b64encode(bundle.ca.cert_pem).decode()


# -- manifests, with only addresses changed ------------------------------------------------


def scheduler_configuration(extender_url: str, kubeconfig: Path) -> dict[str, Any]:
    """manifests/base/scheduler-config.yaml for a local process: the extenders' urlPrefix,
    the kubeconfig and leader election (one replica, no Lease namespace) changed."""
    config: dict[str, Any] = yaml.safe_load(SCHEDULER_CONFIGURATION.read_text())
    extenders = config.get("extenders") or []
    if not extenders:
        raise ControlPlaneError(f"{SCHEDULER_CONFIGURATION} configures no extender")
    for extender in extenders:
        path = urllib.parse.urlsplit(str(extender["urlPrefix"])).path
        extender["urlPrefix"] = extender_url + path
    config["clientConnection"] = {
        **config.get("clientConnection", {}),
        "kubeconfig": str(kubeconfig),
    }
    config["leaderElection"] = {"leaderElect": False}
    return config


def webhook_configuration(url: str, ca_bundle: str) -> dict[str, Any]:
    """manifests/base/mutatingwebhook.yaml with every clientConfig a URL and a caBundle."""
    config: dict[str, Any] = yaml.safe_load(WEBHOOK_CONFIGURATION.read_text())
    for webhook in config["webhooks"]:
        webhook["clientConfig"] = {"url": url, "caBundle": ca_bundle}
    return config


def register_webhook(admission: Any, *, url: str, ca_bundle: str) -> str:
    """Create (or replace) the MutatingWebhookConfiguration; return its name."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    body = webhook_configuration(url, ca_bundle)
    name = str(body["metadata"]["name"])
    try:
        admission.create_mutating_webhook_configuration(body)
    except ApiException as err:
        if err.status != 409:
            raise
        existing = admission.read_mutating_webhook_configuration(name)
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        admission.replace_mutating_webhook_configuration(name, body)
    return name


def webhook_failure_policy() -> str:
    """The failurePolicy the manifest gives vramguard's webhook (the API default: Fail)."""
    config = yaml.safe_load(WEBHOOK_CONFIGURATION.read_text())
    return str(config["webhooks"][0].get("failurePolicy", "Fail"))


def apply_priority_classes(scheduling: Any) -> list[str]:
    """Create the PriorityClasses of manifests/components/priority-classes (an existing one
    is left alone: a class's value is immutable)."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    names = []
    for document in yaml.safe_load_all(PRIORITY_CLASSES.read_text()):
        if not document or document.get("kind") != "PriorityClass":
            continue
        try:
            scheduling.create_priority_class(document)
        except ApiException as err:
            if err.status != 409:
                raise
        names.append(str(document["metadata"]["name"]))
    return names


def vramguard_for(cluster: ClusterBase) -> Vramguard:
    """A local stack next to a local control plane; the deployed one on an existing cluster."""
    return LocalVramguard(cluster) if cluster.is_local else DeployedVramguard()


# -- small helpers -----------------------------------------------------------------------------


def metric_value(text: str, sample: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples called ``sample`` (e.g. ``x_total``) carrying ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    wanted = dict(labels or {})
    total = 0.0
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == sample and all(item.labels.get(k) == v for k, v in wanted.items()):
                total += float(item.value)
    return total


def scheduler_queued(metrics: str) -> float:
    """Pods a kube-scheduler still has to try (its active and backoff queues), from its
    /metrics text."""
    return sum(
        metric_value(metrics, "scheduler_pending_pods", {"queue": queue})
        for queue in ("active", "backoff")
    )


def _http_get(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> str:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as response:
            return str(response.read().decode())
    except urllib.error.URLError as err:
        raise ProcessError(f"GET {url}: {err}") from err


def _ensure_namespace(core: Any, name: str) -> None:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        core.create_namespace({"metadata": {"name": name}})
    except ApiException as err:
        if err.status != 409:
            raise
