"""Per-identity rate limits: a token bucket per client identity (optionally per model) shared through Redis.

One Lua script refills and takes atomically (Redis's own clock, so replicas with skewed clocks
agree): one round trip per request, and only when limits are on.

When Redis does not answer within ``timeout_s`` (down, hung, unreachable), the limiter **fails
open to a local bucket** of the same rate and size on this replica (so the global limit becomes
at most ``replicas x burst`` for the outage), logs it and counts it, and does not ask Redis again
for ``RETRY_REDIS_AFTER_S``: no caller waits more than one timeout on Redis.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.errors import RateLimited
from gateway.core.types import Identity

log = logging.getLogger(__name__)

RETRY_REDIS_AFTER_S = 1.0
KEY_PREFIX = "ratelimit:"

TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(bucket[1])
local ts = tonumber(bucket[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""
"""KEYS[1]: the bucket; ARGV: rate (tokens/s), burst. Returns {1, "0"} or {0, seconds until a token}."""


@dataclass
class LocalBucket:
    tokens: float
    updated: float

    def take(self, rate: float, burst: int, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(burst, self.tokens + max(0.0, now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        connect: Callable[[], aioredis.Redis] | None,
        *,
        per_model: bool = False,
        timeout_s: float = 0.25,
        on_limited: Callable[[Identity], None] | None = None,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._connect = connect
        self._redis: aioredis.Redis | None = None
        self._script = None
        self._per_model = per_model
        self._timeout_s = timeout_s
        self._on_limited = on_limited
        self._on_fallback = on_fallback
        self._local: dict[str, LocalBucket] = {}
        self._redis_down_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def _key(self, identity: Identity, model: str) -> str:
        return f"{KEY_PREFIX}{identity.name}:{model}" if self._per_model else f"{KEY_PREFIX}{identity.name}"

    async def _shared(self, key: str) -> float | None:
        """Seconds to wait (0.0: allowed) from the shared bucket, or None when Redis did not answer in time."""
        if self._connect is None or time.monotonic() < self._redis_down_until:
            return None
        try:
            if self._redis is None:
                self._redis = self._connect()
                self._script = self._redis.register_script(TOKEN_BUCKET)
            allowed, wait = await asyncio.wait_for(
                self._script(keys=[key], args=[repr(self.rate), str(self.burst)]), self._timeout_s
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_down_until = time.monotonic() + RETRY_REDIS_AFTER_S
            if self._on_fallback is not None:
                self._on_fallback()
            log.warning(
                "rate limits: Redis did not answer (%s); this replica uses its local buckets for %.0f s (fail open)",
                type(exc).__name__ if not str(exc) else exc,
                RETRY_REDIS_AFTER_S,
            )
            return None
        return 0.0 if int(allowed) == 1 else float(wait)

    def _local_take(self, key: str) -> float:
        now = time.monotonic()
        bucket = self._local.get(key)
        if bucket is None:
            bucket = self._local[key] = LocalBucket(float(self.burst), now)
        return bucket.take(self.rate, self.burst, now)

    async def take(self, identity: Identity, model: str) -> None:
        """Take one token for ``identity`` (and ``model``), or raise RateLimited with when to retry."""
        if not self.enabled:
            return
        key = self._key(identity, model)
        wait = await self._shared(key)
        if wait is None:
            wait = self._local_take(key)
        if wait <= 0:
            return
        if self._on_limited is not None:
            self._on_limited(identity)
        scope = f" on model {model!r}" if self._per_model else ""
        raise RateLimited(
            f"client {identity.name!r} is over its rate limit{scope} ({self.rate:g}/s, burst {self.burst}); "
            f"retry in {wait:.1f} s",
            retry_after_s=max(1.0, math.ceil(wait)),
        )

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
