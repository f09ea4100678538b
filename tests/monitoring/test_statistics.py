"""Triton-shaped statistics from batch reports and request outcomes, and the same sums on /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.batching.batcher import BatchStats
from gateway.monitoring.metrics import GatewayMetrics
from gateway.monitoring.statistics import NS


def batch(size: int, *, failed: bool = False, infer_s: float = 0.5) -> BatchStats:
    return BatchStats(
        size=size,
        queue_delays_s=[0.1 * (i + 1) for i in range(size)],
        execution_s=0.01 + infer_s + 0.02,
        failed=failed,
        input_s=0.01,
        infer_s=infer_s,
        output_s=0.02,
    )


def test_rows_are_charged_their_batch_and_batches_are_counted_by_size() -> None:
    metrics = GatewayMetrics()
    metrics.observe_batch("mnist", "1", batch(3))
    metrics.observe_batch("mnist", "1", batch(2, failed=True, infer_s=0.25))
    metrics.observe_batch("mnist", "1", batch(3))
    stats = metrics.inference.of("mnist", "1")
    stats.request_done(True, 0.75)
    stats.request_done(False, 0.25)
    (triton,) = metrics.inference.to_triton([("mnist", "1")])
    assert (triton["inference_count"], triton["execution_count"]) == (6, 3)  # the failed batch inferred nothing
    inference = triton["inference_stats"]
    assert inference["success"] == {"count": 1, "ns": int(0.75 * NS)}
    assert inference["fail"] == {"count": 1, "ns": int(0.25 * NS)}
    assert inference["queue"] == {"count": 8, "ns": int(0.6 * NS) * 2 + int(0.3 * NS)}
    assert inference["compute_infer"] == {"count": 8, "ns": 2 * int(1.5 * NS) + int(0.5 * NS)}
    by_size = {entry["batch_size"]: entry for entry in triton["batch_stats"]}
    assert sorted(by_size) == [2, 3]
    assert by_size[3]["compute_infer"] == {"count": 2, "ns": 2 * int(0.5 * NS)}
    assert by_size[2]["compute_output"] == {"count": 1, "ns": int(0.02 * NS)}
    assert triton["last_inference"] > 0

    samples = {
        (sample.name, sample.labels.get("phase")): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.labels.get("model") == "mnist" and family.name.startswith("gateway_inference")
    }
    assert samples[("gateway_inference_count_total", None)] == 6
    assert samples[("gateway_inference_exec_count_total", None)] == 3
    assert samples[("gateway_inference_request_failure_total", None)] == 1
    assert samples[("gateway_inference_duration_ns_total", "compute_infer")] == inference["compute_infer"]["ns"]
    assert samples[("gateway_inference_duration_ns_total", "queue")] == inference["queue"]["ns"]


def test_a_version_unloaded_and_loaded_again_starts_from_zero() -> None:
    metrics = GatewayMetrics()
    metrics.observe_batch("mnist", "2", batch(4))
    metrics.inference.forget("mnist", "2")
    assert metrics.inference.to_triton([("mnist", "2")])[0]["inference_count"] == 0
    assert metrics.inference.to_triton([("mnist", "2")])[0]["batch_stats"] == []
