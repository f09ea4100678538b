"""A photo sampled on a live gateway, fetched back as uploaded with `gateway predictions photo`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gateway.bench.photos import digit_photo
from gateway.security.pki import PkiPaths
from tests.conftest import MNIST_STABLE, RunningGateway, start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer


def download(gateway: RunningGateway, pki: PkiPaths, request_id: str, out: Path, identity: str = "operator"):
    command = [sys.executable, "-m", "gateway.cli", "predictions", "photo", request_id, "--out", str(out)]
    options = ["--gateway", gateway.base_url, "--pki-dir", str(pki.root), "--identity", identity]
    return subprocess.run([*command, *options], capture_output=True, text=True, timeout=60)


def test_a_sampled_photo_comes_back_byte_for_byte(
    pki: PkiPaths, redis_server: RedisServer, tmp_path: Path, heldout_sample
) -> None:
    x, _ = heldout_sample
    photo = digit_photo(x[3], np.random.default_rng(3))
    gateway = start_gateway_on_redis(
        pki, redis_server, tmp_path / "spool", env={"GATEWAY_PREDICTIONS_SAMPLE_PHOTOS": "1.0"}
    )
    try:
        with gateway.client() as client:
            answer = client.post("/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/jpeg"})
            assert answer.status_code == 200
            request_id = answer.json()["request_id"]
            deadline = time.monotonic() + 10
            while not redis_server.records("mnist"):
                assert time.monotonic() < deadline, "the record never reached Redis"
            as_operator = download(gateway, pki, request_id, tmp_path / "photo.jpg")
            as_app = download(gateway, pki, request_id, tmp_path / "app.jpg", identity="app")
        with gateway.client("operator") as operator:
            unknown = operator.get("/api/v1/predictions/not-a-request/photo")
    finally:
        stop_gateway(gateway)
    assert as_operator.returncode == 0, as_operator.stderr
    assert (tmp_path / "photo.jpg").read_bytes() == photo
    assert "image/jpeg" in as_operator.stdout and f"model mnist v{MNIST_STABLE}" in as_operator.stdout
    assert as_app.returncode == 1 and "403" in as_app.stderr and not (tmp_path / "app.jpg").exists()
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    [record] = redis_server.records("mnist")
    assert record["photo_id"] and record["batch_size"] == 1 and "photo" not in record
