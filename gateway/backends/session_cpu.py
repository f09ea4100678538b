"""The CPU time an in-process model spends, measured on the threads that run it.

ONNX Runtime runs a session on the calling thread plus ``intra_op_num_threads - 1`` threads of the
session's own pool (created with the session, busy with nothing else). ``SessionThreads`` notes which
threads appeared while the session was built; ``measure`` then charges a run with the calling thread's
CPU time and the pool threads' (from ``/proc/self/task/<tid>/schedstat``, nanoseconds on the CPU). With one
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


def _pool_cpu_ns(tids: tuple[str, ...]) -> int:
    total = 0
    for tid in tids:
        try:
            total += int((_TASKS / tid / "schedstat").read_text().split(maxsplit=1)[0])
        except (OSError, ValueError, IndexError):  # the thread is gone (the session was closed)
            continue
    return total


class SessionThreads:
    """The threads of one session: the caller's, measured per run, and the pool's, found when it was built."""

    def __init__(self, build: Callable[[], Built]) -> None:
        with _BUILDING:
            before = _thread_ids()
            self.built = build()
            self._pool = tuple(sorted(_thread_ids() - before))

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
