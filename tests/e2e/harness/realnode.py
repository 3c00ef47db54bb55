"""One real node beside the API-only ones: containerd, runc, CNI, a kubelet and the fake GPU
device plugin, on the local control plane, so that bound pods really run.

    node = RealNode(cluster, name="real-gpu", gpus=1, replicas=8)
    node.start()          # containerd, images, kubelet, device plugin; Ready and untainted
    ...
    node.restart_kubelet()
    node.stop()           # pods' containers killed, mounts undone, bridge and state removed

Only one can run on a machine: the kubelet's device-plugin directory
(`/var/lib/kubelet/device-plugins`, compiled into the kubelet), its cgroups (`/kubepods`) and
the CNI bridge are global. Everything else lives in the node's own directory: containerd's
root, state and socket, the kubelet's root directory (with the PodResources socket), the CNI
config and IP leases, the pods' logs and network namespaces. ``stop()`` undoes what
``start()`` made, also after a failed start: it kills every container task, unmounts every
mount under the node's directory, deletes the bridge, removes the cgroups and global
directories it created, and leaves nothing running.

What is not real here, and why: NVML and the GPUs (none on the machine) are faked, the
device plugin by ``tests.fakes.device_plugin`` (NVIDIA's API and time-slicing behaviour)
and NVML, for the node agent, by ``tests/fakes/pynvml_shim``. Images are built locally
(``images.py``): no registry is reachable. The kubelet runs with test-only settings, said
at each: anonymous, always-allow authorization on its own port (loopback only), no eviction
thresholds, the cgroup v1 hierarchy allowed (``failCgroupV1: false``), and containerd's
``restrict_oom_score_adj`` (root here lacks CAP_SYS_RESOURCE, so runc could not raise a
sandbox's OOM score).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import images
from .controlplane import write_kubeconfig
from .nodes import (
    GFD_COUNT_LABEL,
    GFD_MEMORY_LABEL,
    GFD_PRODUCT_LABEL,
    GFD_REPLICAS_LABEL,
    GFD_SHARING_LABEL,
    GPU_RESOURCE,
    untaint_node,
)
from .process import ManagedProcess, ProcessError, free_port, url_ok, wait_until

if TYPE_CHECKING:
    from .controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[3]
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_LIB = Path("/var/lib/kubelet")
CONTAINER_LOGS_DIR = Path("/var/log/containers")
# containerd's shims put their sockets under /run/containerd/s whatever the state directory,
# and the CNI library caches results in /var/lib/cni: both global, removed if start made them.
SHIM_SOCKETS_DIR = Path("/run/containerd")
CNI_CACHE_DIR = Path("/var/lib/cni")
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
BRIDGE = "vgcni0"
POD_SUBNET = "10.244.77.0/24"
# The node's InternalIP: the bridge's own address, which is also the pods' gateway. The
# kubelet refuses a loopback node IP, and this machine has no dummy interfaces; an address
# on the bridge is reachable from the host and the pods, and from nowhere else.
NODE_IP = "10.244.77.1"
NAMESPACE = "k8s.io"  # containerd's namespace for the CRI plugin
# Debian's packages: what the real node needs on the machine besides the kubelet.
HOST_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    str(CNI_BIN_DIR / "bridge"): "containernetworking-plugins",
    str(CNI_BIN_DIR / "host-local"): "containernetworking-plugins",
    str(CNI_BIN_DIR / "loopback"): "containernetworking-plugins",
    str(images.BUSYBOX): "busybox-static",
    "ip": "iproute2",
}


class RealNodeUnavailable(RuntimeError):
    """Something a real node needs is missing on this machine (a binary, root)."""


def missing_host_tools() -> list[str]:
    """What the real node lacks on this machine, as `<tool> (Debian package <pkg>)`."""
    missing = []
    for tool, package in HOST_TOOLS.items():
        found = os.access(tool, os.X_OK) if tool.startswith("/") else shutil.which(tool)
        if not found:
            missing.append(f"{tool} (Debian package {package})")
    return missing


class RealNode:
    """A kubelet with containerd and the fake device plugin, registered as Node ``name`` with
    ``gpus`` fake GPUs of ``gpu_memory_mib`` time-sliced into ``replicas`` each (GPU Feature
    Discovery's labels set as on a real GPU node)."""

    def __init__(
        self,
        cluster: ControlPlane,
        *,
        name: str = "real-gpu-node",
        gpus: int = 1,
        replicas: int = 8,
        gpu_memory_mib: int = 15360,
        gpu_product: str = "Tesla-T4",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.gpus = gpus
        self.replicas = replicas
        self.gpu_memory_mib = gpu_memory_mib
        self.gpu_product = gpu_product
        self.labels = dict(labels or {})
        self.directory = cluster.workdir / "nodes" / name
        self.nvml_state = self.directory / "nvml-state.json"
        self._containerd: ManagedProcess | None = None
        self._kubelet: ManagedProcess | None = None
        self._device_plugin: ManagedProcess | None = None
        self._created: list[Path] = []  # global paths this node made, removed at stop
        self._stopped: list[ManagedProcess] = []  # for leftovers(): each must have exited
        self._healthz_port = 0

    # -- paths -------------------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        return self.directory / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.directory / "kubelet"

    @property
    def pod_resources_socket(self) -> Path:
        """The kubelet's PodResources v1 socket, which the node agent reads."""
        return self.kubelet_root / "pod-resources" / "kubelet.sock"

    @property
    def node_ip(self) -> str:
        """The InternalIP the kubelet reports (its pods' hostIP)."""
        return NODE_IP

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self._containerd, self._kubelet, self._device_plugin) if p]

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Start containerd (and import the images), the kubelet and the device plugin; wait
        until the Node is Ready with its GPUs in allocatable, then untaint it."""
        if os.geteuid() != 0:
            raise RealNodeUnavailable("a real node needs root (containerd, runc, the kubelet)")
        missing = missing_host_tools()
        if missing:
            raise RealNodeUnavailable("missing on this machine: " + ", ".join(missing))
        binaries = self.cluster.binaries
        if binaries.kubelet_missing():
            raise RealNodeUnavailable(
                f"{', '.join(str(p) for p in binaries.kubelet_missing())} not built; "
                "run tests/e2e/controlplane/build.sh"
            )
        if (DEVICE_PLUGIN_DIR / "kubelet.sock").exists() and _socket_answers(
            DEVICE_PLUGIN_DIR / "kubelet.sock"
        ):
            raise RealNodeUnavailable(
                f"another kubelet already serves {DEVICE_PLUGIN_DIR}/kubelet.sock: "
                "only one real node fits a machine"
            )
        for cleaned in reap_stale_nodes():
            print(f"[vramguard e2e] {cleaned}", file=sys.stderr)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in (KUBELET_LIB, CONTAINER_LOGS_DIR, SHIM_SOCKETS_DIR, CNI_CACHE_DIR):
            self._remember_created(path)
        self._remember_created(CGROUP_ROOT / "pids" / KUBEPODS)
        self._start_containerd()
        self._import_images()
        self._write_cni_config()
        self._create_bridge()
        self._write_kubelet_files()
        self._start_kubelet()
        self._start_device_plugin()
        self.wait_ready(timeout)

    def _remember_created(self, path: Path) -> None:
        """Note a global path that does not exist yet: stop() removes it if start made it."""
        if not path.exists():
            self._created.append(path)

    def stop(self) -> None:
        """Kill the pods' containers and stop every process; undo mounts, the bridge and the
        global paths start() made. Safe to call twice, and after a failed start."""
        if self._kubelet is not None and self._kubelet.alive():
            self._drain()
        if self._device_plugin is not None:
            self._device_plugin.stop()
        if self._kubelet is not None:
            self._kubelet.stop(grace_seconds=15)
        if self._containerd is not None and self._containerd.alive():
            self._kill_tasks()
            self._containerd.stop()
        self._kill_leftover_shims()
        _unmount_below(self.directory)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for path in reversed(self._created):
            if path.parent == CGROUP_ROOT / "pids":
                for hierarchy in _cgroup_hierarchies():
                    _remove_cgroup_tree(hierarchy / KUBEPODS)
            else:
                _unmount_below(path)
                shutil.rmtree(path, ignore_errors=True)
        self._created.clear()
        self._stopped.extend(self.processes)
        self._containerd = self._kubelet = self._device_plugin = None

    def _drain(self, timeout: float = 20.0) -> None:
        """Force-delete the node's pods and give the kubelet a moment to stop them: it tears
        each sandbox's network down (CNI DEL), which killing the tasks afterwards would not."""
        try:
            core = self._core()
            pods = core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.name}"
            ).items
            for pod in pods:
                core.delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                )
        except Exception as err:  # the API may be gone: the tasks are killed next
            print(f"[vramguard e2e] draining {self.name}: {err}", file=sys.stderr)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._ctr("tasks", "ls", "-q", check=False).stdout:
            time.sleep(0.25)

    def leftovers(self) -> list[str]:
        """What a stopped node left behind (empty when stop() undid everything): processes,
        mounts, the bridge, global paths it created."""
        processes = [*self._stopped, *self.processes]
        found = [f"{p.name} still running (pid {p.pid})" for p in processes if p.alive()]
        found += [
            f"mounted: {m}"
            for m in _mount_points()
            if m == self.directory or self.directory in m.parents
        ]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"bridge {BRIDGE} still there")
        found += [f"shim still running: pid {pid}" for pid in self._shim_pids()]
        found += [f"left: {path}" for path in self._created if path.exists()]
        return found

    # -- containerd --------------------------------------------------------------------

    def _start_containerd(self) -> None:
        base = self.directory / "containerd"
        for sub in ("root", "state", "opt"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        config = base / "config.toml"
        config.write_text(_containerd_config(base, self.directory / "cni"))
        self._containerd = ManagedProcess(
            f"containerd[{self.name}]",
            ["containerd", f"--config={config}"],
            self.cluster.workdir / "logs" / f"containerd-{self.name}.log",
        )
        self.cluster.start_process(
            self._containerd,
            ready=lambda: self._ctr("version", check=False).returncode == 0,
            what="containerd to answer",
            timeout=60,
        )

    def _import_images(self) -> None:
        out = self.directory / "images"
        pause = images.pause_image(self.cluster.binaries.pause)
        for spec in (images.busybox_image(), pause):
            archive = images.write_archive(spec, out / f"{spec.name.rsplit('/', 1)[-1]}.tar")
            self._ctr("images", "import", "--no-unpack=false", str(archive))

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", f"--address={self.containerd_socket}", f"--namespace={NAMESPACE}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise ProcessError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _kill_tasks(self) -> None:
        """SIGKILL every container task (the kubelet is gone: nobody else stops them), so
        their shims exit and their rootfs mounts can go."""
        listed = self._ctr("tasks", "ls", "--quiet", check=False)
        for task in listed.stdout.split():
            self._ctr("tasks", "kill", "--signal", "SIGKILL", "--all", task, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            running = [
                line
                for line in self._ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
                if "RUNNING" in line
            ]
            if not running:
                break
            time.sleep(0.2)
        for task in listed.stdout.split():
            self._ctr("tasks", "delete", "--force", task, check=False)

    def _kill_leftover_shims(self) -> None:
        """containerd's shims outlive it by design; kill those that served this node."""
        for pid in self._shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _shim_pids(self) -> list[int]:
        """The containerd shims started for this node's containerd (by its socket path)."""
        return [pid for pid, address in _shims() if address == self.containerd_socket]

    def _write_cni_config(self) -> None:
        conf_dir = self.directory / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "vramguard-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.directory / "cni" / "ipam"),
                    },
                }
            ],
        }
        (conf_dir / "10-vramguard-e2e.conflist").write_text(json.dumps(conflist, indent=2))

    def _create_bridge(self) -> None:
        """The CNI bridge, made before the first pod so that the node IP exists when the
        kubelet starts; the bridge plugin takes an existing bridge with its gateway on it."""
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        prefix = POD_SUBNET.split("/")[1]
        for command in (
            ["ip", "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE],
            ["ip", "link", "set", BRIDGE, "up"],
        ):
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RealNodeUnavailable(f"{' '.join(command)}: {result.stderr.strip()}")

    # -- kubelet -----------------------------------------------------------------------

    def _write_kubelet_files(self) -> None:
        directory = self.directory / "kubelet-config"
        directory.mkdir(parents=True, exist_ok=True)
        ca = self.cluster.ca
        client = ca.issue_client(
            directory,
            "kubelet-client",
            common_name=f"system:node:{self.name}",
            organizations=("system:nodes",),
        )
        serving = ca.issue_server(
            directory, "kubelet-serving", dns_names=(self.name,), ip_addresses=(NODE_IP,)
        )
        write_kubeconfig(
            directory / "kubeconfig",
            server=self.cluster.server,
            ca_file=self.cluster.ca_file,
            client_cert=client.cert,
            client_key=client.key,
        )
        self._healthz_port = free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine mounts the cgroup v1 hierarchy, which the kubelet refuses by default.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self._healthz_port,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            # Test-only: the kubelet's own API (logs, exec), on the bridge's address only,
            # needs no credentials.
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cluster.ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # Fast status: tests wait on what the kubelet reports.
            "nodeStatusUpdateFrequency": "1s",
            "nodeStatusReportFrequency": "1s",
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "httpCheckFrequency": "5s",
            "podLogsDir": str(self.directory / "pod-logs"),
            "failSwapOn": False,
            "resolvConf": "",
            "serializeImagePulls": False,
            # Test-only: a shared test machine's disk and memory must not evict the pods.
            "evictionHard": {
                "memory.available": "0%",
                "nodefs.available": "0%",
                "nodefs.inodesFree": "0%",
                "imagefs.available": "0%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "localStorageCapacityIsolation": False,
            "registerNode": True,
            "maxPods": 110,
        }
        (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def _gfd_labels(self) -> dict[str, str | None]:
        """GPU Feature Discovery's labels for the node's GPUs, as on a real GPU node (None:
        a label to remove, for a node that no longer time-slices)."""
        sliced = self.replicas > 1
        return {
            GFD_MEMORY_LABEL: str(self.gpu_memory_mib),
            GFD_COUNT_LABEL: str(self.gpus),
            GFD_PRODUCT_LABEL: self.gpu_product,
            GFD_REPLICAS_LABEL: str(self.replicas) if sliced else None,
            GFD_SHARING_LABEL: "time-slicing" if sliced else None,
            **self.labels,
        }

    def _kubelet_process(self) -> ManagedProcess:
        directory = self.directory / "kubelet-config"
        labels = {k: v for k, v in self._gfd_labels().items() if v is not None}
        return ManagedProcess(
            f"kubelet[{self.name}]",
            [
                str(self.cluster.binaries.kubelet),
                f"--config={directory / 'config.yaml'}",
                f"--kubeconfig={directory / 'kubeconfig'}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={directory / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={NODE_IP}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                "--v=2",
            ],
            self.cluster.workdir / "logs" / f"kubelet-{self.name}.log",
        )

    def _start_kubelet(self) -> None:
        self._kubelet = self._kubelet_process()
        self.cluster.start_process(
            self._kubelet,
            ready=lambda: url_ok(f"http://127.0.0.1:{self._healthz_port}/healthz"),
            what=f"kubelet {self.name} /healthz",
            timeout=90,
        )

    def restart_kubelet(self, timeout: float = 90.0) -> None:
        """Stop the kubelet (its pods keep running, as on a real node) and start it again;
        wait until it is healthy and the device plugin has registered with it again."""
        if self._kubelet is None:
            raise ProcessError(f"kubelet {self.name} is not running")
        self.cluster.stop_process(self._kubelet)
        self._start_kubelet()
        self.wait_ready(timeout)

    def reconfigure_gpus(self, gpus: int, replicas: int, timeout: float = 60.0) -> None:
        """Give the node other (fake) GPUs: the device plugin restarts with them, GPU Feature
        Discovery's labels follow, and this waits until the kubelet's allocatable does. Only
        on a node without GPU pods (the kubelet would keep the old devices' assignments)."""
        if self._device_plugin is not None:
            self.cluster.stop_process(self._device_plugin)
        self.gpus, self.replicas = gpus, replicas
        core = self._core()
        core.patch_node(self.name, {"metadata": {"labels": self._gfd_labels()}})
        self._start_device_plugin()
        self.wait_ready(timeout)

    def container_pid(self, container_id: str) -> int:
        """The host PID of a container's main process (from its status's containerID), as
        containerd knows it: what NVML would list for a process on the GPU."""
        bare = container_id.split("://", 1)[-1]
        for line in self._ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == bare:
                return int(fields[1])
        raise ProcessError(f"no running task for container {bare} on {self.name}")

    def _start_device_plugin(self) -> None:
        self._device_plugin = ManagedProcess(
            f"device-plugin[{self.name}]",
            [
                sys.executable,
                "-m",
                "tests.fakes.device_plugin",
                f"--node={self.name}",
                f"--gpus={self.gpus}",
                f"--replicas={self.replicas}",
                f"--plugin-dir={DEVICE_PLUGIN_DIR}",
                # The fake NVML's cards (for the node agent) are the ones the kubelet gets.
                f"--memory-mib={self.gpu_memory_mib}",
            ],
            self.cluster.workdir / "logs" / f"device-plugin-{self.name}.log",
            env={"VRAMGUARD_FAKE_NVML_STATE": str(self.nvml_state)},
            cwd=REPO,
        )
        self.cluster.start_process(self._device_plugin)

    def wait_ready(self, timeout: float = 120.0) -> Any:
        """Wait until the Node is Ready with the plugin's GPUs allocatable; untaint it (no
        node lifecycle controller runs to do it). Returns the V1Node."""
        core = self._core()
        want = str(self.gpus * self.replicas)

        def ready() -> bool:
            node = _read_node(core, self.name)
            if node is None or node.status is None:
                return False
            conditions = {c.type: c.status for c in node.status.conditions or []}
            allocatable = node.status.allocatable or {}
            return conditions.get("Ready") == "True" and allocatable.get(GPU_RESOURCE) == want

        wait_until(
            f"node {self.name} Ready with {want} {GPU_RESOURCE}",
            ready,
            timeout=timeout,
            interval=0.5,
            watch=self.processes,
        )
        return untaint_node(core, self.name)

    def _core(self) -> Any:
        from kubernetes import client  # noqa: PLC0415

        return client.CoreV1Api(self.cluster.api_client())

    # -- the node agent ----------------------------------------------------------------

    def node_agent_process(self, *, port: int, interval: float = 1.0) -> ManagedProcess:
        """`vramguard node-agent` for this node, unchanged but for NVML: `import pynvml`
        finds the shim, which reads ``nvml_state`` (tests.fakes.nvml_state writes it)."""
        shim = REPO / "tests" / "fakes" / "pynvml_shim"
        return ManagedProcess(
            f"node-agent[{self.name}]",
            [
                sys.executable,
                "-m",
                "ops",
                "node-agent",
                f"--node-name={self.name}",
                f"--interval={interval:g}",
                f"--pod-resources-socket={self.pod_resources_socket}",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--metrics-port={port}",
            ],
            self.cluster.workdir / "logs" / f"node-agent-{self.name}.log",
            env={
                "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)]),
                "VRAMGUARD_FAKE_NVML_STATE": str(self.nvml_state),
            },
            cwd=REPO,
        )


def _containerd_config(base: Path, cni: Path) -> str:
    """containerd 1.6's config (version 2): everything under ``base``, the CRI plugin with
    the local pause image and the CNI config in ``cni``."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f'root = "{base / "root"}"',
            f'state = "{base / "state"}"',
            "[grpc]",
            f'  address = "{base / "containerd.sock"}"',
            "[ttrpc]",
            f'  address = "{base / "containerd.sock.ttrpc"}"',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{base / "opt"}"',
            f"[{cri}]",
            f'  sandbox_image = "{images.PAUSE_IMAGE}"',
            # Root here lacks CAP_SYS_RESOURCE: without this runc fails every sandbox with
            # "can't get final child's PID from pipe: EOF" when it sets the OOM score.
            "  restrict_oom_score_adj = true",
            # The pods' network namespaces live in the state directory, not /var/run/netns.
            "  netns_mounts_under_state_dir = true",
            "  enable_selinux = false",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            f'  Root = "{base / "runc"}"',
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_BIN_DIR}"',
            f'  conf_dir = "{cni / "net.d"}"',
            "",
        ]
    )


def _read_node(core: Any, name: str) -> Any:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        return core.read_node(name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _socket_answers(path: Path) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def reap_stale_nodes() -> list[str]:
    """Undo what a real node of an earlier run left when its harness was killed outright
    (SIGKILL, a closed terminal: no cleanup could run): its containerd shims, which outlive
    everything, and its mounts. A node directory is known by its layout (a containerd config
    and a kubelet config side by side) and is stale when its containerd no longer answers.
    Returns what it did, one line each."""
    done: list[str] = []
    stale: set[Path] = set()
    for pid, address in _shims():
        node_dir = address.parent.parent
        if _is_node_directory(node_dir) and not _socket_answers(address):
            # The containers' processes first: they are the shim's children (it is their
            # subreaper), and would run on, orphaned, once it is gone.
            for process in [*_descendants(pid), pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process, signal.SIGKILL)
            done.append(f"killed stale shim {pid} of {node_dir} and its containers")
            stale.add(node_dir)
    for point in _mount_points():
        for parent in point.parents:
            if _is_node_directory(parent):
                if not _socket_answers(parent / "containerd" / "containerd.sock"):
                    stale.add(parent)
                break
    for node_dir in sorted(stale):
        _unmount_below(node_dir)
        done.append(f"unmounted what a stale real node left under {node_dir}")
    return done


def _is_node_directory(path: Path) -> bool:
    return (path / "containerd" / "config.toml").is_file() and (path / "kubelet-config").is_dir()


def _shims() -> list[tuple[int, Path]]:
    """Every running containerd shim: its PID and the containerd socket it serves."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone meanwhile
        if args[0].endswith("containerd-shim-runc-v2") and "-address" in args[:-1]:
            found.append((int(proc.name), Path(args[args.index("-address") + 1])))
    return found


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from /proc/<pid>/stat's parent field."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(proc.name))
    found: list[int] = []
    todo = list(parents.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(parents.get(child, []))
    return found


def _mount_points() -> list[Path]:
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4:
                # Spaces and such are octal-escaped in mountinfo.
                points.append(Path(fields[4].encode().decode("unicode_escape")))
    return points


def _unmount_below(directory: Path) -> None:
    """Unmount every mount at or under ``directory``, deepest first (lazily: a mount still
    busy goes once its last user has)."""
    root = directory.resolve() if directory.exists() else directory
    below = [p for p in _mount_points() if p == root or root in p.parents]
    for point in sorted(set(below), key=lambda p: len(p.parts), reverse=True):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)


def _cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy: one per controller on v1, the one tree on v2."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]


def _remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup and its children, deepest first (a cgroup with processes stays)."""
    if not path.is_dir():
        return
    for child, _dirs, _files in sorted(os.walk(path), key=lambda w: len(w[0]), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(child)


__all__: Sequence[str] = ["RealNode", "RealNodeUnavailable", "missing_host_tools"]
