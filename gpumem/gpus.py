"""What the node agent reads of one node's GPUs through NVML: per card its index, UUID and
memory, and the processes holding memory on it. Frozen data, in bytes as NVML gives them.

Standard library only, like ops.nvml which builds it: the GPU probe (tests/device/) runs on a
machine with nothing but nvidia-ml-py installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuProcess:
    """A process with a context on a card. `used_bytes` is None where NVML cannot tell (it
    reports NVML_VALUE_NOT_AVAILABLE, which nvidia-ml-py turns into None)."""

    pid: int
    used_bytes: int | None


@dataclass(frozen=True)
class GpuReading:
    """One card. `processes_read` is False when NVML listed no processes for it (not supported
    there, or an error): then `processes` is empty for want of knowing, not because none run."""

    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    processes: tuple[GpuProcess, ...] = ()
    processes_read: bool = True


__all__ = ["GpuProcess", "GpuReading"]
