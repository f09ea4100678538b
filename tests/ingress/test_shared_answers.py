"""SharedAnswers against a real redis-server: two 'processes' (two stores) run one request id once."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from gateway.core.types import Prediction
from gateway.ingress.shared_answers import SharedAnswers
from tests.redis_server import RedisServer

ANSWER = Prediction("r1", "mnist", "1", "7", {"7": 0.9, "1": 0.1}, 3.5)


def test_two_processes_run_one_request_id_once_and_the_other_replays(redis_server: RedisServer) -> None:
    runs = []

    async def scenario() -> list[tuple[Prediction, bool]]:
        def connect() -> aioredis.Redis:
            return aioredis.Redis(port=redis_server.port)

        first, second = SharedAnswers(connect, 60), SharedAnswers(connect, 60)
        started = asyncio.Event()

        async def work() -> Prediction:
            runs.append(1)
            started.set()
            await asyncio.sleep(0.1)  # a run that takes a while (the answers are the same if the retry comes later)
            return ANSWER

        async def retry() -> tuple[Prediction, bool]:
            await started.wait()
            return await second.run("r1", work)

        answers = await asyncio.gather(first.run("r1", work), retry())
        await first.aclose()
        await second.aclose()
        return answers

    answers = asyncio.run(scenario())
    assert runs == [1]
    assert answers == [(ANSWER, False), (ANSWER, True)]


def test_a_failed_run_frees_the_request_id(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[Prediction, bool]:
        store = SharedAnswers(lambda: aioredis.Redis(port=redis_server.port), 60)

        async def failing() -> Prediction:
            raise RuntimeError("backend down")

        async def working() -> Prediction:
            return ANSWER

        with pytest.raises(RuntimeError):
            await store.run("r2", failing)
        answer = await store.run("r2", working)
        await store.aclose()
        return answer

    assert asyncio.run(scenario()) == (ANSWER, False)
    assert redis.Redis(port=redis_server.port).get("idempotency:r2") is not None


def test_without_redis_the_request_runs_here() -> None:
    def unreachable() -> aioredis.Redis:
        raise redis.ConnectionError("the embedded Redis is not started yet")

    async def working() -> Prediction:
        return ANSWER

    assert asyncio.run(SharedAnswers(unreachable, 60).run("r3", working)) == (ANSWER, False)
