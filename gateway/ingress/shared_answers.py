"""Idempotency across processes: the gateway's workers and replicas share one answer per request id in Redis.

A retry can reach another worker (a new connection lands on any of them) or another replica.
The first run of a request id claims ``idempotency:{id}`` (SET NX, with an expiry so a crashed
run frees it); the others wait for the claim to turn into the answer and replay it. A failed
or cancelled run deletes its claim, so a retry runs again. When Redis cannot be reached the
request runs here (fail open, as the rate limits do): an answer is never refused for
bookkeeping, at worst it runs twice, under the same request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.types import Prediction
from gateway.redis_client import LazyRedis

KEY_PREFIX = "idempotency:"
RUNNING = b"running"
CLAIM_S = 120.0
"""How long a claim holds without an answer (a run longer than any deadline, or a crashed process)."""
POLL_S = 0.02
"""How often a waiting retry looks for the answer of the run another process holds."""


def encode_prediction(prediction: Prediction) -> bytes:
    return orjson.dumps(dataclasses.asdict(prediction))


def decode_prediction(data: bytes) -> Prediction:
    return Prediction(**orjson.loads(data))


class SharedAnswers(LazyRedis):
    """``run(request_id, work)`` -> (answer, whether another process answered it)."""

    def __init__(self, connect: Callable[[], aioredis.Redis], ttl_s: float) -> None:
        super().__init__(connect)
        self._ttl_ms = int(ttl_s * 1000)

    async def run(self, request_id: str, work: Callable[[], Awaitable[Prediction]]) -> tuple[Prediction, bool]:
        key = KEY_PREFIX + request_id
        while True:
            try:
                redis = self._client()
                if await redis.set(key, RUNNING, nx=True, px=int(CLAIM_S * 1000)):
                    return await self._run_claimed(redis, key, work), False
                stored = await redis.get(key)
            except RedisError:
                return await work(), False
            if stored is not None and stored != RUNNING:
                return decode_prediction(stored), True
            if stored == RUNNING:
                await asyncio.sleep(POLL_S)  # another process runs it; its answer replaces the claim
            # gone (that run failed or expired): claim it again

    async def _run_claimed(self, redis: aioredis.Redis, key: str, work: Callable[[], Awaitable[Prediction]]):
        try:
            answer = await work()
        except BaseException:
            with contextlib.suppress(RedisError):
                await redis.delete(key)
            raise
        with contextlib.suppress(RedisError):
            await redis.set(key, encode_prediction(answer), px=self._ttl_ms)
        return answer
