"""`vramguard recommend` against a real kube-apiserver and a real Prometheus holding a week of
history: the seeds' tenants on a T4, a CronJob and a trainer on a node with two cards.

The history is backfilled, not scraped: `promtool tsdb create-blocks-from openmetrics` writes
a week of the node agent's series (one sample a minute, timestamps in the past) into the data
folder of a Prometheus started for this test, which then answers the command's range and
instant queries. A week of real time cannot pass in a test, and an exporter changing its
samples for a few minutes would give minutes of history, not the days-long shapes the
verdicts are about (an arena that grows for days, a pod recycled and replaced, a CronJob run
whose Job is gone); the backfill gives them in seconds, and the same every run.

The API holds the workloads as their controllers leave them (the local control plane runs no
kube-controller-manager, so the test creates each controller and its pods with their
ownerReferences): Deployments with their ReplicaSets, a StatefulSet, a DaemonSet, a bare pod,
a CronJob with one Job, each pod bound to its node with the budget the webhook would have
written. The table, `-o json` and `-o policy` must say what the history implies, worked out
here by hand from the shapes below.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpumem.policy import parse_policy
from tests.fakes.cards import card_uuid

from .harness import ClusterBase, ControlPlane, ManagedProcess, free_port
from .harness.process import url_ok
from .harness.prometheus import INSTALL_HINT
from .harness.tenants import base_policy, policy_entries

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
MINUTE = 60
HOUR = 3600
DAY = 86400
WEEK = 7 * DAY
T4_MIB = 15360
CARD_MIB = 16384


# --- The history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """From `start` to `end` seconds before the end of the history, the pod holds `mib`."""

    start: float
    end: float
    mib: int


@dataclass(frozen=True)
class PodHistory:
    namespace: str
    pod: str
    node: str
    gpu: int
    segments: tuple[Segment, ...]


def series_labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def openmetrics(
    pods: list[PodHistory], cards: dict[str, int], assigned: list[PodHistory], end: int
) -> str:
    """The node agent's series as it would have exported them, one sample a minute: per pod
    its usage, per card its memory for the last half hour, and which pod holds which card."""
    lines = ["# TYPE gpu_pod_memory_used_bytes gauge"]
    for history in pods:
        labels = series_labels(
            {
                "namespace": history.namespace,
                "pod": history.pod,
                "container": "main",
                "gpu": str(history.gpu),
                "uuid": card_uuid(history.node, history.gpu),
                "node": history.node,
            }
        )
        for segment in history.segments:
            t = end - int(segment.start)
            while t < end - int(segment.end) or (segment.end == 0 and t <= end):
                lines.append(f"gpu_pod_memory_used_bytes{labels} {segment.mib * MIB} {t}")
                t += MINUTE
    recent = range(end - 30 * MINUTE, end + 1, MINUTE)
    for kind in ("total", "used", "free"):
        lines.append(f"# TYPE vramguard_gpu_memory_{kind}_bytes gauge")
        for card, total in cards.items():
            node, gpu = card.rsplit("/", 1)
            used = sum(
                s.mib
                for p in pods
                if (p.node, p.gpu) == (node, int(gpu))
                for s in p.segments
                if s.end == 0
            )
            value = {"total": total, "used": used, "free": total - used}[kind] * MIB
            labels = series_labels({"node": node, "gpu": gpu, "uuid": card_uuid(node, int(gpu))})
            lines += [f"vramguard_gpu_memory_{kind}_bytes{labels} {value} {t}" for t in recent]
    lines.append("# TYPE vramguard_pod_gpu_assignment gauge")
    for history in assigned:
        labels = series_labels(
            {
                "namespace": history.namespace,
                "pod": history.pod,
                "container": "main",
                "gpu": str(history.gpu),
                "uuid": card_uuid(history.node, history.gpu),
                "node": history.node,
            }
        )
        lines += [f"vramguard_pod_gpu_assignment{labels} 1 {t}" for t in recent]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class BackfilledPrometheus:
    """A Prometheus of this test alone (no scrape targets), its data written beforehand by
    promtool from OpenMetrics text."""

    def __init__(self, cluster: ClusterBase, directory: Path) -> None:
        self._cluster = cluster
        self._directory = directory
        self._port = free_port()
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def backfill(self, text: str) -> None:
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.fail(f"no promtool on PATH; {INSTALL_HINT}", pytrace=False)
        source = self._directory / "history.om"
        source.write_text(text)
        subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.data)],
            check=True,
            capture_output=True,
            timeout=300,
        )

    @property
    def data(self) -> Path:
        return self._directory / "data"

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(f"no prometheus on PATH; {INSTALL_HINT}", pytrace=False)
        config = self._directory / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"evaluation_interval": "1m"}}))
        self.process = ManagedProcess(
            "prometheus-recommend",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data}",
                # The backfilled week must outlive the retention check at startup.
                "--storage.tsdb.retention.time=30d",
                f"--web.listen-address=127.0.0.1:{self._port}",
                f"--web.console.templates={self._directory}",
                f"--web.console.libraries={self._directory}",
            ],
            self._cluster.workdir / "logs" / "prometheus-recommend.log",
        )
        self._cluster.start_process(
            self.process,
            ready=lambda: url_ok(f"{self.url}/-/ready"),
            what=f"Prometheus {self.url}/-/ready",
            timeout=120,
        )

    def stop(self) -> None:
        if self.process is not None:
            self._cluster.stop_process(self.process)


# --- The cluster --------------------------------------------------------------------------------


def gpu_template(gpumem_mib: int | None, labels: dict[str, str]) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": "1"}
    if gpumem_mib is not None:
        limits["vramguard.io/gpumem"] = str(gpumem_mib)
    return {
        "metadata": {"labels": labels},
        "spec": {
            "containers": [{"name": "main", "image": "pause", "resources": {"limits": limits}}]
        },
    }


def owner_ref(obj: dict[str, Any], kind: str, api_version: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Workloads:
    """Creates controllers and their pods as the controllers would have left them."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client  # noqa: PLC0415

        # Any: the bodies are plain dicts, which the client sends as they are.
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self._serialize = api.sanitize_for_serialization

    def _created(self, answer: Any) -> dict[str, Any]:
        created: dict[str, Any] = self._serialize(answer)
        return created

    def deployment(
        self, namespace: str, name: str, rs_hash: str, gpumem_mib: int | None
    ) -> dict[str, Any]:
        labels = {"app": name}
        deployment = self._created(
            self.apps.create_namespaced_deployment(
                namespace,
                {
                    "metadata": {"name": name},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": labels},
                        "template": gpu_template(gpumem_mib, labels),
                    },
                },
            )
        )
        rs_labels = labels | {"pod-template-hash": rs_hash}
        return self._created(
            self.apps.create_namespaced_replica_set(
                namespace,
                {
                    "metadata": {
                        "name": f"{name}-{rs_hash}",
                        "labels": rs_labels,
                        "ownerReferences": [owner_ref(deployment, "Deployment", "apps/v1")],
                    },
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": rs_labels},
                        "template": gpu_template(gpumem_mib, rs_labels),
                    },
                },
            )
        )

    def stateful_set(self, namespace: str, name: str, gpumem_mib: int | None) -> dict[str, Any]:
        labels = {"app": name}
        return self._created(
            self.apps.create_namespaced_stateful_set(
                namespace,
                {
                    "metadata": {"name": name},
                    "spec": {
                        "serviceName": name,
                        "selector": {"matchLabels": labels},
                        "template": gpu_template(gpumem_mib, labels),
                    },
                },
            )
        )

    def daemon_set(self, namespace: str, name: str, gpumem_mib: int | None) -> dict[str, Any]:
        labels = {"app": name}
        return self._created(
            self.apps.create_namespaced_daemon_set(
                namespace,
                {
                    "metadata": {"name": name},
                    "spec": {
                        "selector": {"matchLabels": labels},
                        "template": gpu_template(gpumem_mib, labels),
                    },
                },
            )
        )

    def cron_job_run(
        self, namespace: str, name: str, run: str, gpumem_mib: int | None
    ) -> dict[str, Any]:
        template = gpu_template(gpumem_mib, {"app": name})
        template["spec"]["restartPolicy"] = "Never"
        cron_job = self._created(
            self.batch.create_namespaced_cron_job(
                namespace,
                {
                    "metadata": {"name": name},
                    "spec": {
                        "schedule": "0 2 * * *",
                        "suspend": True,
                        "jobTemplate": {"spec": {"template": template}},
                    },
                },
            )
        )
        return self._created(
            self.batch.create_namespaced_job(
                namespace,
                {
                    "metadata": {
                        "name": f"{name}-{run}",
                        "ownerReferences": [owner_ref(cron_job, "CronJob", "batch/v1")],
                    },
                    "spec": {"suspend": True, "template": template},
                },
            )
        )

    def pod(
        self,
        namespace: str,
        name: str,
        node: str,
        gpumem_mib: int,
        owner: tuple[dict[str, Any], str, str] | None = None,
    ) -> None:
        metadata: dict[str, Any] = {"name": name}
        if owner is not None:
            metadata["ownerReferences"] = [owner_ref(*owner)]
        self.core.create_namespaced_pod(
            namespace,
            {
                "metadata": metadata,
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "pause",
                            "resources": {
                                "limits": {
                                    "nvidia.com/gpu": "1",
                                    "vramguard.io/gpumem": str(gpumem_mib),
                                }
                            },
                        }
                    ],
                },
            },
        )


@dataclass
class Scene:
    namespaces: dict[str, str]  # role -> namespace
    t4: str
    gpu2x: str
    policy_path: Path
    prometheus: BackfilledPrometheus
    kubeconfig: Path

    def run(self, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ops",
                "recommend",
                "--prometheus-url",
                url or self.prometheus.url,
                "--policy",
                str(self.policy_path),
                "--kubeconfig",
                str(self.kubeconfig),
                "-n",
                *self.namespaces.values(),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result


@pytest.fixture
def scene(
    control_plane: ClusterBase,
    make_namespace: Callable[..., str],
    make_gpu_node: Callable[..., Any],
    tmp_path: Path,
) -> Iterator[Scene]:
    if not isinstance(control_plane, ControlPlane):
        # A cluster with a kube-controller-manager would replace these hand-made pods.
        pytest.skip("needs the local control plane (no controllers that would act on the pods)")
    roles = ["immich", "llama-swap", "frigate", "portal-stt", "tts", "research"]
    ns = {role: make_namespace(role) for role in roles}
    t4 = str(make_gpu_node(gpu_memory_mib=T4_MIB, gpumem_mib=14000).metadata.name)
    gpu2x = str(
        make_gpu_node(
            gpu_count=2, gpu_replicas=8, gpu_memory_mib=CARD_MIB, gpumem_mib=28000
        ).metadata.name
    )

    workloads = Workloads(control_plane.api_client())
    # The seeds' tenants on the T4, with the budgets the webhook wrote into their pods.
    ml_rs = workloads.deployment(ns["immich"], "immich-ml", "6b7f9c8d5", None)
    server_rs = workloads.deployment(ns["immich"], "immich-server", "7c9d8", 1800)
    llama = workloads.stateful_set(ns["llama-swap"], "llama-swap", None)
    frigate = workloads.daemon_set(ns["frigate"], "frigate", None)
    bake_job = workloads.cron_job_run(ns["tts"], "chatterbox-bake", "29000060", None)
    trainer = workloads.stateful_set(ns["research"], "trainer", 8000)
    rs = ("ReplicaSet", "apps/v1")
    workloads.pod(ns["immich"], "immich-ml-6b7f9c8d5-k8q2m", t4, 3000, (ml_rs, *rs))
    workloads.pod(ns["immich"], "immich-server-7c9d8-bcdfg", t4, 1800, (server_rs, *rs))
    workloads.pod(ns["llama-swap"], "llama-swap-0", t4, 5000, (llama, "StatefulSet", "apps/v1"))
    workloads.pod(ns["frigate"], "frigate-w8z4k", t4, 2000, (frigate, "DaemonSet", "apps/v1"))
    workloads.pod(ns["portal-stt"], "portal-stt", t4, 1500)
    bake = ("chatterbox-bake-29000060-q7w2n", (bake_job, "Job", "batch/v1"))
    workloads.pod(ns["tts"], bake[0], gpu2x, 6144, bake[1])
    workloads.pod(ns["research"], "trainer-0", gpu2x, 8000, (trainer, "StatefulSet", "apps/v1"))

    def seg(start_days: float, end_days: float, mib: int) -> Segment:
        return Segment(start_days * DAY, end_days * DAY, mib)

    hours = HOUR / DAY
    history = [
        # immich-ml's first pod: 2600 MiB, 12 hours at 8000 and one at 10700 (the arena), then
        # recycled two days ago; the pod that replaced it has held 2600 since.
        PodHistory(
            ns["immich"],
            "immich-ml-6b7f9c8d5-x2x4z",
            t4,
            0,
            (
                seg(7, 3.5, 2600),
                seg(3.5, 3 + hours, 8000),
                seg(3 + hours, 3, 10700),
                seg(3, 2, 2600),
            ),
        ),
        PodHistory(ns["immich"], "immich-ml-6b7f9c8d5-k8q2m", t4, 0, (seg(2, 0, 2600),)),
        # immich-server: 1200, one hour at 1500.
        PodHistory(
            ns["immich"],
            "immich-server-7c9d8-bcdfg",
            t4,
            0,
            (seg(7, 4, 1200), seg(4, 4 - hours, 1500), seg(4 - hours, 0, 1200)),
        ),
        PodHistory(ns["llama-swap"], "llama-swap-0", t4, 0, (seg(7, 0, 4700),)),
        PodHistory(ns["frigate"], "frigate-w8z4k", t4, 0, (seg(7, 0, 900),)),
        # A pod of a controller long deleted: left out.
        PodHistory(ns["frigate"], "old-thing-0", t4, 0, (seg(6, 5, 300),)),
        # The CronJob: last night's run, whose Job is gone, and tonight's.
        PodHistory(
            ns["tts"], "chatterbox-bake-28998620-zz9x2", gpu2x, 0, (seg(1, 1 - 4 * hours, 5600),)
        ),
        PodHistory(ns["tts"], bake[0], gpu2x, 0, (seg(2 * hours, 0, 5200),)),
        # The trainer declares 8000 in its template and has held 12000 for three days.
        PodHistory(ns["research"], "trainer-0", gpu2x, 1, (seg(3, 0, 12000),)),
    ]
    end = int(time.time()) // MINUTE * MINUTE
    prometheus = BackfilledPrometheus(control_plane, tmp_path)
    prometheus.backfill(
        openmetrics(
            history,
            {f"{t4}/0": T4_MIB, f"{gpu2x}/0": CARD_MIB, f"{gpu2x}/1": CARD_MIB},
            [h for h in history if h.node == gpu2x and h.segments[-1].end == 0],
            end,
        )
    )
    prometheus.start()

    policy = base_policy()
    policy["namespaces"] = policy_entries(ns)
    policy["extender"]["telemetry"] = {"preset": "node-agent"}
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    try:
        yield Scene(ns, t4, gpu2x, policy_path, prometheus, control_plane.kubeconfig)
    finally:
        prometheus.stop()


def cells(line: str) -> list[str]:
    return [cell for cell in re.split(r"\s{2,}", line.strip()) if cell]


# What the history implies, by hand: recommended = peak x 1.2 rounded up to 256 MiB.
# immich-ml 10700 -> 12840 -> 13056; immich-server 1500 -> 1800 -> 2048; llama-swap 4700 ->
# 5640 -> 5888; frigate 900 -> 1080 -> 1280 (2000 declared > 1.5 x 1280: oversized);
# chatterbox-bake 5600 -> 6720 -> 6912; trainer 12000 -> 14400 -> 14592.
T4_RECOMMENDED = 13056 + 2048 + 5888 + 1280 + 1500  # portal-stt keeps its 1500: no data


def test_recommend_table_says_what_the_week_implies(scene: Scene) -> None:
    result = scene.run()
    assert result.returncode == 1, f"{result.stdout}\n{result.stderr}"  # over budget
    lines = result.stdout.splitlines()
    assert lines[0].startswith("History: 7d to ")
    assert "of gpu_pod_memory_used_bytes (preset node-agent), one point per 6m" in lines[0]
    ns = scene.namespaces
    rows = {tuple(cells(line)[:2]): cells(line)[2:] for line in lines}
    # PODS, HISTORY, PEAK, P99, DECLARED, SET IN, RECOMMENDED, VERDICT
    ml = rows[(ns["immich"], "Deployment/immich-ml")]
    assert ml[0] == "2"  # the recycled pod and its successor
    assert ml[1] in {"7d", "6d 23h"}
    # 10 of 1680 points at 10700, 120 at 8000: the p99 (17th highest) is 8000.
    assert ml[2:] == ["10700 MiB", "8000 MiB", "3000 MiB", "policy", "13056 MiB", "over budget"]
    assert rows[(ns["immich"], "Deployment/immich-server")][2:] == [
        "1500 MiB",
        "1200 MiB",
        "1800 MiB",
        "template",
        "2048 MiB",
        "ok",
    ]
    assert rows[(ns["llama-swap"], "StatefulSet/llama-swap")][2:] == [
        "4700 MiB",
        "4700 MiB",
        "5000 MiB",
        "policy",
        "5888 MiB",
        "ok",
    ]
    assert rows[(ns["frigate"], "DaemonSet/frigate")][-2:] == ["1280 MiB", "oversized"]
    assert rows[(ns["portal-stt"], "Pod/portal-stt")] == [
        "0",
        "-",
        "-",
        "-",
        "1500 MiB",
        "pod",
        "-",
        "no data",
    ]
    bake = rows[(ns["tts"], "CronJob/chatterbox-bake")]
    assert bake[0] == "2"  # last night's run (its Job gone) and tonight's
    assert bake[2:] == ["5600 MiB", "5600 MiB", "6144 MiB", "policy", "6912 MiB", "ok"]
    assert rows[(ns["research"], "StatefulSet/trainer")][2:] == [
        "12000 MiB",
        "12000 MiB",
        "8000 MiB",
        "template",
        "14592 MiB",
        "over budget",
    ]

    nodes = {cells(line)[0]: cells(line)[1:] for line in lines if line.startswith("gpu-node-")}
    assert nodes[scene.t4] == [
        "5",
        "14000 MiB",
        "13300 MiB",
        f"{T4_RECOMMENDED} MiB",
        f"NO ({T4_RECOMMENDED - 14000} MiB over)",
    ]
    # Two cards of 14000 each; the node agent says which pod holds which.
    assert nodes[scene.gpu2x] == ["2", "28000 MiB", "14144 MiB", "21504 MiB", "yes"]
    assert nodes[f"{scene.gpu2x}/gpu 0"] == ["1", "14000 MiB", "6144 MiB", "6912 MiB", "yes"]
    assert nodes[f"{scene.gpu2x}/gpu 1"] == [
        "1",
        "14000 MiB",
        "8000 MiB",
        "14592 MiB",
        "NO (592 MiB over)",
    ]
    assert lines[-1] == (
        f"Left out: 1 pod in the history that are gone from the cluster and match no "
        f"controller's pod names: {ns['frigate']}/old-thing-0"
    )


def test_recommend_policy_sets_the_budgets_the_policy_can_set(scene: Scene) -> None:
    result = scene.run("-o", "policy")
    assert result.returncode == 1, result.stderr
    patch = yaml.safe_load(result.stdout)
    ns = scene.namespaces
    assert patch == {
        "namespaces": {
            ns["immich"]: {
                "priorityClassName": "tier-1-gpu",
                "gpumemMiB": 13056,
                # The defaults' cap of 8192 would deny the pod its new budget.
                "maxGpumemMiB": 13056,
            },
            ns["llama-swap"]: {"priorityClassName": "tier-1-gpu", "gpumemMiB": 5888},
            ns["frigate"]: {"priorityClassName": "tier-1-gpu", "gpumemMiB": 1280},
            ns["tts"]: {"priorityClassName": "tier-2-gpu", "gpumemMiB": 6912},
            # The trainer's budget is its template's; the cap is the policy's part.
            ns["research"]: {"maxGpumemMiB": 14592},
        }
    }
    text = " ".join(result.stdout.split())
    assert "Deployment/immich-server declares 1800 MiB in its pod template" in text
    assert "StatefulSet/trainer declares 8000 MiB in its pod template: set" in text
    # The patched policy loads, and gives the namespaces the new budgets.
    policy = yaml.safe_load(scene.policy_path.read_text())
    policy["namespaces"].update(patch["namespaces"])
    merged = parse_policy(yaml.safe_dump(policy))
    assert merged.for_namespace(ns["immich"]).gpumem_mib == 13056
    assert merged.for_namespace(ns["portal-stt"]).gpumem_mib == 1500


def test_recommend_json_flags_and_exit_statuses(scene: Scene) -> None:
    ns = scene.namespaces
    # Flags change the arithmetic: no safety margin, 512 MiB steps.
    result = scene.run("-o", "json", "--safety", "1", "--step", "512")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    workloads = {(w["namespace"], w["name"]): w for w in document["workloads"]}
    ml = workloads[(ns["immich"], "immich-ml")]
    assert (ml["peakMiB"], ml["recommendedMiB"], ml["peakPod"]) == (
        10700,
        10752,
        "immich-ml-6b7f9c8d5-x2x4z",
    )
    assert ml["coveredSeconds"] >= WEEK - HOUR
    assert (document["preset"], document["window"]["resolutionSeconds"]) == ("node-agent", 360)

    # Within budget (or above it: frigate is oversized, not at risk): exit 0.
    within = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops",
            "recommend",
            "--prometheus-url",
            scene.prometheus.url,
            "--policy",
            str(scene.policy_path),
            "--kubeconfig",
            str(scene.kubeconfig),
            "-n",
            ns["frigate"],
            ns["llama-swap"],
            "--window",
            "2d",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert within.returncode == 0, f"{within.stdout}\n{within.stderr}"
    assert "one point per 2m" in within.stdout  # 2 days in at most 2000 points

    down = scene.run(url="http://127.0.0.1:1")
    assert down.returncode == 2
    assert down.stdout == ""
    assert down.stderr.startswith("vramguard recommend: history from Prometheus at ")
    assert len(down.stderr.strip().splitlines()) == 1
