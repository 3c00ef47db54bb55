"""What the node agent reads through NVML on this machine, in seconds: the GPU count, each
card's memory, the processes on it and the pod their cgroup names. For a machine with a real
GPU (DEVELOPERS.md's device check), where the fakes of tests/unit cannot say whether the real
library answers as they do.

    python3 tests/device/nvml_probe.py [--reads N]

Needs only nvidia-ml-py and this repository's files: ops/nvml.py is loaded by its path (the
ops package would import the kubernetes client and the rest of the operator commands), with
the standard-library modules of gpumem it uses. Exit status 0 when every GPU was read without
a problem, 1 otherwise (no driver, a card NVML cannot read).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


def load_reader() -> ModuleType:
    """ops/nvml.py as a module of its own, without the ops package."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # for gpumem.gpus (standard library only)
    spec = importlib.util.spec_from_file_location("vramguard_nvml", REPO / "ops" / "nvml.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def cgroup_owner(pid: int) -> str:
    from gpumem.cgroup import container_of  # noqa: PLC0415

    try:
        text = (Path("/proc") / str(pid) / "cgroup").read_text()
    except OSError as err:
        return f"cgroup unreadable ({err.strerror})"
    ref = container_of(text)
    if ref is None:
        first = text.splitlines()[0] if text else ""
        return f"in no pod ({first})"
    return f"pod {ref.pod_uid} container {ref.container_id or '-'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=5, help="readings to time (default 5)")
    args = parser.parse_args(argv)
    nvml = load_reader()
    reader = nvml.Nvml()
    started = time.perf_counter()
    reading = reader.read()
    first = time.perf_counter() - started
    print(f"NVML available: {reading.available}; first reading (with nvmlInit) {first:.3f}s")
    if reading.available:
        try:
            import pynvml  # noqa: PLC0415

            print(f"driver {pynvml.nvmlSystemGetDriverVersion()}")
        except Exception as err:  # the probe reports; it does not stop on a detail
            print(f"driver version unreadable: {nvml.describe(err)}")
    print(f"GPUs: {len(reading.gpus)}")
    for gpu in reading.gpus:
        print(
            f"  gpu {gpu.index} {gpu.name} {gpu.uuid}: total {gpu.total_bytes // MIB} MiB, "
            f"used {gpu.used_bytes // MIB} MiB, free {gpu.free_bytes // MIB} MiB"
        )
        if not gpu.processes_read:
            print("    processes: not readable")
        elif not gpu.processes:
            print("    processes: none")
        for process in gpu.processes:
            used = "unknown" if process.used_bytes is None else f"{process.used_bytes // MIB} MiB"
            print(f"    pid {process.pid}: {used}; {cgroup_owner(process.pid)}")
    for problem in reading.problems:
        print(f"problem: {problem}")
    times = []
    for _ in range(max(args.reads, 0)):
        started = time.perf_counter()
        reader.read()
        times.append(time.perf_counter() - started)
    if times:
        print(f"{len(times)} more readings: fastest {min(times):.4f}s, slowest {max(times):.4f}s")
    reader.close()
    return 0 if reading.available and not reading.problems else 1


if __name__ == "__main__":
    sys.exit(main())
