"""The pynvml shim read through ops.nvml, as the node agent reads it: loaded from its file
in-process, and imported as `pynvml` by a real Python process with the folder on PYTHONPATH,
which must find the shim rather than the installed nvidia-ml-py."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import cast

import pynvml
import pytest

from gpumem.gpus import GpuProcess, GpuReading
from ops.nvml import Nvml, NvmlLibrary, NvmlProblem
from tests.fakes import nvml as fake_nvml
from tests.fakes.cards import card_uuid
from tests.fakes.nvml_state import MIB, STATE_ENV, FakeGpuState

REPO = Path(__file__).resolve().parents[3]
SHIM = REPO / "tests" / "fakes" / "pynvml_shim"
NODE = "gpu-node"
GIB_MIB = 1024


def load_shim() -> ModuleType:
    # Under another name, so the real pynvml that other tests import stays in sys.modules.
    spec = importlib.util.spec_from_file_location("pynvml_shim_under_test", SHIM / "pynvml.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGpuState:
    path = tmp_path / "gpus.json"
    monkeypatch.setenv(STATE_ENV, str(path))
    written = FakeGpuState(path)
    written.set_cards(NODE, 2, 16 * GIB_MIB, base_used_mib=512, name="NVIDIA L4")
    written.set_process(300, 1, 3 * GIB_MIB)
    written.set_process(200, 1, GIB_MIB)
    return written


def reading(gpu: int, used_mib: int, processes: tuple[GpuProcess, ...]) -> GpuReading:
    total = 16 * GIB_MIB * MIB
    return GpuReading(
        gpu,
        card_uuid(NODE, gpu),
        "NVIDIA L4",
        total,
        used_mib * MIB,
        total - used_mib * MIB,
        processes,
    )


def parameters(function: Callable[..., object]) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_shim_has_pynvmls_names_and_signatures() -> None:
    shim = load_shim()
    for name in fake_nvml.FUNCTIONS:
        assert parameters(getattr(shim, name)) == parameters(getattr(pynvml, name)), name
    for name in ("NVMLError", "NVMLError_NotSupported", "NVMLError_DriverNotLoaded"):
        assert getattr(shim, name).__name__ == getattr(pynvml, name).__name__
    assert shim.NVML_ERROR_DRIVER_NOT_LOADED == pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    assert not issubclass(shim.NVMLLibraryMismatchError, shim.NVMLError)


def agent_nvml() -> Nvml:
    """ops.nvml as the agent holds it, over one module, as `import pynvml` gives one."""
    shim = cast(NvmlLibrary, load_shim())
    return Nvml(lambda: shim)


def test_the_agent_reads_the_state_files_cards_and_processes(state: FakeGpuState) -> None:
    nvml = agent_nvml()
    first = nvml.read()
    assert first.problems == ()
    assert first.gpus == (
        reading(0, 512, ()),
        reading(
            1,
            512 + 4 * GIB_MIB,
            (GpuProcess(200, GIB_MIB * MIB), GpuProcess(300, 3 * GIB_MIB * MIB)),
        ),
    )
    # The state changes while the agent runs: the next scan sees it.
    state.remove_process(300)
    state.set_process(400, 0, 100)
    second = nvml.read()
    assert [g.used_bytes // MIB for g in second.gpus] == [612, 512 + GIB_MIB]
    assert [[p.pid for p in g.processes] for g in second.gpus] == [[400], [200]]
    nvml.close()


def test_no_state_file_is_a_driver_that_is_not_loaded(
    state: FakeGpuState, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = agent_nvml()
    assert nvml.read().available
    saved = state.path.read_text()
    state.path.unlink()
    lost = nvml.read()
    assert (lost.available, lost.problems) == (
        False,
        (NvmlProblem("count", None, "NVMLError_DriverNotLoaded: Driver Not Loaded"),),
    )
    again = nvml.read()  # initialised anew, and refused at init now
    assert again.problems == (
        NvmlProblem("init", None, "NVMLError_DriverNotLoaded: Driver Not Loaded"),
    )
    state.path.write_text(saved)
    assert len(nvml.read().gpus) == 2
    monkeypatch.delenv(STATE_ENV)
    unset = agent_nvml().read()
    assert [p.error for p in unset.problems] == ["NVMLError_DriverNotLoaded: Driver Not Loaded"]


READ = """
import json, pynvml
from ops.nvml import Nvml
reading = Nvml().read()
print(json.dumps({
    "module": pynvml.__file__,
    "gpus": [[g.uuid, g.used_bytes, [p.pid for p in g.processes]] for g in reading.gpus],
    "problems": [str(p) for p in reading.problems],
}))
"""


def test_a_real_process_imports_the_shim_as_pynvml(state: FakeGpuState) -> None:
    env = {**os.environ, "PYTHONPATH": f"{SHIM}{os.pathsep}{REPO}", STATE_ENV: str(state.path)}
    done = subprocess.run(
        [sys.executable, "-c", READ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    found = json.loads(done.stdout)
    assert Path(found["module"]) == SHIM / "pynvml.py"
    assert found["problems"] == []
    assert found["gpus"] == [
        [card_uuid(NODE, 0), 512 * MIB, []],
        [card_uuid(NODE, 1), (512 + 4 * GIB_MIB) * MIB, [200, 300]],
    ]
