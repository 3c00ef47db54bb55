"""Generate tests/fakes/deviceplugin_pb/ from its vendored api.proto, the one way both the
repository and its test do it:

    .venv/bin/python -m tests.fakes.deviceplugin_stubs

The steps are tests/unit/kube/podresources_stubs.py's (protoc from the repository root, so the
generated gRPC module imports `tests.fakes.deviceplugin_pb.api_pb2`; mypy-protobuf's typed
stubs beside the modules), for this proto's package.
"""

from __future__ import annotations

from pathlib import Path

from tests.unit.kube import podresources_stubs
from tests.unit.kube.podresources_stubs import GENERATED, REPO, ToolMissing

PACKAGE = Path("tests") / "fakes" / "deviceplugin_pb"


def generate(out_root: Path) -> list[Path]:
    """Write the generated files under out_root/tests/fakes/deviceplugin_pb/; their paths."""
    return podresources_stubs.generate(out_root, PACKAGE)


__all__ = ["GENERATED", "PACKAGE", "REPO", "ToolMissing", "generate"]

if __name__ == "__main__":
    for path in generate(REPO):
        print(path.relative_to(REPO))
