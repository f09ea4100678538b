"""A process's memory as Linux reports it now (/proc/PID/status), and its peak from a chosen moment on.

The high-water mark (VmHWM, ru_maxrss) alone says nothing about one step: growth hides behind any
earlier peak. ``peak_growth`` first resets the mark to the current RSS (``clear_refs``, value 5), so
what it reports is what the step itself added at its worst, whatever ran before it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` now."""
    return _status_kib(pid, "VmRSS")


@dataclass
class Growth:
    before_kib: int
    peak_kib: int = 0
    """The highest RSS during the block, above ``before_kib``."""
    after_kib: int = 0
    """The RSS after the block, above ``before_kib`` (what stayed)."""


@contextmanager
def peak_growth(pid: int) -> Iterator[Growth]:
    """Measure how far ``pid``'s RSS rose during the block (its peak) and where it ended, both above the start."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    growth = Growth(before_kib=rss_kib(pid))
    yield growth
    growth.peak_kib = _status_kib(pid, "VmHWM") - growth.before_kib
    growth.after_kib = rss_kib(pid) - growth.before_kib
