"""DynamicBatcher on a real event loop, synchronised with events, never with sleeps."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.batching.batcher import BatchStats, DynamicBatcher
from gateway.batching.policy import BatchingPolicy
from gateway.core.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable
from tests.batching.policies import make_policy


def policy(**overrides) -> BatchingPolicy:
    """No queue delay by default: batches go as soon as an instance is free."""
    return make_policy(**{"max_queue_delay_s": 0.0, **overrides})


class RecordingBackend:
    """Answers each row with (value, 2 * value); can be held on an event; fails rows marked negative."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, batch: np.ndarray) -> np.ndarray:
        values = batch[:, 0].tolist()
        self.batches.append(values)
        self.entered.set()
        await self.gate.wait()
        if any(v < 0 for v in values):
            raise RuntimeError("device lost")
        return np.stack([batch[:, 0], batch[:, 0] * 2], axis=1)


def row(value: float) -> np.ndarray:
    return np.array([value], np.float32)


def make(backend: RecordingBackend, stats: list | None = None, **overrides) -> DynamicBatcher:
    return DynamicBatcher(
        backend, policy(**overrides), (1,), "float32", on_batch=None if stats is None else stats.append
    )


async def hold_first_batch(batcher: DynamicBatcher, backend: RecordingBackend) -> asyncio.Task:
    """Occupy the only instance with one request, so the next ones must queue."""
    backend.gate.clear()
    backend.entered.clear()
    blocker = asyncio.create_task(batcher.submit(row(1000)))
    await backend.entered.wait()
    return blocker


def test_every_caller_gets_its_own_answer_and_batches_respect_the_limit() -> None:
    async def scenario() -> None:
        backend, stats = RecordingBackend(), []
        batcher = make(backend, stats, max_batch_size=8)
        blocker = await hold_first_batch(batcher, backend)
        values = list(range(1, 51))
        tasks = [asyncio.create_task(batcher.submit(row(v))) for v in values]
        await asyncio.sleep(0)  # let every task enqueue
        backend.gate.set()
        answers = await asyncio.gather(*tasks)
        await blocker
        for value, answer in zip(values, answers, strict=True):
            assert answer.output.tolist() == [value, 2 * value]
        assert max(len(b) for b in backend.batches) == 8
        assert sorted(v for b in backend.batches for v in b) == [*values, 1000]
        assert [s.size for s in stats] == [len(b) for b in backend.batches]
        await batcher.close()

    asyncio.run(scenario())


def test_requests_queue_and_batches_grow_while_the_instance_is_busy() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend, max_batch_size=32)
        blocker = await hold_first_batch(batcher, backend)
        tasks = [asyncio.create_task(batcher.submit(row(v))) for v in range(10)]
        await asyncio.sleep(0)
        assert batcher.queue_depth == 10
        backend.gate.set()
        answers = await asyncio.gather(blocker, *tasks)
        assert [len(b) for b in backend.batches] == [1, 10]
        assert [answer.batch_size for answer in answers] == [1] + [10] * 10, "each caller learns its batch's size"
        await batcher.close()

    asyncio.run(scenario())


def test_two_instances_run_two_batches_at_once() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend, max_batch_size=1, instances=2)
        backend.gate.clear()
        first = asyncio.create_task(batcher.submit(row(1)))
        second = asyncio.create_task(batcher.submit(row(2)))
        while len(backend.batches) < 2:
            backend.entered.clear()
            await backend.entered.wait()
        assert backend.batches == [[1.0], [2.0]]
        backend.gate.set()
        await asyncio.gather(first, second)
        await batcher.close()

    asyncio.run(scenario())


def test_a_failing_batch_fails_exactly_its_callers() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend, max_batch_size=2)
        blocker = await hold_first_batch(batcher, backend)
        tasks = [asyncio.create_task(batcher.submit(row(v))) for v in (-1, 1, 2, 3)]
        await asyncio.sleep(0)
        backend.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await blocker
        assert backend.batches[1:] == [[-1.0, 1.0], [2.0, 3.0]]
        assert all(isinstance(r, Unavailable) and "device lost" in r.message for r in results[:2])
        assert [r.output.tolist() for r in results[2:]] == [[2.0, 4.0], [3.0, 6.0]]
        await batcher.close()

    asyncio.run(scenario())


def test_deadline_passing_in_the_queue_answers_504_and_never_runs() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend)
        blocker = await hold_first_batch(batcher, backend)
        with pytest.raises(DeadlineExceeded, match="deadline of 20 ms"):
            await batcher.submit(row(7), timeout_s=0.02)
        backend.gate.set()
        await blocker
        assert await batcher.submit(row(8)) is not None
        assert [7.0] not in backend.batches and all(7.0 not in b for b in backend.batches)
        await batcher.close()

    asyncio.run(scenario())


def test_model_default_timeout_applies_without_a_client_timeout() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend, default_timeout_s=0.02)
        blocker = asyncio.create_task(batcher.submit(row(1), timeout_s=60))
        backend.gate.clear()
        await backend.entered.wait()
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(row(2))
        backend.gate.set()
        await blocker
        await batcher.close()

    asyncio.run(scenario())


def test_full_queue_rejects_at_once() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend, max_queue_size=3)
        blocker = await hold_first_batch(batcher, backend)
        queued = [asyncio.create_task(batcher.submit(row(v))) for v in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit(row(99))
        backend.gate.set()
        await asyncio.gather(blocker, *queued)
        await batcher.close()

    asyncio.run(scenario())


def test_higher_priority_runs_first() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend, max_batch_size=1)
        blocker = await hold_first_batch(batcher, backend)
        low = asyncio.create_task(batcher.submit(row(2), priority=2))
        high = asyncio.create_task(batcher.submit(row(1), priority=1))
        await asyncio.sleep(0)
        backend.gate.set()
        await asyncio.gather(blocker, low, high)
        assert backend.batches[1:] == [[1.0], [2.0]]
        await batcher.close()

    asyncio.run(scenario())


def test_a_caller_that_goes_away_is_dropped_from_its_batch() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend)
        blocker = await hold_first_batch(batcher, backend)
        leaving = asyncio.create_task(batcher.submit(row(5)))
        staying = asyncio.create_task(batcher.submit(row(6)))
        await asyncio.sleep(0)
        leaving.cancel()
        backend.gate.set()
        await asyncio.gather(blocker, staying)
        assert backend.batches[1:] == [[6.0]]
        await batcher.close()

    asyncio.run(scenario())


def test_wrong_shape_and_priority_are_refused_before_queueing() -> None:
    async def scenario() -> None:
        batcher = make(RecordingBackend())
        with pytest.raises(InvalidInput, match=r"shape \[2\]"):
            await batcher.submit(np.zeros(2, np.float32))
        with pytest.raises(InvalidInput, match="priority must lie in 1..2"):
            await batcher.submit(row(1), priority=3)
        assert batcher.queue_depth == 0
        await batcher.close()

    asyncio.run(scenario())


def test_close_answers_queued_callers() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend)
        blocker = await hold_first_batch(batcher, backend)
        queued = asyncio.create_task(batcher.submit(row(3)))
        await asyncio.sleep(0)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0)
        backend.gate.set()
        await closing
        with pytest.raises(Unavailable, match="shutting down"):
            await queued
        assert (await blocker).output.tolist() == [1000.0, 2000.0]

    asyncio.run(scenario())


def test_stats_record_queue_delay_and_size() -> None:
    async def scenario() -> None:
        stats: list[BatchStats] = []
        batcher = make(RecordingBackend(), stats)
        await batcher.submit(row(1))
        await batcher.close()
        assert stats[0].size == 1 and not stats[0].failed
        assert stats[0].queue_delays_s[0] >= 0 and stats[0].execution_s >= 0

    asyncio.run(scenario())


def test_stats_split_a_batch_into_stacking_inference_and_answering() -> None:
    async def slow(batch: np.ndarray) -> np.ndarray:
        await asyncio.sleep(0.05)  # the backend's compute time, the figure under test
        return batch

    async def scenario() -> None:
        stats: list[BatchStats] = []
        batcher = DynamicBatcher(slow, policy(), (1,), "float32", on_batch=stats.append)
        await asyncio.gather(*(batcher.submit(row(i)) for i in range(3)))
        await batcher.close()
        for batch in stats:
            assert batch.infer_s >= 0.05 > batch.input_s + batch.output_s
            assert batch.input_s + batch.infer_s + batch.output_s == pytest.approx(batch.execution_s)

    asyncio.run(scenario())
