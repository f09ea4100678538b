"""Per model version inference statistics in Triton's shape, from the gateway's own measurements.

``VersionStatistics`` adds to int64 counters in ``SharedCounters``: two additions per request
(``request_done``, from the edge's RequestMeter, so a request refused while it is parsed counts as a
failure of the version it addressed) and about a dozen per batch (``batch_done``, from the batcher's
report), nothing else on the hot path. With server.workers > 1 every worker adds to its own
memory-mapped chunks in the supervisor's multiprocess directory and every read sums all of them
(the last inference time is the latest), so ``ModelStatistics`` and ``/v2/models/{m}/stats`` answer
for the whole gateway whichever worker takes the call. The same sums are what ``/metrics`` shows
(``InferenceStatistics`` is a Prometheus collector over them), so the two can never disagree.

Units follow Triton: durations in nanoseconds, ``last_inference`` in milliseconds since the epoch.
Queue and compute durations are counted per row: each row of a request goes through the batcher on
its own, and each row is charged the whole time of the batch it ran in (as Triton charges a request).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.monitoring.shared_counters import SharedCounters

if TYPE_CHECKING:
    from gateway.batching.batcher import BatchStats

NS = 1_000_000_000
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")

# The slots of one version's group ("version", model, version).
(LOADED, SUCCESS, SUCCESS_NS, FAIL, FAIL_NS, INFERENCES, EXECUTIONS, LAST_MS, ROWS) = range(9)
QUEUE_NS, INPUT_NS, INFER_NS, OUTPUT_NS = range(9, 13)
PHASE_NS = dict(zip(PHASES, (QUEUE_NS, INPUT_NS, INFER_NS, OUTPUT_NS), strict=True))
VERSION_SLOTS = 13
# The slots of one batch size's group ("batch", model, version, size): batches, then ns per compute phase.
BATCHES, BATCH_INPUT_NS, BATCH_INFER_NS, BATCH_OUTPUT_NS = range(4)
BATCH_NS = dict(zip(PHASES[1:], (BATCH_INPUT_NS, BATCH_INFER_NS, BATCH_OUTPUT_NS), strict=True))
BATCH_SLOTS = 4
MAXIMA = {"version": frozenset({LOADED, LAST_MS})}


class VersionStatistics:
    """What one model version did since it was loaded, added to this process's shared counters."""

    __slots__ = ("_counters", "_key", "_slots", "_first", "_batches")

    def __init__(self, counters: SharedCounters, model: str, version: str) -> None:
        self._counters = counters
        self._key = (model, version)
        self._slots, self._first = counters.group(("version", model, version), VERSION_SLOTS)
        self._slots[self._first + LOADED] = 1
        self._batches: dict[int, tuple[memoryview, int]] = {}
        """Batch size -> the slots of its group and the first one."""

    def request_done(self, ok: bool, seconds: float) -> None:
        slot = self._first + (SUCCESS if ok else FAIL)
        slots = self._slots
        slots[slot] += 1
        slots[slot + 1] += int(seconds * NS)

    def batch_done(self, stats: BatchStats) -> None:
        size, input_s, infer_s, output_s = stats.size, stats.input_s, stats.infer_s, stats.output_s
        slots, first = self._slots, self._first
        slots[first + EXECUTIONS] += 1
        if not stats.failed:
            slots[first + INFERENCES] += size
        slots[first + LAST_MS] = int(time.time() * 1000)
        slots[first + ROWS] += size
        slots[first + QUEUE_NS] += int(sum(stats.queue_delays_s) * NS)
        slots[first + INPUT_NS] += int(input_s * size * NS)
        slots[first + INFER_NS] += int(infer_s * size * NS)
        slots[first + OUTPUT_NS] += int(output_s * size * NS)
        found = self._batches.get(size)
        if found is None:
            found = self._batches[size] = self._counters.group(("batch", *self._key, size), BATCH_SLOTS)
        slots, first = found
        slots[first + BATCHES] += 1
        slots[first + BATCH_INPUT_NS] += int(input_s * NS)
        slots[first + BATCH_INFER_NS] += int(infer_s * NS)
        slots[first + BATCH_OUTPUT_NS] += int(output_s * NS)


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def _triton_entry(model: str, version: str, sums: list[int], batches: dict[int, list[int]]) -> dict[str, Any]:
    """One version as one entry of Triton's ``model_stats`` (the JSON of ModelStatistics)."""
    zero = _duration(0, 0)
    inference = {
        "success": _duration(sums[SUCCESS], sums[SUCCESS_NS]),
        "fail": _duration(sums[FAIL], sums[FAIL_NS]),
    }
    inference |= {phase: _duration(sums[ROWS], sums[slot]) for phase, slot in PHASE_NS.items()}
    return {
        "name": model,
        "version": version,
        "last_inference": sums[LAST_MS],
        "inference_count": sums[INFERENCES],
        "execution_count": sums[EXECUTIONS],
        "inference_stats": inference | {"cache_hit": zero, "cache_miss": zero},
        "batch_stats": [
            {"batch_size": size, **{phase: _duration(b[BATCHES], b[slot]) for phase, slot in BATCH_NS.items()}}
            for size, b in sorted(batches.items())
            if b[BATCHES]
        ],
        "memory_usage": [],
        "response_stats": {},
    }


class InferenceStatistics(Collector):
    """Every version's statistics (all workers' when ``directory`` is shared), and the Prometheus collector that
    shows them on ``/metrics``."""

    def __init__(self, directory: Path | None = None) -> None:
        self._counters = SharedCounters(directory, MAXIMA)
        self._versions: dict[tuple[str, str], VersionStatistics] = {}

    def of(self, model: str, version: str) -> VersionStatistics:
        """The statistics of one version in this process, created at zero the first time it is asked for."""
        stats = self._versions.get((model, version))
        if stats is None:
            stats = self._versions[(model, version)] = VersionStatistics(self._counters, model, version)
        return stats

    def forget(self, model: str, version: str) -> None:
        """A version was unloaded: its statistics start again from zero if it comes back (as in Triton)."""
        self._versions.pop((model, version), None)
        self._counters.zero(("version", model, version))
        self._counters.zero(("batch", model, version))

    def _read(self) -> tuple[dict[tuple[str, str], list[int]], dict[tuple[str, str], dict[int, list[int]]]]:
        """Sums of every worker: per version, and per version and batch size."""
        versions: dict[tuple[str, str], list[int]] = {}
        batches: dict[tuple[str, str], dict[int, list[int]]] = {}
        for key, sums in self._counters.read().items():
            if key[0] == "version":
                versions[(str(key[1]), str(key[2]))] = sums
            elif key[0] == "batch":
                batches.setdefault((str(key[1]), str(key[2])), {})[int(key[3])] = sums
        return versions, batches

    def to_triton(self, versions: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """Triton's ``model_stats`` for these (model, version) pairs, read once from every worker."""
        sums, batches = self._read()
        zero = [0] * VERSION_SLOTS
        return [_triton_entry(m, v, sums.get((m, v), zero), batches.get((m, v), {})) for m, v in versions]

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
        versions, _ = self._read()
        for (model, version), sums in sorted(versions.items()):
            if not sums[LOADED]:
                continue  # unloaded everywhere
            key = [model, version]
            success.add_metric(key, sums[SUCCESS])
            failure.add_metric(key, sums[FAIL])
            count.add_metric(key, sums[INFERENCES])
            executions.add_metric(key, sums[EXECUTIONS])
            durations.add_metric([*key, "success"], sums[SUCCESS_NS])
            durations.add_metric([*key, "fail"], sums[FAIL_NS])
            for phase, slot in PHASE_NS.items():
                durations.add_metric([*key, phase], sums[slot])
            last.add_metric(key, sums[LAST_MS])
        yield from (success, failure, count, executions, durations, last)
