"""The py-spy stage shares of `gateway bench batching --profile`, on stacks as py-spy writes them."""

from __future__ import annotations

from gateway.bench.profile import stage_shares

POOL_THREAD = "thread (1): ort-4-mnist_0;Thread._bootstrap (threading.py:1002)"
MODEL_RUN = (
    f"{POOL_THREAD};_worker (concurrent/futures/thread.py:83);_WorkItem.run (concurrent/futures/thread.py:58)"
    ";OnnxRuntimeBackend._timed (gateway/backends/onnxruntime.py:146);<lambda> (gateway/backends/onnxruntime.py:136)"
)
LOOP = "thread (2): MainThread;Runner.run (asyncio/runners.py:118)"
DECODE = ";_prepare (gateway/ingress/rest_classify.py:40);decode_image (gateway/preprocess/image.py:120)"


def test_the_served_models_runs_count_as_the_model_and_idle_threads_not_at_all(tmp_path) -> None:
    raw = tmp_path / "profile.raw"
    raw.write_text(
        "\n".join(
            [
                f"{MODEL_RUN} 30",
                f"{LOOP}{DECODE} 50",
                f"{LOOP};HotRoutes.__call__ (gateway/ingress/hot_routes.py:70) 20",
                f"{POOL_THREAD};_worker (concurrent/futures/thread.py:81) 99",
            ]
        )
        + "\n"
    )
    shares = stage_shares(raw)
    assert shares["model (ONNX Runtime)"] == 0.3
    assert shares["decode (OpenCV, Pillow)"] == 0.5
    assert shares["other"] == 0.2  # the idle executor thread's 99 samples are not busy samples
