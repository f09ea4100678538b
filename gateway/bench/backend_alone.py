"""One batch run back to back on a backend alone, in this process: the ceiling the benchmarks compare with."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gateway.backends.onnxruntime import OnnxRuntimeBackend


@dataclass(frozen=True)
class AloneRuns:
    items: int
    wall_s: float
    cpu_s: float
    """This process's CPU time over the runs (every thread: ONNX Runtime's pool included)."""

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s

    @property
    def cpu_ms_per_item(self) -> float:
        return 1000 * self.cpu_s / self.items


def run_alone(backend: OnnxRuntimeBackend, batch: np.ndarray, seconds: float, warmup: int, least: int = 1) -> AloneRuns:
    """``warmup`` runs, then ``batch`` again and again for ``seconds`` (at least ``least`` runs)."""
    for _ in range(warmup):
        backend.infer_sync(batch)
    runs, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds or runs < least:
        backend.infer_sync(batch)
        runs += 1
    return AloneRuns(runs * len(batch), time.perf_counter() - wall, time.process_time() - cpu)
