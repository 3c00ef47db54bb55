"""The fake NVIDIA device plugin: its devices and allocation policy (table-driven), then the
plugin in-process and as the command the harness runs, against a fake kubelet that serves the
real v1beta1 Registration service on a unix socket; the test plays the kubelet's device manager
on the plugin's own socket, as a kubelet would once the registration names it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from tests.fakes.cards import card_uuid
from tests.fakes.device_plugin import (
    SOCKET_NAME,
    AllocationError,
    FakeDevicePlugin,
    card_of,
    device_ids,
    preferred_allocation,
    visible_devices,
)
from tests.fakes.deviceplugin_pb import api_pb2, api_pb2_grpc
from tests.fakes.nvml_state import STATE_ENV, read_state

REPO = Path(__file__).resolve().parents[3]
NODE = "gpu-node"
G0, G1, G2 = (card_uuid(NODE, i) for i in range(3))


def ids(card: str, *replicas: int) -> list[str]:
    return [f"{card}::{r}" for r in replicas]


# --- devices and policy -------------------------------------------------------------------


def test_each_card_is_advertised_once_per_replica_with_its_uuid() -> None:
    assert device_ids([G0, G1], 2) == (f"{G0}::0", f"{G0}::1", f"{G1}::0", f"{G1}::1")
    assert device_ids([G0, G1], 1) == (G0, G1)  # no time-slicing: the bare UUIDs
    assert card_of(f"{G1}::3") == G1
    assert card_of(G1) == G1
    with pytest.raises(ValueError, match="replicas"):
        device_ids([G0], 0)


@pytest.mark.parametrize(
    ("requested", "visible"),
    [
        (ids(G0, 3), G0),
        (ids(G0, 1, 3), G0),  # two replicas of one card: the card once
        ([*ids(G1, 0), *ids(G0, 2), *ids(G1, 1)], f"{G1},{G0}"),  # the request's order
        ([G0, G1], f"{G0},{G1}"),
    ],
)
def test_visible_devices_are_the_cards_once_each(requested: list[str], visible: str) -> None:
    assert visible_devices(requested) == visible


TWO_BY_FOUR = device_ids([G0, G1], 4)
THREE_BY_TWO = device_ids([G0, G1, G2], 2)


@pytest.mark.parametrize(
    ("devices", "available", "required", "size", "expected"),
    [
        # Two replicas of card 0 are taken (absent from available): the next goes to card 1.
        (TWO_BY_FOUR, [*ids(G0, 2, 3), *ids(G1, 0, 1, 2, 3)], [], 1, ids(G1, 0)),
        # Nothing taken: spread evenly, lowest card first on a tie.
        (TWO_BY_FOUR, TWO_BY_FOUR, [], 4, [*ids(G0, 0), *ids(G1, 0), *ids(G0, 1), *ids(G1, 1)]),
        # A must-include replica comes first and counts as taken on its card.
        (TWO_BY_FOUR, TWO_BY_FOUR, ids(G0, 2), 2, [*ids(G0, 2), *ids(G1, 0)]),
        # Card 1 full: the least taken of the others.
        (THREE_BY_TWO, [*ids(G0, 1), *ids(G2, 0, 1)], [], 2, [*ids(G2, 0), *ids(G0, 1)]),
        # IDs the plugin does not have are not candidates.
        (TWO_BY_FOUR, ["GPU-other::0", *ids(G1, 3)], [], 1, ids(G1, 3)),
        # Without replicas: the lowest free cards.
        (device_ids([G0, G1, G2], 1), [G2, G1], [], 1, [G1]),
    ],
)
def test_preferred_allocation_is_nvidias_distributed_policy(
    devices: Sequence[str],
    available: list[str],
    required: list[str],
    size: int,
    expected: list[str],
) -> None:
    assert preferred_allocation(devices, available, required, size) == expected


def test_a_preferred_allocation_larger_than_what_is_available_is_refused() -> None:
    with pytest.raises(AllocationError, match="not enough available devices"):
        preferred_allocation(TWO_BY_FOUR, ids(G0, 0), [], 2)


# --- a fake kubelet -----------------------------------------------------------------------


class FakeRegistration(api_pb2_grpc.RegistrationServicer):
    """The kubelet's Registration service: records each request."""

    def __init__(self) -> None:
        self.requests: list[api_pb2.RegisterRequest] = []
        self._changed = threading.Condition()

    def Register(
        self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> api_pb2.Empty:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
        return api_pb2.Empty()

    def wait(self, count: int = 1, timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= count, timeout)


@contextmanager
def kubelet(plugin_dir: Path) -> Iterator[FakeRegistration]:
    """A kubelet's kubelet.sock in `plugin_dir` until the block ends (the socket removed)."""
    registration = FakeRegistration()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_RegistrationServicer_to_server(registration, server)
    socket = plugin_dir / "kubelet.sock"
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        yield registration
    finally:
        server.stop(grace=None).wait()
        socket.unlink(missing_ok=True)


@contextmanager
def device_plugin_client(plugin_dir: Path) -> Iterator[api_pb2_grpc.DevicePluginStub]:
    with grpc.insecure_channel(f"unix://{plugin_dir / SOCKET_NAME}") as channel:
        yield api_pb2_grpc.DevicePluginStub(channel)


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # Short on purpose: a unix socket's path holds 107 bytes, and tmp_path can be longer.
    folder = Path(tempfile.mkdtemp(prefix="vg-dp-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def plugin(plugin_dir: Path, gpus: int = 2, replicas: int = 4) -> FakeDevicePlugin:
    return FakeDevicePlugin(
        NODE,
        gpus,
        replicas,
        plugin_dir=plugin_dir,
        poll_interval=0.02,
        retry_delays=(0.02, 0.1),
        register_timeout=1.0,
    )


# --- in-process ---------------------------------------------------------------------------


def test_it_registers_with_the_kubelet_as_nvidias_plugin_does(plugin_dir: Path) -> None:
    with kubelet(plugin_dir) as registration, plugin(plugin_dir):
        assert registration.wait()
        (request,) = registration.requests
        assert (request.version, request.endpoint, request.resource_name) == (
            "v1beta1",
            SOCKET_NAME,
            "nvidia.com/gpu",
        )
        assert request.options.get_preferred_allocation_available
        assert not request.options.pre_start_required
        assert (plugin_dir / request.endpoint).is_socket()


def test_list_and_watch_sends_every_replica_healthy(plugin_dir: Path) -> None:
    with kubelet(plugin_dir) as registration, plugin(plugin_dir, gpus=2, replicas=4) as fake:
        assert registration.wait()
        with device_plugin_client(plugin_dir) as client:
            options = client.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
            assert options.get_preferred_allocation_available
            stream = client.ListAndWatch(api_pb2.Empty(), timeout=5)
            first = next(stream)
            stream.cancel()
    assert [d.ID for d in first.devices] == [*ids(G0, 0, 1, 2, 3), *ids(G1, 0, 1, 2, 3)]
    assert {d.health for d in first.devices} == {"Healthy"}
    assert fake.uuids == (G0, G1)


def test_preferred_allocation_and_allocate_over_grpc(plugin_dir: Path) -> None:
    with kubelet(plugin_dir) as registration, plugin(plugin_dir, gpus=2, replicas=4):
        assert registration.wait()
        with device_plugin_client(plugin_dir) as client:
            taken = set(ids(G0, 0, 1))
            preferred = client.GetPreferredAllocation(
                api_pb2.PreferredAllocationRequest(
                    container_requests=[
                        api_pb2.ContainerPreferredAllocationRequest(
                            available_deviceIDs=[d for d in TWO_BY_FOUR if d not in taken],
                            allocation_size=1,
                        )
                    ]
                ),
                timeout=5,
            )
            allocated = client.Allocate(
                api_pb2.AllocateRequest(
                    container_requests=[
                        api_pb2.ContainerAllocateRequest(devices_ids=ids(G1, 0)),
                        api_pb2.ContainerAllocateRequest(devices_ids=[*ids(G0, 3), *ids(G0, 2)]),
                    ]
                ),
                timeout=5,
            )
            started = client.PreStartContainer(
                api_pb2.PreStartContainerRequest(devices_ids=ids(G1, 0)), timeout=5
            )
    assert [list(r.deviceIDs) for r in preferred.container_responses] == [ids(G1, 0)]
    first, second = allocated.container_responses
    assert dict(first.envs) == {"NVIDIA_VISIBLE_DEVICES": G1}
    assert dict(second.envs) == {"NVIDIA_VISIBLE_DEVICES": G0}
    assert (list(first.mounts), list(first.devices), dict(first.annotations)) == ([], [], {})
    assert started == api_pb2.PreStartContainerResponse()


def test_allocating_an_unknown_device_fails_as_nvidias_does(plugin_dir: Path) -> None:
    with kubelet(plugin_dir) as registration, plugin(plugin_dir):
        assert registration.wait()
        with device_plugin_client(plugin_dir) as client, pytest.raises(grpc.RpcError) as raised:
            client.Allocate(
                api_pb2.AllocateRequest(
                    container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["GPU-x::0"])]
                ),
                timeout=5,
            )
    error: grpc.Call = raised.value  # type: ignore[assignment]
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert error.details() == (
        "invalid allocation request for 'nvidia.com/gpu': unknown device: GPU-x::0"
    )


def test_registration_is_retried_until_the_kubelet_is_up(plugin_dir: Path) -> None:
    with plugin(plugin_dir) as fake:
        assert not fake.wait_registered(timeout=0.1)  # no kubelet.sock: nothing to call
        with kubelet(plugin_dir) as registration:
            assert registration.wait()
            assert fake.wait_registered()


def test_it_serves_and_registers_again_when_the_kubelet_restarts(plugin_dir: Path) -> None:
    with plugin(plugin_dir) as fake:
        with kubelet(plugin_dir) as first:
            assert fake.wait_registered()  # answered, not only received
        # A kubelet that starts empties the plugin folder, then opens its socket again.
        for leftover in plugin_dir.iterdir():
            leftover.unlink()
        with kubelet(plugin_dir) as second:
            assert second.wait()
            assert fake.wait_registered(2)
            with device_plugin_client(plugin_dir) as client:
                options = client.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
        assert options.get_preferred_allocation_available
        assert len(first.requests) == 1


def test_a_new_kubelet_socket_alone_means_registering_again(plugin_dir: Path) -> None:
    with plugin(plugin_dir) as fake:
        with kubelet(plugin_dir) as first:
            assert fake.wait_registered()
        with kubelet(plugin_dir) as second:  # the plugin's own socket left in place
            assert fake.wait_registered(2)
        assert (len(first.requests), len(second.requests)) == (1, 1)


def test_stopping_ends_the_stream_and_removes_the_socket(plugin_dir: Path) -> None:
    with kubelet(plugin_dir) as registration:
        fake = plugin(plugin_dir)
        fake.start()
        try:
            assert registration.wait()
            with device_plugin_client(plugin_dir) as client:
                stream = client.ListAndWatch(api_pb2.Empty(), timeout=5)
                next(stream)
                fake.stop()
                with pytest.raises((StopIteration, grpc.RpcError)) as ended:
                    next(stream)
        finally:
            fake.stop()
    if isinstance(ended.value, grpc.Call):  # ended by the server, not by the deadline
        assert ended.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED
    assert not (plugin_dir / SOCKET_NAME).exists()


# --- the command the harness runs ---------------------------------------------------------


@contextmanager
def command(args: Sequence[str], **env: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.device_plugin", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)


def test_the_command_registers_and_stops_cleanly_on_sigterm(plugin_dir: Path) -> None:
    state = plugin_dir / "gpus.json"
    args = ["--node", NODE, "--gpus", "2", "--replicas", "3", "--plugin-dir", str(plugin_dir)]
    with (
        kubelet(plugin_dir) as registration,
        command([*args, "--memory-mib", "15360"], **{STATE_ENV: str(state)}) as process,
    ):
        assert registration.wait(timeout=10)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert registration.requests[0].resource_name == "nvidia.com/gpu"
    assert "2 GPUs x 3 replicas = 6 nvidia.com/gpu devices" in stderr
    assert "registered nvidia.com/gpu with the kubelet" in stderr
    assert "received SIGTERM: stopping" in stderr
    assert not (plugin_dir / SOCKET_NAME).exists()
    cards = read_state(state).cards  # the fake NVML describes the same cards
    assert [(c.uuid, c.total_mib) for c in cards] == [(G0, 15360), (G1, 15360)]
    assert json.loads(state.read_text())["processes"] == []


def test_memory_without_a_state_file_is_a_usage_error(plugin_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}
    args = ["--node", NODE, "--gpus", "1", "--replicas", "2", "--memory-mib", "1024"]
    done = subprocess.run(
        [sys.executable, "-m", "tests.fakes.device_plugin", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 2
    assert "set VRAMGUARD_FAKE_NVML_STATE" in done.stderr
