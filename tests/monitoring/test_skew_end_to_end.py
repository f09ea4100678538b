"""GET /api/v1/models/{m}/skew on a live gateway: quiet on held-out digits, alarmed on inverted ones."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np

from gateway.security.pki import PkiPaths
from tests.conftest import start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer


def send_rows(client: httpx.Client, rows: np.ndarray) -> None:
    for start in range(0, len(rows), 64):
        batch = rows[start : start + 64]
        tensor = {"name": "image", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
        assert client.post("/v2/models/mnist/infer", json={"inputs": [tensor]}).status_code == 200


def skew_once_logged(client: httpx.Client, expected: int) -> dict:
    deadline = time.monotonic() + 15
    while (report := client.get("/api/v1/models/mnist/skew", params={"window": 300}).json())["window"] < expected:
        assert time.monotonic() < deadline, f"only {report['window']} records reached the log"
    return report


def test_skew_endpoint_and_gauges(pki: PkiPaths, redis_server: RedisServer, tmp_path, heldout_sample) -> None:
    x, _ = heldout_sample
    digits = (x / 255.0).astype(np.float32)[:, np.newaxis]
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    try:
        with gateway.client() as client:
            send_rows(client, digits)
            quiet = skew_once_logged(client, 300)
            assert (quiet["model"], quiet["version"], quiet["enough_data"], quiet["alarm"]) == (
                "mnist",
                "1",
                True,
                False,
            )
            send_rows(client, 1.0 - digits)
            deadline = time.monotonic() + 15
            while not (alarmed := client.get("/api/v1/models/mnist/skew", params={"window": 300}).json())["alarm"]:
                assert time.monotonic() < deadline, "inverted digits never raised the alarm"
            assert alarmed["features"]["mean_intensity"]["alarm"] and alarmed["features"]["ink_fraction"]["alarm"]
            metrics = client.get("/metrics").text
            assert 'gateway_skew_alarm{model="mnist",version="1"} 1.0' in metrics
            assert 'gateway_skew_distance{feature="mean_intensity",model="mnist",version="1"}' in metrics
            assert client.get("/api/v1/models/mnist/skew", params={"version": "7"}).status_code == 404
        report = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "skew",
                "report",
                "--model",
                "mnist",
                "--window",
                "300",
                "--gateway",
                gateway.base_url,
                "--pki-dir",
                str(pki.root),
                "--html",
                str(tmp_path / "skew.html"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop_gateway(gateway)
    assert report.returncode == 2, report.stderr  # 2: the alarm is raised
    assert "mean_intensity" in report.stdout and "yes" in report.stdout
    page = (tmp_path / "skew.html").read_text()
    assert "mnist v1: ALARM" in page and page.count("<svg") == 5
