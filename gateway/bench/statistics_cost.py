"""What Triton-shaped statistics add to the hot path, measured side by side in one run.

`python -m gateway.bench.statistics_cost`

Per request the edge's RequestMeter counts the request (Prometheus) and, since the statistics, adds
one ``request_done``; per batch the batcher's report feeds the Prometheus histograms and one
``batch_done``. Prints the best of five timings of each whole step and of its statistics part alone,
in microseconds, and their ratio (the share of the step that the statistics cost).
"""

from __future__ import annotations

import json
import timeit

from gateway.batching.batcher import BatchStats
from gateway.core.errors import GatewayError
from gateway.monitoring.metrics import GatewayMetrics, RequestMeter

CALLS = 100_000
ROWS = 16


def _best_us(step) -> float:
    return min(timeit.repeat(step, number=CALLS, repeat=5)) / CALLS * 1e6


def measure() -> dict[str, float]:
    metrics = GatewayMetrics()

    def labels(model: str, version: str | None) -> tuple[str, str]:
        return model, version or "1"

    def code(error: GatewayError) -> str:
        return error.code

    report = BatchStats(ROWS, [0.001] * ROWS, 0.004, False, 0.0001, 0.0038, 0.0001)
    statistics = metrics.inference
    figures = {
        "request_step_us": _best_us(lambda: RequestMeter(metrics, labels, "grpc", "mnist", "1", code).done("OK")),
        "request_statistics_us": _best_us(lambda: statistics.of("mnist", "1").request_done(True, 0.001)),
        "batch_step_us": _best_us(lambda: metrics.observe_batch("mnist", "1", report)),
        "batch_statistics_us": _best_us(lambda: statistics.of("mnist", "1").batch_done(report)),
    }
    figures["request_share"] = figures["request_statistics_us"] / figures["request_step_us"]
    figures["batch_share"] = figures["batch_statistics_us"] / figures["batch_step_us"]
    return {key: round(value, 3) for key, value in figures.items()}


if __name__ == "__main__":
    print(json.dumps(measure()))
