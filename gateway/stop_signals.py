"""SIGTERM and SIGINT remembered from the first step of start-up, so that a stop always drains.

uvicorn listens for the stop signals only while it serves. Before that (models loading, the
banner just printed) a SIGTERM took Python's default action and killed the process at once:
no drain, and the log lines of that step lost. With these handlers in place a stop that comes
early is kept and honoured as soon as uvicorn starts (it starts, then shuts down cleanly);
one that comes while the gateway drains after uvicorn is ignored, except a second Ctrl-C,
which stops at once as it always has.
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """While entered, SIGTERM/SIGINT set ``requested`` instead of killing the process (main thread only)."""

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)  # a second Ctrl-C: stop now
        self.requested = self.requested or signal.Signals(signum)
