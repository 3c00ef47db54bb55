"""`vramguard watchdog --once` against a real kube-apiserver and Prometheus scraping the fake
per-pod GPU exporter (telemetry preset pod-exporter).

One card, 15360 MiB: two tenants over their budgets (2000 declared, 5000 used: +3000; 3000
declared, 4500 used: +1500), one within (2000 declared, 1500 used), and a pod without a
declaration (an excluded namespace, so the webhook gives it none) holding 3800 MiB, the most
of all. 560 MiB free: below the watchdog's floor (1024), above its emergency floor (512).

- nothing Pending: no contention, nothing chosen;
- a GPU pod Pending on live VRAM: a dry run logs the would-be victim and deletes nothing;
- Prometheus unreachable: nothing done, exit 2, one line;
- --dry-run false: exactly the pod with the largest used - declared is deleted, with a
  VRAMWatchdogRecycled Event; the undeclared pod, the other tenants and the Pending pod stay.

The command runs as a subprocess (`python -m ops`, what the `vramguard` console
script calls) with the local stack's policy file, against the cluster's admin kubeconfig.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    ClusterBase,
    LocalVramguard,
    gpu_pod,
    pod_events,
    wait_for_pod_node,
    wait_for_unschedulable_message,
)
from .harness.kubelet import mark_running
from .harness.tenants import Tenant, deploy

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CARD_MIB = 15360
FLOOR_MIB = 1024
OVER_MOST = Tenant("wd", "arena", 2000, 5000)  # +3000
OVER_LESS = Tenant("wd", "llm", 3000, 4500)  # +1500
WITHIN = Tenant("wd", "nvr", 2000, 1500)
UNDECLARED_USES_MIB = 3800
FREE_MIB = CARD_MIB - (5000 + 4500 + 1500 + UNDECLARED_USES_MIB)  # 560


def watchdog(
    cluster: ClusterBase, stack: LocalVramguard, node: str, *args: str, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DRY_RUN"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops",
            "watchdog",
            "--once",
            "--node",
            node,
            "--floor",
            str(FLOOR_MIB),
            "--prometheus-url",
            url or stack.prometheus.url,
            "--policy",
            str(stack.policy_path),
            "--kubeconfig",
            str(cluster.kubeconfig),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env=environment,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def decision_lines(stderr: str) -> list[str]:
    """The decision lines (logfmt after the logger's prefix)."""
    return [line.split(": ", 1)[1] for line in stderr.splitlines() if ": node=" in line]


def pods_present(core: Any, namespace: str) -> dict[str, str]:
    """name -> uid of the namespace's pods."""
    return {p.metadata.name: p.metadata.uid for p in core.list_namespaced_pod(namespace).items}


def fill_the_card(
    core: Any, vramguard: LocalVramguard, node: str, namespace: str, system: str
) -> None:
    """The three tenants in `namespace` and the undeclared pod in `system`, running on the
    node and reporting their usage, seen by the extender (so Prometheus has it too)."""
    usage: dict[tuple[str, str], int] = {}

    def report(pod_namespace: str, pod: str, mib: int) -> None:
        usage[(pod_namespace, pod)] = mib
        vramguard.exporter.set_pod_usage(pod_namespace, pod, mib)
        used = sum(usage.values())
        vramguard.wait_for_node(
            node,
            check=lambda s: s["liveUsedMiB"] == used and s["liveFreeMiB"] == CARD_MIB - used,
            what=f"with {used} MiB used by its pods",
        )

    for tenant in (OVER_MOST, OVER_LESS, WITHIN):
        deploy(core, tenant, namespace, node)
        report(namespace, tenant.pod, tenant.uses_mib)
    # No declaration: the namespace is excluded, so the webhook injects none and the default
    # scheduler places it.
    core.create_namespaced_pod(system, gpu_pod("hog", namespace=system, node_name_selector=node))
    assert wait_for_pod_node(core, system, "hog") == node
    mark_running(core, system, "hog")
    report(system, "hog", UNDECLARED_USES_MIB)
    assert CARD_MIB - sum(usage.values()) == FREE_MIB


def test_watchdog_recycles_only_the_pod_most_over_budget(
    control_plane: ClusterBase,
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    vramguard = local_vramguard
    node = make_vram_node(gpumem_mib=14000, total_mib=CARD_MIB, used_mib=0)
    namespace = make_namespace("wd")
    system = make_namespace("wd-system")
    vramguard.exclude_namespaces([system])

    def run(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        return watchdog(control_plane, vramguard, node, *args, url=url)

    with vramguard.extender_settings(telemetry={"preset": "pod-exporter"}):
        fill_the_card(core_v1, vramguard, node, namespace, system)
        tenants = pods_present(core_v1, namespace)
        hog = pods_present(core_v1, system)

        # Below the floor, but nothing waits for the VRAM.
        quiet = run("--dry-run", "false")
        assert quiet.returncode == 0, quiet.stderr
        (line,) = decision_lines(quiet.stderr)
        assert line.startswith(
            f"node={node} action=none reason=no-contention dry_run=false free={FREE_MIB} "
            f"floor={FLOOR_MIB} "
        ), line
        assert pods_present(core_v1, namespace) == tenants

        # A GPU pod waits, refused on live VRAM.
        core_v1.create_namespaced_pod(
            namespace,
            gpu_pod("incoming", namespace=namespace, node_name_selector=node, gpumem_mib=1500),
        )
        message = wait_for_unschedulable_message(core_v1, namespace, "incoming", "vramguard:")
        assert f"live free {FREE_MIB} MiB < need 1500" in message, message

        # The dry run (the default) names the victim and deletes nothing.
        dry = run()
        assert dry.returncode == 0, dry.stderr
        (line,) = decision_lines(dry.stderr)
        victim = f"{namespace}/{OVER_MOST.pod}"
        assert line.startswith(
            f"node={node} action=recycle reason=over-budget dry_run=true free={FREE_MIB} "
            f"floor={FLOOR_MIB} pod={victim} uid={tenants[OVER_MOST.pod]} used=5000 "
            "declared=2000 result=dry-run "
        ), line
        assert (
            f"{namespace}/incoming waits for it (Pending, needs 1500 MiB, refused on live VRAM)"
        ) in line
        present = pods_present(core_v1, namespace)
        assert {name: present[name] for name in tenants} == tenants
        assert pods_present(core_v1, system) == hog

        # Prometheus unreachable: nothing is done, even when enforcing.
        down = run("--dry-run", "false", url="http://127.0.0.1:1")
        assert down.returncode == 2, down.stderr
        errors = [line for line in down.stderr.splitlines() if "cycle_error=" in line]
        assert len(errors) == 1, down.stderr
        assert "cycle_error=telemetry action=none" in errors[0]
        assert decision_lines(down.stderr) == []
        assert pods_present(core_v1, namespace) == present

        # Enforcing: exactly the pod with the largest used - declared goes.
        enforce = run("--dry-run", "false")
        assert enforce.returncode == 0, enforce.stderr
        (line,) = decision_lines(enforce.stderr)
        assert "action=recycle reason=over-budget dry_run=false" in line, line
        assert f" pod={victim} " in line, line
        assert " result=deleted " in line, line
        del present[OVER_MOST.pod]
        assert pods_present(core_v1, namespace) == present
        assert pods_present(core_v1, system) == hog
        (event,) = pod_events(core_v1, namespace, OVER_MOST.pod, "VRAMWatchdogRecycled")
        assert f"{victim} uses 5000 MiB of 2000 declared (+3000)" in event
        vramguard.exporter.remove_pod(namespace, OVER_MOST.pod)
