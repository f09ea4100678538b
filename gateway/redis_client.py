"""What the Redis-backed stores share: a client made on first use, and per-version counter hashes."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import redis.asyncio as aioredis


class LazyRedis:
    """Holds ``connect`` and makes the client on first use (inside the running event loop), closes it once."""

    def __init__(self, connect: Callable[[], aioredis.Redis]) -> None:
        self._connect = connect
        self._redis: aioredis.Redis | None = None

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = self._connect()
        return self._redis

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def ratios_by_version(counters: Mapping[bytes, bytes], total: str, hits: str, ratio: str) -> dict[str, dict]:
    """A hash of ``{version}:{total}`` / ``{version}:{hits}`` counters -> per version both counts and hits/total."""
    versions: dict[str, dict] = {}
    for field, value in counters.items():
        version, kind = field.decode().split(":", 1)
        versions.setdefault(version, {total: 0, hits: 0})[kind] = int(value)
    for counts in versions.values():
        counts[ratio] = counts[hits] / counts[total] if counts[total] else None
    return versions
