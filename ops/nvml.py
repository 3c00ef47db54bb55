"""NVML through nvidia-ml-py (the module `pynvml`): per GPU its index, UUID, name and memory
(total, used, free, in bytes), and the processes holding memory on it. The only importer of
pynvml (an import contract says so), and only when a reading is first asked for, so the
other commands never load it and tests hand in a fake with the same names.

What nvidia-ml-py gives, as read in its source (13.615.71): nvmlDeviceGetMemoryInfo returns a
c_nvmlMemory_t with total, free and used in bytes; nvmlDeviceGet{Compute,Graphics}
RunningProcesses return objects with `pid` and `usedGpuMemory` (bytes, None where the driver
reports NVML_VALUE_NOT_AVAILABLE); every failure raises NVMLError, as the subclass of its
code (NVMLError_NotSupported, NVMLError_GpuIsLost, NVMLError_LibraryNotFound, ...), except
that an unversioned function the driver lacks raises NVMLLibraryMismatchError, which is no
NVMLError: the reader then asks for the function's _v2.

Standard library only (and gpumem.gpus): the GPU probe (tests/device/nvml_probe.py) loads this
file on a machine with nothing but nvidia-ml-py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from gpumem.gpus import GpuProcess, GpuReading

# pynvml's c_nvmlDevice_t: opaque here, handed back to the library as it came.
DeviceHandle = Any


class MemoryInfo(Protocol):
    """c_nvmlMemory_t: bytes."""

    @property
    def total(self) -> int: ...
    @property
    def free(self) -> int: ...
    @property
    def used(self) -> int: ...


class ProcessInfo(Protocol):
    """What the process calls return for each process (pynvml's nvmlFriendlyObject)."""

    @property
    def pid(self) -> int: ...
    @property
    def usedGpuMemory(self) -> int | None: ...


class NvmlLibrary(Protocol):
    """The part of pynvml the agent calls, by its names."""

    @property
    def NVMLError(self) -> type[Exception]: ...
    @property
    def NVMLError_NotSupported(self) -> type[Exception]: ...
    @property
    def NVMLLibraryMismatchError(self) -> type[Exception]: ...

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> DeviceHandle: ...
    def nvmlDeviceGetUUID(self, handle: DeviceHandle) -> str: ...
    def nvmlDeviceGetName(self, handle: DeviceHandle) -> str: ...
    def nvmlDeviceGetMemoryInfo(self, handle: DeviceHandle) -> MemoryInfo: ...
    def nvmlDeviceGetComputeRunningProcesses(
        self, handle: DeviceHandle
    ) -> Sequence[ProcessInfo]: ...
    def nvmlDeviceGetComputeRunningProcesses_v2(
        self, handle: DeviceHandle
    ) -> Sequence[ProcessInfo]: ...
    def nvmlDeviceGetGraphicsRunningProcesses(
        self, handle: DeviceHandle
    ) -> Sequence[ProcessInfo]: ...
    def nvmlDeviceGetGraphicsRunningProcesses_v2(
        self, handle: DeviceHandle
    ) -> Sequence[ProcessInfo]: ...


@dataclass(frozen=True)
class NvmlProblem:
    """What NVML could not read: `step` (init, count, gpu, processes) and, per GPU, which;
    `error` is the exception's class and message (`NVMLError_GpuIsLost: GPU is lost`)."""

    step: str
    gpu: int | None
    error: str

    def __str__(self) -> str:
        where = f"gpu {self.gpu} " if self.gpu is not None else ""
        return f"{where}{self.step}: {self.error}"


@dataclass(frozen=True)
class NvmlReading:
    """The GPUs NVML could read, and what it could not. `available` is False when NVML
    itself is unusable (no library, no driver): then no GPU is listed."""

    gpus: tuple[GpuReading, ...]
    problems: tuple[NvmlProblem, ...]
    available: bool


def load_pynvml() -> NvmlLibrary:
    import pynvml  # noqa: PLC0415  (at the first reading: see the module's docstring)

    return cast(NvmlLibrary, pynvml)


class Nvml:
    """Reads every GPU each time it is asked. NVML is initialised at the first reading and
    again after it failed (a driver loaded late, an upgrade), never left half-open."""

    def __init__(self, load: Callable[[], NvmlLibrary] = load_pynvml) -> None:
        self._load = load
        self._lib: NvmlLibrary | None = None

    def read(self) -> NvmlReading:
        problems: list[NvmlProblem] = []
        lib = self._initialised(problems)
        if lib is None:
            return NvmlReading((), tuple(problems), available=False)
        try:
            count = lib.nvmlDeviceGetCount()
        except lib.NVMLError as err:
            problems.append(NvmlProblem("count", None, describe(err)))
            self.close()
            return NvmlReading((), tuple(problems), available=False)
        gpus = []
        for index in range(count):
            gpu = _read_gpu(lib, index, problems)
            if gpu is not None:
                gpus.append(gpu)
        return NvmlReading(tuple(gpus), tuple(problems), available=True)

    def close(self) -> None:
        lib, self._lib = self._lib, None
        if lib is not None:
            # Shutting down a library that already failed: nothing is left to release.
            with contextlib.suppress(lib.NVMLError):
                lib.nvmlShutdown()

    def _initialised(self, problems: list[NvmlProblem]) -> NvmlLibrary | None:
        if self._lib is not None:
            return self._lib
        try:
            lib = self._load()
        except ImportError as err:
            problems.append(NvmlProblem("init", None, f"nvidia-ml-py is not installed: {err}"))
            return None
        try:
            lib.nvmlInit()
        except lib.NVMLError as err:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            problems.append(NvmlProblem("init", None, describe(err)))
            return None
        self._lib = lib
        return lib


def _read_gpu(lib: NvmlLibrary, index: int, problems: list[NvmlProblem]) -> GpuReading | None:
    """One GPU, or None (and a problem) when its memory cannot be read: a card that is lost
    or unreadable is left out rather than shown with figures NVML did not give."""
    try:
        handle = lib.nvmlDeviceGetHandleByIndex(index)
        uuid = lib.nvmlDeviceGetUUID(handle)
        memory = lib.nvmlDeviceGetMemoryInfo(handle)
        total, used, free = int(memory.total), int(memory.used), int(memory.free)
    except lib.NVMLError as err:
        problems.append(NvmlProblem("gpu", index, describe(err)))
        return None
    try:
        name = lib.nvmlDeviceGetName(handle)
    except lib.NVMLError:
        name = ""  # only for logs and the probe
    processes: list[GpuProcess] = []
    read = True
    for kind in ("Compute", "Graphics"):
        try:
            processes += _processes(lib, kind, handle)
        except lib.NVMLError_NotSupported as err:
            # Graphics contexts are not supported on compute-only cards: nothing to list.
            # Compute processes not supported (vGPU guests, MIG parents) is a gap to report.
            if kind == "Compute":
                read = False
                problems.append(NvmlProblem("processes", index, describe(err)))
        except (lib.NVMLError, lib.NVMLLibraryMismatchError) as err:
            read = False
            problems.append(NvmlProblem("processes", index, describe(err)))
    return GpuReading(
        index=index,
        uuid=uuid,
        name=name,
        total_bytes=total,
        used_bytes=used,
        free_bytes=free,
        processes=merged(processes) if read else (),
        processes_read=read,
    )


def _processes(lib: NvmlLibrary, kind: str, handle: DeviceHandle) -> list[GpuProcess]:
    function = getattr(lib, f"nvmlDeviceGet{kind}RunningProcesses")
    try:
        found: Sequence[ProcessInfo] = function(handle)
    except lib.NVMLLibraryMismatchError:
        # The unversioned call is the bindings' newest version (_v3), which an older driver
        # may lack; its _v2 gives the same pid and usedGpuMemory.
        found = getattr(lib, f"nvmlDeviceGet{kind}RunningProcesses_v2")(handle)
    return [GpuProcess(int(p.pid), _bytes(p.usedGpuMemory)) for p in found]


def merged(processes: Sequence[GpuProcess]) -> tuple[GpuProcess, ...]:
    """One entry per PID: a process with both a compute and a graphics context is listed
    twice, with its memory each time, so the larger figure is kept rather than the sum."""
    by_pid: dict[int, GpuProcess] = {}
    for process in processes:
        seen = by_pid.get(process.pid)
        if seen is None or (seen.used_bytes or -1) < (process.used_bytes or -1):
            by_pid[process.pid] = process
    return tuple(sorted(by_pid.values(), key=lambda p: p.pid))


def _bytes(value: int | None) -> int | None:
    return None if value is None else int(value)


def describe(err: BaseException) -> str:
    try:
        text = str(err)
    except Exception:  # pynvml's __str__ asks the library, which may be what failed
        text = ""
    name = type(err).__name__
    return f"{name}: {text}" if text else name


__all__ = [
    "GpuProcess",
    "GpuReading",
    "Nvml",
    "NvmlLibrary",
    "NvmlProblem",
    "NvmlReading",
    "describe",
    "load_pynvml",
    "merged",
]
