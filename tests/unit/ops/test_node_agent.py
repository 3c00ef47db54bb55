"""`vramguard node-agent` end to end: a fake NVML (tests/fakes/nvml.py), a fake kubelet
speaking the real PodResources proto on a unix socket, a fake /proc tree, and the node's pods;
what it serves on /metrics, and that no failing source stops it."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpumem.attribution import PodIdentity, by_uid
from kube.podresources import PodResourcesClient
from ops import build_parser
from ops.node_agent_loop import NodeAgent, Options
from ops.node_agent_metrics import MetricsServer, NodeAgentMetrics
from ops.nvml import Nvml
from tests.fakes import nvml as fake_nvml
from tests.fakes.nvml import FakeGpu, FakeNvml
from tests.unit.kube.fake_kubelet import FakeKubelet, pod_resources, serving

GIB = 1024**3
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"
UUID1 = "GPU-11111111-1111-1111-1111-111111111111"
UID_ML = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
UID_LLM = "99999999-8888-7777-6666-555555555555"
CID_ML = "a" * 64
CID_LLM = "b" * 64


def systemd_cgroup(uid: str, cid: str) -> str:
    slice_ = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    return f"0::/kubepods.slice/kubepods-burstable.slice/{slice_}/cri-containerd-{cid}.scope\n"


class StaticPods:
    def __init__(self, pods: Mapping[str, PodIdentity] | None) -> None:
        self.pods = pods

    def start(self) -> None:
        return

    def stop(self) -> None:
        return

    def by_uid(self) -> Mapping[str, PodIdentity] | None:
        return self.pods


@dataclass
class Node:
    agent: NodeAgent
    nvml: FakeNvml
    kubelet: FakeKubelet
    proc: Path
    socket: Path

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every sample of the agent's registry, by metric name."""
        text = self.agent.metrics.render().decode()
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
        return found


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    proc = tmp_path / "proc"
    for pid, text in {
        100: systemd_cgroup(UID_ML, CID_ML),
        101: systemd_cgroup(UID_ML, CID_ML),
        200: f"0::/kubepods/besteffort/pod{UID_LLM}/{CID_LLM}\n",
        300: "0::/system.slice/nvidia-persistenced.service\n",
    }.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(text)
    nvml = FakeNvml(
        [
            # 400 is listed by NVML but exits before its cgroup is read.
            FakeGpu(UUID0, used=5 * GIB, compute=[(100, 3 * GIB), (101, GIB), (300, GIB)]),
            FakeGpu(UUID1, used=5 * GIB, compute=[(200, 5 * GIB)], graphics=[(400, GIB)]),
        ]
    )
    pods = by_uid(
        [
            PodIdentity(UID_ML, "immich", "immich-ml", {CID_ML: "ml"}, ("ml",)),
            PodIdentity(UID_LLM, "ai", "llama", {CID_LLM: "server"}, ("server",)),
        ]
    )
    socket = tmp_path / "kubelet.sock"
    with serving(socket) as kubelet:
        kubelet.pods = [
            pod_resources("immich", "immich-ml", ("ml", "nvidia.com/gpu", [f"{UUID0}::1"])),
            pod_resources("ai", "llama", ("server", "nvidia.com/gpu", [f"{UUID1}::0"])),
            pod_resources("ai", "mig-job", ("main", "nvidia.com/mig-1g.10gb", ["MIG-abc"])),
        ]
        client = PodResourcesClient(socket, timeout=2.0)
        agent = NodeAgent(
            Options(node="gpu-1", interval=0.05, proc_root=proc),
            Nvml(lambda: nvml),
            client,
            StaticPods(pods),
            NodeAgentMetrics(),
        )
        try:
            yield Node(agent, nvml, kubelet, proc, socket)
        finally:
            client.close()


def values(samples: list[tuple[dict[str, str], float]], *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(labels[k] for k in keys): value for labels, value in samples}


def test_one_scan_serves_cards_pods_and_assignments(node: Node) -> None:
    assert node.agent.scan() is True
    m = node.metrics()
    assert values(m["vramguard_gpu_memory_free_bytes"], "node", "gpu", "uuid") == {
        ("gpu-1", "0", UUID0): 11 * GIB,
        ("gpu-1", "1", UUID1): 11 * GIB,
    }
    assert values(m["vramguard_gpu_memory_total_bytes"], "gpu")[("1",)] == 16 * GIB
    assert values(m["vramguard_gpu_memory_used_bytes"], "gpu")[("0",)] == 5 * GIB
    assert values(
        m["gpu_pod_memory_used_bytes"], "namespace", "pod", "container", "gpu", "uuid"
    ) == {
        ("immich", "immich-ml", "ml", "0", UUID0): 4 * GIB,  # two processes, summed
        ("ai", "llama", "server", "1", UUID1): 5 * GIB,
    }
    assert values(
        m["vramguard_pod_gpu_assignment"], "namespace", "pod", "container", "gpu", "uuid", "node"
    ) == {
        ("immich", "immich-ml", "ml", "0", UUID0, "gpu-1"): 1,
        ("ai", "llama", "server", "1", UUID1, "gpu-1"): 1,
    }
    # The host daemon's gigabyte is nobody's; the process that exited is left out.
    assert values(m["vramguard_node_agent_unattributed_memory_bytes"], "gpu") == {("0",): GIB}
    assert values(m["vramguard_node_agent_unmapped_devices"], "kind") == {
        ("mig",): 1,
        ("unresolved",): 0,
    }
    errors = values(m["vramguard_node_agent_errors_total"], "source")
    assert errors == {("nvml",): 0, ("podresources",): 0, ("proc",): 1, ("kube",): 0}
    up = values(m["vramguard_node_agent_source_up"], "source")
    assert up == {("nvml",): 1, ("podresources",): 1, ("proc",): 0, ("kube",): 1}
    assert m["vramguard_node_agent_last_success_timestamp_seconds"][0][1] > 0
    assert m["vramguard_node_agent_scan_duration_seconds_count"][0][1] == 1


def test_a_missing_socket_costs_the_assignments_only(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    node.agent.scan()
    node.socket.unlink()  # the kubelet restarting
    caplog.set_level(logging.INFO, logger="ops.node_agent")
    assert node.agent.scan() is False
    assert node.agent.scan() is False
    m = node.metrics()
    assert "vramguard_pod_gpu_assignment" not in m  # a family without samples
    assert len(m["gpu_pod_memory_used_bytes"]) == 2  # the memory is still attributed
    assert values(m["vramguard_node_agent_errors_total"], "source")[("podresources",)] == 2
    assert values(m["vramguard_node_agent_source_up"], "source")[("podresources",)] == 0
    # Logged when it started failing, not at every scan.
    failing = [r for r in caplog.records if "source=podresources failing" in r.getMessage()]
    assert len(failing) == 1
    assert "no kubelet socket at" in failing[0].getMessage()


def test_a_lost_gpu_drops_its_series_and_the_agent_goes_on(node: Node) -> None:
    node.agent.scan()
    lost = fake_nvml.NVML_ERROR_GPU_IS_LOST
    node.nvml.gpus[1].failures["nvmlDeviceGetMemoryInfo"] = lost
    assert node.agent.scan() is False
    m = node.metrics()
    assert values(m["vramguard_gpu_memory_free_bytes"], "gpu") == {("0",): 11 * GIB}
    assert [labels["pod"] for labels, _ in m["gpu_pod_memory_used_bytes"]] == ["immich-ml"]
    # The kubelet still says llama holds that card: its assignment stays, without an index.
    assignments = values(m["vramguard_pod_gpu_assignment"], "pod", "gpu")
    assert assignments == {("immich-ml", "0"): 1, ("llama", ""): 1}
    assert values(m["vramguard_node_agent_errors_total"], "source")[("nvml",)] == 1
    del node.nvml.gpus[1].failures["nvmlDeviceGetMemoryInfo"]
    assert node.agent.scan() is True
    assert len(node.metrics()["vramguard_gpu_memory_free_bytes"]) == 2


def test_no_nvml_still_serves_the_assignments(node: Node) -> None:
    node.nvml.init_failure = fake_nvml.NVML_ERROR_LIBRARY_NOT_FOUND
    assert node.agent.scan() is False
    m = node.metrics()
    assert "vramguard_gpu_memory_free_bytes" not in m
    assert len(m["vramguard_pod_gpu_assignment"]) == 2
    assert values(m["vramguard_node_agent_source_up"], "source")[("nvml",)] == 0


def test_the_loop_serves_metrics_and_probes_over_http(node: Node) -> None:
    server = MetricsServer(node.agent, 0, stale_after=30)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    stop = threading.Event()
    try:
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert not_ready.value.code == 503  # no scan yet
        loop = threading.Thread(target=node.agent.loop, args=(stop,), daemon=True)
        loop.start()
        for _ in range(200):
            if node.agent.last_scan_ended is not None:
                break
            stop.wait(0.01)
        node.nvml.count_failure = fake_nvml.NVML_ERROR_UNKNOWN  # failing scans keep ending
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            body = answer.read().decode()
        assert "gpu_pod_memory_used_bytes{" in body
        for probe in ("/healthz", "/readyz"):
            with urllib.request.urlopen(base + probe, timeout=5) as answer:
                assert answer.status == 200
    finally:
        stop.set()
        server.stop()
    assert node.agent.last_scan_ended is not None


def test_a_bug_in_a_scan_is_logged_and_the_loop_goes_on(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    calls = []

    def broken() -> bool:
        calls.append(1)
        if len(calls) >= 3:
            stop.set()
        raise RuntimeError("bug")

    node.agent.scan = broken  # type: ignore[method-assign]
    node.agent.loop(stop)
    assert len(calls) == 3
    assert "scan_error=internal" in caplog.text


def test_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "gpu-7")
    args = build_parser().parse_args(["node-agent"])
    assert (args.node_name, args.interval, args.pod_resources_timeout) == ("gpu-7", 10, 5)
    assert str(args.pod_resources_socket) == "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert (str(args.proc_root), args.metrics_port, args.once) == ("/proc", None, False)
    args = build_parser().parse_args(["node-agent", "--node-name", "n", "--interval", "2.5"])
    assert (args.node_name, args.interval) == ("n", 2.5)
    with pytest.raises(SystemExit) as bad:
        build_parser().parse_args(["node-agent", "--interval", "0"])
    assert bad.value.code == 2


def test_without_a_node_name_it_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    args = build_parser().parse_args(["node-agent", "--once"])
    assert args.run(args) == 2
    assert "no node name" in capsys.readouterr().err


def test_once_prints_the_metrics_whatever_it_could_read(
    node: Node, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real nvidia-ml-py: on a machine without a GPU driver NVML is unusable, which the
    # scan survives; the kubelet fake still answers, and no API means no pod names.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    argv = ["node-agent", "--node-name", "gpu-1", "--once"]
    argv += ["--pod-resources-socket", str(node.socket), "--proc-root", str(node.proc)]
    args = build_parser().parse_args(argv)
    status = args.run(args)
    out = capsys.readouterr().out
    families = {f.name for f in text_string_to_metric_families(out)}
    assert {"vramguard_pod_gpu_assignment", "vramguard_node_agent_errors"} <= families
    nvml_up = 'vramguard_node_agent_source_up{source="nvml"} 1.0' in out
    assert status == (0 if nvml_up else 1)
    assert 'vramguard_node_agent_source_up{source="podresources"} 1.0' in out
    assert 'vramguard_node_agent_source_up{source="kube"} 0.0' in out


def test_the_default_socket_is_the_clients() -> None:
    from kube.podresources import DEFAULT_SOCKET as CLIENT_DEFAULT  # noqa: PLC0415
    from ops.node_agent import DEFAULT_SOCKET  # noqa: PLC0415

    assert Path(DEFAULT_SOCKET) == CLIENT_DEFAULT
