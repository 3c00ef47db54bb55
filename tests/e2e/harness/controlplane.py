"""A Kubernetes control plane for the end-to-end suite.

``ControlPlane`` runs etcd, kube-apiserver and a default kube-scheduler as local
processes on 127.0.0.1 (free ports, everything in one temporary directory, no kubelet,
no kube-controller-manager). ``ExistingCluster`` wraps a cluster reached through a
kubeconfig instead. Both can start extra kube-schedulers with a given
KubeSchedulerConfiguration, so tests are written against what the two share
(``ClusterBase``) and do not care which one they got.

    with ControlPlane() as cluster:
        core = kubernetes.client.CoreV1Api(cluster.api_client())
        cluster.start_scheduler("second-scheduler", {"profiles": [...]})
"""

from __future__ import annotations

import copy
import os
import shutil
import ssl
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .binaries import Binaries, ensure_binaries
from .pki import CertificateAuthority, write_service_account_keys
from .process import ManagedProcess, ProcessError, free_port, url_ok, wait_until

LOCALHOST = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "vramguard-e2e-admin"
DEFAULT_SCHEDULER_NAME = "default-scheduler"
SCHEDULER_CONFIG_API_VERSION = "kubescheduler.config.k8s.io/v1"

# In-tree admission plugins on top of the defaults. ServiceAccount is turned off because
# no kube-controller-manager creates the "default" ServiceAccount in each namespace;
# with it on, every pod would be rejected. TaintNodesByCondition stays on (a default),
# so new Nodes get the not-ready taint that nodes.create_gpu_node removes.
ENABLE_ADMISSION_PLUGINS = (
    "NamespaceLifecycle",
    "LimitRanger",
    "TaintNodesByCondition",
    "Priority",
    "DefaultTolerationSeconds",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ResourceQuota",
    # The real node's kubelet authenticates as system:node:<name>; the Node authorizer and
    # this plugin limit it to its own Node and pods, as on a kubeadm cluster.
    "NodeRestriction",
)
DISABLE_ADMISSION_PLUGINS = ("ServiceAccount",)


class ControlPlaneError(RuntimeError):
    """The cluster could not be started or used."""


class ClusterBase:
    """What the e2e tests may rely on, whichever cluster they run against.

    Owns a working directory (logs, configs) and the processes it started. Use as a
    context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(self, *, workdir: Path | None = None, keep_logs: bool | None = None) -> None:
        self._requested_workdir = workdir
        self._workdir: Path | None = None
        self._keep_logs = _env_flag("VRAMGUARD_E2E_KEEP") if keep_logs is None else keep_logs
        self._processes: list[ManagedProcess] = []
        self._schedulers: dict[str, ManagedProcess] = {}
        self._scheduler_ports: dict[str, int] = {}
        self._log_files: dict[str, Path] = {}
        self._binaries: Binaries | None = None
        self._cleanups: list[Callable[[], None]] = []
        self.kept_workdir: Path | None = None
        """Set by ``stop()`` when it kept the working directory (logs) for inspection."""

    # -- what subclasses provide -------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        raise NotImplementedError

    @property
    def is_local(self) -> bool:
        """True when this harness runs the control plane itself (no real nodes exist)."""
        return False

    def _start(self) -> None:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("cluster not started")
        return self._workdir

    def start(self) -> None:
        if self._workdir is not None:
            raise ControlPlaneError("already started")
        if self._requested_workdir is not None:
            self._requested_workdir.mkdir(parents=True, exist_ok=True)
            self._workdir = self._requested_workdir
        else:
            self._workdir = Path(tempfile.mkdtemp(prefix="vramguard-e2e-"))
        self._log_files.clear()
        self.kept_workdir = None
        try:
            self._start()
        except KeyboardInterrupt:
            self.stop()  # stopped on purpose: no logs to keep unless VRAMGUARD_E2E_KEEP
            raise
        except BaseException:
            self.stop(keep_logs=True)
            raise

    def stop(self, *, keep_logs: bool | None = None) -> Path | None:
        """Stop every process this harness started (newest first; SIGTERM, then SIGKILL).

        The working directory is removed unless logs are kept: when ``keep_logs`` is
        true, VRAMGUARD_E2E_KEEP=1 is set, or a process had died by itself (and there
        are logs at all). Returns the kept directory, after printing the log paths to
        stderr, or None.
        """
        crashed = [p for p in self._processes if p.returncode not in (None, 0)]
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception as err:  # the other cleanups and processes still go
                print(f"[vramguard e2e] cleanup {cleanup!r} failed: {err}", file=sys.stderr)
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        self._schedulers.clear()
        workdir, self._workdir = self._workdir, None
        if workdir is None:
            return None
        keep = bool(keep_logs) or self._keep_logs or bool(crashed)
        if keep and self._log_files:
            self._print_logs(workdir, crashed)
            self.kept_workdir = workdir
            return workdir
        if self._requested_workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        return None

    def __enter__(self) -> ClusterBase:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        clean_exit = exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None))
        self.stop(keep_logs=None if clean_exit else True)

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` at ``stop()`` (newest first), before the processes are stopped:
        for what stopping a process does not undo (the real node's mounts, its bridge)."""
        self._cleanups.append(cleanup)

    def log_files(self) -> dict[str, Path]:
        """Log file of every process started so far (stopped ones too), by process name."""
        return dict(self._log_files)

    def _print_logs(self, workdir: Path, crashed: Sequence[ManagedProcess]) -> None:
        lines = [f"[vramguard e2e] kept {workdir}"]
        lines += [f"  {name}: {path}" for name, path in self._log_files.items()]
        lines += [f"  {p.name} exited with status {p.returncode}" for p in crashed]
        print("\n".join(lines), file=sys.stderr, flush=True)

    # -- clients -----------------------------------------------------------------------

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` for the admin kubeconfig."""
        from kubernetes import config  # noqa: PLC0415 - keep imports light for non-users

        new_client: Callable[..., Any] = config.new_client_from_config
        return new_client(config_file=str(self.kubeconfig))

    # -- schedulers --------------------------------------------------------------------

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = ensure_binaries()
        return self._binaries

    def start_scheduler(
        self,
        name: str,
        config: str | Mapping[str, Any] | None = None,
        *,
        extra_args: Sequence[str] = (),
        timeout: float = 90.0,
    ) -> ManagedProcess:
        """Start a kube-scheduler with a KubeSchedulerConfiguration and wait until ready.

        ``config`` is YAML text or a mapping. Missing parts are filled in: apiVersion and
        kind, ``clientConnection.kubeconfig`` (this cluster's admin kubeconfig),
        ``leaderElection.leaderElect: false``, and a single profile with
        ``schedulerName: name`` when it has no ``profiles``. The scheduler serves
        /healthz and /readyz over HTTPS on a free 127.0.0.1 port.
        """
        if name in self._schedulers and self._schedulers[name].alive():
            raise ControlPlaneError(f"scheduler {name!r} is already running")
        directory = self.workdir / "schedulers" / name
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / "config.yaml"
        config_path.write_text(
            yaml.safe_dump(_complete_scheduler_config(name, config, self.kubeconfig))
        )
        port = free_port()
        process = ManagedProcess(
            f"kube-scheduler[{name}]",
            [
                str(self.binaries.kube_scheduler),
                f"--config={config_path}",
                f"--bind-address={LOCALHOST}",
                f"--secure-port={port}",
                f"--cert-dir={directory / 'certs'}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                # Tests read scheduler_pending_pods; loopback only, so no auth for /metrics.
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                *extra_args,
            ],
            self.workdir / "logs" / f"kube-scheduler-{name}.log",
        )
        self._launch(process)
        self._schedulers[name] = process
        self._scheduler_ports[name] = port
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        wait_until(
            f"kube-scheduler {name!r} /readyz",
            lambda: url_ok(f"https://{LOCALHOST}:{port}/readyz", insecure),
            timeout=timeout,
            watch=[process],
        )
        return process

    def scheduler_metrics(self, name: str, timeout: float = 5.0) -> str:
        """The /metrics text of a scheduler started here (e.g. ``scheduler_pending_pods``)."""
        port = self._scheduler_ports.get(name)
        if port is None or name not in self._schedulers:
            raise ControlPlaneError(f"no scheduler {name!r} was started")
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert, on loopback
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=insecure)
        )
        with opener.open(f"https://{LOCALHOST}:{port}/metrics", timeout=timeout) as response:
            return str(response.read().decode())

    def stop_scheduler(self, name: str) -> None:
        process = self._schedulers.pop(name, None)
        self._scheduler_ports.pop(name, None)
        if process is None:
            raise ControlPlaneError(f"no scheduler {name!r} was started")
        process.stop()
        self._processes.remove(process)

    # -- other processes --------------------------------------------------------------

    def start_process(
        self,
        process: ManagedProcess,
        *,
        ready: Callable[[], bool] | None = None,
        what: str | None = None,
        timeout: float = 60.0,
    ) -> ManagedProcess:
        """Start a process (or start a stopped one again) that this harness then owns: it
        is stopped by ``stop()`` and its log is listed by ``log_files()``. Waits until
        ``ready()`` is true, failing fast with the end of its log if it exits."""
        self._launch(process)
        if ready is not None:
            wait_until(
                what or f"{process.name} to be ready", ready, timeout=timeout, watch=[process]
            )
        return process

    def stop_process(self, process: ManagedProcess) -> None:
        """Stop a process started with ``start_process``; ``start_process`` may restart it."""
        process.stop()
        if process in self._processes:
            self._processes.remove(process)

    def _launch(self, process: ManagedProcess) -> None:
        try:
            process.start()
        except OSError as err:
            raise ControlPlaneError(f"cannot start {process.name}: {err}") from err
        self._processes.append(process)
        self._log_files[process.name] = process.log_path


class ControlPlane(ClusterBase):
    """etcd + kube-apiserver (+ a default kube-scheduler) as local processes."""

    def __init__(
        self,
        *,
        binaries: Binaries | None = None,
        workdir: Path | None = None,
        keep_logs: bool | None = None,
        default_scheduler: bool = True,
        apiserver_args: Sequence[str] = (),
        startup_timeout: float = 120.0,
    ) -> None:
        super().__init__(workdir=workdir, keep_logs=keep_logs)
        self._binaries = binaries
        self._default_scheduler = default_scheduler
        self._apiserver_args = tuple(apiserver_args)
        self._startup_timeout = startup_timeout
        self._kubeconfig: Path | None = None
        self._server: str | None = None
        self._ca_file: Path | None = None
        self._etcd_url: str | None = None
        self._ca: CertificateAuthority | None = None

    @property
    def is_local(self) -> bool:
        return True

    @property
    def kubeconfig(self) -> Path:
        if self._kubeconfig is None:
            raise ControlPlaneError("control plane not started")
        return self._kubeconfig

    @property
    def server(self) -> str:
        """The apiserver URL, https://127.0.0.1:<port>."""
        if self._server is None:
            raise ControlPlaneError("control plane not started")
        return self._server

    @property
    def ca_file(self) -> Path:
        """The CA that signed the apiserver's serving certificate (and the admin's)."""
        if self._ca_file is None:
            raise ControlPlaneError("control plane not started")
        return self._ca_file

    @property
    def ca(self) -> CertificateAuthority:
        """The cluster CA, key included: it signs the real node's kubelet certificates."""
        if self._ca is None:
            raise ControlPlaneError("control plane not started")
        return self._ca

    @property
    def etcd_url(self) -> str:
        if self._etcd_url is None:
            raise ControlPlaneError("control plane not started")
        return self._etcd_url

    def _start(self) -> None:
        binaries = self.binaries
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir()
        ca = CertificateAuthority.create(pki_dir)
        serving = ca.issue_server(
            pki_dir,
            "apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=(LOCALHOST, "10.0.0.1"),
        )
        admin = ca.issue_client(
            pki_dir, "admin", common_name=ADMIN_USER, organizations=("system:masters",)
        )
        service_account = write_service_account_keys(pki_dir)
        self._ca_file = ca.cert_path
        self._ca = ca

        etcd = self._start_etcd(binaries)

        port = free_port()
        self._server = f"https://{LOCALHOST}:{port}"
        apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                f"--bind-address={LOCALHOST}",
                f"--advertise-address={LOCALHOST}",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert_path}",
                # Published in kube-system/extension-apiserver-authentication, which the
                # schedulers' delegated authentication reads (it logs errors without it).
                f"--requestheader-client-ca-file={ca.cert_path}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--etcd-servers={self.etcd_url}",
                f"--service-account-key-file={service_account.cert}",
                f"--service-account-signing-key-file={service_account.key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                # The real node's kubelet serves logs and exec on 127.0.0.1 (its InternalIP).
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--enable-admission-plugins={','.join(ENABLE_ADMISSION_PLUGINS)}",
                f"--disable-admission-plugins={','.join(DISABLE_ADMISSION_PLUGINS)}",
                "--allow-privileged=true",
                # The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints
                # validation rejects; nothing here needs them.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                *self._apiserver_args,
            ],
            self.workdir / "logs" / "kube-apiserver.log",
        )
        self._launch(apiserver)

        tls = ssl.create_default_context(cafile=str(ca.cert_path))
        tls.load_cert_chain(str(admin.cert), str(admin.key))
        wait_until(
            "kube-apiserver /readyz",
            lambda: url_ok(f"{self.server}/readyz", tls),
            timeout=self._startup_timeout,
            watch=[etcd, apiserver],
        )
        self._kubeconfig = self.workdir / "kubeconfig"
        write_kubeconfig(
            self._kubeconfig,
            server=self.server,
            ca_file=ca.cert_path,
            client_cert=admin.cert,
            client_key=admin.key,
        )
        if self._default_scheduler:
            self.start_scheduler(
                DEFAULT_SCHEDULER_NAME, {"profiles": [{"schedulerName": DEFAULT_SCHEDULER_NAME}]}
            )

    def _start_etcd(self, binaries: Binaries) -> ManagedProcess:
        client_port, peer_port = free_port(), free_port()
        while peer_port == client_port:
            peer_port = free_port()
        self._etcd_url = f"http://{LOCALHOST}:{client_port}"
        peer_url = f"http://{LOCALHOST}:{peer_port}"
        etcd = ManagedProcess(
            "etcd",
            [
                str(binaries.etcd),
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--initial-cluster-state=new",
                # Throw-away data: skip fsync, it only slows a test machine down.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.workdir / "logs" / "etcd.log",
        )
        self._launch(etcd)
        wait_until(
            "etcd /health",
            lambda: url_ok(f"{self.etcd_url}/health"),
            timeout=self._startup_timeout,
            watch=[etcd],
        )
        return etcd


class ExistingCluster(ClusterBase):
    """A cluster that is already running, reached with ``kubeconfig``.

    Nothing is started at ``start()``; ``start_scheduler`` runs a local kube-scheduler
    (built like the local control plane's) against that cluster.
    """

    def __init__(self, kubeconfig: Path, *, keep_logs: bool | None = None) -> None:
        super().__init__(keep_logs=keep_logs)
        self._kubeconfig_path = kubeconfig

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig_path

    def _start(self) -> None:
        if not self._kubeconfig_path.is_file():
            raise ControlPlaneError(f"kubeconfig {self._kubeconfig_path} does not exist")


def cluster_from_environment() -> ClusterBase:
    """``ExistingCluster`` if VRAMGUARD_E2E_KUBECONFIG is set, else a local ``ControlPlane``."""
    kubeconfig = os.environ.get("VRAMGUARD_E2E_KUBECONFIG")
    if kubeconfig:
        return ExistingCluster(Path(kubeconfig).expanduser())
    return ControlPlane()


def write_kubeconfig(
    path: Path, *, server: str, ca_file: Path, client_cert: Path, client_key: Path
) -> None:
    """Write a single-context kubeconfig authenticating with a client certificate."""
    name = "vramguard-e2e"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {
                    "client-certificate": str(client_cert),
                    "client-key": str(client_key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": ADMIN_USER}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
    path.chmod(0o600)


def _complete_scheduler_config(
    name: str, config: str | Mapping[str, Any] | None, kubeconfig: Path
) -> dict[str, Any]:
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, str):
        loaded = yaml.safe_load(config)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ControlPlaneError("scheduler config must be a YAML mapping")
        data = loaded
    else:
        data = copy.deepcopy(dict(config))
    data.setdefault("apiVersion", SCHEDULER_CONFIG_API_VERSION)
    data.setdefault("kind", "KubeSchedulerConfiguration")
    data.setdefault("clientConnection", {}).setdefault("kubeconfig", str(kubeconfig))
    data.setdefault("leaderElection", {}).setdefault("leaderElect", False)
    if not data.get("profiles"):
        data["profiles"] = [{"schedulerName": name}]
    return data


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


__all__ = [
    "ClusterBase",
    "ControlPlane",
    "ControlPlaneError",
    "ExistingCluster",
    "ProcessError",
    "cluster_from_environment",
    "write_kubeconfig",
]
