"""Each record written once: a real redis-server SIGKILLed after it applied a write and before its
acknowledgement reached the log; the log spools and replays the chunk, and Redis holds each record once."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import redis
import redis.asyncio as aioredis

from gateway.monitoring.log_writes import WRITTEN_PREFIX, WriteOnce
from gateway.monitoring.prediction_log import PredictionLog
from tests.monitoring.test_prediction_log import drain_and_close, records
from tests.redis_server import RedisServer


class AckCutter:
    """A TCP proxy to a real redis-server. Once armed, when the server answers a script call (EVAL /
    EVALSHA: the log's write), it SIGKILLs the server and drops the answer. The server fsyncs its
    append-only file before it answers (``appendfsync always``), so the write survives the kill: the
    write applied, its acknowledgement lost."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.armed = False
        self.killed = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        listener = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = listener.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.server.port)
        except OSError:
            writer.close()
            return
        script_sent = asyncio.Event()

        async def to_server() -> None:
            while data := await reader.read(65536):
                if b"EVALSHA" in data or b"\r\nEVAL\r\n" in data:
                    script_sent.set()
                upstream.write(data)
                await upstream.drain()
            upstream.close()

        async def to_client() -> None:
            while data := await upstream_reader.read(65536):
                if self.armed and script_sent.is_set():
                    self.armed = False
                    self.server.process.kill()  # the answer is in `data`; it never reaches the log
                    self.server.process.wait()
                    self.killed.set()
                    break
                script_sent.clear()
                writer.write(data)
                await writer.drain()
            writer.close()

        with contextlib.suppress(asyncio.CancelledError):  # the test's loop ends with the connection open
            await asyncio.gather(to_server(), to_client(), return_exceptions=True)


def test_a_chunk_replayed_after_its_acknowledgement_was_lost_is_not_written_twice(redis_server, tmp_path) -> None:
    spool = tmp_path / "spool.jsonl"
    cutter = AckCutter(redis_server)

    async def scenario() -> PredictionLog:
        await cutter.start()
        log = PredictionLog(
            lambda: aioredis.Redis(port=cutter.port, socket_timeout=2, socket_connect_timeout=2), spool, write_batch=8
        )
        log.start()
        for record in records(5):
            log.record(record)
        await log.flush()
        cutter.armed = True
        for record in records(5, start=5):
            log.record(record)
        await asyncio.wait_for(cutter.killed.wait(), 10)
        await log.flush()
        assert log.spooled == 5, "the chunk whose acknowledgement was lost is spooled for a replay"
        redis_server.start()  # from its append-only file
        landed = [r["request_id"] for r in redis_server.records("mnist")]
        assert landed == [f"r{i}" for i in range(10)], "the killed write had landed before the kill"
        await drain_and_close(log)
        return log

    log = asyncio.run(scenario())
    assert [r["request_id"] for r in redis_server.records("mnist")] == [f"r{i}" for i in range(10)]
    assert log.repeats_skipped == 5


def test_records_keep_their_id_through_the_spool_and_a_restart(redis_server, tmp_path) -> None:
    """A record numbered by one run and replayed by the next is still skipped if Redis has it."""
    client = redis.Redis(port=redis_server.port)
    first = WriteOnce(stream_maxlen=1000)

    async def write(once: WriteOnce, chunk: list[dict]) -> int:
        async with aioredis.Redis(port=redis_server.port) as connection:
            return await once.write(connection, chunk)

    chunk = records(4)
    assert asyncio.run(write(first, chunk)) == 4
    ids = [record["log_id"] for record in chunk]
    assert len(set(ids)) == 4
    replayed = [dict(record) for record in chunk] + records(2, start=4)  # as read back from a spool, then new
    assert asyncio.run(write(WriteOnce(stream_maxlen=1000), replayed)) == 2
    assert [r["request_id"] for r in redis_server.records("mnist")] == [f"r{i}" for i in range(6)]
    marks = list(client.scan_iter(f"{WRITTEN_PREFIX}*"))
    assert len(marks) == 2 and all(client.ttl(mark) > 0 for mark in marks)  # one per writer, expiring


def test_spooled_lines_carry_the_id_of_their_first_write(redis_server, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"

    async def scenario() -> None:
        log = PredictionLog(lambda: aioredis.Redis(port=redis_server.port, socket_connect_timeout=1), spool)
        log.start()
        redis_server.stop()
        for record in records(3):
            log.record(record)
        await log.flush()
        await log.aclose()

    asyncio.run(scenario())
    assert all('"log_id":' in line for line in spool.read_text().splitlines())
