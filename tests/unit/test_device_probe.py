"""tests/device/nvml_probe.py runs with nothing of the project but its own files: it must not
load the ops package, the kubernetes client or gRPC (the GPU machine has none of them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECK = """
import runpy, sys
sys.argv = sys.argv[1:]  # the probe's own command line
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as end:
    status = end.code
loaded = sorted(m for m in ("ops", "kubernetes", "grpc", "prometheus_client") if m in sys.modules)
print("loaded:", loaded, "status:", status)
"""


def test_the_probe_reads_nvml_without_the_rest_of_the_project() -> None:
    probe = REPO / "tests" / "device" / "nvml_probe.py"
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(probe), "--reads", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "NVML available:" in out
    assert "GPUs:" in out
    assert "loaded: []" in out
    # 0 where a GPU and its driver answered, 1 here without one: said either way.
    available = "NVML available: True" in out
    assert out.rstrip().endswith(f"status: {0 if available and 'problem:' not in out else 1}")
