"""A fake of nvidia-ml-py (`pynvml`) for ops.nvml: the same function names and signatures, the
same return types (a ctypes c_nvmlMemory_t, process objects with pid and usedGpuMemory, None
where not available) and the same NVMLError hierarchy (NVMLError(code) is the subclass of its
code). test_nvml.py checks it against the installed pynvml, so it cannot drift from it.

Handed to ops.nvml.Nvml as its library by the unit tests; nothing of the real pynvml is
patched. A real node-agent process gets it as the module `pynvml` itself, over a state file
(nvml_state.py, pynvml_shim/pynvml.py).
"""

from __future__ import annotations

import ctypes
import string
from dataclasses import dataclass, field
from typing import Any, ClassVar

# The error codes the fake raises (values as in pynvml / nvml.h).
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
CODES = {name: value for name, value in globals().items() if name.startswith("NVML_ERROR_")}
MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """pynvml's base error: NVMLError(code) constructs the subclass of that code."""

    _by_code: ClassVar[dict[int, type[NVMLError]]] = {}
    value: int

    def __new__(cls, value: int) -> NVMLError:
        target = NVMLError._by_code.get(value, cls) if cls is NVMLError else cls
        obj = Exception.__new__(target)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return MESSAGES.get(self.value, f"NVML Error with code {self.value}")


def _error_class(code_name: str, code: int) -> type[NVMLError]:
    # pynvml's rule: NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost.
    words = string.capwords(code_name.replace("NVML_ERROR_", ""), "_").replace("_", "")

    def new(cls: type[NVMLError], *args: Any) -> NVMLError:
        return NVMLError.__new__(cls, code)

    error = type(f"NVMLError_{words}", (NVMLError,), {"__new__": new})
    NVMLError._by_code[code] = error
    return error


ERROR_CLASSES = {name: _error_class(name, code) for name, code in CODES.items()}
NVMLError_NotSupported = ERROR_CLASSES["NVML_ERROR_NOT_SUPPORTED"]
NVMLError_GpuIsLost = ERROR_CLASSES["NVML_ERROR_GPU_IS_LOST"]
NVMLError_LibraryNotFound = ERROR_CLASSES["NVML_ERROR_LIBRARY_NOT_FOUND"]


class NVMLLibraryMismatchError(Exception):
    """Raised by the unversioned process calls when the driver lacks their newest version."""


class c_nvmlMemory_t(ctypes.Structure):  # pynvml's name
    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


class nvmlFriendlyObject:  # pynvml's name
    """What pynvml turns each c_nvmlProcessInfo_t into: its fields as attributes."""

    pid: int
    usedGpuMemory: int | None

    def __init__(self, dictionary: dict[str, Any]) -> None:
        for key, value in dictionary.items():
            setattr(self, key, value)


class Handle:
    """An opaque device handle (pynvml's c_nvmlDevice_t)."""

    def __init__(self, index: int) -> None:
        self.index = index


@dataclass
class FakeGpu:
    uuid: str
    name: str = "Tesla T4"
    total: int = 16 * 1024**3
    used: int = 0
    compute: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes | None)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    # function name -> error code it raises for this GPU
    failures: dict[str, int] = field(default_factory=dict)


class FakeNvml:
    """The module's namespace: errors, structures and functions, over `gpus`."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLLibraryMismatchError = NVMLLibraryMismatchError

    def __init__(self, gpus: list[FakeGpu] | None = None) -> None:
        self.gpus = gpus or []
        self.init_failure: int | None = None  # an error code nvmlInit raises
        self.count_failure: int | None = None
        self.unversioned_missing = False  # the driver lacks the _v3 process calls
        self.initialised = 0
        self.calls: list[str] = []

    # --- the functions ops.nvml calls, with pynvml's signatures ---

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_failure is not None:
            raise NVMLError(self.init_failure)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        self._check()
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        if self.count_failure is not None:
            raise NVMLError(self.count_failure)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        self._fail(index, "nvmlDeviceGetHandleByIndex")
        return Handle(index)

    def nvmlDeviceGetUUID(self, handle: Handle) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: Handle) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetMemoryInfo(self, handle: Handle, version: int | None = None) -> c_nvmlMemory_t:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return c_nvmlMemory_t(total=gpu.total, free=gpu.total - gpu.used, used=gpu.used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Handle) -> list[nvmlFriendlyObject]:
        if self.unversioned_missing:
            raise NVMLLibraryMismatchError("Unversioned function called ...")
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses", "compute")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Handle) -> list[nvmlFriendlyObject]:
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses_v2", "compute")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Handle) -> list[nvmlFriendlyObject]:
        if self.unversioned_missing:
            raise NVMLLibraryMismatchError("Unversioned function called ...")
        return self._processes(handle, "nvmlDeviceGetGraphicsRunningProcesses", "graphics")

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: Handle) -> list[nvmlFriendlyObject]:
        return self._processes(handle, "nvmlDeviceGetGraphicsRunningProcesses_v2", "graphics")

    # --- the fake's own ---

    def _check(self) -> None:
        if self.initialised <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _fail(self, index: int, function: str) -> None:
        self.calls.append(function)
        code = self.gpus[index].failures.get(function)
        if code is not None:
            raise NVMLError(code)

    def _gpu(self, handle: Handle, function: str) -> FakeGpu:
        self._check()
        self._fail(handle.index, function)
        return self.gpus[handle.index]

    def _processes(self, handle: Handle, function: str, kind: str) -> list[nvmlFriendlyObject]:
        gpu = self._gpu(handle, function)
        return [
            nvmlFriendlyObject(
                {
                    "pid": pid,
                    "usedGpuMemory": used,
                    "gpuInstanceId": 0xFFFFFFFF,
                    "computeInstanceId": 0xFFFFFFFF,
                }
            )
            for pid, used in (gpu.compute if kind == "compute" else gpu.graphics)
        ]


# The functions test_nvml.py compares with the installed pynvml's.
FUNCTIONS = [name for name in vars(FakeNvml) if name.startswith("nvml")]
