"""Generate kube/podresources_pb/ from its vendored api.proto, the one way both the repository
and its test do it:

    .venv/bin/python -m tests.unit.kube.podresources_stubs

protoc runs from the repository root on `kube/podresources_pb/api.proto`, so that the generated
gRPC module imports `kube.podresources_pb.api_pb2` (a bare `import api_pb2` would need the
folder on sys.path). grpcio-tools writes the message and gRPC modules, mypy-protobuf their
typed stubs (.pyi), which mypy strict reads instead of the untyped generated code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGE = Path("kube") / "podresources_pb"
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")


class ToolMissing(Exception):
    """grpcio-tools or mypy-protobuf is not installed."""


def generate(out_root: Path, package: Path = PACKAGE) -> list[Path]:
    """Write the modules generated from ``package``/api.proto (a folder relative to the
    repository root) under out_root/``package``/; their paths. The e2e fakes' device-plugin
    proto (tests.fakes.deviceplugin_stubs) is generated the same way."""
    proto = package / "api.proto"
    try:
        import grpc_tools  # noqa: F401, PLC0415
    except ImportError as err:
        raise ToolMissing("grpcio-tools is not installed") from err
    plugins = Path(sys.executable).parent
    mypy_plugin = plugins / "protoc-gen-mypy"
    mypy_grpc_plugin = plugins / "protoc-gen-mypy_grpc"
    if not (mypy_plugin.exists() and mypy_grpc_plugin.exists()):
        raise ToolMissing(f"mypy-protobuf's protoc plugins are not in {plugins}")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / package).mkdir(parents=True)
        shutil.copyfile(REPO / proto, work / proto)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--plugin=protoc-gen-mypy={mypy_plugin}",
                f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
                "-I.",
                "--python_out=.",
                "--grpc_python_out=.",
                "--mypy_out=quiet:.",
                "--mypy_grpc_out=quiet:.",
                str(proto),
            ],
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
        )
        written = []
        for name in GENERATED:
            target = out_root / package / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / package / name, target)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(REPO):
        print(path.relative_to(REPO))
