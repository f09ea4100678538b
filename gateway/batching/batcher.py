"""The dynamic batcher: gathers concurrent requests for one model version into batches.

It knows nothing of HTTP or gRPC: callers ``submit`` one preprocessed input row and get
back one output row with the size of the batch it ran in (or a typed error).
``_BatchQueue`` holds the scheduling rules and takes the time as an argument, so they
are tested with a fake clock; ``DynamicBatcher`` runs them on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from gateway.batching.policy import PRIORITY_AGING_S, BatchingPolicy
from gateway.core.errors import DeadlineExceeded, GatewayError, InvalidInput, Overloaded, Unavailable
from gateway.monitoring.tracing import TRACING

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

RunBatch = Callable[[np.ndarray], Awaitable[np.ndarray]]
"""Runs one stacked batch [N, *dims] on a backend and returns [N, *output dims]."""

_sequence = itertools.count()


class BatchedOutput(NamedTuple):
    """One caller's output row, and the size of the batch its input row actually ran in."""

    output: np.ndarray
    batch_size: int


@dataclass(eq=False, slots=True)
class _Item:
    tensor: np.ndarray
    future: asyncio.Future
    enqueued_at: float
    priority: int
    deadline: float | None
    order: int = field(default_factory=lambda: next(_sequence))
    trace: SpanContext | None = None
    """The submitting request's span, when tracing is on: its batch links to it."""

    @property
    def abandoned(self) -> bool:
        """The caller stopped waiting (cancelled, timed out, disconnected)."""
        return self.future.done()


class _BatchQueue:
    """Pending requests of one model version, by priority level (1 is the highest).

    Contract of ``take(now)``: it returns a batch when ``max_batch_size`` live items are
    waiting, when a preferred batch size can be filled, or when the oldest item has
    waited ``max_queue_delay``; otherwise None, and ``ready_at()`` says when it will.
    Items are chosen by priority, except that an item older than PRIORITY_AGING_S goes
    first, so low-priority work is delayed but never starved. Items whose deadline has
    passed are returned separately by ``take_expired(now)`` and never batched.
    """

    def __init__(self, policy: BatchingPolicy) -> None:
        self._policy = policy
        self._levels: list[deque[_Item]] = [deque() for _ in range(policy.priority_levels)]

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def put(self, item: _Item) -> None:
        if len(self) >= self._policy.max_queue_size:  # abandoned items do not count: dropped first (only then:
            self._drop_abandoned()  # a scan of the whole queue on every put cost O(queue) per request)
        if len(self) >= self._policy.max_queue_size:
            raise Overloaded(
                f"the queue for this model is full ({self._policy.max_queue_size} requests waiting); retry shortly",
                retry_after_s=max(1.0, self._policy.max_queue_delay_s * 10),
            )
        self._levels[item.priority - 1].append(item)

    def _drop_abandoned(self) -> None:
        for index, level in enumerate(self._levels):
            if any(item.abandoned for item in level):
                self._levels[index] = deque(item for item in level if not item.abandoned)

    def take_expired(self, now: float) -> list[_Item]:
        expired = [i for level in self._levels for i in level if i.deadline is not None and i.deadline <= now]
        if expired:
            gone = set(expired)
            self._levels = [deque(i for i in level if i not in gone) for level in self._levels]
        return expired

    def drain(self) -> list[_Item]:
        items = [item for level in self._levels for item in level]
        self._levels = [deque() for _ in self._levels]
        return items

    def oldest_enqueued_at(self) -> float | None:
        heads = [level[0].enqueued_at for level in self._levels if level]
        return min(heads) if heads else None

    def ready_at(self) -> float | None:
        oldest = self.oldest_enqueued_at()
        return None if oldest is None else oldest + self._policy.max_queue_delay_s

    def _batch_size(self, now: float) -> int:
        waiting = len(self)
        policy = self._policy
        if waiting >= policy.max_batch_size:
            return policy.max_batch_size
        fillable = [size for size in policy.preferred_batch_sizes if size <= waiting]
        if fillable:
            return max(fillable)
        ready_at = self.ready_at()
        if ready_at is not None and now >= ready_at:
            return waiting
        return 0

    def take(self, now: float) -> list[_Item] | None:
        self._drop_abandoned()
        size = self._batch_size(now)
        if size == 0:
            return None
        aged = sorted(
            (item for level in self._levels for item in level if now - item.enqueued_at >= PRIORITY_AGING_S),
            key=lambda item: item.order,
        )
        chosen = aged[:size]
        taken = set(chosen)
        for level in self._levels:
            for item in level:
                if len(chosen) == size:
                    break
                if item not in taken:
                    chosen.append(item)
                    taken.add(item)
        self._levels = [deque(i for i in level if i not in taken) for level in self._levels]
        return chosen


@dataclass
class BatchStats:
    """What one executed batch looked like, for metrics."""

    size: int
    queue_delays_s: list[float]
    execution_s: float
    failed: bool
    input_s: float = 0.0
    """Of ``execution_s``: stacking the rows into one batch (Triton's compute_input)."""
    infer_s: float = 0.0
    """Of ``execution_s``: the backend running the batch (compute_infer)."""
    output_s: float = 0.0
    """Of ``execution_s``: handing each caller its row (compute_output)."""


def _expire(future: asyncio.Future, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"no answer within the deadline of {timeout_s * 1000:.0f} ms"))


class DynamicBatcher:
    """One per model version. ``submit`` one input row; batches run on up to ``instances`` at once."""

    def __init__(
        self,
        run_batch: RunBatch,
        policy: BatchingPolicy,
        item_shape: tuple[int, ...],
        dtype: str,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_queue_depth: Callable[[int], None] | None = None,
        trace_name: str = "batch",
    ) -> None:
        self._run_batch = run_batch
        self._trace_name = trace_name
        self._policy = policy
        self._item_shape = tuple(item_shape)
        self._dtype = np.dtype(dtype)
        self._queue = _BatchQueue(policy)
        self._waiter: asyncio.Future | None = None
        """What the scheduler waits on while no batch is ready: a submit (or its ready time) ends the wait."""
        self._free_instances = asyncio.Semaphore(policy.instances)
        self._running: set[asyncio.Task] = set()
        self._on_batch = on_batch or (lambda stats: None)
        self._on_queue_depth = on_queue_depth or (lambda depth: None)
        self._scheduler: asyncio.Task | None = None

    @property
    def policy(self) -> BatchingPolicy:
        return self._policy

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name="batcher")

    async def close(self) -> None:
        """Stop scheduling; answer every queued caller, and let running batches finish."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            self._scheduler = None
        for item in self._queue.drain():
            if not item.future.done():
                item.future.set_exception(Unavailable("the gateway is shutting down; retry on another replica"))
        await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(
        self, tensor: np.ndarray, *, priority: int | None = None, timeout_s: float | None = None
    ) -> BatchedOutput:
        """Queue one input row and wait for its output row (with the size of the batch it ran in).

        Raises Overloaded when the queue is full, DeadlineExceeded when ``timeout_s`` (or the
        model's default timeout) passes first, and whatever error failed its batch.
        """
        if tensor.shape != self._item_shape:
            raise InvalidInput(f"input has shape {list(tensor.shape)}, the model expects {list(self._item_shape)}")
        level = self._policy.default_priority_level if priority is None else priority
        if not 1 <= level <= self._policy.priority_levels:
            raise InvalidInput(f"priority must lie in 1..{self._policy.priority_levels}, got {level}")
        self.start()
        loop = asyncio.get_running_loop()
        timeout = timeout_s if timeout_s is not None else self._policy.default_timeout_s
        now = loop.time()
        item = _Item(tensor, loop.create_future(), now, level, None if timeout is None else now + timeout)
        if TRACING.on:
            item.trace = TRACING.current()
        self._queue.put(item)
        self._on_queue_depth(len(self._queue))
        self._wake()
        if timeout is None:
            return await item.future
        # the deadline fails the item's own future (one timer; asyncio.wait_for adds a future, a callback and a
        # cancellation per call); a caller cancelled while waiting cancels that future, as wait_for did
        expiry = loop.call_at(item.deadline, _expire, item.future, timeout)
        try:
            return await item.future
        finally:
            expiry.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, ready_at: float | None) -> None:
        """Until a submit wakes the scheduler, or ``ready_at`` (loop time) comes."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = None if ready_at is None else loop.call_at(ready_at, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._free_instances.acquire()
            batch = None
            while batch is None:
                now = loop.time()
                for item in self._queue.take_expired(now):
                    if not item.future.done():
                        item.future.set_exception(DeadlineExceeded("the deadline passed while the request was queued"))
                batch = self._queue.take(now)
                if batch is None:  # the depth without the abandoned and expired items ``put`` no longer drops
                    self._on_queue_depth(len(self._queue))
                    await self._wait(self._queue.ready_at())
            self._on_queue_depth(len(self._queue))
            task = loop.create_task(self._execute(batch, loop.time()))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_traced(self, batch: np.ndarray, items: list[_Item], started_at: float) -> np.ndarray:
        """Run the batch inside its span (linked to every traced request in it); record each one's queue wait."""
        with TRACING.batch_span(self._trace_name, [item.trace for item in items], len(items)) as span:
            now, now_ns = asyncio.get_running_loop().time(), time.time_ns()
            started_ns = now_ns - int((now - started_at) * 1e9)
            for item in items:
                if item.trace is not None:
                    submitted_ns = now_ns - int((now - item.enqueued_at) * 1e9)
                    TRACING.queue_wait(item.trace, submitted_ns, started_ns, span.get_span_context())
            return await self._run_batch(batch)

    async def _execute(self, items: list[_Item], started_at: float) -> None:
        loop = asyncio.get_running_loop()
        failed = False
        stacked = inferred = None
        try:
            batch = np.empty((len(items), *self._item_shape), dtype=self._dtype)
            for row, item in enumerate(items):
                batch[row] = item.tensor
            stacked = loop.time()
            outputs = await (self._run_traced(batch, items, started_at) if TRACING.on else self._run_batch(batch))
            inferred = loop.time()
            if len(outputs) != len(items):
                raise Unavailable(f"the model server returned {len(outputs)} rows for a batch of {len(items)}")
            size = len(items)
            for item, output in zip(items, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(BatchedOutput(output, size))
        except Exception as exc:
            failed = True
            error = exc if isinstance(exc, GatewayError) else Unavailable(f"the model server failed: {exc}")
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
        finally:
            self._free_instances.release()
            ended = loop.time()
            stacked = ended if stacked is None else stacked
            inferred = ended if inferred is None else inferred
            self._on_batch(
                BatchStats(
                    size=len(items),
                    queue_delays_s=[started_at - item.enqueued_at for item in items],
                    execution_s=ended - started_at,
                    failed=failed,
                    input_s=stacked - started_at,
                    infer_s=inferred - stacked,
                    output_s=ended - inferred,
                )
            )
