"""A module named `pynvml` for a real node-agent process on a node without a GPU: put this
folder first on PYTHONPATH (and the repository root after it),

    PYTHONPATH=tests/fakes/pynvml_shim:. VRAMGUARD_FAKE_NVML_STATE=/tmp/gpus.json \\
        python -m ops node-agent ...

and `import pynvml` in ops.nvml finds this instead of nvidia-ml-py, so the agent runs
unchanged. It is tests/fakes/nvml.py's fake with nvidia-ml-py's names at module level: the
functions ops.nvml calls (bound to one StateFileNvml, which reads the state file named by
$VRAMGUARD_FAKE_NVML_STATE at nvmlInit and at every scan), NVMLError and its subclass per
code, NVMLLibraryMismatchError, the NVML_ERROR_* codes and c_nvmlMemory_t. No state file is
NVMLError_DriverNotLoaded.

The folder is not a package on purpose: the module must be importable as `pynvml`. Importing
it reads nothing; the environment and the file are read when NVML is initialised.
"""

from __future__ import annotations

from tests.fakes import nvml as _fake
from tests.fakes.nvml_state import StateFileNvml

_library = StateFileNvml()

nvmlInit = _library.nvmlInit
nvmlShutdown = _library.nvmlShutdown
nvmlDeviceGetCount = _library.nvmlDeviceGetCount
nvmlDeviceGetHandleByIndex = _library.nvmlDeviceGetHandleByIndex
nvmlDeviceGetUUID = _library.nvmlDeviceGetUUID
nvmlDeviceGetName = _library.nvmlDeviceGetName
nvmlDeviceGetMemoryInfo = _library.nvmlDeviceGetMemoryInfo
nvmlDeviceGetComputeRunningProcesses = _library.nvmlDeviceGetComputeRunningProcesses
nvmlDeviceGetComputeRunningProcesses_v2 = _library.nvmlDeviceGetComputeRunningProcesses_v2
nvmlDeviceGetGraphicsRunningProcesses = _library.nvmlDeviceGetGraphicsRunningProcesses
nvmlDeviceGetGraphicsRunningProcesses_v2 = _library.nvmlDeviceGetGraphicsRunningProcesses_v2

NVMLError = _fake.NVMLError
NVMLLibraryMismatchError = _fake.NVMLLibraryMismatchError
c_nvmlMemory_t = _fake.c_nvmlMemory_t
# Every code the fake raises, and its class by pynvml's name (NVML_ERROR_GPU_IS_LOST,
# NVMLError_GpuIsLost, ...), as nvidia-ml-py defines them at module level.
globals().update(_fake.CODES)
globals().update({error.__name__: error for error in _fake.ERROR_CLASSES.values()})
