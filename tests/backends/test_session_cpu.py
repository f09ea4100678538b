"""The model's CPU as the in-process backend measures it: every thread of its session, nothing else."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.backends.session_cpu import SessionThreads
from gateway.models.repository import load_repository
from tests.conftest import MODEL_REPO


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_run_is_charged_the_calling_threads_cpu_not_the_time_it_waits() -> None:
    threads = SessionThreads(lambda: "session")
    charged: list[float] = []
    with threads.measure(charged.append):
        _burn(0.05)
        time.sleep(0.1)  # waiting costs no CPU: it must not be charged
    assert threads.built == "session"
    assert 0.045 <= charged[0] < 0.09


def test_threads_started_while_the_session_is_built_are_its_pool_and_are_charged() -> None:
    work, done, stop = threading.Event(), threading.Event(), threading.Event()

    def pool_thread() -> None:  # stands in for ONNX Runtime's intra-op thread: works only when asked
        while not stop.is_set():
            if work.wait(0.01):
                work.clear()
                _burn(0.05)
                done.set()

    def build() -> threading.Thread:
        thread = threading.Thread(target=pool_thread, daemon=True)
        thread.start()
        return thread

    threads = SessionThreads(build)
    charged: list[float] = []
    try:
        with threads.measure(charged.append):
            work.set()
            assert done.wait(5)
    finally:
        stop.set()
        threads.built.join()
    assert 0.045 <= charged[0] < 0.09  # the pool thread's 50 ms; the caller only waited


@pytest.mark.parametrize("intra_op_threads", [1, 2])
def test_the_onnx_backend_reports_the_cpu_of_its_runs(intra_op_threads: int) -> None:
    spec = load_repository(MODEL_REPO)["mnist"]
    charged: list[float] = []
    backend = OnnxRuntimeBackend(
        spec.versions[spec.latest_version], spec.input, spec.output, intra_op_threads, on_cpu=charged.append
    )
    batch = np.random.default_rng(0).random((64, *spec.input.dims), dtype=np.float32)
    try:

        async def runs() -> None:
            for _ in range(20):
                await backend.infer(batch)

        started = time.process_time()
        asyncio.run(runs())
        process_cpu = time.process_time() - started
    finally:
        backend.close()
    assert len(charged) == 20 and all(seconds > 0 for seconds in charged)
    # all of the process's CPU in that loop was the model's (this thread's and its pool's), to within the
    # Python around the calls
    assert 0.8 * process_cpu <= sum(charged) <= 1.05 * process_cpu
