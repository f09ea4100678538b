"""The gateway's log handler: the lines logged in one step of an event loop go to the stream in one write.

Every answered request logs one line; on stderr (line-buffered) each line was one ``write(2)``, 4.8% of a
KServe gRPC worker's CPU under load (py-spy, docs/performance.md). A worker's event loop answers many requests
per step, so their lines can share one system call, as ``OneWritePerStep`` (gateway/ingress/http_server.py)
does for the HTTP answers of a step.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TextIO


class OneWritePerStepHandler(logging.StreamHandler):
    """A ``StreamHandler`` whose lines logged on a thread running an event loop wait for the loop's next turn.

    On such a thread the first line of a step schedules the write (``loop.call_soon``) and the lines logged
    meanwhile join it. On any other thread (the preprocess pool, start-up, the supervisor), or when the loop
    cannot take a callback any more (``call_soon`` on a closed loop), a line is written at once, after the lines
    still waiting. Lines reach the stream in the order they were logged, whatever their threads; the handler's
    lock guards the waiting lines.

    No line is lost on a way out Python sees: ``flush()`` and ``close()`` write what waits, and
    ``logging.shutdown`` (run at exit, after an uncaught exception too) calls both. A loop stopped and closed
    before it ran the write leaves its lines waiting until then, or until the next line. An end that skips
    Python's exit (SIGKILL, ``os._exit``, a signal with no handler, such as a SIGTERM before uvicorn installs its
    own) loses the lines still waiting: at most those of the loop's current step.

    Formatting, levels and filters are the ``StreamHandler``'s, at the time of the call: a line is formatted when
    it is logged, only its write waits."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        self._scheduled: set[asyncio.AbstractEventLoop] = set()
        """Loops with a write queued since the last write: a loop's first line of a step schedules one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            loop = asyncio._get_running_loop()  # the C accessor of asyncio.get_running_loop, None instead of raising
            if loop is not None:
                self._waiting.append(line)
                if loop not in self._scheduled:
                    self._schedule(loop)
                return
            self._write_waiting(line)
        except RecursionError:  # as StreamHandler.emit
            raise
        except Exception:
            self.handleError(record)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon(self._write_step)
        except RuntimeError:  # a closed loop: nothing would run the write
            self._write_waiting()
            return
        self._scheduled.add(loop)

    def _write_step(self) -> None:
        """The loop's next turn: the step's lines (and any other loop's still waiting) in one write."""
        with self.lock:
            try:
                self._write_waiting()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "the log lines of one event loop step"}))

    def _write_waiting(self, line: str = "") -> None:
        """What waits, then ``line``, in one write (the lock held)."""
        waiting = self._waiting
        text = "".join(waiting) + line if waiting else line
        waiting.clear()
        self._scheduled.clear()
        if text:
            self.stream.write(text)
            super().flush()

    def flush(self) -> None:
        with self.lock:
            self._write_waiting()
            super().flush()

    def close(self) -> None:
        with self.lock:
            try:
                self.flush()
            finally:
                super().close()
