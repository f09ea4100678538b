"""What writing each record once costs the log's writer: the at-least-once pipeline it replaced (XADD, HSET,
EXPIRE per record) against the idempotent script (``log_writes.WriteOnce``), side by side on one real
redis-server, in chunks of 256 records; CPU of this process and wall time per record (medians of 9 rounds).

    python -m gateway.bench.log_writes            # an embedded redis-server in a temporary directory
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from gateway.monitoring.embedded_redis import EmbeddedRedis
from gateway.monitoring.feedback import PREDICTION_TTL_S, index_fields, prediction_key
from gateway.monitoring.log_writes import WriteOnce, stream_name

CHUNK, CHUNKS, ROUNDS = 256, 20, 9


def _records(round_: int, chunk: int) -> list[dict]:
    return [
        {
            "model": "mnist",
            "version": "1",
            "label": "7",
            "request_id": f"{round_}-{chunk}-{i}",
            "features": {"ink": 0.5},
        }
        for i in range(CHUNK)
    ]


async def _pipeline(client: aioredis.Redis, records: list[dict]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for record in records:
            pipe.xadd(stream_name(record["model"]), {"record": orjson.dumps(record)}, maxlen=100_000, approximate=True)
            pipe.hset(prediction_key(record["request_id"]), mapping=index_fields(record))
            pipe.expire(prediction_key(record["request_id"]), PREDICTION_TTL_S)
        await pipe.execute()


async def _measure(socket_path: str) -> dict[str, tuple[float, float]]:
    client = aioredis.Redis(unix_socket_path=socket_path)
    once = WriteOnce(stream_maxlen=100_000)
    ways = {
        "pipeline (at least once)": lambda r: _pipeline(client, r),
        "script (once)": lambda r: once.write(client, r),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for round_ in range(ROUNDS):
        for name, write in ways.items():
            chunks = [_records(round_, c) for c in range(CHUNKS)]
            cpu, wall = time.process_time(), time.perf_counter()
            for chunk in chunks:
                await write(chunk)
            per = CHUNK * CHUNKS
            samples[name].append(((time.process_time() - cpu) / per, (time.perf_counter() - wall) / per))
    await client.aclose()
    return {
        name: (sorted(s)[ROUNDS // 2][0], sorted(s, key=lambda x: x[1])[ROUNDS // 2][1]) for name, s in samples.items()
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        server = EmbeddedRedis(Path(work) / "bench.db")
        try:
            results = asyncio.run(_measure(server.socket_path))
        finally:
            server.close()
    print("| write | writer CPU us/record | wall us/record |\n| --- | --- | --- |")
    for name, (cpu, wall) in results.items():
        print(f"| {name} | {cpu * 1e6:.1f} | {wall * 1e6:.1f} |")


if __name__ == "__main__":
    main()
