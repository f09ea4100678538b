"""The prediction log against a real redis-server: order, outages, restarts, overflow; nothing lost."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from gateway.monitoring.prediction_log import PredictionLog
from tests.conftest import REPO_ROOT
from tests.redis_server import RedisServer, free_port


def make_log(server: RedisServer, spool: Path, **kwargs) -> PredictionLog:
    return PredictionLog(
        lambda: aioredis.Redis(port=server.port, socket_timeout=2, socket_connect_timeout=2), spool, **kwargs
    )


async def drain_and_close(log: PredictionLog, timeout_s: float = 10) -> None:
    """Wait until the buffer is written and the spool replayed (the writer retries on its own schedule), then close."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    await log.flush()
    while log.spooled:
        assert asyncio.get_running_loop().time() < deadline, "the spool was not replayed"
        await asyncio.sleep(0.05)  # waits for the writer's retry; it synchronises nothing itself
    await log.flush()
    await log.aclose()


def records(n: int, model: str = "mnist", start: int = 0) -> list[dict]:
    return [{"model": model, "request_id": f"r{i}", "label": str(i % 10)} for i in range(start, start + n)]


def test_records_reach_one_stream_per_model_in_order(redis_server, tmp_path) -> None:
    async def scenario() -> None:
        log = make_log(redis_server, tmp_path / "spool.jsonl")
        log.start()
        for record in records(300) + records(3, model="hotdog"):
            log.record(record)
        await log.flush()
        await log.aclose()

    asyncio.run(scenario())
    assert [r["request_id"] for r in redis_server.records("mnist")] == [f"r{i}" for i in range(300)]
    assert len(redis_server.records("hotdog")) == 3


def test_a_flush_ends_the_writers_linger_and_a_chunk_gathers_what_came_during_it(redis_server, tmp_path) -> None:
    """The writer waits ``linger_s`` after a chunk's first record for more to join it; ``flush`` does not wait it
    out: with a linger of a minute, the flush returns within the test's 10 s bound, every record written."""

    async def scenario() -> list[int]:
        log = make_log(redis_server, tmp_path / "spool.jsonl", linger_s=60.0)
        chunks: list[int] = []
        write = log._write

        async def counted(chunk: list[dict]) -> None:
            chunks.append(len(chunk))
            await write(chunk)

        log._write = counted
        log.start()
        log.record(records(1)[0])
        await asyncio.sleep(0)  # the writer takes the first record and lingers
        for record in records(4, start=1):
            log.record(record)
        await asyncio.wait_for(log.flush(), 10)
        await log.aclose()
        return chunks

    assert asyncio.run(scenario()) == [5]
    assert [r["request_id"] for r in redis_server.records("mnist")] == [f"r{i}" for i in range(5)]


def test_an_outage_spools_to_disk_and_replays_in_order(redis_server, tmp_path) -> None:
    spool = tmp_path / "spool.jsonl"

    async def scenario() -> None:
        log = make_log(redis_server, spool)
        log.start()
        for record in records(50):
            log.record(record)
        await log.flush()
        redis_server.stop()
        for record in records(100, start=50):
            log.record(record)
        await log.flush()
        assert log.spooled == 100 and spool.exists()
        redis_server.start()
        for record in records(20, start=150):
            log.record(record)
        await drain_and_close(log)

    asyncio.run(scenario())
    assert [r["request_id"] for r in redis_server.records("mnist")] == [f"r{i}" for i in range(170)]
    assert not spool.exists()


def test_a_spool_left_by_a_previous_run_is_replayed_at_start(redis_server, tmp_path) -> None:
    spool = tmp_path / "spool.jsonl"
    redis_server.stop()

    async def first_run() -> None:
        log = make_log(redis_server, spool)
        log.start()
        for record in records(40):
            log.record(record)
        await log.aclose()

    async def second_run() -> None:
        log = make_log(redis_server, spool)
        log.start()
        log.record(records(1, start=40)[0])
        await log.flush()
        await log.aclose()

    asyncio.run(first_run())
    assert len(spool.read_text().splitlines()) == 40
    redis_server.start()
    asyncio.run(second_run())
    assert [r["request_id"] for r in redis_server.records("mnist")] == [f"r{i}" for i in range(41)]


def test_a_full_buffer_overflows_to_the_spool_never_drops(redis_server, tmp_path) -> None:
    async def scenario() -> None:
        log = make_log(redis_server, tmp_path / "spool.jsonl", buffer_size=5)
        for record in records(25):
            log.record(record)
        assert log.spooled == 20
        log.start()
        await drain_and_close(log)

    asyncio.run(scenario())
    assert sorted(r["request_id"] for r in redis_server.records("mnist")) == sorted(f"r{i}" for i in range(25))


def test_records_overflowing_during_a_replay_are_not_lost(redis_server, tmp_path) -> None:
    spool = tmp_path / "spool.jsonl"
    spool.write_text("".join(json.dumps(r) + "\n" for r in records(2000)))

    async def scenario() -> None:
        log = make_log(redis_server, spool, buffer_size=1, write_batch=50)
        log.start()
        for record in records(300, start=2000):
            log.record(record)  # the buffer holds one: the rest overflow to the spool, some while it replays
            await asyncio.sleep(0)
        await drain_and_close(log)

    asyncio.run(scenario())
    assert sorted(r["request_id"] for r in redis_server.records("mnist")) == sorted(f"r{i}" for i in range(2300))
    assert not spool.exists()


FULL_DISK_SCRIPT = """
import asyncio, json, resource, sys
from pathlib import Path
import redis.asyncio as aioredis
from gateway.monitoring.prediction_log import PredictionLog

spool = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # the disk holds 4 KiB of spool

async def main():
    log = PredictionLog(lambda: aioredis.Redis(port=int(sys.argv[2]), socket_connect_timeout=1), spool, buffer_size=8)
    log.start()
    for i in range(200):  # Redis is down: records overflow to the spool until the "disk" is full
        log.record({"model": "mnist", "request_id": f"r{i}", "label": str(i % 10)})
    await log.flush()
    lost = log.lost
    await log.aclose(timeout_s=2)
    print(json.dumps({"lost": lost, "spooled": log.spooled}))

asyncio.run(main())
"""


def test_a_full_disk_during_an_outage_loses_records_countably_never_half_a_line(tmp_path) -> None:
    """Redis down and the spool's disk full (a real file-size limit, EFBIG): requests go on, the loss is
    counted, and the spool holds only whole records (a short write is rolled back)."""
    spool = tmp_path / "spool.jsonl"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(spool), str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.splitlines()[-1])
    lines = spool.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the spool ends in the middle of a record"
    kept = [json.loads(line) for line in lines[:-1]]
    assert counts["lost"] > 0 and len(kept) > 0
    assert len(kept) + counts["lost"] == 200
    assert "records lost, the spool" in result.stderr
