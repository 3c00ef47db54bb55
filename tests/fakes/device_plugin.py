"""A fake of NVIDIA's k8s-device-plugin with time-slicing, for a real kubelet on a node without
a GPU. It speaks the kubelet's real deviceplugin/v1beta1 API (tests/fakes/deviceplugin_pb) on a
unix socket, so the kubelet's device manager, its checkpoint and PodResources all run for real;
only the cards are made up. The end-to-end harness starts it as a process:

    python -m tests.fakes.device_plugin --node NODE --gpus N --replicas R \\
        [--resource nvidia.com/gpu] [--plugin-dir /var/lib/kubelet/device-plugins] \\
        [--memory-mib M]

What it copies from NVIDIA's plugin (internal/plugin/server.go, internal/rm/devices.go,
internal/rm/device_map.go, internal/rm/allocate.go, cmd/nvidia-device-plugin/main.go):

- N cards with UUIDs (tests.fakes.cards.card_uuid, the UUIDs every fake gives the node), each
  advertised R times as `<uuid>::<replica>`, replicas 0..R-1 (R = 1: the bare UUID, no
  time-slicing), all Healthy, in one ListAndWatch answer that stays open;
- GetDevicePluginOptions and the registration say GetPreferredAllocationAvailable;
- GetPreferredAllocation is the "distributed" policy, NVIDIA's default for replicas: the
  must-include IDs first, then one replica at a time from the card with the fewest replicas
  taken, "taken" being the card's replicas minus those in the request's available list
  (NVIDIA's plugin keeps no allocation state either: the kubelet's list is the state);
- Allocate sets NVIDIA_VISIBLE_DEVICES to the requested cards' UUIDs, the replica suffix
  stripped and repeated cards dropped, in the request's order; with NVIDIA's defaults
  (device-list-strategy envvar, device-id-strategy uuid, no CDI, no GDS/MOFED, no device
  specs) that is the whole response: no mounts, no devices, no annotations;
- PreStartContainer does nothing, and is not asked for;
- the kubelet empties the plugin folder when it starts: the plugin watches for kubelet.sock
  being created again (NVIDIA uses inotify; this polls) and for its own socket vanishing,
  then serves and registers again; a registration that fails (no kubelet yet) is retried
  after a short backoff.

Where it differs: ties in the distributed policy go to the lowest card index and replica
(NVIDIA sorts an unordered map, so a tie goes to any of the tied cards), and with R = 1 the
preferred allocation is the lowest card indexes (NVIDIA asks its topology allocator).

`--memory-mib M` says how much memory each card has: with $VRAMGUARD_FAKE_NVML_STATE set, the
plugin writes its cards there at start (tests.fakes.nvml_state.FakeGpuState.set_cards), so the
fake NVML a node agent reads describes the same cards the kubelet was given.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import grpc

from tests.fakes.cards import card_uuid
from tests.fakes.deviceplugin_pb import api_pb2, api_pb2_grpc
from tests.fakes.nvml_state import FakeGpuState, state_path_from_environment

API_VERSION = "v1beta1"  # deviceplugin/v1beta1 constants.go: Version
DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")  # ... DevicePluginPath
KUBELET_SOCKET = "kubelet.sock"  # ... KubeletSocket, in the plugin folder
SOCKET_NAME = "vramguard-fake-gpu.sock"
DEFAULT_RESOURCE = "nvidia.com/gpu"
HEALTHY = "Healthy"
REPLICA_SEPARATOR = "::"  # NVIDIA's AnnotatedID: <uuid>::<replica>
VISIBLE_DEVICES_ENV = "NVIDIA_VISIBLE_DEVICES"

log = logging.getLogger("tests.fakes.device_plugin")


# --- the devices and the allocation policy (pure) -----------------------------------------


def device_ids(uuids: Sequence[str], replicas: int) -> tuple[str, ...]:
    """Every advertised device: each card's replicas in order, or the bare UUIDs at 1."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    if replicas == 1:
        return tuple(uuids)
    return tuple(f"{u}{REPLICA_SEPARATOR}{r}" for u in uuids for r in range(replicas))


def card_of(device_id: str) -> str:
    """The card's UUID in a device ID (NVIDIA's AnnotatedID.GetID)."""
    return device_id.split(REPLICA_SEPARATOR, 1)[0]


def visible_devices(requested: Sequence[str]) -> str:
    """NVIDIA_VISIBLE_DEVICES for the requested IDs: their cards, each once, in order."""
    return ",".join(dict.fromkeys(card_of(i) for i in requested))


class AllocationError(Exception):
    """A preferred allocation larger than what is available."""


def preferred_allocation(
    devices: Sequence[str], available: Sequence[str], required: Sequence[str], size: int
) -> list[str]:
    """NVIDIA's distributedAlloc over `devices` (all the plugin advertises, in card order):
    `required` first, then `size - len(required)` of the other available devices, each from
    the card whose replicas are least taken at that point."""
    order = {d: i for i, d in enumerate(devices)}
    known = set(order)
    wanted = [d for d in dict.fromkeys(required) if d in known]
    others = known.difference(wanted)
    candidates = [d for d in dict.fromkeys(available) if d in others]
    needed = size - len(wanted)
    if len(candidates) < needed:
        raise AllocationError("not enough available devices to satisfy allocation")
    total = Counter(card_of(d) for d in devices)
    free = Counter(card_of(d) for d in candidates)
    chosen: list[str] = []
    for _ in range(needed):
        pick = min(candidates, key=lambda d: (total[card_of(d)] - free[card_of(d)], order[d]))
        candidates.remove(pick)
        free[card_of(pick)] -= 1
        chosen.append(pick)
    return wanted + chosen


# --- the gRPC service ---------------------------------------------------------------------


class DevicePluginService(api_pb2_grpc.DevicePluginServicer):
    """The DevicePlugin service of one serving of the socket; `close()` ends its streams."""

    def __init__(self, resource: str, devices: Sequence[str]) -> None:
        self.resource = resource
        self.devices = tuple(devices)
        self._lock = threading.Lock()
        self._closed = False
        self._streams: set[threading.Event] = set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for stream in self._streams:
                stream.set()

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return options()

    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        yield api_pb2.ListAndWatchResponse(
            devices=[api_pb2.Device(ID=d, health=HEALTHY) for d in self.devices]
        )
        log.info(
            "ListAndWatch: sent %d %s devices, all %s", len(self.devices), self.resource, HEALTHY
        )
        # The stream stays open, as NVIDIA's does until a device turns unhealthy; health
        # never changes here, so it lasts until the kubelet hangs up or the plugin stops.
        done = threading.Event()
        context.add_callback(done.set)
        with self._lock:
            if self._closed:
                return
            self._streams.add(done)
        try:
            done.wait()
        finally:
            with self._lock:
                self._streams.discard(done)

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        answers = []
        for n, container in enumerate(request.container_requests, 1):
            try:
                chosen = preferred_allocation(
                    self.devices,
                    container.available_deviceIDs,
                    container.must_include_deviceIDs,
                    container.allocation_size,
                )
            except AllocationError as err:
                # NVIDIA returns a plain Go error, which gRPC sends as UNKNOWN.
                context.abort(
                    grpc.StatusCode.UNKNOWN,
                    f"error getting list of preferred allocation devices: {err}",
                )
            log.info(
                "GetPreferredAllocation: container request %d: %d of %d available "
                "(must include %s) -> %s",
                n,
                container.allocation_size,
                len(container.available_deviceIDs),
                ",".join(container.must_include_deviceIDs) or "none",
                ",".join(chosen),
            )
            answers.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        return api_pb2.PreferredAllocationResponse(container_responses=answers)

    def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse:
        known = set(self.devices)
        answers = []
        for n, container in enumerate(request.container_requests, 1):
            unknown = [i for i in container.devices_ids if i not in known]
            if unknown:
                context.abort(
                    grpc.StatusCode.UNKNOWN,
                    f"invalid allocation request for '{self.resource}': "
                    f"unknown device: {unknown[0]}",
                )
            envs = {VISIBLE_DEVICES_ENV: visible_devices(container.devices_ids)}
            log.info(
                "Allocate: container request %d of %d: %s -> %s=%s",
                n,
                len(request.container_requests),
                ",".join(container.devices_ids),
                VISIBLE_DEVICES_ENV,
                envs[VISIBLE_DEVICES_ENV],
            )
            answers.append(api_pb2.ContainerAllocateResponse(envs=envs))
        return api_pb2.AllocateResponse(container_responses=answers)

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


def options() -> api_pb2.DevicePluginOptions:
    return api_pb2.DevicePluginOptions(
        pre_start_required=False, get_preferred_allocation_available=True
    )


# --- serving and registering --------------------------------------------------------------

# A file's identity: a socket removed and made again is another file, even where the inode
# number comes back (the change time differs).
FileIdentity = tuple[int, int, int]


def identity(path: Path) -> FileIdentity | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


@dataclass
class _Serving:
    server: grpc.Server
    service: DevicePluginService
    socket: FileIdentity | None


class FakeDevicePlugin:
    """The plugin in-process: `start()` serves and keeps registering in a thread, `stop()` ends
    it and removes the socket (also as a context manager). `registrations` counts the
    kubelet's successful answers, and `wait_registered(n)` waits for the n-th."""

    def __init__(
        self,
        node: str,
        gpus: int,
        replicas: int,
        *,
        resource: str = DEFAULT_RESOURCE,
        plugin_dir: Path = DEFAULT_PLUGIN_DIR,
        poll_interval: float = 0.5,
        retry_delays: tuple[float, float] = (0.5, 5.0),
        register_timeout: float = 5.0,
    ) -> None:
        if gpus < 1:
            raise ValueError(f"gpus must be at least 1, not {gpus}")
        self.node = node
        self.resource = resource
        self.uuids = tuple(card_uuid(node, i) for i in range(gpus))
        self.devices = device_ids(self.uuids, replicas)
        self.plugin_dir = plugin_dir.absolute()
        self.socket = self.plugin_dir / SOCKET_NAME
        self.kubelet_socket = self.plugin_dir / KUBELET_SOCKET
        # sun_path holds 107 bytes: a deep folder would fail later, with a vague error.
        if len(str(self.socket)) > 100:
            raise ValueError(f"socket path too long for a unix socket: {self.socket}")
        self.poll_interval = poll_interval
        self.first_delay, self.max_delay = retry_delays
        self.register_timeout = register_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving: _Serving | None = None
        self._registered = threading.Condition()
        self.registrations = 0

    # --- lifecycle ---

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        log.info(
            "%s: %d GPUs x %d replicas = %d %s devices",
            self.node,
            len(self.uuids),
            len(self.devices) // len(self.uuids),
            len(self.devices),
            self.resource,
        )
        self._thread = threading.Thread(target=self._run, name="fake-device-plugin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._halt()

    def __enter__(self) -> FakeDevicePlugin:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_registered(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Whether the kubelet has accepted `count` registrations within `timeout` seconds."""
        with self._registered:
            return self._registered.wait_for(lambda: self.registrations >= count, timeout)

    # --- the loop ---

    def _run(self) -> None:
        registered = False
        registered_with: FileIdentity | None = None  # the kubelet.sock it registered on
        delay = self.first_delay
        next_try = 0.0
        seen_kubelet = identity(self.kubelet_socket)
        while not self._stop.is_set():
            kubelet = identity(self.kubelet_socket)
            if kubelet != seen_kubelet:
                seen_kubelet = kubelet
                delay, next_try = self.first_delay, 0.0  # a new kubelet: try it at once
            try:
                if self._serving is None:
                    self._serve()
                elif self._serving.socket != identity(self.socket):
                    log.info("%s was removed: serving and registering again", self.socket)
                    self._restart()
                    registered = False
                elif registered and kubelet is not None and kubelet != registered_with:
                    # What NVIDIA's plugin watches for: a kubelet.sock created again is a
                    # kubelet that restarted and forgot its plugins.
                    log.info("%s was created again: serving and registering again", KUBELET_SOCKET)
                    self._restart()
                    registered = False
                if not registered and time.monotonic() >= next_try:
                    if self._register():
                        registered, registered_with = True, identity(self.kubelet_socket)
                        delay = self.first_delay
                    else:
                        log.info("registration: retrying in %g s", delay)
                        next_try = time.monotonic() + delay
                        delay = min(delay * 2, self.max_delay)
            except (OSError, RuntimeError) as err:
                # The folder unwritable, the socket not bound: the loop must outlive it.
                log.info("could not serve on %s: %s: retrying in %g s", self.socket, err, delay)
                self._halt()
                registered = False
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_delay)
            self._stop.wait(self.poll_interval)

    def _serve(self) -> None:
        # The kubelet makes the folder; made here too, so a plugin started first waits for
        # the kubelet instead of failing (the kubelet empties it when it starts).
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)  # a socket left by an earlier run
        service = DevicePluginService(self.resource, self.devices)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        api_pb2_grpc.add_DevicePluginServicer_to_server(service, server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._serving = _Serving(server, service, identity(self.socket))
        log.info("serving %s on %s", self.resource, self.socket)

    def _halt(self) -> None:
        serving, self._serving = self._serving, None
        if serving is None:
            return
        serving.service.close()  # ends the open ListAndWatch streams
        serving.server.stop(grace=None).wait()
        # Only the socket this serving made: after a wipe, the path may be nobody's.
        if serving.socket is not None and identity(self.socket) == serving.socket:
            self.socket.unlink(missing_ok=True)
            log.info("removed %s", self.socket)

    def _restart(self) -> None:
        self._halt()
        self._serve()

    def _register(self) -> bool:
        if not self.kubelet_socket.exists():
            log.info("registration: no %s yet (the kubelet is not up)", self.kubelet_socket)
            return False
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=SOCKET_NAME,  # the kubelet joins it to its plugin folder
            resource_name=self.resource,
            options=options(),
        )
        try:
            with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
                api_pb2_grpc.RegistrationStub(channel).Register(
                    request, timeout=self.register_timeout
                )
        except grpc.RpcError as err:
            log.info("registration failed: %s: %s", err.code().name, err.details())
            return False
        log.info(
            "registered %s with the kubelet at %s (endpoint %s)",
            self.resource,
            self.kubelet_socket,
            SOCKET_NAME,
        )
        with self._registered:
            self.registrations += 1
            self._registered.notify_all()
        return True


# --- the command --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.device_plugin",
        description="A fake NVIDIA device plugin (time-slicing) for a kubelet without GPUs.",
    )
    parser.add_argument("--node", required=True, help="the node's name: the cards' UUIDs")
    parser.add_argument("--gpus", type=int, required=True, help="physical cards")
    parser.add_argument("--replicas", type=int, required=True, help="time-slicing replicas")
    parser.add_argument("--resource", default=DEFAULT_RESOURCE)
    parser.add_argument("--plugin-dir", type=Path, default=DEFAULT_PLUGIN_DIR)
    parser.add_argument(
        "--memory-mib",
        type=int,
        help="each card's memory; written to $VRAMGUARD_FAKE_NVML_STATE (needed with it)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s fake-device-plugin %(message)s",
    )
    state = state_path_from_environment()
    if args.memory_mib is not None and state is None:
        parser.error("--memory-mib writes the fake NVML state: set VRAMGUARD_FAKE_NVML_STATE")
    try:
        plugin = FakeDevicePlugin(
            args.node,
            args.gpus,
            args.replicas,
            resource=args.resource,
            plugin_dir=args.plugin_dir,
        )
    except ValueError as err:
        parser.error(str(err))
    if args.memory_mib is not None and state is not None:
        FakeGpuState(state).set_cards(args.node, args.gpus, args.memory_mib)
        log.info("wrote %d cards of %d MiB to %s", args.gpus, args.memory_mib, state)

    stop = threading.Event()

    def on_signal(number: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(number).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with plugin:
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
