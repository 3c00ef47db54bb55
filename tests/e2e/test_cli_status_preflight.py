"""`vramguard preflight` and `vramguard status` against a real kube-apiserver and Prometheus
scraping the fake GPU exporter: preflight's exit status follows the card's free VRAM (0 when
need + floor fit, 1 one MiB over), 2 when Prometheus cannot be reached; `status -o json`
agrees with the extender's /debug/snapshot on capacity and declared budgets, read directly and
through --extender-url.

The commands run as subprocesses (`python -m ops`, what the `vramguard` console
script calls) with the local stack's policy file, against the cluster's admin kubeconfig.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import T4_MIB
from .harness import ClusterBase, LocalVramguard

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FREE_MIB = 5000


def vramguard_cli(
    cluster: ClusterBase, stack: LocalVramguard, *args: str
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops",
            *args,
            "--policy",
            str(stack.policy_path),
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_preflight_follows_the_cards_free_vram(
    control_plane: ClusterBase,
    local_vramguard: LocalVramguard,
    make_vram_node: Callable[..., str],
) -> None:
    node = make_vram_node(total_mib=T4_MIB, used_mib=T4_MIB - FREE_MIB)
    floor = int(local_vramguard.policy["extender"]["floorMiB"])
    prometheus = local_vramguard.prometheus.url
    fits = FREE_MIB - floor

    def preflight(need: int, *extra: str, url: str = prometheus) -> Any:
        return vramguard_cli(
            control_plane,
            local_vramguard,
            "preflight",
            "--need",
            str(need),
            "--prometheus-url",
            url,
            *extra,
        )

    yes = preflight(fits, "--node", node)
    assert yes.returncode == 0, f"{yes.stdout}\n{yes.stderr}"
    assert yes.stdout.strip() == (
        f"{node}: live free {FREE_MIB} MiB - 0 not yet in use = {FREE_MIB} MiB; "
        f"need {fits} + floor {floor}: yes"
    )

    no = preflight(fits + 1, "--node", node)
    assert no.returncode == 1, f"{no.stdout}\n{no.stderr}"
    assert no.stdout.strip().endswith(f"need {fits + 1} + floor {floor}: NO")

    # Any node: this one has the room, whatever the others say.
    anywhere = preflight(fits)
    assert anywhere.returncode == 0, f"{anywhere.stdout}\n{anywhere.stderr}"
    assert f"{node}: live free {FREE_MIB} MiB" in anywhere.stdout

    # The floor from the command line replaces the policy's.
    no_floor = preflight(FREE_MIB, "--node", node, "--floor", "0")
    assert no_floor.returncode == 0, f"{no_floor.stdout}\n{no_floor.stderr}"

    down = preflight(fits, "--node", node, url="http://127.0.0.1:1")
    assert down.returncode == 2, f"{down.stdout}\n{down.stderr}"
    assert down.stdout == ""
    assert down.stderr.startswith("vramguard preflight: telemetry from Prometheus at ")
    assert len(down.stderr.strip().splitlines()) == 1


def test_status_json_agrees_with_the_extenders_snapshot(
    control_plane: ClusterBase,
    local_vramguard: LocalVramguard,
    make_vram_node: Callable[..., str],
) -> None:
    node = make_vram_node(total_mib=T4_MIB, used_mib=T4_MIB - FREE_MIB)
    extender = local_vramguard.extender_snapshot()["nodes"]

    direct = vramguard_cli(
        control_plane,
        local_vramguard,
        "status",
        "-o",
        "json",
        "--prometheus-url",
        local_vramguard.prometheus.url,
    )
    assert direct.returncode == 0, f"{direct.stdout}\n{direct.stderr}"
    via_extender = vramguard_cli(
        control_plane,
        local_vramguard,
        "status",
        "-o",
        "json",
        "--extender-url",
        local_vramguard.extender_url,
    )
    assert via_extender.returncode == 0, f"{via_extender.stdout}\n{via_extender.stderr}"

    for output, source in ((direct.stdout, "api"), (via_extender.stdout, "extender")):
        document = json.loads(output)
        assert document["source"] == source
        rows = {row["name"]: row for row in document["nodes"]}
        assert rows[node]["liveFreeMiB"] == FREE_MIB
        for name, state in extender.items():
            if not state["known"] or name not in rows:
                continue
            assert (rows[name]["capacityMiB"], rows[name]["declaredMiB"]) == (
                state["capacityMiB"],
                state["declaredMiB"],
            ), name
        assert node in rows

    table = vramguard_cli(
        control_plane, local_vramguard, "status", "--prometheus-url", local_vramguard.prometheus.url
    )
    assert table.returncode == 0, table.stderr
    (line,) = [line for line in table.stdout.splitlines() if line.startswith(f"{node} ")]
    assert line.split()[:3] == [node, "13.7", "GiB"]  # T4_ADVERTISED_MIB, 14000 MiB
