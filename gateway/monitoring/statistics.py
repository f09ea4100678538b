"""Per model version inference statistics in Triton's shape, from the gateway's own measurements.

One ``VersionStatistics`` per (model, version) keeps plain integer sums: two additions per request
(``request_done``, from the edge's RequestMeter, so a request refused while it is parsed counts as a
failure of the version it addressed) and a handful per batch (``batch_done``, from the batcher's
report), nothing else on the hot path. The same
sums are what ``/metrics`` shows (``InferenceStatistics`` is a Prometheus collector over them) and
what ``ModelStatistics`` / ``/v2/models/{m}/stats`` answer, so the two can never disagree.

Units follow Triton: durations in nanoseconds, ``last_inference`` in milliseconds since the epoch.
Queue and compute durations are counted per row: each row of a request goes through the batcher on
its own, and each row is charged the whole time of the batch it ran in (as Triton charges a request).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.batching.batcher import BatchStats

NS = 1_000_000_000
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


class Duration:
    """A count and a total in nanoseconds (Triton's StatisticDuration)."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, count: int, seconds: float) -> None:
        self.count += count
        self.ns += int(seconds * NS)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class VersionStatistics:
    """What one model version did since it was loaded in this process."""

    __slots__ = ("success", "fail", "phases", "batches", "inference_count", "execution_count", "last_inference_ms")

    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.phases = {phase: Duration() for phase in PHASES}
        self.batches: dict[int, dict[str, Duration]] = {}
        """Batch size -> compute_input / compute_infer / compute_output, counted once per batch."""
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def request_done(self, ok: bool, seconds: float) -> None:
        (self.success if ok else self.fail).add(1, seconds)

    def batch_done(self, stats: BatchStats) -> None:
        size = stats.size
        self.execution_count += 1
        if not stats.failed:
            self.inference_count += size
        self.last_inference_ms = int(time.time() * 1000)
        phases = self.phases
        phases["queue"].add(size, sum(stats.queue_delays_s))
        phases["compute_input"].add(size, stats.input_s * size)
        phases["compute_infer"].add(size, stats.infer_s * size)
        phases["compute_output"].add(size, stats.output_s * size)
        per_batch = self.batches.get(size)
        if per_batch is None:
            per_batch = self.batches[size] = {phase: Duration() for phase in PHASES[1:]}
        per_batch["compute_input"].add(1, stats.input_s)
        per_batch["compute_infer"].add(1, stats.infer_s)
        per_batch["compute_output"].add(1, stats.output_s)

    def to_triton(self, model: str, version: str) -> dict[str, Any]:
        """This version as one entry of Triton's ``model_stats`` (the JSON of ModelStatistics)."""
        zero = {"count": 0, "ns": 0}
        inference = {"success": self.success.to_dict(), "fail": self.fail.to_dict()}
        inference |= {phase: duration.to_dict() for phase, duration in self.phases.items()}
        return {
            "name": model,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": inference | {"cache_hit": zero, "cache_miss": zero},
            "batch_stats": [
                {"batch_size": size, **{phase: d.to_dict() for phase, d in phases.items()}}
                for size, phases in sorted(self.batches.items())
            ],
            "memory_usage": [],
            "response_stats": {},
        }


class InferenceStatistics(Collector):
    """Every version's statistics, and the Prometheus collector that shows them on ``/metrics``."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], VersionStatistics] = {}

    def of(self, model: str, version: str) -> VersionStatistics:
        """The statistics of one version, created at zero the first time it is asked for."""
        stats = self._versions.get((model, version))
        if stats is None:
            stats = self._versions[(model, version)] = VersionStatistics()
        return stats

    def forget(self, model: str, version: str) -> None:
        """A version was unloaded: its statistics start again from zero if it comes back (as in Triton)."""
        self._versions.pop((model, version), None)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ("model", "version")
        success = CounterMetricFamily("gateway_inference_request_success", "Successful requests", labels=labels)
        failure = CounterMetricFamily("gateway_inference_request_failure", "Failed requests", labels=labels)
        count = CounterMetricFamily("gateway_inference_count", "Rows inferred", labels=labels)
        executions = CounterMetricFamily("gateway_inference_exec_count", "Batches executed", labels=labels)
        durations = CounterMetricFamily(
            "gateway_inference_duration_ns",
            "Cumulative nanoseconds: success, fail (whole requests), queue, compute_input/infer/output (per row)",
            labels=(*labels, "phase"),
        )
        last = GaugeMetricFamily("gateway_inference_last_ms", "Last inference, ms since the epoch", labels=labels)
        for (model, version), stats in sorted(self._versions.items()):
            key = [model, version]
            success.add_metric(key, stats.success.count)
            failure.add_metric(key, stats.fail.count)
            count.add_metric(key, stats.inference_count)
            executions.add_metric(key, stats.execution_count)
            durations.add_metric([*key, "success"], stats.success.ns)
            durations.add_metric([*key, "fail"], stats.fail.ns)
            for phase, duration in stats.phases.items():
                durations.add_metric([*key, phase], duration.ns)
            last.add_metric(key, stats.last_inference_ms)
        yield from (success, failure, count, executions, durations, last)
