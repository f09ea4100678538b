"""The mobile client against a real gateway: REST and gRPC, sync and async, retries, deadlines, the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from gateway.bench.photos import digit_photo
from mobile_client import AsyncClient, Client, ClientError, DeadlineExceeded, GatewayUnreachable, RetryPolicy
from mobile_client.compare import compare, phone_photos
from mobile_client.values import Prediction, Upload
from tests.conftest import REPO_ROOT, RunningGateway
from tests.redis_server import free_port

HOTDOG_PHOTO = REPO_ROOT / "model_repo/training/hotdog_photos/hotdog/hol_hot_dogs-0001.jpg"


def address(gateway: RunningGateway, transport: str) -> str:
    return gateway.base_url if transport == "rest" else f"grpcs://{gateway.server.grpc_target}"


def identity(gateway: RunningGateway) -> dict:
    pki = gateway.pki
    return {"ca": pki.ca_cert, "cert": pki.client_cert("app"), "key": pki.client_key("app")}


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_sync_client_classifies_photos_and_digits(gateway, heldout_sample, transport) -> None:
    x, y = heldout_sample
    digit = digit_photo(x[0], np.random.default_rng(0), orientation=6, min_side=1200)
    with Client(address(gateway, transport), **identity(gateway)) as client:
        hotdog = client.classify(HOTDOG_PHOTO, model="hotdog")
        seven = client.classify(digit, model="mnist", deadline_s=5)
        info = client.model_info("hotdog")
    assert hotdog.label == "hotdog" and hotdog.confidence > 0.5 and hotdog.attempts == 1
    assert hotdog.upload_bytes < HOTDOG_PHOTO.stat().st_size
    assert seven.label == str(y[0]) and len(seven.probabilities) == 10
    assert (info.channels, info.height, info.width, info.preprocessing) == (3, 224, 224, "imagenet_rgb")


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_async_client_classifies_concurrently(gateway, heldout_sample, transport) -> None:
    x, y = heldout_sample
    rng = np.random.default_rng(1)
    photos = [digit_photo(x[i], rng) for i in range(4)]

    async def run() -> list[Prediction]:
        async with AsyncClient(address(gateway, transport), **identity(gateway)) as client:
            return await asyncio.gather(*(client.classify(photo, model="mnist") for photo in photos))

    answers = asyncio.run(run())
    assert [a.label for a in answers] == [str(label) for label in y[:4]]
    assert len({a.request_id for a in answers}) == 4


def test_a_retried_upload_with_the_same_key_is_answered_from_the_first(gateway) -> None:
    with Client(gateway.base_url, **identity(gateway)) as client:
        first = client.classify(HOTDOG_PHOTO, model="hotdog", idempotency_key="retry-me")
        again = client.classify(HOTDOG_PHOTO, model="hotdog", idempotency_key="retry-me")
    assert first.request_id == again.request_id and again.replayed and not first.replayed


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_gateway_errors_are_typed_and_not_retried(gateway, transport) -> None:
    waits: list[float] = []
    with Client(address(gateway, transport), sleep=waits.append, **identity(gateway)) as client:
        with pytest.raises(ClientError) as not_found:
            client.classify(HOTDOG_PHOTO, model="no-such-model")
        with pytest.raises(ClientError) as bad_photo:
            client.classify(b"not a photo", model="mnist", upload=Upload(b"not a photo", "image/jpeg", 11, (0, 0)))
    assert not_found.value.code == "not_found" and bad_photo.value.code == "invalid_input"
    assert waits == []


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_unreachable_gateway_is_retried_with_jittered_backoff(gateway, transport) -> None:
    waits: list[float] = []
    target = f"{'https' if transport == 'rest' else 'grpcs'}://127.0.0.1:{free_port()}"
    retry = RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0)
    client = Client(target, retry=retry, sleep=waits.append, **identity(gateway))
    with client, pytest.raises(GatewayUnreachable):
        client.classify(HOTDOG_PHOTO, model="hotdog", upload=Upload(b"x", "image/jpeg", 1, (1, 1)))
    assert len(waits) == 2 and 0 <= waits[0] <= 0.1 and 0 <= waits[1] <= 0.2


class ScriptedTransport:
    """Answers each classify with the next scripted outcome (an error to raise, or a Prediction)."""

    def __init__(self, outcomes: list) -> None:
        self.outcomes = outcomes
        self.keys: list[str] = []
        self.timeouts: list[float] = []

    def classify(self, upload, model, *, key, timeout_s, priority, version) -> Prediction:
        self.keys.append(key)
        self.timeouts.append(timeout_s)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def close(self) -> None:
        pass


ANSWER = Prediction("mnist", "1", "7", {"7": 0.9}, "r1", 1.0)
UPLOAD = Upload(b"jpeg", "image/jpeg", 4, (1, 1))


def test_429_waits_at_least_retry_after_and_every_try_carries_the_same_key(gateway) -> None:
    waits: list[float] = []
    overloaded = ClientError("queue full", code="overloaded", status=429, retryable=True, retry_after_s=1.0)
    unavailable = ClientError("backend down", code="unavailable", status=503, retryable=True)
    with Client(gateway.base_url, sleep=waits.append, **identity(gateway)) as client:
        client._transport = ScriptedTransport([overloaded, unavailable, ANSWER])
        answer = client.classify(b"", model="mnist", upload=UPLOAD, deadline_s=30)
        keys, timeouts = client._transport.keys, client._transport.timeouts
    assert answer.label == "7" and answer.attempts == 3
    assert waits[0] >= 1.0 and waits[1] <= 0.4
    assert len(set(keys)) == 1 and timeouts == sorted(timeouts, reverse=True) and timeouts[0] <= 30


def test_no_retry_when_the_wait_would_pass_the_deadline(gateway) -> None:
    waits: list[float] = []
    overloaded = ClientError("queue full", code="overloaded", status=429, retryable=True, retry_after_s=5.0)
    with Client(gateway.base_url, sleep=waits.append, **identity(gateway)) as client:
        client._transport = ScriptedTransport([overloaded, ANSWER])
        with pytest.raises(ClientError, match="queue full"):
            client.classify(b"", model="mnist", upload=UPLOAD, deadline_s=1)
    assert waits == []


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_deadline_shorter_than_the_work_is_deadline_exceeded(gateway, transport) -> None:
    photo = HOTDOG_PHOTO.read_bytes()  # sent whole: decoding it alone takes longer than 1 ms
    client = Client(address(gateway, transport), prepare=False, **identity(gateway))
    with client, pytest.raises(DeadlineExceeded):
        client.classify(photo, model="hotdog", deadline_s=0.001)


def test_cli_prints_label_and_confidence(gateway, tmp_path) -> None:
    photo = tmp_path / "seven.jpg"
    photo.write_bytes((REPO_ROOT / "docs/examples/seven.jpg").read_bytes())
    pki = gateway.pki
    result = subprocess.run(
        [sys.executable, "-m", "mobile_client", "classify", str(photo), str(HOTDOG_PHOTO), "--model", "mnist"]
        + ["--gateway", gateway.base_url, "--ca", str(pki.ca_cert)]
        + ["--cert", str(pki.client_cert("app")), "--key", str(pki.client_key("app"))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert lines[0][0] == str(photo) and lines[0][1] == "7" and 0.5 < float(lines[0][2]) <= 1.0
    assert len(lines) == 2


def test_compare_reports_bytes_saved_and_time_to_answer(gateway) -> None:
    photos = list(phone_photos("mnist", 1, REPO_ROOT))
    with Client(gateway.base_url, **identity(gateway)) as client:
        report = compare(client, "mnist", photos, [2.0])
    summary = report["summary"]
    assert summary["median_original_bytes"] > 1_000_000 and summary["bytes_saved_pct"] > 90
    assert summary["same_label"] == 1
    assert summary["uplinks"]["2 Mbit/s"]["prepared_ms"] < summary["uplinks"]["2 Mbit/s"]["original_ms"]
