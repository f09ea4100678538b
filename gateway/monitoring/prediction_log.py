"""The prediction log: every answered request becomes a record in a Redis Stream, one stream per model.

Contract:
- The answer never waits for the log: ``record`` only puts the record in a bounded
  in-memory buffer (or, if the buffer is full, appends it to the spool file); a
  background task writes the buffer to Redis in pipelined batches (``XADD`` with an
  approximate ``MAXLEN``).
- The log never loses a record: when Redis cannot be reached, records are appended to
  an append-only spool file (JSON lines) and replayed, in order, when Redis is back,
  and again when the gateway starts (a spool left by a previous run). While the spool
  holds records, new ones go behind them, so the stream keeps the order of answers.
  Replay progress is checkpointed per chunk; a chunk sent again (a crash during replay,
  an acknowledgement lost) adds nothing twice: see ``log_writes`` (each record written once).
- Sampled photos (see ``photos``) are stored in ``photos:{model}`` just before their
  records, by the same writer; they are never spooled: a record that goes to the spool
  loses its photo and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.monitoring.log_writes import STREAM_PREFIX, WriteOnce, stream_name
from gateway.monitoring.photos import (
    DROPPED_MEMORY,
    DROPPED_SPOOLED,
    MAX_PENDING_PHOTO_BYTES,
    PHOTO_KEY,
    mark_dropped,
    photo_fields,
    photo_stream,
)

log = logging.getLogger(__name__)

__all__ = ["STREAM_PREFIX", "PredictionLog", "stream_name"]
RETRY_S = 1.0
LINGER_S = 0.1
"""How long the writer waits, after the first record of a chunk, for more to join it (unless the buffer holds
a whole chunk already, or ``flush`` is waiting). Every write costs the gateway a fixed CPU time: redis-py's
call (0.1 ms back to back, 0.4 ms after an idle pause: cold caches), the vectorised feature pass (0.2 ms
however few records), a task for the socket timeout. Batches of the model's size (4-8 records) made that
30-60 us per record; at a 20 ms linger a gateway answering 1,100 tensors/s still wrote chunks of about 22
(an estimated 15-25 us per record); 100 ms makes chunks of about 110, and a record reaches Redis at most
0.1 s later (nothing reads the log sooner: the skew monitor reads minutes of it, feedback on a prediction
that is not there yet is told to retry)."""


def append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` and fsync, or leave the file as it was (never half a record, e.g. on a full disk)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


class PredictionLog:
    def __init__(
        self,
        connect: Callable[[], aioredis.Redis],
        spool_path: Path,
        *,
        buffer_size: int = 10_000,
        write_batch: int = 256,
        linger_s: float = LINGER_S,
        stream_maxlen: int = 1_000_000,
        photo_maxlen: int = 1_000,
        max_pending_photo_bytes: int = MAX_PENDING_PHOTO_BYTES,
        enrich: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
        confirm: Callable[[aioredis.Redis], Awaitable[None]] | None = None,
    ) -> None:
        self._connect = connect
        self._redis: aioredis.Redis | None = None
        self._spool = spool_path
        self._offset = spool_path.with_name(spool_path.name + ".offset")
        self._buffer: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=buffer_size)
        self._write_batch = write_batch
        self._linger_s = linger_s
        self._once = WriteOnce(stream_maxlen)
        self._photo_maxlen = photo_maxlen
        self._max_photo_bytes = max_pending_photo_bytes
        self._photo_bytes = 0
        """Bytes of sampled photos handed in and not yet stored or dropped."""
        self._enrich = enrich or (lambda records: records)
        """Turns a chunk of handed-in records into what is stored (features instead of input rows)."""
        self._confirm = confirm
        """Raises a RedisError unless enough replicas hold the chunk just written (see ``redis_link``): then the
        chunk is spooled and replayed, and the replay skips whatever survived (each record written once)."""
        self._writer: asyncio.Task | None = None
        self._flushing = 0
        """Callers waiting in ``flush``: while any waits, the writer does not linger."""
        self._hurry = asyncio.Event()
        """Set by ``flush``: ends the writer's linger at once."""
        self._in_flight: list[dict[str, Any]] = []
        """The chunk being written (enriched)."""
        self._taken: list[dict[str, Any]] = []
        """Records taken from the buffer for the next chunk while the writer lingers (not enriched yet)."""
        self._next_retry = 0.0
        spool_path.parent.mkdir(parents=True, exist_ok=True)
        self._spool_lines = self._count_spool_lines()
        """Lines in the spool file, and how many of them were already replayed (kept in memory: checked per write)."""
        self._replayed = self._read_offset()
        self.lost = 0
        self.repeats_skipped = 0
        """Records sent again (after a lost acknowledgement) that Redis already held: not written twice."""
        """Records that neither Redis nor the spool could take (Redis down and the disk full)."""

    # -- the request path -------------------------------------------------------------------------------
    def record(self, record: dict[str, Any]) -> None:
        """Hand a record to the log; never blocks, never drops (a full buffer overflows to the spool),
        unless Redis and the spool's disk both fail (then counted in ``lost``).

        A sampled photo under PHOTO_KEY is kept only while the photos waiting for Redis stay
        under ``max_pending_photo_bytes``; beyond it the record goes on without its photo.
        """
        photo = record.get(PHOTO_KEY)
        if photo is not None:
            if self._photo_bytes + len(photo) > self._max_photo_bytes:
                mark_dropped(record, DROPPED_MEMORY)
            else:
                self._photo_bytes += len(photo)
        try:
            self._buffer.put_nowait(record)
        except asyncio.QueueFull:
            self._append_to_spool(self._enrich([record]))

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name="prediction-log")

    async def flush(self) -> None:
        """Wait until every record handed in so far is in Redis or in the spool (the writer stops lingering)."""
        self._flushing += 1
        self._hurry.set()
        try:
            await self._buffer.join()
        finally:
            self._flushing -= 1

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Write what is buffered (to Redis, or to the spool if Redis is down), then stop.

        Records a stuck write still holds when ``timeout_s`` runs out are spooled too: they may
        then reach Redis twice, never zero times.
        """
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), timeout_s)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        leftover = self._in_flight + self._enrich([*self._taken, *self._drain_buffer(len_limit=None)])
        self._in_flight, self._taken = [], []
        if leftover:
            self._append_to_spool(leftover)
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def pending_photo_bytes(self) -> int:
        """Bytes of sampled photos in memory, waiting for the writer."""
        return self._photo_bytes

    @property
    def spooled(self) -> int:
        """Records waiting in the spool file for Redis to come back."""
        return self._spool_lines - self._replayed

    # -- the writer ---------------------------------------------------------------------------------------
    def _drain_buffer(self, len_limit: int | None) -> list[dict[str, Any]]:
        """Up to ``len_limit`` handed-in records (all with None), as handed in: not enriched yet."""
        records = []
        while not self._buffer.empty() and (len_limit is None or len(records) < len_limit):
            records.append(self._buffer.get_nowait())
        return records

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.spooled and loop.time() >= self._next_retry:
                await self._replay()
            try:
                first = await asyncio.wait_for(self._buffer.get(), RETRY_S if self.spooled else None)
            except TimeoutError:
                continue
            self._taken = [first]
            if self._linger_s > 0 and self._buffer.qsize() < self._write_batch - 1 and not self._flushing:
                self._hurry.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._linger_s)
            records = self._enrich([first, *self._drain_buffer(self._write_batch - 1)])
            self._in_flight, self._taken = records, []
            await self._write(records)
            self._in_flight = []
            for _ in records:
                self._buffer.task_done()

    async def _write(self, records: list[dict[str, Any]]) -> None:
        """To Redis, unless the spool holds older records (then behind them) or Redis is down."""
        if self.spooled or not await self._xadd(records):
            self._append_to_spool(records)

    async def _store_photos(self, records: list[dict[str, Any]]) -> None:
        """XADD the batch's sampled photos to ``photos:{model}``; each record gets its photo's entry id."""
        sampled = [record for record in records if PHOTO_KEY in record]
        if not sampled:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for record in sampled:
                pipe.xadd(
                    photo_stream(record["model"]),
                    photo_fields(record, record[PHOTO_KEY]),
                    maxlen=self._photo_maxlen,
                    approximate=True,
                )
            ids = await pipe.execute()
        for record, photo_id in zip(sampled, ids, strict=True):
            self._photo_bytes -= len(record.pop(PHOTO_KEY))
            record["photo_id"] = photo_id.decode()

    async def _xadd(self, records: list[dict[str, Any]]) -> bool:
        try:
            if self._redis is None:
                self._redis = self._connect()
            await self._store_photos(records)
            self.repeats_skipped += len(records) - await self._once.write(self._redis, records)
            if self._confirm is not None:
                await self._confirm(self._redis)
            return True
        except (RedisError, OSError) as exc:
            log.warning("prediction log: Redis unavailable (%s); spooling to %s", exc, self._spool)
            self._next_retry = asyncio.get_running_loop().time() + RETRY_S
            if self._redis is not None:
                with contextlib.suppress(Exception):
                    await self._redis.aclose()
                self._redis = None
            return False

    # -- the spool -----------------------------------------------------------------------------------------
    def _append_to_spool(self, records: list[dict[str, Any]]) -> None:
        """Append records to the spool file; sampled photos are dropped, never spooled (the spool stays small)."""
        for record in records:
            photo = record.get(PHOTO_KEY)
            if photo is not None:
                self._photo_bytes -= len(photo)
                mark_dropped(record, DROPPED_SPOOLED)
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        try:
            append_whole(self._spool, data)
        except OSError as exc:
            # Redis is unreachable and the disk refuses too: these records cannot be kept. Answers go
            # on (the log never fails a request); the loss is counted and said, loudly.
            self.lost += len(records)
            log.error(
                "prediction log: %d records lost, the spool %s cannot be written: %s", len(records), self._spool, exc
            )
            return
        self._spool_lines += len(records)

    def _count_spool_lines(self) -> int:
        if not self._spool.exists():
            return 0
        with self._spool.open("rb") as handle:
            return sum(1 for _ in handle)

    def _read_offset(self) -> int:
        try:
            return int(self._offset.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    async def _replay(self) -> None:
        """Send the spool to Redis in order, checkpointing each chunk; stop (and retry later) on failure."""
        while self._replayed < self._spool_lines:  # a full buffer may append while we replay: read again
            with self._spool.open("rb") as handle:
                lines = handle.read().splitlines()
            while self._replayed < len(lines):
                chunk = [orjson.loads(line) for line in lines[self._replayed : self._replayed + self._write_batch]]
                if not await self._xadd(chunk):
                    return
                self._replayed += len(chunk)
                self._offset.write_text(str(self._replayed))
        total = self._replayed
        self._spool.unlink()
        self._offset.unlink(missing_ok=True)
        self._spool_lines = self._replayed = 0
        log.info("prediction log: replayed %d spooled record(s)", total)
