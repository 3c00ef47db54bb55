"""ops.nvml against a fake of nvidia-ml-py, and the fake against the real one."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from gpumem.gpus import GpuProcess, GpuReading
from ops.nvml import Nvml, NvmlLibrary, NvmlProblem, describe
from tests.fakes import nvml as fake_nvml
from tests.fakes.nvml import FakeGpu, FakeNvml

GIB = 1024**3
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"
UUID1 = "GPU-11111111-1111-1111-1111-111111111111"


def reader(fake: FakeNvml) -> Nvml:
    return Nvml(lambda: fake)


# --- the fake is nvidia-ml-py's shape -----------------------------------------------------


@pytest.mark.parametrize("name", fake_nvml.FUNCTIONS)
def test_the_fake_has_pynvmls_functions_and_signatures(name: str) -> None:
    real = inspect.signature(getattr(pynvml, name))
    fake = inspect.signature(getattr(FakeNvml(), name))
    assert [(p.name, p.default) for p in fake.parameters.values()] == [
        (p.name, p.default) for p in real.parameters.values()
    ]


def test_the_fake_has_pynvmls_errors_and_structures() -> None:
    for code_name, code in fake_nvml.CODES.items():
        assert getattr(pynvml, code_name) == code
        real, fake = pynvml.NVMLError(code), fake_nvml.NVMLError(code)
        assert type(real).__name__ == type(fake).__name__
        assert isinstance(fake, fake_nvml.ERROR_CLASSES[code_name])
        assert str(real) == str(fake)
    assert issubclass(pynvml.NVMLError_GpuIsLost, pynvml.NVMLError)
    assert not issubclass(pynvml.NVMLLibraryMismatchError, pynvml.NVMLError)
    assert pynvml.c_nvmlMemory_t._fields_ == fake_nvml.c_nvmlMemory_t._fields_
    library = FakeNvml([FakeGpu(UUID0, compute=[(1, 2)])])
    library.nvmlInit()
    (process,) = library.nvmlDeviceGetComputeRunningProcesses(library.nvmlDeviceGetHandleByIndex(0))
    assert set(vars(process)) == {name for name, _ in pynvml.c_nvmlProcessInfo_t._fields_}
    assert {"pid", "usedGpuMemory"} <= set(vars(process))


# --- reading ------------------------------------------------------------------------------


def test_every_gpu_with_its_memory_and_processes() -> None:
    fake = FakeNvml(
        [
            FakeGpu(UUID0, used=3 * GIB, compute=[(200, 2 * GIB), (100, GIB)]),
            FakeGpu(UUID1, name="NVIDIA H200", total=141 * GIB),
        ]
    )
    reading = reader(fake).read()
    assert reading.available
    assert reading.problems == ()
    assert reading.gpus == (
        GpuReading(
            0,
            UUID0,
            "Tesla T4",
            16 * GIB,
            3 * GIB,
            13 * GIB,
            (GpuProcess(100, GIB), GpuProcess(200, 2 * GIB)),
        ),
        GpuReading(1, UUID1, "NVIDIA H200", 141 * GIB, 0, 141 * GIB),
    )
    assert all(isinstance(v, int) for g in reading.gpus for v in (g.total_bytes, g.free_bytes))


def test_initialised_once_and_shut_down_on_close() -> None:
    fake = FakeNvml([FakeGpu(UUID0)])
    nvml = reader(fake)
    nvml.read()
    nvml.read()
    assert fake.calls.count("nvmlInit") == 1
    nvml.close()
    assert fake.initialised == 0
    nvml.close()  # twice is harmless


def test_no_library_is_a_problem_and_retried_next_time() -> None:
    fake = FakeNvml([FakeGpu(UUID0)])
    fake.init_failure = fake_nvml.NVML_ERROR_LIBRARY_NOT_FOUND
    nvml = reader(fake)
    reading = nvml.read()
    assert not reading.available
    assert reading.gpus == ()
    assert reading.problems == (
        NvmlProblem("init", None, "NVMLError_LibraryNotFound: NVML Shared Library Not Found"),
    )
    fake.init_failure = None  # the driver came up
    assert nvml.read().available


def test_pynvml_not_installed_is_a_problem() -> None:
    def missing() -> NvmlLibrary:
        raise ImportError("No module named 'pynvml'")

    reading = Nvml(missing).read()
    assert not reading.available
    assert "nvidia-ml-py is not installed" in reading.problems[0].error


def test_a_lost_gpu_is_left_out_and_the_others_read() -> None:
    lost = FakeGpu(UUID0, failures={"nvmlDeviceGetMemoryInfo": fake_nvml.NVML_ERROR_GPU_IS_LOST})
    reading = reader(FakeNvml([lost, FakeGpu(UUID1)])).read()
    assert [g.uuid for g in reading.gpus] == [UUID1]
    assert reading.problems == (NvmlProblem("gpu", 0, "NVMLError_GpuIsLost: GPU is lost"),)
    assert str(reading.problems[0]) == "gpu 0 gpu: NVMLError_GpuIsLost: GPU is lost"


def test_a_count_failure_reinitialises_next_time() -> None:
    fake = FakeNvml([FakeGpu(UUID0)])
    fake.count_failure = fake_nvml.NVML_ERROR_UNKNOWN
    nvml = reader(fake)
    assert not nvml.read().available
    fake.count_failure = None
    assert nvml.read().available
    assert fake.calls.count("nvmlInit") == 2


def test_graphics_not_supported_is_no_graphics_processes() -> None:
    gpu = FakeGpu(
        UUID0,
        compute=[(7, GIB)],
        failures={"nvmlDeviceGetGraphicsRunningProcesses": fake_nvml.NVML_ERROR_NOT_SUPPORTED},
    )
    reading = reader(FakeNvml([gpu])).read()
    assert reading.problems == ()
    assert reading.gpus[0].processes == (GpuProcess(7, GIB),)
    assert reading.gpus[0].processes_read


@pytest.mark.parametrize(
    "code", [fake_nvml.NVML_ERROR_NOT_SUPPORTED, fake_nvml.NVML_ERROR_NO_PERMISSION]
)
def test_compute_processes_unreadable_keeps_the_memory_without_processes(code: int) -> None:
    gpu = FakeGpu(
        UUID0,
        used=GIB,
        compute=[(7, GIB)],
        failures={"nvmlDeviceGetComputeRunningProcesses": code},
    )
    reading = reader(FakeNvml([gpu])).read()
    (card,) = reading.gpus
    assert (card.used_bytes, card.processes, card.processes_read) == (GIB, (), False)
    assert [p.step for p in reading.problems] == ["processes"]


def test_an_old_driver_falls_back_to_the_v2_process_calls() -> None:
    fake = FakeNvml([FakeGpu(UUID0, compute=[(7, GIB)], graphics=[(8, 1)])])
    fake.unversioned_missing = True
    reading = reader(fake).read()
    assert reading.problems == ()
    assert reading.gpus[0].processes == (GpuProcess(7, GIB), GpuProcess(8, 1))
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in fake.calls


def test_a_process_in_both_lists_counts_once_and_unknown_usage_stays_unknown() -> None:
    gpu = FakeGpu(UUID0, compute=[(7, GIB), (9, None)], graphics=[(7, GIB), (8, None)])
    reading = reader(FakeNvml([gpu])).read()
    assert reading.gpus[0].processes == (
        GpuProcess(7, GIB),
        GpuProcess(8, None),
        GpuProcess(9, None),
    )


def test_describe_survives_an_error_whose_text_fails() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("library gone")

    assert describe(Broken()) == "Broken"
    assert describe(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)) == (
        "NVMLError_GpuIsLost: GPU is lost"
    )
