"""The CPU time an in-process model spends, measured on the threads that run it.

ONNX Runtime runs a session on the calling thread plus ``intra_op_num_threads - 1`` threads of the
session's own pool (created with the session, busy with nothing else). ``SessionThreads`` notes which
threads appeared while the session was built; ``measure`` then charges a run with the calling thread's
CPU time and the pool threads' (each thread's CPU-time clock, found in ``/proc/self/task``). With one
intra-op thread, the default with one worker per core, there is no pool and the figure is exact; with
more, a thread some other part started while the session was built would be charged too (sessions are
built under one lock, so never another session's pool).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

_TASKS = Path("/proc/self/task")
_BUILDING = threading.Lock()
Built = TypeVar("Built")


def _thread_ids() -> set[str]:
    try:
        return set(os.listdir(_TASKS))
    except OSError:  # no /proc: only the calling thread is measured
        return set()


def thread_cpu_clock(tid: int) -> int:
    """The clock id of thread ``tid``'s CPU time (Linux's ABI: ``MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)``),
    for ``time.clock_gettime_ns``: half a microsecond a read, where ``/proc/self/task/<tid>/schedstat`` took
    about 70 us (an open, a read and a close), twice per batch."""
    return ((~tid) << 3) | 6


def _pool_cpu_ns(clocks: tuple[int, ...]) -> int:
    total = 0
    for clock in clocks:
        try:
            total += time.clock_gettime_ns(clock)
        except OSError:  # the thread is gone (the session was closed)
            continue
    return total


class SessionThreads:
    """The threads of one session: the caller's, measured per run, and the pool's, found when it was built."""

    def __init__(self, build: Callable[[], Built]) -> None:
        with _BUILDING:
            before = _thread_ids()
            self.built = build()
            self._pool = tuple(thread_cpu_clock(int(tid)) for tid in sorted(_thread_ids() - before))

    @contextlib.contextmanager
    def measure(self, charge: Callable[[float], None]) -> Iterator[None]:
        """Around one run: ``charge(seconds)`` with the CPU time every thread of the session spent in it."""
        pool = self._pool
        started, pool_started = time.thread_time_ns(), _pool_cpu_ns(pool) if pool else 0
        try:
            yield
        finally:
            spent = time.thread_time_ns() - started + (_pool_cpu_ns(pool) - pool_started if pool else 0)
            charge(spent / 1e9)
