"""GatewayService: the protocol-free pipeline, on the real model, driven directly."""

from __future__ import annotations

import asyncio
import threading

import pytest

import gateway.service as service_module
from gateway.bench.photos import digit_png
from gateway.config import load_settings
from gateway.core.errors import DeadlineExceeded, NotFound, Overloaded
from gateway.core.types import ClassifyRequest
from gateway.security.identity import DEV_IDENTITY
from gateway.service import GatewayService
from tests.conftest import MODEL_REPO


def make_service(**limits) -> GatewayService:
    settings = load_settings(
        overrides={"tls": {"enabled": False}, "models": {"repo": MODEL_REPO}, "limits": limits}, environ={}
    )
    service = GatewayService(settings)
    service.load()
    return service


def request(photo: bytes, **fields) -> ClassifyRequest:
    return ClassifyRequest(model="mnist", image=photo, identity=DEV_IDENTITY, **fields)


def test_classifies_and_reports_batching_settings(heldout_sample) -> None:
    x, y = heldout_sample

    async def scenario() -> None:
        service = make_service()
        prediction = await service.classify(request(digit_png(x[42])))
        assert prediction.label == str(y[42]) and prediction.version == "1"
        description = service.describe_model("mnist")
        assert description["batching"]["max_batch_size"] == 64
        assert description["batching"]["max_queue_delay_microseconds"] == 2000
        await service.aclose()

    asyncio.run(scenario())


def test_unknown_model_and_version_name_what_exists(heldout_sample) -> None:
    async def scenario() -> None:
        service = make_service()
        with pytest.raises(NotFound, match="available: mnist"):
            await service.classify(ClassifyRequest(model="cifar", image=b"", identity=DEV_IDENTITY))
        with pytest.raises(NotFound, match="loaded: 1"):
            await service.classify(request(b"", version="7"))
        await service.aclose()

    asyncio.run(scenario())


def test_deadline_spent_before_batching_is_504(heldout_sample) -> None:
    async def scenario() -> None:
        service = make_service()
        photo = digit_png(heldout_sample[0][0])
        with pytest.raises(DeadlineExceeded, match="before batching"):
            await service.classify(request(photo, timeout_s=1e-9))
        await service.aclose()

    asyncio.run(scenario())


def test_photos_waiting_for_decoding_are_bounded(monkeypatch, heldout_sample) -> None:
    entered, release = threading.Event(), threading.Event()
    real_prepare = service_module.prepare_photo

    def held_prepare(*args, **kwargs):
        entered.set()
        release.wait(timeout=30)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(service_module, "prepare_photo", held_prepare)
    photo = digit_png(heldout_sample[0][5])

    async def scenario() -> None:
        service = make_service(max_pending_photos=1)
        first = asyncio.create_task(service.classify(request(photo)))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        with pytest.raises(Overloaded, match="1 photos are waiting"):
            await service.classify(request(photo))
        release.set()
        assert (await first).label == str(heldout_sample[1][5])
        await service.aclose()

    asyncio.run(scenario())
