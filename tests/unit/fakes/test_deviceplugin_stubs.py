"""tests/fakes/deviceplugin_pb/ is what its vendored api.proto generates, byte for byte: a proto
edited without regenerating, or a generated file edited by hand, fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.deviceplugin_stubs import GENERATED, PACKAGE, REPO, ToolMissing, generate


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
            ".venv/bin/python -m tests.fakes.deviceplugin_stubs"
        )


def test_the_vendored_proto_is_the_kubelets_v1beta1_api() -> None:
    # The wire names a kubelet calls and answers to: package v1beta1, its two services.
    from tests.fakes.deviceplugin_pb import api_pb2  # noqa: PLC0415

    services = api_pb2.DESCRIPTOR.services_by_name
    assert api_pb2.DESCRIPTOR.package == "v1beta1"
    assert [m.name for m in services["Registration"].methods] == ["Register"]
    assert [m.name for m in services["DevicePlugin"].methods] == [
        "GetDevicePluginOptions",
        "ListAndWatch",
        "GetPreferredAllocation",
        "Allocate",
        "PreStartContainer",
    ]
    register = api_pb2.RegisterRequest.DESCRIPTOR.fields_by_name
    assert [register[f].number for f in ("version", "endpoint", "resource_name", "options")] == [
        1,
        2,
        3,
        4,
    ]
    options = api_pb2.DevicePluginOptions.DESCRIPTOR.fields_by_name
    assert options["get_preferred_allocation_available"].number == 2
    preferred = api_pb2.ContainerPreferredAllocationRequest.DESCRIPTOR.fields_by_name
    assert [preferred[f].number for f in ("available_deviceIDs", "must_include_deviceIDs")] == [
        1,
        2,
    ]
