"""The snapshots the report tests judge (test_preflight_report, test_status_report,
test_explain_report), built the way the extender builds them (ClusterStore)."""

from __future__ import annotations

from typing import Any

from gpumem.state import Snapshot
from tests.unit.extender.factories import make_node, make_policy, make_store

POLICY = make_policy(floorMiB=512, warmupSeconds=120)


def snapshot_of(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], reading: Any = None
) -> Snapshot:
    return make_store(POLICY, nodes, pods, reading).snapshot()


A = make_node("node-a", allocatable_mib=14000, gfd_memory_mib=15360)
B = make_node("node-b", allocatable_mib=14000, gfd_memory_mib=15360)
CPU = make_node("cpu-1")
