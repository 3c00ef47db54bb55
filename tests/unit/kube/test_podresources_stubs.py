"""kube/podresources_pb/ is what its vendored api.proto generates, byte for byte: a proto edited
without regenerating, or a generated file edited by hand, fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.kube.podresources_stubs import GENERATED, PACKAGE, REPO, ToolMissing, generate


def test_generated_modules_match_the_vendored_proto(tmp_path: Path) -> None:
    try:
        written = generate(tmp_path)
    except ToolMissing as err:
        pytest.skip(f"{err}: pip install -e '.[dev]' installs the generators")
    assert sorted(p.name for p in written) == sorted(GENERATED)
    for path in written:
        committed = REPO / PACKAGE / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.relative_to(REPO)} is not what api.proto generates: run "
            ".venv/bin/python -m tests.unit.kube.podresources_stubs"
        )


def test_the_vendored_proto_is_the_kubelets_v1_service() -> None:
    # The wire names a kubelet answers to: package v1, service PodResourcesLister.
    from kube.podresources_pb import api_pb2  # noqa: PLC0415

    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert api_pb2.DESCRIPTOR.package == "v1"
    assert sorted(m.name for m in service.methods) == ["Get", "GetAllocatableResources", "List"]
    devices = api_pb2.ContainerDevices.DESCRIPTOR.fields_by_name
    assert (devices["resource_name"].number, devices["device_ids"].number) == (1, 2)
