"""What Triton-shaped statistics add to the hot path, measured side by side in one run.

`python -m gateway.bench.statistics_cost`

Per request the edge's RequestMeter counts the request (Prometheus) and, since the statistics, adds
one ``request_done``; per batch the batcher's report feeds the Prometheus histograms and one
``batch_done``. Prints the best of five timings of each whole step and of its statistics part alone,
in microseconds, and their ratio (the share of the step that the statistics cost): once for one
process (counters in anonymous memory) and once as a worker of server.workers > 1 (counters in
memory-mapped files of the multiprocess directory, which every read sums). It also times one
``ModelStatistics`` read and one ``/metrics`` render as a worker, with ``--workers`` chunk files
to sum (the other workers' files are copies of this one's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import timeit
from pathlib import Path
from unittest import mock

from gateway.batching.batcher import BatchStats
from gateway.core.errors import GatewayError
from gateway.monitoring.metrics import MULTIPROCESS_DIR_ENV, STATISTICS_SUBDIR, GatewayMetrics, RequestMeter
from gateway.monitoring.shared_counters import SUFFIX

CALLS = 100_000
READS = 200
ROWS = 16


def _best_us(step, calls: int = CALLS) -> float:
    return min(timeit.repeat(step, number=calls, repeat=5)) / calls * 1e6


def _labels(model: str, version: str | None) -> tuple[str, str]:
    return model, version or "1"


def _code(error: GatewayError) -> str:
    return error.code


def hot_path(metrics: GatewayMetrics) -> dict[str, float]:
    report = BatchStats(ROWS, [0.001] * ROWS, 0.004, False, 0.0001, 0.0038, 0.0001)
    statistics = metrics.inference
    figures = {
        "request_step_us": _best_us(lambda: RequestMeter(metrics, _labels, "grpc", "mnist", "1", _code).done("OK")),
        "request_statistics_us": _best_us(lambda: statistics.of("mnist", "1").request_done(True, 0.001)),
        "batch_step_us": _best_us(lambda: metrics.observe_batch("mnist", "1", report)),
        "batch_statistics_us": _best_us(lambda: statistics.of("mnist", "1").batch_done(report)),
    }
    figures["request_share"] = figures["request_statistics_us"] / figures["request_step_us"]
    figures["batch_share"] = figures["batch_statistics_us"] / figures["batch_step_us"]
    return figures


def as_worker(workers: int) -> dict[str, float]:
    """The hot path and the reads of one worker of ``workers``, on a multiprocess directory of its own."""
    directory = Path(tempfile.mkdtemp(prefix="statistics-cost-"))
    try:
        with mock.patch.dict(os.environ, {MULTIPROCESS_DIR_ENV: str(directory)}):
            metrics = GatewayMetrics()
            figures = hot_path(metrics)
            for size in (1, 2, 4, 8, 16, 32, 64):  # batch sizes a busy version has seen
                metrics.observe_batch("mnist", "1", BatchStats(size, [0.001] * size, 0.004, False, 0, 0.004, 0))
            own = next((directory / STATISTICS_SUBDIR).glob(f"*{SUFFIX}"))
            for other in range(1, workers):
                shutil.copy(own, own.with_name(f"{other}-0{SUFFIX}"))
            figures["read_statistics_us"] = _best_us(lambda: metrics.inference.to_triton([("mnist", "1")]), READS)
            figures["render_metrics_us"] = _best_us(metrics.render, READS)
        return figures
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(workers: int = 2) -> dict[str, dict[str, float]]:
    with mock.patch.dict(os.environ):
        os.environ.pop(MULTIPROCESS_DIR_ENV, None)
        one_process = hot_path(GatewayMetrics())
    figures = {"one_process": one_process, f"worker_of_{workers}": as_worker(workers)}
    return {mode: {key: round(value, 3) for key, value in values.items()} for mode, values in figures.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="workers whose counters a read sums (default 2)")
    print(json.dumps(measure(parser.parse_args().workers), indent=1))
