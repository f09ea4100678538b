"""Reads the prediction log back: the live window for the skew monitor, and sampled photos."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.monitoring.export import ExportPage, ExportQuery, read_page
from gateway.monitoring.photos import StoredPhoto, read_photo
from gateway.monitoring.prediction_log import stream_name
from gateway.redis_client import LazyRedis

LOOK_BACK_WINDOWS = 5
"""How many windows' worth of entries the reader scans for one version's records (other versions interleave)."""


class LogReader(LazyRedis):
    async def recent(
        self, model: str, version: str, window: int, max_age_s: int = 0, surface: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest ``window`` records of ``model`` at ``version`` (and ``surface``, if given), oldest first.

        With ``max_age_s`` > 0, none older than that: the scan stops at the stream id of
        ``now - max_age_s`` (stream ids are the Redis server's millisecond clock when the
        record was written, so "now" is the server's clock too, whatever the replica's).
        Looks back at most LOOK_BACK_WINDOWS windows of entries.
        """
        return (await self.recent_by_surface(model, version, window, max_age_s, (surface,)))[surface]

    async def recent_by_surface(
        self, model: str, version: str, window: int, max_age_s: int, surfaces: tuple[str | None, ...]
    ) -> dict[str | None, list[dict[str, Any]]]:
        """``recent`` for each of ``surfaces`` (None: any surface) from one read of the stream: the skew check
        of a model's surfaces reads and parses its entries once, not once per surface."""
        client = self._client()
        oldest = await self._oldest_id(client, max_age_s)
        entries = await client.xrevrange(stream_name(model), max="+", min=oldest, count=window * LOOK_BACK_WINDOWS)
        # thousands of records: parsed on a thread, so the event loop goes on answering requests meanwhile
        return await asyncio.to_thread(_newest, entries, version, surfaces, window)

    @staticmethod
    async def _oldest_id(client: aioredis.Redis, max_age_s: int) -> str:
        if max_age_s <= 0:
            return "-"
        return str(max(await _server_ms(client) - max_age_s * 1000, 0))

    async def server_time_ms(self) -> int:
        """The Redis server's clock (the clock of stream ids), Unix milliseconds."""
        return await _server_ms(self._client())

    async def export_page(self, query: ExportQuery, after: str | None, count: int) -> ExportPage:
        """One page of an export (see ``export.read_page``)."""
        return await read_page(self._client(), query, after, count)

    async def photo(self, request_id: str) -> StoredPhoto | None:
        """The sampled photo of prediction ``request_id``, if one was kept and is still in its stream."""
        return await read_photo(self._client(), request_id)


def _newest(
    entries: list, version: str, surfaces: tuple[str | None, ...], window: int
) -> dict[str | None, list[dict[str, Any]]]:
    """Per surface of ``surfaces`` (None: any), the first ``window`` of ``entries`` (newest first) at ``version``
    and that surface, oldest first."""
    found: dict[str | None, list[dict[str, Any]]] = {surface: [] for surface in surfaces}
    filling = set(found)
    for _, fields in entries:
        record = orjson.loads(fields[b"record"])
        if record.get("version") != version:
            continue
        for surface in filling & {None, record.get("input")}:
            found[surface].append(record)
            if len(found[surface]) == window:
                filling.discard(surface)
        if not filling:
            break
    return {surface: records[::-1] for surface, records in found.items()}


async def _server_ms(client: aioredis.Redis) -> int:
    seconds, microseconds = await client.time()
    return seconds * 1000 + microseconds // 1000
