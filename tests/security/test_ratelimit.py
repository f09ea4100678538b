"""Per-identity rate limits: the token bucket, its fallback, and one limit shared by two real gateway
processes through one real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from gateway.bench.photos import digit_png
from gateway.core.errors import RateLimited
from gateway.core.types import Identity
from gateway.security.pki import PkiPaths
from gateway.security.ratelimit import LocalBucket, RateLimiter
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import RunningGateway, start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer, free_port
from tests.security.helpers import metric_value

APP = Identity("app", "app")
LIMITS = {"GATEWAY_LIMITS_RATE_PER_S": "0.01", "GATEWAY_LIMITS_BURST": "5"}
"""Five requests, then one more every 100 s: nothing refills during a test."""


def test_local_bucket_refills_at_its_rate_up_to_its_size() -> None:
    bucket = LocalBucket(tokens=2.0, updated=0.0)
    assert bucket.take(1.0, 2, now=0.0) == 0.0 and bucket.take(1.0, 2, now=0.0) == 0.0
    assert bucket.take(1.0, 2, now=0.0) == pytest.approx(1.0)
    assert bucket.take(1.0, 2, now=0.5) == pytest.approx(0.5)
    assert bucket.take(1.0, 2, now=1.0) == 0.0
    assert bucket.take(1.0, 2, now=100.0) == 0.0 and bucket.take(1.0, 2, now=100.0) == 0.0  # capped at 2
    assert bucket.take(1.0, 2, now=100.0) > 0


def test_an_unreachable_redis_fails_open_to_a_local_bucket_without_waiting() -> None:
    port = free_port()  # nothing listens there
    fallbacks: list[int] = []

    async def scenario() -> None:
        limiter = RateLimiter(
            1.0,
            2,
            lambda: aioredis.Redis(port=port, socket_connect_timeout=5),
            timeout_s=0.2,
            on_fallback=lambda: fallbacks.append(1),
        )
        started = time.monotonic()
        await limiter.take(APP, "mnist")
        await limiter.take(APP, "mnist")
        with pytest.raises(RateLimited) as raised:
            await limiter.take(APP, "mnist")
        assert time.monotonic() - started < 1.0
        assert raised.value.retry_after_s >= 1 and raised.value.code == "rate_limited"
        await limiter.take(Identity("other", "app"), "mnist")  # one bucket per identity
        await limiter.aclose()

    asyncio.run(scenario())
    assert fallbacks == [1]  # Redis is not asked again at once after a failure


def test_off_by_default() -> None:
    limiter = RateLimiter(0.0, 0, None)
    assert not limiter.enabled
    for _ in range(100):
        asyncio.run(limiter.take(APP, "mnist"))


def _classify(client: httpx.Client, png: bytes) -> httpx.Response:
    return client.post("/api/v1/models/mnist/classify", content=png, headers={"content-type": "image/png"})


def test_the_limit_is_global_across_replicas_sharing_redis(
    pki: PkiPaths, redis_server: RedisServer, tmp_path: Path, heldout_sample
) -> None:
    png = digit_png(heldout_sample[0][2])
    first = start_gateway_on_redis(pki, redis_server, tmp_path / "spool-1", env=LIMITS)
    second: RunningGateway | None = None
    try:
        second = start_gateway_on_redis(pki, redis_server, tmp_path / "spool-2", env=LIMITS)
        with first.client("app") as on_first, second.client("app") as on_second:
            answers = [_classify(on_first, png) for _ in range(3)] + [_classify(on_second, png) for _ in range(3)]
            assert [a.status_code for a in answers] == [200] * 5 + [429]  # one bucket of 5 for both replicas
            refused = answers[-1]
            assert refused.json()["error"]["code"] == "rate_limited" and "'app'" in refused.json()["error"]["message"]
            assert 90 <= int(refused.headers["retry-after"]) <= 101
            tensors = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}]}
            assert on_first.post("/v2/models/mnist/infer", json=tensors).status_code == 429  # every surface
        with first.grpc_channel("app") as channel, pytest.raises(grpc.RpcError) as raised:
            classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(model="mnist", image=png), timeout=30
            )
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        pushback = dict(raised.value.trailing_metadata())["grpc-retry-pushback-ms"]
        assert 90_000 <= int(pushback) <= 101_000
        with second.client("operator") as operator:  # another identity has its own bucket
            assert _classify(operator, png).status_code == 200
            metrics = operator.get("/metrics").text
        assert metric_value(metrics, "gateway_rate_limited_total", client="app") == 1

        os.kill(redis_server.process.pid, signal.SIGSTOP)  # Redis hangs: no answer, no error
        try:
            with first.client("operator") as operator:
                for _ in range(3):
                    started = time.monotonic()
                    assert _classify(operator, png).status_code == 200  # fail open: this replica's bucket
                    assert time.monotonic() - started < 2.0
                metrics = operator.get("/metrics").text
            assert metric_value(metrics, "gateway_rate_limit_redis_fallbacks_total") >= 1
            assert any("local buckets" in line for line in first.output)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        first.assert_alive()
    finally:
        stop_gateway(first)
        if second is not None:
            stop_gateway(second)


def test_per_model_buckets_when_configured() -> None:
    async def scenario() -> None:
        shared = RateLimiter(0.001, 1, None)
        per_model = RateLimiter(0.001, 1, None, per_model=True)
        for limiter in (shared, per_model):
            await limiter.take(APP, "mnist")
        with pytest.raises(RateLimited, match="over its rate limit \\("):
            await shared.take(APP, "hotdog")
        await per_model.take(APP, "hotdog")
        with pytest.raises(RateLimited, match="on model 'hotdog'"):
            await per_model.take(APP, "hotdog")

    asyncio.run(scenario())
