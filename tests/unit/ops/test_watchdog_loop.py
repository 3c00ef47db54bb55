"""ops.watchdog_loop on a node with two cards: the log line and the pod's Event name the card,
and the cooldown after a recycle holds back that card only."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from gpumem.policy import Policy
from gpumem.state import PodView, Sample, TelemetryReading
from ops import readings
from ops.watchdog_loop import Options, Watchdog
from ops.watchdog_metrics import RecycleResult, WatchdogMetrics
from tests.unit.extender.factories import (
    NOW,
    card_uuid,
    cards_reading,
    make_node,
    make_pod,
    make_policy,
)

NODE = "gpu-2x"
LOGGER = "ops.watchdog"
NODES = [make_node(NODE, gfd_memory_mib=16384, gfd_count=2)]
PODS = [make_pod("hog0", 3000, node=NODE), make_pod("hog1", 1000, node=NODE)]
USED = {("team-a", "hog0"): 6000, ("team-a", "hog1"): 5000}
CARDS = {("team-a", "hog0"): (NODE, 0), ("team-a", "hog1"): (NODE, 1)}


def reading(free: list[int]) -> TelemetryReading:
    base = cards_reading({NODE: free}, age=3, pod_cards=CARDS)
    used = {key: Sample(mib, NOW - 3) for key, mib in USED.items()}
    return dataclasses.replace(base, pod_used=used)


class FakePods:
    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.events: list[tuple[str, str]] = []

    def delete(self, victim: PodView) -> tuple[RecycleResult, str]:
        self.deleted.append(victim.name)
        return "deleted", ""

    def record_event(self, victim: PodView, message: str, now: float) -> str | None:
        self.events.append((victim.name, message))
        return None


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"reading": reading([400, 9000])}

    def list_cluster(kubeconfig: Path | None) -> tuple[list[Any], list[Any]]:
        return NODES, PODS

    def read_live(url: str, policy: Policy, now: float) -> TelemetryReading:
        found: TelemetryReading = state["reading"]
        return found

    monkeypatch.setattr(readings, "list_cluster", list_cluster)
    monkeypatch.setattr(readings, "read_live", read_live)
    monkeypatch.setattr(readings, "now", lambda: NOW)
    return state


def watchdog(pods: FakePods) -> Watchdog:
    options = Options(
        prometheus_url="http://prometheus:9090",
        kubeconfig=None,
        interval=30.0,
        floor_mib=1024,
        emergency_floor_mib=None,
        cooldown_seconds=300.0,
        nodes=(),
        dry_run=False,
    )
    policy = make_policy()
    return Watchdog(options, pods, WatchdogMetrics(dry_run=False), lambda: policy)


def test_the_log_line_and_the_event_name_the_card(
    cluster: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    pods = FakePods()
    assert watchdog(pods).cycle() == 0
    assert pods.deleted == ["hog0"]
    ((name, message),) = pods.events
    label = f"gpu 0 ({card_uuid(NODE, 0)[:8]}…)"
    assert name == "hog0"
    assert message.startswith(f"{label}: live free 400 MiB < floor 1024 MiB")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node=")]
    assert line.startswith(
        f"node={NODE} gpu=0 uuid={card_uuid(NODE, 0)} action=recycle reason=over-budget "
        "dry_run=false free=400 floor=1024 pod=team-a/hog0"
    )


def test_the_cooldown_holds_back_the_recycled_card_only(cluster: dict[str, Any]) -> None:
    pods = FakePods()
    dog = watchdog(pods)
    dog.cycle()
    assert pods.deleted == ["hog0"]
    # Next cycle: gpu 0 has not shown the freed VRAM yet, and gpu 1 runs low too.
    cluster["reading"] = reading([400, 300])
    dog.cycle()
    assert pods.deleted == ["hog0", "hog1"]
    dog.cycle()  # both cards in their cooldown now
    assert pods.deleted == ["hog0", "hog1"]
