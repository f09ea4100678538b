"""The mobile client against a real gateway: REST and gRPC, sync and async, retries, deadlines, the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gateway.bench.photos import digit_photo, digit_png
from mobile_client import AsyncClient, Client, ClientError, DeadlineExceeded, GatewayUnreachable, RetryPolicy
from mobile_client.compare import compare, phone_photos
from mobile_client.values import Prediction, Upload
from tests.backends.conftest import start_replica, write_backends
from tests.conftest import (
    MNIST_STABLE,
    MODEL_REPO,
    REPO_ROOT,
    RunningGateway,
    executed,
    metrics,
    requests_counted,
    slow_batching_repo,
    start_gateway,
    stop_gateway,
)
from tests.redis_server import free_port

CLASSIFY_MNIST = "/api/v1/models/mnist/classify"
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


class RecordedTries:
    """Sits between the client and its real transport: notes the key, the timeout and the outcome of every try."""

    def __init__(self, transport) -> None:
        self._transport = transport
        self.keys: list[str] = []
        self.timeouts: list[float] = []
        self.outcomes: list[str] = []

    def classify(self, upload, model, *, key, timeout_s, priority, version) -> Prediction:
        self.keys.append(key)
        self.timeouts.append(timeout_s)
        try:
            answer = self._transport.classify(
                upload, model, key=key, timeout_s=timeout_s, priority=priority, version=version
            )
        except ClientError as exc:
            self.outcomes.append(str(exc.status))
            raise
        self.outcomes.append("ok")
        return answer

    def close(self) -> None:
        self._transport.close()


def recorded(client: Client) -> RecordedTries:
    client._transport = RecordedTries(client._transport)
    return client._transport


@pytest.fixture
def digit(heldout_sample) -> tuple[bytes, str]:
    x, y = heldout_sample
    return digit_png(x[5]), str(y[5])


@pytest.fixture
def rate_limited_gateway(pki) -> Iterator[RunningGateway]:
    """One request per second per identity, no burst beyond it: a second request at once gets 429."""
    env = {"GATEWAY_LIMITS_RATE_PER_S": "1", "GATEWAY_LIMITS_BURST": "1"}
    running = start_gateway(pki, "--model-repo", str(MODEL_REPO), env=env)
    yield running
    stop_gateway(running)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_429_waits_at_least_retry_after_and_every_try_carries_the_same_key(
    rate_limited_gateway, digit, transport
) -> None:
    gateway = rate_limited_gateway
    photo, label = digit
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # really waits: the gateway's bucket refills meanwhile
        waits.append(seconds)
        time.sleep(seconds)

    with Client(address(gateway, transport), sleep=sleep, prepare=False, **identity(gateway)) as client:
        assert client.classify(photo, model="mnist").attempts == 1  # takes the one token
        tries = recorded(client)
        answer = client.classify(photo, model="mnist", deadline_s=30)
    limited = "429" if transport == "rest" else "RESOURCE_EXHAUSTED"
    assert answer.label == label and tries.outcomes[0] == limited and tries.outcomes[-1] == "ok", tries.outcomes
    assert answer.attempts == len(tries.outcomes) >= 2
    assert waits[0] >= 1.0, f"waited {waits[0]:.2f} s although the gateway asked for at least 1 s"
    assert len(set(tries.keys)) == 1
    assert tries.timeouts == sorted(tries.timeouts, reverse=True) and tries.timeouts[0] <= 30


@pytest.fixture
def full_queue_gateway(pki, tmp_path) -> Iterator[RunningGateway]:
    """Batches wait 3 s to fill, and the queue holds one request: a second one gets 429 (Retry-After 30 s)."""
    running = start_gateway(pki, "--model-repo", str(slow_batching_repo(tmp_path, queue_policy="max_queue_size: 1")))
    yield running
    stop_gateway(running)


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_no_retry_when_the_wait_would_pass_the_deadline(full_queue_gateway, digit, transport) -> None:
    gateway = full_queue_gateway
    photo, label = digit
    waits: list[float] = []
    with ThreadPoolExecutor(1) as pool, gateway.client() as first:
        parked = pool.submit(
            first.post, CLASSIFY_MNIST, content=photo, headers={"content-type": "image/png"}, timeout=30
        )
        deadline = time.monotonic() + 10
        while f'gateway_queue_depth{{model="mnist",version="{MNIST_STABLE}"}} 1.0' not in metrics(gateway):
            assert time.monotonic() < deadline, "the first request never reached the batcher's queue"
        with Client(address(gateway, transport), sleep=waits.append, prepare=False, **identity(gateway)) as client:
            tries = recorded(client)
            with pytest.raises(ClientError, match="queue for this model is full") as refused:
                client.classify(photo, model="mnist", deadline_s=5)
        assert parked.result().status_code == 200
    assert refused.value.code == "overloaded" and (refused.value.retry_after_s or 0) >= 5, refused.value
    assert tries.outcomes == ["429" if transport == "rest" else "RESOURCE_EXHAUSTED"]
    assert waits == [], "it waited although the gateway's Retry-After lies past the deadline"


def test_503_from_a_stopped_backend_is_retried_until_it_is_back(pki, models_pki, triton_repo, tmp_path, digit):
    """mnist runs on a real Triton; it is stopped, so the gateway answers 503; while the client backs off, it is
    started again on the same port, and the retry (same key) is answered."""
    photo, label = digit
    triton = start_replica(triton_repo, models_pki)
    restarted: list = []
    gateway = None
    try:
        backends = write_backends(
            tmp_path / "backends.toml", models_pki, "triton", [triton.grpc_target], timeout_s=5.0, health_interval_s=0.2
        )
        gateway = start_gateway(pki, "--model-repo", str(MODEL_REPO), "--backends", str(backends))
        waits: list[float] = []

        def sleep(seconds: float) -> None:  # the backend comes back while the client waits, then it really waits
            waits.append(seconds)
            if not restarted:
                restarted.append(start_replica(triton_repo, models_pki, port=triton.grpc_port))
            time.sleep(seconds)

        # the gateway's channel to the backend reconnects with gRPC's backoff (1 s, growing): room for that
        retry = RetryPolicy(attempts=20, base_s=0.5, cap_s=3.0)
        with Client(gateway.base_url, sleep=sleep, retry=retry, prepare=False, **identity(gateway)) as client:
            assert client.classify(photo, model="mnist").label == label
            triton.stop()
            tries = recorded(client)
            answer = client.classify(photo, model="mnist", deadline_s=60, idempotency_key="after-the-outage")
            outcomes, keys = list(tries.outcomes), set(tries.keys)
            again = client.classify(photo, model="mnist", idempotency_key="after-the-outage")
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        for server in (triton, *restarted):
            server.stop()
    print(f"\nbackend stopped: {answer.attempts} tries ({outcomes}), {sum(waits):.1f} s of backoff")
    assert outcomes[0] == "503" and outcomes[-1] == "ok", outcomes
    assert answer.label == label and answer.attempts == len(outcomes) and len(waits) == answer.attempts - 1
    assert keys == {"after-the-outage"}
    assert again.replayed and again.request_id == answer.request_id, "the answered try carried the call's key"


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_deadline_shorter_than_the_work_is_deadline_exceeded(slow_batching_gateway, digit, transport) -> None:
    """Batches wait 3 s to fill; the call's deadline is 0.5 s: the client gets the gateway's answer (not its own
    timeout, which the gateway would log as a caller gone: 499), and the gateway drops the photo from its queue
    instead of running it for nobody."""
    gateway = slow_batching_gateway
    photo, label = digit
    with Client(address(gateway, transport), prepare=False, **identity(gateway)) as client:
        with pytest.raises(DeadlineExceeded) as exceeded:
            client.classify(photo, model="mnist", deadline_s=0.5)
        assert executed(gateway) == (0, 0)
        if transport == "rest":  # gRPC's deadline is the channel's own: both ends end the call at once
            assert exceeded.value.status == 504 and exceeded.value.request_id, exceeded.value
            assert (requests_counted(gateway, "rest", "504"), requests_counted(gateway, "rest", "499")) == (1, 0)
        on_time = client.classify(photo, model="mnist", deadline_s=30)  # alone in the queue: runs after 3 s
    assert on_time.label == label
    assert executed(gateway) == (1, 1), "the photo whose deadline had passed was run too"


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
