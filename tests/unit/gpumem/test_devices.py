"""gpumem.devices: which GPU a PodResources device ID names."""

from __future__ import annotations

import pytest

from gpumem.devices import DeviceRef, device_ref

UUID = "GPU-8f3c2a9b-1d4e-5f6a-7b8c-9d0e1f2a3b4c"

CASES = [
    ("a whole GPU by UUID", UUID, "nvidia.com/gpu", DeviceRef("uuid", UUID)),
    ("a time-sliced replica", f"{UUID}::3", "nvidia.com/gpu", DeviceRef("uuid", UUID)),
    ("a renamed shared resource", f"{UUID}::0", "nvidia.com/gpu.shared", DeviceRef("uuid", UUID)),
    ("a UUID under another plugin's name", UUID, "example.com/gpu", DeviceRef("uuid", UUID)),
    ("an index (--device-id-strategy=index)", "1", "nvidia.com/gpu", DeviceRef("index", "1")),
    ("an index replica", "01::2", "nvidia.com/gpu", DeviceRef("index", "1")),
    (
        "a MIG instance",
        "MIG-4f1e2d3c-aaaa-bbbb-cccc-0123456789ab",
        "nvidia.com/mig-1g.10gb",
        DeviceRef("mig", "MIG-4f1e2d3c-aaaa-bbbb-cccc-0123456789ab"),
    ),
    (
        "an old-style MIG ID",
        f"MIG-{UUID}/1/0",
        "nvidia.com/gpu",
        DeviceRef("mig", f"MIG-{UUID}/1/0"),
    ),
    ("a MIG replica", "MIG-abc::1", "nvidia.com/mig-1g.5gb", DeviceRef("mig", "MIG-abc")),
    ("a MIG resource with an index ID", "0", "nvidia.com/mig-2g.20gb", DeviceRef("mig", "0")),
    ("another plugin's number", "1", "example.com/nic", DeviceRef("other", "1")),
    ("an SR-IOV function", "0000:3b:02.1", "intel.com/sriov", DeviceRef("other", "0000:3b:02.1")),
    ("a malformed UUID", "GPU-xyz", "nvidia.com/gpu", DeviceRef("other", "GPU-xyz")),
]


@pytest.mark.parametrize(
    ("device_id", "resource", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_device_ref(device_id: str, resource: str, expected: DeviceRef) -> None:
    assert device_ref(device_id, resource) == expected
