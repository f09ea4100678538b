"""Idempotency-Key: a retried upload is answered once and logged once (REST header, gRPC metadata)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from gateway.bench.photos import digit_photo
from gateway.core.errors import InvalidInput, Unavailable
from gateway.core.types import Identity
from gateway.ingress.idempotency import IdempotentCalls, request_id_for
from gateway.security.pki import PkiPaths
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer

APP = Identity(name="app", role="app")
OTHER = Identity(name="other", role="app")


def test_keys_are_scoped_to_the_caller_and_validated() -> None:
    assert request_id_for(APP, "k1") == request_id_for(APP, "k1")
    assert request_id_for(APP, "k1") != request_id_for(OTHER, "k1")
    with pytest.raises(InvalidInput):
        request_id_for(APP, "has spaces")


def test_a_concurrent_retry_joins_the_running_call_and_a_later_one_replays_it() -> None:
    async def scenario() -> None:
        calls: IdempotentCalls[str] = IdempotentCalls()
        release = asyncio.Event()
        runs = 0

        async def work() -> str:
            nonlocal runs
            runs += 1
            await release.wait()
            return "answer"

        first = asyncio.ensure_future(calls.run("r1", work))
        second = asyncio.ensure_future(calls.run("r1", work))
        release.set()
        assert await first == ("answer", False)
        assert await second == ("answer", True)
        assert await calls.run("r1", work) == ("answer", True)
        assert runs == 1

    asyncio.run(scenario())


def test_a_failed_call_is_forgotten_so_a_retry_runs_again() -> None:
    async def scenario() -> None:
        calls: IdempotentCalls[str] = IdempotentCalls()
        outcomes = [Unavailable("backend down"), "answer"]

        async def work() -> str:
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        with pytest.raises(Unavailable):
            await calls.run("r1", work)
        assert await calls.run("r1", work) == ("answer", False)

    asyncio.run(scenario())


def test_a_call_whose_only_caller_leaves_is_cancelled() -> None:
    async def scenario() -> None:
        calls: IdempotentCalls[str] = IdempotentCalls()
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def work() -> str:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"

        caller = asyncio.ensure_future(calls.run("r1", work))
        await started.wait()
        caller.cancel()
        await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(scenario())


def test_expired_answers_are_forgotten() -> None:
    async def scenario() -> None:
        calls: IdempotentCalls[int] = IdempotentCalls(ttl_s=0.0)
        counter = iter(range(10))

        async def work() -> int:
            return next(counter)

        assert await calls.run("r1", work) == (0, False)
        assert await calls.run("r1", work) == (1, False)

    asyncio.run(scenario())


def test_retried_uploads_are_answered_and_logged_once(
    pki: PkiPaths, redis_server: RedisServer, tmp_path, heldout_sample
) -> None:
    x, _ = heldout_sample
    photo = digit_photo(x[3], np.random.default_rng(3))
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    try:
        with gateway.client() as client:
            headers = {"content-type": "image/jpeg", "idempotency-key": "photo-123"}
            first = client.post("/api/v1/models/mnist/classify", content=photo, headers=headers)
            retry = client.post("/api/v1/models/mnist/classify", content=photo, headers=headers)
            bad_key = client.post(
                "/api/v1/models/mnist/classify", content=photo, headers={**headers, "idempotency-key": "a b"}
            )
            with gateway.grpc_channel() as channel:
                stub = classifier_pb2_grpc.ClassifierStub(channel)
                message = classifier_pb2.ClassifyRequest(model="mnist", image=photo)
                metadata = (("idempotency-key", "photo-456"),)
                grpc_answers = [stub.Classify(message, metadata=metadata, timeout=30) for _ in range(2)]
            marker = client.post("/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/jpeg"})
        assert first.status_code == retry.status_code == marker.status_code == 200
        assert bad_key.status_code == 400
        assert first.json()["request_id"] == retry.json()["request_id"] == request_id_for(APP, "photo-123")
        assert "idempotent-replayed" not in first.headers and retry.headers["idempotent-replayed"] == "true"
        assert grpc_answers[0].request_id == grpc_answers[1].request_id == request_id_for(APP, "photo-456")
        marker_id = marker.json()["request_id"]
        deadline = time.monotonic() + 15
        logged: list[str] = []
        while marker_id not in logged:
            assert time.monotonic() < deadline, "the records never reached Redis"
            logged = [r["request_id"] for r in redis_server.records("mnist")]
    finally:
        stop_gateway(gateway)
    assert logged.count(first.json()["request_id"]) == 1
    assert logged.count(grpc_answers[0].request_id) == 1
    assert len(logged) == 3
