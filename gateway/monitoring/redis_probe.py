"""Is the shared Redis reachable? One PING per interval, off the request path, into ``gateway_redis_up``.

The prediction log only notices a dead Redis when it has something to write, and the rollout
follower only while it is subscribed; an operator wants to know before either matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0


class RedisProbe:
    """PINGs Redis every ``interval_s`` and reports each outcome to ``report(up)``; logs each change once."""

    def __init__(
        self,
        connect: Callable[[], aioredis.Redis],
        report: Callable[[bool], None],
        interval_s: float = PROBE_INTERVAL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._connect = connect
        self._report = report
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None
        self._up: bool | None = None
        self._task: asyncio.Task | None = None

    async def probe(self) -> bool:
        """One PING; a failure drops the client so the next probe reconnects."""
        try:
            if self._client is None:
                self._client = self._connect()
            await asyncio.wait_for(self._client.ping(), self._timeout_s)
            up = True
        except (RedisError, OSError, TimeoutError):
            up = False
            await self._drop_client()
        if up != self._up:
            (log.info if up else log.error)("Redis %s", "reachable" if up else "UNREACHABLE (gateway_redis_up 0)")
        self._up = up
        self._report(up)
        return up

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-probe")

    async def _run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self._interval_s)

    async def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_client()
