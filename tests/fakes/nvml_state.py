"""What a fake node's GPUs hold, in a JSON file that two processes share: the end-to-end harness
writes it (FakeGpuState), and the pynvml shim inside a real node-agent process reads it at every
scan (StateFileNvml), so a test changes what NVML reports while the agent runs.

The file (path in $VRAMGUARD_FAKE_NVML_STATE for the shim):

    {"cards": [{"index": 0, "uuid": "GPU-…", "name": "Tesla T4",
                "total_mib": 15360, "base_used_mib": 300}],
     "processes": [{"pid": 4242, "card": 0, "used_mib": 2000}]}

`base_used_mib` is what no listed process holds (the driver's own reservation, processes
outside the node's pods); a card's used memory is its base plus its processes', and free is
what the total leaves, as NVML reports them (in bytes). The writer replaces the file in one
rename, so the reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from tests.fakes.cards import card_uuid
from tests.fakes.nvml import NVML_ERROR_DRIVER_NOT_LOADED, FakeGpu, FakeNvml, NVMLError

STATE_ENV = "VRAMGUARD_FAKE_NVML_STATE"
MIB = 1 << 20
T = TypeVar("T", "Card", "Process")


@dataclass(frozen=True)
class Card:
    index: int
    uuid: str
    name: str
    total_mib: int
    base_used_mib: int = 0


@dataclass(frozen=True)
class Process:
    """A process holding `used_mib` on card `card` (its index)."""

    pid: int
    card: int
    used_mib: int


@dataclass(frozen=True)
class GpuState:
    cards: tuple[Card, ...] = ()
    processes: tuple[Process, ...] = ()

    def used_mib(self, card: int) -> int:
        base = next(c.base_used_mib for c in self.cards if c.index == card)
        return base + sum(p.used_mib for p in self.processes if p.card == card)


class StateUnreadable(Exception):
    """The state file is missing, unreadable, or not the shape above."""


def read_state(path: Path) -> GpuState:
    try:
        raw = json.loads(path.read_text())
        cards = tuple(sorted((_parsed(c, Card) for c in raw["cards"]), key=lambda c: c.index))
        processes = tuple(_parsed(p, Process) for p in raw.get("processes", []))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StateUnreadable(f"{path}: {err}") from err
    # NVML numbers its cards 0..n-1; a gap would make index and position disagree.
    if [c.index for c in cards] != list(range(len(cards))):
        raise StateUnreadable(f"{path}: card indexes are not 0..{len(cards) - 1}")
    if any(not 0 <= p.card < len(cards) for p in processes):
        raise StateUnreadable(f"{path}: a process is on a card that is not listed")
    return GpuState(cards, processes)


_TYPES: dict[str, type] = {"int": int, "str": str}


def _parsed(item: Any, kind: type[T]) -> T:
    """One card or process. The constructor refuses unknown and missing keys (TypeError), so a
    misspelt field is an error rather than a silently different card; values are checked
    against the fields' types, since JSON would carry "16384" as happily as 16384."""
    if not isinstance(item, dict):
        raise TypeError(f"{kind.__name__.lower()} is not an object: {item!r}")
    parsed = kind(**item)
    for f in fields(parsed):
        value = getattr(parsed, f.name)
        expected = _TYPES[str(f.type)]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise TypeError(f"{kind.__name__.lower()} {f.name} is not {f.type}: {value!r}")
    return parsed


def fake_gpus(state: GpuState) -> list[FakeGpu]:
    """The state as tests/fakes/nvml.py's GPUs, in bytes. A card's used memory is capped at
    its total: a real card cannot hand out more than it has (the allocation fails instead)."""
    gpus = []
    for card in state.cards:
        total = card.total_mib * MIB
        processes = [(p.pid, p.used_mib * MIB) for p in state.processes if p.card == card.index]
        gpus.append(
            FakeGpu(
                uuid=card.uuid,
                name=card.name,
                total=total,
                used=min(total, state.used_mib(card.index) * MIB),
                compute=list(processes),
            )
        )
    return gpus


class FakeGpuState:
    """The harness's writer: each change rewrites the whole file at `path`, atomically. It
    starts from what the file already says, so a second writer (the device plugin seeding the
    cards, the harness adding processes) keeps what the first wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._state = read_state(path)
        except StateUnreadable:
            if path.exists():
                raise
            self._state = GpuState()

    @property
    def state(self) -> GpuState:
        return self._state

    def set_cards(
        self,
        node: str,
        count: int,
        total_mib: int,
        base_used_mib: int = 0,
        name: str = "Tesla T4",
    ) -> None:
        """`count` cards of `total_mib` each, with the UUIDs every fake gives `node`'s cards
        (tests.fakes.cards.card_uuid). Processes on cards that remain are kept."""
        cards = tuple(
            Card(i, card_uuid(node, i), name, total_mib, base_used_mib) for i in range(count)
        )
        kept = tuple(p for p in self._state.processes if p.card < count)
        self._write(GpuState(cards, kept))

    def set_base_used(self, card: int, mib: int) -> None:
        """What no listed process holds on `card` (outside processes, the driver)."""
        self._card(card)
        cards = tuple(
            replace(c, base_used_mib=mib) if c.index == card else c for c in self._state.cards
        )
        self._write(replace(self._state, cards=cards))

    def set_process(self, pid: int, card: int, mib: int) -> None:
        """Process `pid` holds `mib` on `card` (replacing what it held before, anywhere)."""
        self._card(card)
        others = tuple(p for p in self._state.processes if p.pid != pid)
        self._write(replace(self._state, processes=(*others, Process(pid, card, mib))))

    def remove_process(self, pid: int) -> None:
        kept = tuple(p for p in self._state.processes if p.pid != pid)
        self._write(replace(self._state, processes=kept))

    def clear_processes(self) -> None:
        self._write(replace(self._state, processes=()))

    def _card(self, index: int) -> Card:
        for card in self._state.cards:
            if card.index == index:
                return card
        raise ValueError(f"no card {index} in {self.path} (set_cards first)")

    def _write(self, state: GpuState) -> None:
        document = {
            "cards": [asdict(c) for c in state.cards],
            "processes": [asdict(p) for p in state.processes],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target, then renamed over it: a reader opens either the old
        # file or the new one, never a half-written one.
        fd, scratch = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(document, out, indent=2, sort_keys=True)
                out.write("\n")
            os.replace(scratch, self.path)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise
        self._state = state


def state_path_from_environment() -> Path | None:
    value = os.environ.get(STATE_ENV)
    return Path(value) if value else None


class StateFileNvml(FakeNvml):
    """tests/fakes/nvml.py's FakeNvml over the state file, read again at nvmlInit and at every
    nvmlDeviceGetCount (the node agent counts the cards at the start of each scan). No file,
    or one that cannot be read, is NVML_ERROR_DRIVER_NOT_LOADED, which the agent reports as
    its NVML problem, as it would on a node whose driver is not loaded."""

    def __init__(self, path: Callable[[], Path | None] = state_path_from_environment) -> None:
        super().__init__()
        self._path = path

    def nvmlInit(self) -> None:
        self._reload()
        super().nvmlInit()

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        # The fake records every call for the unit tests; a long-lived agent scans for
        # hours, so the record is kept to the current scan.
        self.calls.clear()
        self._reload()
        return super().nvmlDeviceGetCount()

    def _reload(self) -> None:
        path = self._path()
        if path is None:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        try:
            self.gpus = fake_gpus(read_state(path))
        except StateUnreadable as err:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED) from err
