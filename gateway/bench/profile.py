"""Where a gateway process spends its CPU: py-spy samples grouped by pipeline stage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

STAGES = (
    ("decode (OpenCV, Pillow)", ("decode_image",)),
    ("digit preprocessing (numpy)", ("prepare_digit",)),
    ("model (ONNX Runtime)", ("backends/onnxruntime.py",)),
    ("batcher", ("batching/batcher.py",)),
    ("TLS", ("ssl.py",)),
    ("HTTP + FastAPI + handler", ("httptools_impl.py", "fastapi/", "starlette/", "ingress/rest.py")),
)
WAITING = ("concurrent/futures/thread.py:81", "Runner.run (asyncio/runners.py")
"""Frames where py-spy catches a thread waiting for work or for the GIL rather than computing."""


def start_py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen:
    executable = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [executable, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "--threads"]
    return subprocess.Popen(
        [*command, "-f", "raw", "-o", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stage_shares(raw_profile: Path) -> dict[str, float]:
    """Share of busy samples per stage (a sample counts for the first stage its stack contains)."""
    counts: Counter[str] = Counter()
    for line in raw_profile.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        if any(marker in leaf for marker in WAITING):
            continue
        stage = next((name for name, markers in STAGES if any(m in stack for m in markers)), "other")
        counts[stage] += int(samples)
    busy = sum(counts.values()) or 1
    return {name: counts[name] / busy for name, _ in (*STAGES, ("other", ()))}
