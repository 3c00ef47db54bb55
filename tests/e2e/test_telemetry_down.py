"""Scenario 4, telemetry down: with Prometheus stopped the live samples age past
maxAgeSeconds. staleMode budget-only then schedules by the declared budgets alone and says
so (metric, log); staleMode deny keeps GPU pods Pending with the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .harness import (
    LocalVramguard,
    delete_pod,
    gpu_pod,
    wait_for_pod_node,
    wait_for_unschedulable_message,
)

pytestmark = pytest.mark.e2e

MAX_AGE_SECONDS = 3
STALE_DECISIONS = "vramguard_extender_stale_telemetry_decisions_total"


def test_stale_telemetry_budget_only_then_deny(
    core_v1: Any,
    local_vramguard: LocalVramguard,
    make_namespace: Callable[..., str],
    make_vram_node: Callable[..., str],
) -> None:
    vramguard = local_vramguard
    # The card is nearly full (560 MiB free), whatever the budgets say.
    node = make_vram_node(gpumem_mib=14000, total_mib=15360, used_mib=14800)
    namespace = make_namespace("team")

    def pod(name: str, mib: int) -> Any:
        return gpu_pod(name, namespace=namespace, node_name_selector=node, gpumem_mib=mib)

    with vramguard.extender_settings(maxAgeSeconds=MAX_AGE_SECONDS, staleMode="budget-only"):
        # With fresh telemetry the live check refuses a 1500 MiB pod.
        core_v1.create_namespaced_pod(namespace, pod("fresh", 1500))
        wait_for_unschedulable_message(core_v1, namespace, "fresh", "vramguard: live free 560")
        delete_pod(core_v1, namespace, "fresh")

        vramguard.prometheus.stop()
        try:
            vramguard.wait_for_node(
                node,
                live=False,
                check=lambda s: (s["telemetryAgeSeconds"] or 0) > MAX_AGE_SECONDS,
                what=f"with telemetry older than {MAX_AGE_SECONDS}s",
            )
            assert vramguard.extender_metric("vramguard_extender_telemetry_up") == 0
            assert vramguard.extender_snapshot()["telemetry"]["failing"] is True
            assert vramguard.log_mentions(
                vramguard.extender_process, "telemetry from Prometheus (dcgm) failing"
            )

            # budget-only: the same pod fits the budgets (1500 of 14000), so it is placed,
            # and the decision is counted as taken without the live check.
            skipped = vramguard.extender_metric(STALE_DECISIONS, mode="budget-only")
            core_v1.create_namespaced_pod(namespace, pod("by-budget", 1500))
            assert wait_for_pod_node(core_v1, namespace, "by-budget") == node
            assert vramguard.extender_metric(STALE_DECISIONS, mode="budget-only") > skipped

            # deny: no GPU pod is placed on stale telemetry.
            vramguard.update_policy(lambda p: p["extender"].update(staleMode="deny"))
            denied = vramguard.extender_metric(STALE_DECISIONS, mode="deny")
            core_v1.create_namespaced_pod(namespace, pod("denied", 1000))
            message = wait_for_unschedulable_message(core_v1, namespace, "denied", "staleMode deny")
            assert f"> maxAgeSeconds {MAX_AGE_SECONDS} (dcgm)" in message, message
            assert vramguard.extender_metric(STALE_DECISIONS, mode="deny") > denied
        finally:
            vramguard.prometheus.start()
    vramguard.wait_for_node(node, what="with fresh telemetry again")
