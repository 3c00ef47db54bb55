"""`vramguard explain` against a real kube-apiserver, kube-scheduler and Prometheus scraping the
fake GPU exporter: it agrees with what the scheduler did. A pod the extender keeps Pending for
lack of live VRAM is explained as refused on that node with the numbers of the scheduler's
condition and of the extender's GPUMemoryUnavailable Event; once the VRAM is free it fits
there; once bound it is bound to the node the scheduler picked; a pod whose declared budget
does not fit gets the Event's text word for word. Prometheus down: the declared-only verdicts
and exit 2; a pod that does not exist: one line and exit 1.

The command runs as a subprocess (`python -m ops`, what the `vramguard` console script
calls) with the local stack's policy file, against the cluster's admin kubeconfig.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from .harness import (
    ClusterBase,
    LocalVramguard,
    gpu_pod,
    label_node,
    wait_for_pod_event,
    wait_for_pod_node,
    wait_for_unschedulable_message,
)
from .harness.nodes import GPUMEM_RESOURCE
from .harness.tenants import Tenant, TenantCard
from .test_cli_status_preflight import vramguard_cli

pytestmark = pytest.mark.e2e

TENANTS = (
    Tenant("immich", "immich-ml", None, 2600),  # 3000 declared
    Tenant("llama-swap", "llama-swap", None, 4700),  # 5000 declared
    Tenant("frigate", "frigate", None, 1700),  # 2000 declared
)
NEWCOMER = Tenant("portal-stt", "portal-stt", None, 1300)  # 1500 declared
CARD_MIB = 15360
ADVERTISED_MIB = 14000
DRIVER_MIB = 300
ARENA_MIB = 10204  # llama.cpp's arena after loading a big model, far above its budget
LIVE_REASON = re.compile(r"live free (\d+) MiB < need (\d+) \+ floor (\d+) MiB \(dcgm, \d+s old\)")
EVENT = "GPUMemoryUnavailable"


def without_ages(text: str) -> str:
    return re.sub(r"\b\d+s old\b", "Ns old", text)


@dataclass
class Scene:
    """One fake node whose card carries the tenants, and the command pointed at it."""

    cluster: ClusterBase
    core: Any
    vramguard: LocalVramguard
    node: str
    card: TenantCard
    namespace: str  # the newcomers'
    floor: int

    def explain(self, pod: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return vramguard_cli(
            self.cluster, self.vramguard, "explain", pod, "-n", self.namespace, *extra
        )

    def explained(self, pod: str) -> dict[str, Any]:
        url = self.vramguard.prometheus.url
        result = self.explain(pod, "--prometheus-url", url, "-o", "json")
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def row(self, document: dict[str, Any]) -> dict[str, Any]:
        """The scene's node in an -o json answer."""
        (row,) = [r for r in document["nodes"] if r["name"] == self.node]
        return dict(row)


def test_explain_agrees_with_the_scheduler(
    control_plane: ClusterBase,
    core_v1: Any,
    local_vramguard: LocalVramguard,
    seat_tenants: Callable[..., Any],
) -> None:
    vramguard = local_vramguard
    card, namespaces = seat_tenants(
        TENANTS, [NEWCOMER], total_mib=CARD_MIB, driver_mib=DRIVER_MIB, gpumem_mib=ADVERTISED_MIB
    )
    node = card.node
    scene = Scene(
        control_plane,
        core_v1,
        vramguard,
        node,
        card,
        namespaces[NEWCOMER.role],
        int(vramguard.policy["extender"]["floorMiB"]),
    )
    refused_for_live_vram(scene)
    fits_once_freed_then_bound(scene)
    refused_for_its_budget_and_errors(scene)


def refused_for_live_vram(scene: Scene) -> None:
    """The arena grows: the budgets fit (10000 + 1500 <= 14000), live VRAM does not. explain
    says what the scheduler's condition and the extender's Event say."""
    core, node, namespace = scene.core, scene.node, scene.namespace
    scene.card.set_usage(TENANTS[1].pod, ARENA_MIB)
    core.create_namespaced_pod(
        namespace, gpu_pod(NEWCOMER.pod, namespace=namespace, node_name_selector=node)
    )
    condition = wait_for_unschedulable_message(core, namespace, NEWCOMER.pod, "vramguard:")
    event = wait_for_pod_event(core, namespace, NEWCOMER.pod, EVENT)
    document = scene.explained(NEWCOMER.pod)
    row = scene.row(document)
    assert (row["verdict"], row["refusalKind"]) == ("refused", "live"), row
    said = LIVE_REASON.search(row["reason"])
    by_scheduler = LIVE_REASON.search(condition)
    assert said is not None, row
    assert by_scheduler is not None, condition
    free = str(scene.card.free_mib)
    assert said.groups() == by_scheduler.groups() == (free, "1500", str(scene.floor))
    # The summary is the extender's Event: the pod is pinned, so no other node is judged.
    assert without_ages(document["summary"]) == without_ages(event), (document, event)
    assert document["pod"]["schedulerMessage"] == condition
    others = {r["verdict"] for r in document["nodes"] if r["name"] != node}
    assert others <= {"not-admitted", "no-gpu"}, document

    table = scene.explain(NEWCOMER.pod, "--prometheus-url", scene.vramguard.prometheus.url)
    assert table.returncode == 0, table.stderr
    (line,) = [line for line in table.stdout.splitlines() if line.startswith(f"{node} ")]
    assert line.split()[1:4] == ["refused", free, "MiB"], line
    assert "Phase:          Pending, unschedulable" in table.stdout


def fits_once_freed_then_bound(scene: Scene) -> None:
    """The model is unloaded: explain says it fits there; the scheduler, woken up, places it
    there, and explain then says it is bound there."""
    llama = TENANTS[1]
    scene.card.set_usage(llama.pod, llama.uses_mib)
    document = scene.explained(NEWCOMER.pod)
    row = scene.row(document)
    # Free VRAM is no cluster event, so the scheduler has not retried (see test_live_vram);
    # should something else have woken it up already, it must agree.
    if document["pod"]["node"] is None:
        assert (row["verdict"], row["liveChecked"]) == ("fits", True), row
        declared_room = ADVERTISED_MIB - 10000 - 1500
        live_room = scene.card.free_mib - 1500 - scene.floor
        assert row["headroomMiB"] == min(declared_room, live_room), row
        assert document["summary"].startswith(f"fits on {scene.node}"), document
    else:
        assert document["pod"]["node"] == scene.node

    label_node(scene.core, scene.node, {"e2e.vramguard.io/retry": "1"})
    assert wait_for_pod_node(scene.core, scene.namespace, NEWCOMER.pod, timeout=60) == scene.node
    document = scene.explained(NEWCOMER.pod)
    assert document["summary"] == f"bound to {scene.node}"
    bound = document["nodes"][0]
    assert (bound["name"], bound["verdict"], bound["declaredMiB"]) == (
        scene.node,
        "bound",
        11500,  # its own 1500 counted once
    )


def refused_for_its_budget_and_errors(scene: Scene) -> None:
    """A budget that does not fit: kube-scheduler says "Insufficient", the extender's Event
    gives the numbers, and explain says the same, word for word. Then its errors."""
    core, node, namespace = scene.core, scene.node, scene.namespace
    big = "portal-stt-big"
    core.create_namespaced_pod(
        namespace, gpu_pod(big, namespace=namespace, node_name_selector=node, gpumem_mib=3000)
    )
    wait_for_unschedulable_message(core, namespace, big, f"Insufficient {GPUMEM_RESOURCE}")
    event = wait_for_pod_event(core, namespace, big, EVENT)
    reason = f"declared 11500 + 3000 > capacity {ADVERTISED_MIB} MiB"
    assert event == f"vramguard: no node fits 3000 MiB of {GPUMEM_RESOURCE}: {node}: {reason}"
    document = scene.explained(big)
    assert document["summary"] == event
    row = scene.row(document)
    assert (row["verdict"], row["refusalKind"], row["reason"]) == ("refused", "declared", reason)

    # Prometheus down: the declared-only verdicts, one line on stderr, exit 2.
    down = scene.explain(big, "--prometheus-url", "http://127.0.0.1:1")
    assert down.returncode == 2, f"{down.stdout}\n{down.stderr}"
    assert down.stderr.startswith("vramguard explain: telemetry from Prometheus at ")
    assert len(down.stderr.strip().splitlines()) == 1
    assert reason in down.stdout
    assert "live check not evaluated (telemetry unavailable)" in down.stdout

    # No such pod: one line, exit 1.
    missing = scene.explain("no-such-pod")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr == f"vramguard explain: pod {namespace}/no-such-pod not found\n"
