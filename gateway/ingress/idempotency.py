"""Idempotent uploads: a retried request with the same ``Idempotency-Key`` is answered once and logged once.

A phone that loses its connection after sending a photo cannot know whether the gateway ran
it; it retries with the same key. The key (REST header ``Idempotency-Key``, gRPC metadata
``idempotency-key``) is scoped to the caller's identity and becomes a deterministic request
id, so that:

- a retry that arrives while the first attempt is still running waits for that attempt;
- a retry after it finished gets the same answer again (same ``request_id``), without running
  the model or writing a second prediction record, for ``ttl_s`` seconds;
- a failed attempt is forgotten, so a retry after a 503 / 429 runs again.

Contract of :class:`IdempotentCalls`: at most one run per request id at a time; a successful
result is kept for ``ttl_s`` (at most ``max_entries``, oldest dropped first); a run whose
every waiter gave up (client disconnected) is cancelled. Within a process the calls meet
here; with ``shared`` (the gateway's Redis, see shared_answers.py) a retry that reaches
another worker or replica waits for, or replays, the first run's answer too.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.core.errors import InvalidInput
from gateway.core.types import Identity
from gateway.ingress.shared_answers import SharedAnswers

IDEMPOTENCY_HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
T = TypeVar("T")


def request_id_for(identity: Identity, key: str) -> str:
    """The request id of ``key`` sent by ``identity`` (32 hex digits; two callers' keys never collide)."""
    if not KEY_PATTERN.match(key):
        raise InvalidInput("the idempotency key must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'")
    return hashlib.sha256(f"{identity.name}\0{key}".encode()).hexdigest()[:32]


@dataclass
class _Call(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0
    finished_at: float | None = None


@dataclass
class IdempotentCalls(Generic[T]):
    """One per gateway process (the composition root builds it), shared by the REST and gRPC surfaces."""

    ttl_s: float = 600.0
    max_entries: int = 10_000
    shared: SharedAnswers | None = None
    """Answers shared with the other processes (None: this process only)."""
    _calls: OrderedDict[str, _Call[T]] = field(default_factory=OrderedDict)

    async def run(self, request_id: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``work()``'s result for ``request_id`` and whether it was a replay of an earlier or concurrent run."""
        self._expire()
        call = self._calls.get(request_id)
        replayed = call is not None
        if call is None:
            run = self.shared.run(request_id, work) if self.shared is not None else self._here(work)
            call = _Call(asyncio.ensure_future(run))
            self._calls[request_id] = call
            call.task.add_done_callback(lambda task: self._finished(request_id, call))
        call.waiters += 1
        try:
            result, elsewhere = await asyncio.shield(call.task)
            return result, replayed or elsewhere
        except asyncio.CancelledError:
            if not call.task.done() and call.waiters == 1:
                call.task.cancel()  # nobody else waits for this run
            raise
        finally:
            call.waiters -= 1

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()

    @staticmethod
    async def _here(work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        return await work(), False

    def _finished(self, request_id: str, call: _Call[T]) -> None:
        if call.task.cancelled() or call.task.exception() is not None:
            if self._calls.get(request_id) is call:
                del self._calls[request_id]
            return
        call.finished_at = time.monotonic()
        self._calls.move_to_end(request_id)

    def _expire(self) -> None:
        now = time.monotonic()
        while len(self._calls) > self.max_entries:
            self._calls.popitem(last=False)
        for request_id, call in list(self._calls.items()):
            if call.finished_at is None:
                continue
            if now - call.finished_at < self.ttl_s:
                break
            del self._calls[request_id]
