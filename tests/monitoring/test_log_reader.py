"""The live window read back from a real redis-server: newest N of a version, none older than max_age_s.

Ages are set through the records' stream ids (milliseconds of the server's clock), never by waiting.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gateway.monitoring.log_reader import LogReader
from tests.redis_server import RedisServer

AGES_S = (7200, 3600, 900, 300, 120, 60, 10)
"""Ages of the logged records, oldest first; far from the 600 s limit the tests use."""


def recent(server: RedisServer, *args, **kwargs) -> list[str]:
    async def read() -> list[str]:
        reader = LogReader(lambda: aioredis.Redis(port=server.port))
        try:
            return [r["request_id"] for r in await reader.recent(*args, **kwargs)]
        finally:
            await reader.aclose()

    return asyncio.run(read())


def recent_by_surface(server: RedisServer, *args) -> dict[str | None, list[str]]:
    async def read() -> dict[str | None, list[str]]:
        reader = LogReader(lambda: aioredis.Redis(port=server.port))
        try:
            found = await reader.recent_by_surface(*args)
            return {surface: [r["request_id"] for r in records] for surface, records in found.items()}
        finally:
            await reader.aclose()

    return asyncio.run(read())


def test_without_an_age_limit_the_window_is_the_newest_records(redis_server) -> None:
    redis_server.log_aged(AGES_S)
    assert recent(redis_server, "mnist", "1", 3) == ["v1-120s", "v1-60s", "v1-10s"]
    assert len(recent(redis_server, "mnist", "1", 100)) == len(AGES_S)


def test_an_age_limit_leaves_out_older_records(redis_server) -> None:
    redis_server.log_aged(AGES_S)
    assert recent(redis_server, "mnist", "1", 100, max_age_s=600) == ["v1-300s", "v1-120s", "v1-60s", "v1-10s"]
    assert recent(redis_server, "mnist", "1", 2, max_age_s=600) == ["v1-60s", "v1-10s"], "and the count still holds"
    assert recent(redis_server, "mnist", "1", 100, max_age_s=5) == []


def test_other_versions_do_not_count_towards_the_window(redis_server) -> None:
    redis_server.log_aged((500, 400, 30))
    redis_server.log_aged((20, 5), version="2")
    assert recent(redis_server, "mnist", "1", 10, max_age_s=450) == ["v1-400s", "v1-30s"]
    assert recent(redis_server, "mnist", "2", 10, max_age_s=450) == ["v2-20s", "v2-5s"]


def test_one_read_gives_each_surface_its_own_newest_window(redis_server) -> None:
    logged = [(500, "1", "tensor"), (450, "1", "photo"), (400, "1", "tensor"), (350, "1", "photo")]
    logged += [(300, "1", "tensor"), (30, "1", "tensor"), (25, "2", "photo"), (20, "1", "photo"), (15, "2", "photo")]
    for age, version, surface in logged:  # oldest first, as stream ids must grow (version 2: never counted)
        redis_server.log_aged((age,), version=version, surface=surface)
    found = recent_by_surface(redis_server, "mnist", "1", 2, 0, ("photo", "tensor", None))
    assert found == {
        "photo": ["v1-350s", "v1-20s"],
        "tensor": ["v1-300s", "v1-30s"],
        None: ["v1-30s", "v1-20s"],
    }
    for surface, ids in found.items():  # the same as one read per surface
        assert recent(redis_server, "mnist", "1", 2, surface=surface) == ids
