"""kube.podresources against a fake kubelet speaking the real v1 proto on a unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gpumem.devices import ContainerDevices
from kube.podresources import PodResourcesClient, PodResourcesError
from tests.unit.kube.fake_kubelet import FakeKubelet, pod_resources, serving

UUID = "GPU-8f3c2a9b-1d4e-5f6a-7b8c-9d0e1f2a3b4c"


@pytest.fixture
def socket(tmp_path: Path) -> Path:
    return tmp_path / "kubelet.sock"


@pytest.fixture
def kubelet(socket: Path) -> Iterator[FakeKubelet]:
    with serving(socket) as fake:
        yield fake


@pytest.fixture
def client(socket: Path) -> Iterator[PodResourcesClient]:
    c = PodResourcesClient(socket, timeout=2.0)
    yield c
    c.close()


def test_list_gives_every_containers_devices(
    kubelet: FakeKubelet, client: PodResourcesClient
) -> None:
    kubelet.pods = [
        pod_resources("immich", "immich-ml", ("ml", "nvidia.com/gpu", [f"{UUID}::1"])),
        pod_resources("ai", "llama", ("server", "nvidia.com/gpu", [f"{UUID}::0", f"{UUID}::4"])),
        pod_resources("web", "nginx", ("nginx", "example.com/none", [])),  # no devices
    ]
    assert client.list() == (
        ContainerDevices("immich", "immich-ml", "ml", "nvidia.com/gpu", (f"{UUID}::1",)),
        ContainerDevices("ai", "llama", "server", "nvidia.com/gpu", (f"{UUID}::0", f"{UUID}::4")),
    )
    # One channel for many calls.
    assert client.list() == client.list()
    assert kubelet.calls == ["List", "List", "List"]


def test_get_and_allocatable(kubelet: FakeKubelet, client: PodResourcesClient) -> None:
    kubelet.pods = [pod_resources("ai", "llama", ("server", "nvidia.com/gpu", [UUID]))]
    kubelet.allocatable = {"nvidia.com/gpu": [f"{UUID}::0", f"{UUID}::1"]}
    assert client.get("ai", "llama") == (
        ContainerDevices("ai", "llama", "server", "nvidia.com/gpu", (UUID,)),
    )
    assert client.allocatable() == {"nvidia.com/gpu": (f"{UUID}::0", f"{UUID}::1")}
    with pytest.raises(PodResourcesError, match=r"^Get: NOT_FOUND: pod nope not found$"):
        client.get("ai", "nope")


def test_a_missing_socket_says_so(tmp_path: Path) -> None:
    client = PodResourcesClient(tmp_path / "absent.sock", timeout=1.0)
    with pytest.raises(PodResourcesError, match=r"no kubelet socket at .*absent\.sock"):
        client.list()


def test_a_slow_kubelet_hits_the_deadline(kubelet: FakeKubelet, socket: Path) -> None:
    kubelet.delay = 0.5
    client = PodResourcesClient(socket, timeout=0.1)
    try:
        with pytest.raises(PodResourcesError, match=r"^List: DEADLINE_EXCEEDED"):
            client.list()
    finally:
        client.close()


def test_an_error_status_is_one_line(kubelet: FakeKubelet, client: PodResourcesClient) -> None:
    kubelet.failure = (grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected by rate limit")
    with pytest.raises(
        PodResourcesError, match=r"^List: RESOURCE_EXHAUSTED: rejected by rate limit$"
    ):
        client.list()


def test_a_kubelet_restart_is_followed(socket: Path, client: PodResourcesClient) -> None:
    with serving(socket) as first:
        first.pods = [pod_resources("a", "p", ("c", "nvidia.com/gpu", [UUID]))]
        assert len(client.list()) == 1
    with pytest.raises(PodResourcesError):
        client.list()  # the socket is gone with the server
    with serving(socket) as second:
        second.pods = []
        assert client.list() == ()
