"""Sampled photos: stored beside their records in a bounded stream, never spooled, bounded in memory."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis

from gateway.monitoring.feedback import prediction_key
from gateway.monitoring.photos import (
    PHOTO_KEY,
    PhotoSampler,
    content_type_of,
    photo_stream,
    read_photo,
)
from tests.monitoring.test_prediction_log import drain_and_close, make_log
from tests.redis_server import RedisServer

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


def sampled(request_id: str, photo: bytes = JPEG, model: str = "mnist") -> dict:
    return {"model": model, "version": "1", "request_id": request_id, "label": "7", PHOTO_KEY: photo}


def photo_entries(server: RedisServer, model: str = "mnist") -> list[dict]:
    return [fields for _, fields in redis.Redis(port=server.port).xrange(photo_stream(model))]


def test_content_types_come_from_the_signature() -> None:
    assert content_type_of(JPEG) == "image/jpeg"
    assert content_type_of(PNG) == "image/png"
    assert content_type_of(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert content_type_of(b"GIF89a") == "application/octet-stream"


def test_the_sampler_keeps_the_configured_fraction() -> None:
    draws = iter([0.05, 0.5, 0.24, 0.99])
    sampler = PhotoSampler(0.25, draw=lambda: next(draws))
    assert [sampler() for _ in range(4)] == [True, False, True, False]

    def never(*_) -> float:
        raise AssertionError("a fraction of 0 must not draw")

    off = PhotoSampler(0.0, draw=never)
    assert not any(off() for _ in range(100))
    assert all(PhotoSampler(1.0)() for _ in range(100))


def test_a_sampled_photo_is_stored_as_uploaded_and_found_by_request_id(redis_server, tmp_path) -> None:
    async def scenario() -> None:
        log = make_log(redis_server, tmp_path / "spool.jsonl")
        log.start()
        log.record(sampled("with-photo"))
        log.record({"model": "mnist", "version": "1", "request_id": "without", "label": "3"})
        await log.flush()
        assert log.pending_photo_bytes == 0
        await log.aclose()
        client = aioredis.Redis(port=redis_server.port)
        stored = await read_photo(client, "with-photo")
        assert await read_photo(client, "without") is None
        assert await read_photo(client, "never-logged") is None
        await client.aclose()
        assert stored is not None
        assert (stored.photo, stored.content_type, stored.model, stored.version) == (JPEG, "image/jpeg", "mnist", "1")

    asyncio.run(scenario())
    with_photo, without = redis_server.records("mnist")
    assert PHOTO_KEY not in with_photo and "photo" not in with_photo
    [(photo_id, entry)] = redis.Redis(port=redis_server.port).xrange(photo_stream("mnist"))
    assert with_photo["photo_id"] == photo_id.decode()
    assert entry[b"request_id"] == b"with-photo" and entry[b"photo"] == JPEG
    assert (
        redis.Redis(port=redis_server.port).hget(prediction_key("with-photo"), "photo_id").decode()
        == (with_photo["photo_id"])
    )
    assert "photo_id" not in without and "photo_dropped" not in without


def test_photos_are_dropped_not_spooled_while_redis_is_down(redis_server, tmp_path) -> None:
    spool = tmp_path / "spool.jsonl"

    async def scenario() -> None:
        log = make_log(redis_server, spool)
        log.start()
        redis_server.stop()
        for i in range(20):
            log.record(sampled(f"r{i}"))
        await log.flush()
        assert log.spooled == 20 and log.pending_photo_bytes == 0
        assert spool.stat().st_size < 20 * 200, "the spool holds records, not photos"
        redis_server.start()
        await drain_and_close(log)

    asyncio.run(scenario())
    replayed = redis_server.records("mnist")
    assert [r["request_id"] for r in replayed] == [f"r{i}" for i in range(20)], "every record still arrives"
    assert all(r["photo_id"] is None and r["photo_dropped"] == "spooled" for r in replayed)
    assert photo_entries(redis_server) == []


def test_photos_waiting_for_redis_are_bounded_in_memory(redis_server, tmp_path) -> None:
    async def scenario() -> None:
        log = make_log(redis_server, tmp_path / "spool.jsonl", max_pending_photo_bytes=3 * len(JPEG))
        for i in range(5):  # the writer is not started: every photo waits in memory
            log.record(sampled(f"r{i}"))
        assert log.pending_photo_bytes == 3 * len(JPEG)
        log.start()
        await drain_and_close(log)

    asyncio.run(scenario())
    records = redis_server.records("mnist")
    assert [r["photo_id"] is not None for r in records] == [True, True, True, False, False]
    assert {r.get("photo_dropped") for r in records[3:]} == {"memory_limit"}
    assert len(photo_entries(redis_server)) == 3


def test_the_photo_stream_is_bounded_by_its_own_maxlen(redis_server, tmp_path) -> None:
    big = JPEG + b"\x00" * 8192  # larger than a stream node (4 KiB), so approximate trimming is close to exact

    async def scenario() -> None:
        log = make_log(redis_server, tmp_path / "spool.jsonl", photo_maxlen=10, stream_maxlen=1000)
        log.start()
        for i in range(60):
            log.record(sampled(f"r{i}", photo=big))
        await drain_and_close(log)

    asyncio.run(scenario())
    kept = redis.Redis(port=redis_server.port).xlen(photo_stream("mnist"))
    assert 10 <= kept < 60 / 2, f"{kept} photos kept for photo_maxlen 10"
    assert len(redis_server.records("mnist")) == 60, "the records stream has its own, larger bound"
