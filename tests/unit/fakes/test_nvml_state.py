"""The fake GPUs' state file: what the harness writes (FakeGpuState), what the fake NVML reads
back from it, and that a file which is not the expected shape is refused rather than guessed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.cards import card_uuid
from tests.fakes.nvml import FakeGpu
from tests.fakes.nvml_state import (
    MIB,
    Card,
    FakeGpuState,
    GpuState,
    Process,
    StateUnreadable,
    fake_gpus,
    read_state,
)


def test_card_uuids_are_fixed_per_node_and_index() -> None:
    # Tests name cards by these values across processes and runs: they must not change.
    assert card_uuid("node-a", 0) == "GPU-bb697ef2-705e-5b37-8072-0b0db4f4d088"
    assert card_uuid("node-a", 1) == "GPU-6cac23a6-c97c-54b2-a3e6-ec811ed04f6e"
    assert card_uuid("node-b", 0) != card_uuid("node-a", 0)


def test_the_writer_keeps_cards_and_processes_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    state = FakeGpuState(path)
    state.set_cards("node-a", 2, 15360, base_used_mib=300)
    state.set_process(41, 0, 1000)
    state.set_process(42, 1, 2000)
    state.set_process(41, 1, 500)  # moved: one entry per pid
    state.set_base_used(0, 100)
    assert read_state(path) == GpuState(
        (
            Card(0, card_uuid("node-a", 0), "Tesla T4", 15360, 100),
            Card(1, card_uuid("node-a", 1), "Tesla T4", 15360, 300),
        ),
        (Process(42, 1, 2000), Process(41, 1, 500)),
    )
    assert read_state(path).used_mib(1) == 2800
    state.remove_process(42)
    assert [p.pid for p in read_state(path).processes] == [41]
    state.clear_processes()
    assert read_state(path).processes == ()
    assert [p.name for p in tmp_path.iterdir()] == ["gpus.json"]  # no scratch file left


def test_a_second_writer_starts_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    FakeGpuState(path).set_cards("node-a", 3, 1024)
    later = FakeGpuState(path)
    later.set_process(7, 2, 10)
    later.set_cards("node-a", 2, 2048)  # card 2 gone, and its process with it
    assert read_state(path) == GpuState(
        tuple(Card(i, card_uuid("node-a", i), "Tesla T4", 2048) for i in range(2)), ()
    )


def test_a_process_on_a_card_that_is_not_there_is_refused(tmp_path: Path) -> None:
    state = FakeGpuState(tmp_path / "gpus.json")
    with pytest.raises(ValueError, match="no card 0"):
        state.set_process(1, 0, 10)
    state.set_cards("n", 1, 1024)
    with pytest.raises(ValueError, match="no card 1"):
        state.set_base_used(1, 10)


CARD = {"index": 0, "uuid": "GPU-a", "name": "T4", "total_mib": 1024, "base_used_mib": 0}


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("{", "Expecting"),
        ({"processes": []}, "cards"),
        ({"cards": [{**CARD, "total": 1}]}, "unexpected keyword"),
        ({"cards": [{**CARD, "total_mib": "1024"}]}, "total_mib is not int"),
        ({"cards": [{**CARD, "index": 1}]}, "card indexes are not 0..0"),
        ({"cards": [CARD], "processes": [{"pid": 1, "card": 1, "used_mib": 1}]}, "not listed"),
        ({"cards": ["GPU-a"]}, "not an object"),
    ],
)
def test_a_file_of_another_shape_is_unreadable(
    tmp_path: Path, document: object, error: str
) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(StateUnreadable, match=error):
        read_state(path)
    with pytest.raises(StateUnreadable):
        FakeGpuState(path)  # nor is it overwritten by a writer


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(StateUnreadable):
        read_state(tmp_path / "none.json")


def test_the_state_as_nvmls_bytes_used_is_base_plus_processes_capped_at_total() -> None:
    state = GpuState(
        (Card(0, "GPU-a", "T4", 1000, 100), Card(1, "GPU-b", "T4", 1000, 900)),
        (Process(5, 0, 200), Process(6, 1, 300)),
    )
    assert fake_gpus(state) == [
        FakeGpu("GPU-a", "T4", 1000 * MIB, 300 * MIB, compute=[(5, 200 * MIB)]),
        FakeGpu("GPU-b", "T4", 1000 * MIB, 1000 * MIB, compute=[(6, 300 * MIB)]),
    ]
