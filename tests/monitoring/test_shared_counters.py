"""Counters that worker processes add to and any of them reads summed: real processes on one directory."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from gateway.monitoring.shared_counters import CHUNK_BYTES, SUFFIX, SharedCounters

MAXIMA = {"version": frozenset({1})}


def _add_in_a_process(directory: Path, adds: int, latest: int, done, release) -> None:
    counters = SharedCounters(directory, MAXIMA)
    slots, first = counters.group(("version", "mnist", "1"), 3)
    for _ in range(adds):
        slots[first] += 1
        slots[first + 2] += 10
    slots[first + 1] = latest
    batch, start = counters.group(("batch", "mnist", "1", 4), 1)
    batch[start] += adds
    done.set()
    release.wait(30)


def _start(directory: Path, adds: int, latest: int):
    context = multiprocessing.get_context("spawn")
    done, release = context.Event(), context.Event()
    process = context.Process(target=_add_in_a_process, args=(directory, adds, latest, done, release))
    process.start()
    assert done.wait(60), "the worker process did not add its counts"
    return process, release


def test_every_process_adds_to_its_own_chunks_and_a_read_sums_them(tmp_path: Path) -> None:
    first, release_first = _start(tmp_path, 300, latest=5)
    second, release_second = _start(tmp_path, 200, latest=9)
    try:
        mine = SharedCounters(tmp_path, MAXIMA)
        slots, start = mine.group(("version", "mnist", "1"), 3)
        slots[start] += 1
        combined = mine.read()
        assert combined[("version", "mnist", "1")] == [501, 9, 5000]  # sums, and the largest "latest"
        assert combined[("batch", "mnist", "1", 4)] == [500]
        assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 3, "one chunk file per process"
    finally:
        for process, release in ((first, release_first), (second, release_second)):
            release.set()
            process.join(30)


def test_zero_clears_this_process_and_processes_that_exited_but_not_live_ones(tmp_path: Path) -> None:
    gone, release_gone = _start(tmp_path, 7, latest=3)
    release_gone.set()
    gone.join(30)
    live, release_live = _start(tmp_path, 5, latest=4)
    try:
        mine = SharedCounters(tmp_path, MAXIMA)
        slots, start = mine.group(("version", "mnist", "1"), 3)
        slots[start] += 100
        other = mine.group(("version", "mnist", "2"), 3)
        other[0][other[1]] += 1
        assert mine.read()[("version", "mnist", "1")][0] == 112
        mine.zero(("version", "mnist", "1"))
        combined = mine.read()
        assert combined[("version", "mnist", "1")] == [5, 4, 50], "only the live worker's counts are left"
        assert combined[("version", "mnist", "2")][0] == 1, "another version is untouched"
        assert combined[("batch", "mnist", "1", 4)] == [12], "only the prefix given is cleared"
    finally:
        release_live.set()
        live.join(30)


def test_a_full_chunk_opens_another_and_reads_see_both() -> None:
    counters = SharedCounters(None, MAXIMA)
    groups = CHUNK_BYTES // 64 + 10
    for size in range(groups):
        slots, first = counters.group(("batch", "m", "1", size), 1)
        slots[first] += size
    combined = counters.read()
    assert len(combined) == groups
    assert combined[("batch", "m", "1", groups - 1)] == [groups - 1]


def test_a_group_being_written_is_not_read(tmp_path: Path) -> None:
    counters = SharedCounters(tmp_path, MAXIMA)
    slots, first = counters.group(("version", "m", "1"), 3)
    slots[first] = 4
    # a reader that sees `used` cover a group whose header is not there yet (stores seen out of order)
    slots[0] += 64
    assert counters.read() == {("version", "m", "1"): [4, 0, 0]}


def test_a_group_too_large_for_a_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        SharedCounters(None, MAXIMA).group(("version", "m", "1"), CHUNK_BYTES // 8)


def test_a_chunk_file_that_is_still_empty_is_skipped(tmp_path: Path) -> None:
    (tmp_path / f"1-0{SUFFIX}").touch()  # created, not yet sized
    counters = SharedCounters(tmp_path, MAXIMA)
    assert counters.read() == {}


def test_two_stores_of_one_process_on_one_directory_keep_their_own_files(tmp_path: Path) -> None:
    first, second = SharedCounters(tmp_path, MAXIMA), SharedCounters(tmp_path, MAXIMA)
    for store, adds in ((first, 2), (second, 3)):
        slots, start = store.group(("version", "m", "1"), 3)
        slots[start] += adds
    assert first.read()[("version", "m", "1")][0] == 5
    assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 2
