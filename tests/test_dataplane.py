"""The data plane (and the parts the composition root wires to it), on the real model, driven directly."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

import gateway.dataplane as dataplane_module
from gateway.app import Gateway, build_gateway
from gateway.bench.photos import digit_png
from gateway.config import load_settings
from gateway.core.errors import DeadlineExceeded, NotFound, Overloaded, PermissionDenied
from gateway.core.types import Identity, PhotoRequest, Route, RowsRequest
from gateway.monitoring.photos import PHOTO_KEY
from gateway.monitoring.stores import INPUT_KEY
from gateway.security.identity import DEV_IDENTITY
from tests.conftest import MNIST_STABLE, MODEL_REPO
from tests.redis_server import RedisServer

STABLE = Route(MNIST_STABLE, "stable")
"""Where rows without a version run (mnist's stable version): the edge routes before the data plane."""


def make_service(**limits) -> Gateway:
    settings = load_settings(
        overrides={"tls": {"enabled": False}, "models": {"repo": MODEL_REPO}, "limits": limits}, environ={}
    )
    return build_gateway(settings)


def request(photo: bytes, **fields) -> PhotoRequest:
    return PhotoRequest(model="mnist", photo=photo, identity=DEV_IDENTITY, **fields)


def test_classifies_and_reports_batching_settings(heldout_sample) -> None:
    x, y = heldout_sample

    async def scenario() -> None:
        service = make_service()
        prediction = await service.plane.classify(request(digit_png(x[42])))
        assert prediction.label == str(y[42]) and prediction.version == MNIST_STABLE
        description = service.registry.describe_model("mnist")
        assert description["batching"]["max_batch_size"] == 64
        assert description["batching"]["max_queue_delay_microseconds"] == 2000
        await service.aclose()

    asyncio.run(scenario())


def test_unknown_model_and_version_name_what_exists(heldout_sample) -> None:
    async def scenario() -> None:
        service = make_service()
        with pytest.raises(NotFound, match="available: hotdog, mnist"):
            await service.plane.classify(PhotoRequest(model="cifar", photo=b"", identity=DEV_IDENTITY))
        with pytest.raises(NotFound, match="loaded: 1"):
            await service.plane.classify(request(b"", version="7"))
        await service.aclose()

    asyncio.run(scenario())


def test_deadline_spent_before_batching_is_504(heldout_sample) -> None:
    async def scenario() -> None:
        service = make_service()
        photo = digit_png(heldout_sample[0][0])
        with pytest.raises(DeadlineExceeded, match="before batching"):
            await service.plane.classify(request(photo, timeout_s=1e-9))
        await service.aclose()

    asyncio.run(scenario())


def test_photos_waiting_for_decoding_are_bounded(monkeypatch, heldout_sample) -> None:
    entered, release = threading.Event(), threading.Event()
    real_prepare = dataplane_module.prepare_photo

    def held_prepare(*args, **kwargs):
        entered.set()
        release.wait(timeout=30)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(dataplane_module, "prepare_photo", held_prepare)
    photo = digit_png(heldout_sample[0][5])

    async def scenario() -> None:
        service = make_service(max_pending_photos=1)
        first = asyncio.create_task(service.plane.classify(request(photo)))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        with pytest.raises(Overloaded, match="1 photos are waiting"):
            await service.plane.classify(request(photo))
        release.set()
        assert (await first).label == str(heldout_sample[1][5])
        await service.aclose()

    asyncio.run(scenario())


def make_logged_service(redis_server: RedisServer, tmp_path: Path, **sections: dict) -> Gateway:
    """A service whose prediction log goes to ``redis_server`` (not started: ``await service.start()``)."""
    predictions = {"redis_url": f"redis://127.0.0.1:{redis_server.port}/0", "spool_dir": tmp_path / "spool"}
    overrides = {
        "tls": {"enabled": False},
        "models": {"repo": MODEL_REPO},
        **sections,
        "predictions": {**predictions, **sections.get("predictions", {})},
    }
    return build_gateway(load_settings(overrides=overrides, environ={}))


def digit_rows(x: np.ndarray, count: int) -> np.ndarray:
    return (x[:count] / 255.0).astype(np.float32)[:, np.newaxis]


def test_records_carry_the_size_of_the_batch_their_row_ran_in(redis_server, tmp_path, heldout_sample) -> None:
    x, _ = heldout_sample

    async def scenario() -> None:
        service = make_logged_service(redis_server, tmp_path)
        await service.start()
        await service.plane.infer(RowsRequest("mnist", digit_rows(x, 5), DEV_IDENTITY, STABLE, request_id="rows"))
        await service.plane.classify(request(digit_png(x[5]), request_id="alone"))
        await service.aclose()

    asyncio.run(scenario())
    records = {r["request_id"]: r for r in redis_server.records("mnist")}
    assert [records[f"rows.{i}"]["batch_size"] for i in range(5)] == [5] * 5, "five rows submitted together: one batch"
    assert records["alone"]["batch_size"] == 1
    for record in records.values():
        assert not {"photo_id", "photo_dropped", PHOTO_KEY, INPUT_KEY} & set(record), "sampling is off by default"


def test_unbatched_records_have_batch_size_one(redis_server, tmp_path, heldout_sample) -> None:
    async def scenario() -> None:
        service = make_logged_service(redis_server, tmp_path, batching={"enabled": False})
        await service.start()
        await service.plane.infer(
            RowsRequest("mnist", digit_rows(heldout_sample[0], 4), DEV_IDENTITY, STABLE, request_id="rows")
        )
        await service.aclose()

    asyncio.run(scenario())
    assert [r["batch_size"] for r in redis_server.records("mnist")] == [1, 1, 1, 1]


def test_sampled_photos_are_kept_as_uploaded_for_operators(redis_server, tmp_path, heldout_sample) -> None:
    x, _ = heldout_sample
    photo = digit_png(x[7])

    async def scenario() -> None:
        service = make_logged_service(redis_server, tmp_path, predictions={"sample_photos": 1.0})
        await service.start()
        await service.plane.classify(request(photo, request_id="photo"))
        await service.plane.infer(RowsRequest("mnist", digit_rows(x, 1), DEV_IDENTITY, STABLE, request_id="tensor"))
        await service.monitor.flush_log()
        stored = await service.monitor.sampled_photo("photo", DEV_IDENTITY)
        assert (stored.photo, stored.content_type, stored.model, stored.version) == (
            photo,
            "image/png",
            "mnist",
            MNIST_STABLE,
        )
        with pytest.raises(PermissionDenied, match="may not read_photos"):
            await service.monitor.sampled_photo("photo", Identity("app", "app"))
        with pytest.raises(NotFound, match="no sampled photo"):
            await service.monitor.sampled_photo("tensor.0", DEV_IDENTITY)
        await service.aclose()

    asyncio.run(scenario())
    photo_record, tensor_record = redis_server.records("mnist")
    assert photo_record["photo_id"] and PHOTO_KEY not in photo_record
    assert "photo_id" not in tensor_record, "tensors are never sampled"


def test_the_skew_window_leaves_out_records_older_than_window_s(redis_server, tmp_path) -> None:
    redis_server.log_aged((7200, 3600, 900, 300, 120, 60, 10), version=MNIST_STABLE)  # 4 of the 7 younger than 600 s

    async def scenario() -> None:
        service = make_logged_service(redis_server, tmp_path, skew={"window_s": 600})
        await service.start()
        limited = await service.monitor.skew("mnist", None, None)
        unlimited = await service.monitor.skew("mnist", None, None, window_s=0)
        await service.aclose()
        assert (limited["window"], limited["window_s"]) == (4, 600)
        assert (unlimited["window"], unlimited["window_s"]) == (7, 0)

    asyncio.run(scenario())
