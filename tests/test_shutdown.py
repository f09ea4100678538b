"""Graceful shutdown under load: SIGTERM while photos are queued and running. Every request the
gateway processed is answered, every answer is in the prediction log, and the process exits 0.
A SIGTERM before uvicorn listens for it (models loading, the banner just printed) drains too."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gateway.bench.server_process import spawn_gateway, start_gateway
from gateway.security.pki import PkiPaths
from tests.conftest import MODEL_REPO, REPO_ROOT, start_gateway_on_redis
from tests.redis_server import RedisServer

PHOTO = (REPO_ROOT / "model_repo/training/hotdog_photos/hotdog/hol_hot_dogs-0001.jpg").read_bytes()
CLIENTS = 24
ANSWERS_BEFORE_SIGTERM = 40


def test_sigterm_under_load_answers_and_logs_everything_in_flight(
    pki: PkiPaths, redis_server: RedisServer, tmp_path
) -> None:
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    answered: list[float] = []  # when each 200 arrived
    other: list[str] = []
    dropped: list[str] = []  # accepted requests the gateway never answered
    enough = threading.Event()
    lock = threading.Lock()

    def client_loop() -> None:
        # a new connection per request: after SIGTERM a new connection is refused (ConnectError, which
        # covers the TLS handshake), which is fine; a request the gateway has taken must be answered, so a
        # connection dropped after the request went out (ReadError, RemoteProtocolError, ...) fails the test
        while True:
            try:
                with gateway.client() as client:
                    response = client.post(
                        "/api/v1/models/hotdog/classify", content=PHOTO, headers={"content-type": "image/jpeg"}
                    )
            except httpx.ConnectError:
                return
            except httpx.TransportError as exc:
                with lock:
                    dropped.append(f"{type(exc).__name__}: {exc}")
                return
            with lock:
                if response.status_code == 200:
                    answered.append(time.monotonic())
                else:
                    other.append(f"{response.status_code} {response.text}")
                if len(answered) >= ANSWERS_BEFORE_SIGTERM:
                    enough.set()
            if response.status_code == 503:
                return

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(client_loop)
        assert enough.wait(timeout=120), f"only {len(answered)} answers before SIGTERM"
        sigterm_at = time.monotonic()
        exit_code = gateway.server.stop()
    assert exit_code == 0, "\n".join(gateway.output[-20:])
    assert dropped == [], f"{len(dropped)} requests dropped after the gateway took them: {dropped[:3]}"
    assert all(status.startswith("503") for status in other), other
    logged = redis_server.records("hotdog")
    assert len(logged) == len(answered), f"{len(answered)} answers, {len(logged)} logged"
    assert any(t > sigterm_at for t in answered), "no request was in flight at SIGTERM: the test proved nothing"


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_while_the_models_load_stops_after_a_clean_start(pki: PkiPaths, workers: int) -> None:
    process = spawn_gateway(["--pki-dir", str(pki.root), "--model-repo", str(MODEL_REPO)], workers=workers)
    first_line = process.stdout.readline()  # printed while the models load, seconds before uvicorn serves
    process.terminate()
    output = first_line + process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    drained = [line for line in output.splitlines() if line.endswith("INFO gateway: stopped")]
    assert len(drained) == workers, f"{len(drained)} of {workers} gateway processes drained:\n{output}"
    assert "SIGTERM during start-up: stopping" in output


def test_sigterm_just_after_the_banner_drains(pki: PkiPaths) -> None:
    gateway = start_gateway(["--pki-dir", str(pki.root), "--model-repo", str(MODEL_REPO)])
    exit_code = gateway.stop()
    output = "".join(gateway.output)
    assert exit_code == 0, output
    assert "closing the batchers and the prediction log" in output
    assert output.rstrip().endswith("INFO gateway: stopped"), output
