"""Callers that went away do not count: neither against the queue's limit nor in the reported depth."""

from __future__ import annotations

import asyncio

from gateway.batching.batcher import DynamicBatcher
from tests.batching.test_batcher import RecordingBackend, hold_first_batch, make, policy, row


def test_a_queue_full_of_callers_that_left_still_takes_a_new_one() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        batcher = make(backend, max_queue_size=2)
        blocker = await hold_first_batch(batcher, backend)
        leaving = [asyncio.create_task(batcher.submit(row(v))) for v in (1, 2)]
        await asyncio.sleep(0)
        for task in leaving:
            task.cancel()
        staying = asyncio.create_task(batcher.submit(row(3)))  # not Overloaded: the two queued ones are gone
        backend.gate.set()
        assert (await staying).output.tolist() == [3.0, 6.0]
        await blocker
        assert backend.batches[1:] == [[3.0]]
        await batcher.close()

    asyncio.run(scenario())


def test_the_reported_depth_leaves_out_callers_that_left() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        depths: list[int] = []
        batcher = DynamicBatcher(
            backend, policy(max_queue_delay_s=30.0, max_batch_size=8), (1,), "float32", on_queue_depth=depths.append
        )
        leaving = [asyncio.create_task(batcher.submit(row(v))) for v in (1, 2)]
        staying = asyncio.create_task(batcher.submit(row(3)))
        await asyncio.sleep(0)
        for task in leaving:
            task.cancel()
        await asyncio.sleep(0)
        late = asyncio.create_task(batcher.submit(row(4)))
        for _ in range(3):
            await asyncio.sleep(0)
        assert depths[-1] == 2, depths  # the staying and the late caller, not the two that left
        await batcher.close()
        await asyncio.gather(staying, late, *leaving, return_exceptions=True)

    asyncio.run(scenario())
