"""Int64 counters that every worker process of one gateway adds to and any of them reads summed.

The statistics' store (``monitoring.statistics``). Each process writes only its own chunks, so adding
to a counter is one store into shared memory: no lock, no system call, no other process involved.
With a directory (server.workers > 1: the supervisor's multiprocess directory) a chunk is a file
``<pid>-<store>-<n>.counters`` mapped into memory; without one, anonymous memory. Reading maps every chunk
file of the directory read-only and combines the groups that have the same key: slots summed, or the
largest value for the slots a group kind names as maxima (a time of last use).

A chunk holds groups: a key (a kind and its names, such as ``("version", "mnist", "1")``) and a fixed
number of int64 slots. Layout: int64 bytes used; then per group int32 key length, int32 slot count,
the key as UTF-8 JSON padded to 8 bytes, the slots. A group is written whole before ``used`` covers
it; a reader stops at the first group that does not parse (one being written on a CPU that reorders
stores), and aligned 8-byte loads and stores do not tear. A worker that exits leaves its chunks, so
its counts stay in the sums (as Prometheus's multiprocess counters do); ``zero`` also clears them.
"""

from __future__ import annotations

import functools
import itertools
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

CHUNK_BYTES = 1 << 16
SUFFIX = ".counters"
_USED = struct.Struct("q")  # native, aligned: one 8-byte load or store
_GROUP = struct.Struct("ii")
_SLOT = 8

Key = tuple[str | int, ...]
_STORES = itertools.count()


def _padded(size: int) -> int:
    return (size + _SLOT - 1) // _SLOT * _SLOT


class _Chunk:
    """One region of this process's counters (a mapped file or anonymous memory), filled from the front."""

    def __init__(self, path: Path | None) -> None:
        if path is None:
            self.memory = mmap.mmap(-1, CHUNK_BYTES)
        else:
            with open(path, "w+b") as file:
                file.truncate(CHUNK_BYTES)
                self.memory = mmap.mmap(file.fileno(), CHUNK_BYTES)
        self.slots = memoryview(self.memory).cast("q")
        self.used = _USED.size

    def add_group(self, key: bytes, count: int) -> int | None:
        """Write a group of ``count`` zeroed slots; the index of its first slot (None: the chunk is full)."""
        start = self.used + _GROUP.size + _padded(len(key))
        end = start + count * _SLOT
        if end > CHUNK_BYTES:
            return None
        _GROUP.pack_into(self.memory, self.used, len(key), count)
        self.memory[self.used + _GROUP.size : self.used + _GROUP.size + len(key)] = key
        self.used = end
        self.slots[0] = end  # last: the group is complete before a reader sees it
        return start // _SLOT


def _groups(buffer: mmap.mmap) -> Iterator[tuple[Key, int, tuple[int, ...]]]:
    """The complete groups of one chunk: key, offset of the first slot, values."""
    used = min(_USED.unpack_from(buffer, 0)[0], len(buffer))
    offset = _USED.size
    while offset + _GROUP.size <= used:
        key_size, count = _GROUP.unpack_from(buffer, offset)
        start = offset + _GROUP.size + _padded(key_size)
        end = start + count * _SLOT
        if key_size <= 0 or count <= 0 or end > used:
            return
        try:
            key = _decoded(buffer[offset + _GROUP.size : offset + _GROUP.size + key_size])
        except (ValueError, TypeError):  # not a key yet
            return
        yield key, start, struct.unpack_from(f"{count}q", buffer, start)
        offset = end


@functools.lru_cache(maxsize=4096)
def _decoded(key: bytes) -> Key:
    """A group's key (the same few keys are read again at every read)."""
    return tuple(json.loads(key))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedCounters:
    """This process's groups of counters, and the sums of every process's (see the module docstring)."""

    def __init__(self, directory: Path | None, maxima: Mapping[str, frozenset[int]]) -> None:
        """``maxima``: by group kind (the key's first item), the slots combined by their largest value."""
        self._directory = directory
        self._maxima = maxima
        self._chunks: list[_Chunk] = []
        self._groups: dict[Key, tuple[memoryview, int, int]] = {}
        self._lock = threading.Lock()
        self._serial = next(_STORES)  # two stores of one process on one directory never share a file
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def group(self, key: Key, count: int) -> tuple[memoryview, int]:
        """The slots of ``key`` in this process (made at zero the first time): the slot view and first index."""
        found = self._groups.get(key)
        if found is None:
            with self._lock:
                found = self._groups.get(key) or self._add(key, count)
        return found[0], found[1]

    def _add(self, key: Key, count: int) -> tuple[memoryview, int, int]:
        encoded = json.dumps(key, separators=(",", ":")).encode()
        first = self._chunks[-1].add_group(encoded, count) if self._chunks else None
        if first is None:
            self._chunks.append(_Chunk(self._next_path()))
            first = self._chunks[-1].add_group(encoded, count)
            if first is None:
                raise ValueError(f"a group of {count} counters does not fit in one chunk")
        found = self._groups[key] = (self._chunks[-1].slots, first, count)
        return found

    def _next_path(self) -> Path | None:
        if self._directory is None:
            return None
        return self._directory / f"{os.getpid()}-{self._serial}-{len(self._chunks)}{SUFFIX}"

    def read(self) -> dict[Key, list[int]]:
        """Every group of every process, combined by key."""
        combined: dict[Key, list[int]] = {}
        for key, _, values in self._every_group():
            total = combined.get(key)
            if total is None:
                combined[key] = list(values)
                continue
            maxima = self._maxima.get(str(key[0]), frozenset())
            for index, value in enumerate(values[: len(total)]):
                total[index] = max(total[index], value) if index in maxima else total[index] + value
        return combined

    def _every_group(self) -> Iterator[tuple[Key, int, tuple[int, ...]]]:
        if self._directory is None:
            for chunk in self._chunks:
                yield from _groups(chunk.memory)
            return
        for path in sorted(self._directory.glob(f"*{SUFFIX}")):
            yield from self._file_groups(path)

    @staticmethod
    def _file_groups(path: Path) -> list[tuple[Key, int, tuple[int, ...]]]:
        try:
            with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return list(_groups(buffer))
        except (OSError, ValueError):  # a chunk being created (still empty) or gone
            return []

    def zero(self, prefix: Key) -> None:
        """Clear every group whose key starts with ``prefix``: this process's, and those of processes that exited
        (nobody else will). Live workers clear their own when they do the same (a version unloaded everywhere)."""
        size = len(prefix)
        for key, (slots, first, count) in self._groups.items():
            if key[:size] == prefix:
                slots[first : first + count] = memoryview(bytes(count * _SLOT)).cast("q")
        if self._directory is not None:
            for path in self._directory.glob(f"*{SUFFIX}"):
                pid = int(path.name.split("-", 1)[0])
                if pid != os.getpid() and not _alive(pid):
                    _zero_in_file(path, prefix)


def _zero_in_file(path: Path, prefix: Key) -> None:
    """Clear the groups of ``prefix`` in the chunk of a process that exited."""
    try:
        with open(path, "r+b") as file, mmap.mmap(file.fileno(), 0) as buffer:
            for key, start, values in list(_groups(buffer)):
                if key[: len(prefix)] == prefix:
                    buffer[start : start + len(values) * _SLOT] = bytes(len(values) * _SLOT)
    except (OSError, ValueError):
        return
