"""GET /api/v1/models/{m}/skew on a live gateway: per input surface, quiet on held-out digits, alarmed on
inverted ones, and photos compared with the photo baseline."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np

from gateway.bench.renderers import HELD_OUT_RENDERERS, render
from gateway.security.pki import PkiPaths
from tests.conftest import MNIST_STABLE, start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer


def send_rows(client: httpx.Client, rows: np.ndarray) -> None:
    for start in range(0, len(rows), 64):
        batch = rows[start : start + 64]
        tensor = {"name": "image", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
        assert client.post("/v2/models/mnist/infer", json={"inputs": [tensor]}).status_code == 200


def send_photos(client: httpx.Client, photos: list[bytes]) -> int:
    """How many were answered (a photo whose ink the preprocessing cannot find is refused with a 400)."""
    answered = 0
    for photo in photos:
        response = client.post("/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/jpeg"})
        assert response.status_code in (200, 400), response.text
        answered += response.status_code == 200
    return answered


def skew_once_logged(client: httpx.Client, expected: int, surface: str = "tensor") -> dict:
    deadline = time.monotonic() + 15
    params = {"window": 300, "surface": surface}
    while (report := client.get("/api/v1/models/mnist/skew", params=params).json())["surfaces"][surface][
        "window"
    ] < expected:
        assert time.monotonic() < deadline, f"only {report['window']} records reached the log"
    return report["surfaces"][surface]


def test_skew_endpoint_and_gauges(pki: PkiPaths, redis_server: RedisServer, tmp_path, heldout_sample) -> None:
    x, _ = heldout_sample
    digits = (x / 255.0).astype(np.float32)[:, np.newaxis]
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    try:
        with gateway.client() as client:
            send_rows(client, digits)
            quiet = skew_once_logged(client, 300)
            assert (quiet["enough_data"], quiet["alarm"], quiet["calibration"]["calibrated_window"]) == (
                True,
                False,
                300,
            )
            rng = np.random.default_rng(5)
            answered = send_photos(client, [render(d, HELD_OUT_RENDERERS[i % 2], rng) for i, d in enumerate(x / 255.0)])
            assert answered >= 290
            photos = skew_once_logged(client, answered, "photo")
            assert photos["enough_data"] and not photos["alarm"], {
                n: f["distance"] for n, f in photos["features"].items()
            }
            assert "photographed by" in photos["baseline_source"]
            send_rows(client, 1.0 - digits)
            deadline = time.monotonic() + 15
            while not (alarmed := client.get("/api/v1/models/mnist/skew", params={"window": 300}).json())["alarm"]:
                assert time.monotonic() < deadline, "inverted digits never raised the alarm"
            tensors = alarmed["surfaces"]["tensor"]
            assert tensors["features"]["mean_intensity"]["alarm"] and tensors["features"]["ink_fraction"]["alarm"]
            assert not alarmed["surfaces"]["photo"]["alarm"], "inverted tensors do not move the photo surface"
            # the window that ended with the 300 clean digits was quiet; the newest one alarms
            assert tensors["history"][-1]["alarm"] and any(not point["alarm"] for point in tensors["history"])
            metrics = client.get("/metrics").text
            assert f'gateway_skew_alarm{{model="mnist",surface="tensor",version="{MNIST_STABLE}"}} 1.0' in metrics
            assert f'gateway_skew_alarm{{model="mnist",surface="photo",version="{MNIST_STABLE}"}} 0.0' in metrics
            assert (
                f'gateway_skew_distance{{feature="mean_intensity",model="mnist",surface="tensor",version="{MNIST_STABLE}"}}'
                in metrics
            )
            assert (
                f'gateway_skew_threshold{{feature="mean_intensity",model="mnist",surface="photo",version="{MNIST_STABLE}"}}'
                in metrics
            )
            assert f'gateway_estimated_accuracy{{model="mnist",surface="photo",version="{MNIST_STABLE}"}}' in metrics
            assert client.get("/api/v1/models/mnist/skew", params={"version": "7"}).status_code == 404
            unknown = client.get("/api/v1/models/mnist/skew", params={"surface": "fax"})
            assert unknown.status_code == 400 and "photo, tensor" in unknown.text
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
    assert "tensor: window 300, ALARM" in report.stdout and f"photo: window {answered}, no alarm" in report.stdout
    assert "calibrated on the null for a 1.0% false-alarm rate" in report.stdout
    page = (tmp_path / "skew.html").read_text()
    assert (
        f"mnist v{MNIST_STABLE}: ALARM" in page
        and "tensor surface: ALARM" in page
        and "photo surface: no alarm" in page
    )
    assert page.count("<polyline") >= 2 * 6 + 2  # distance/threshold per test and the estimate, per surface


def test_the_background_check_refreshes_the_gauges_with_workers(
    pki: PkiPaths, redis_server: RedisServer, tmp_path, heldout_sample
) -> None:
    """No skew query is made: the gauges in /metrics come from the first worker's background check alone."""
    x, _ = heldout_sample
    env = {"GATEWAY_SERVER_WORKERS": "2", "GATEWAY_SKEW_INTERVAL_S": "1", "GATEWAY_SKEW_MIN_WINDOW": "50"}
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool", env)
    alarm = f'gateway_skew_alarm{{model="mnist",surface="tensor",version="{MNIST_STABLE}"}}'
    try:
        with gateway.client() as client:
            assert alarm not in client.get("/metrics").text
            send_rows(client, (1.0 - x[:100] / 255.0).astype(np.float32)[:, np.newaxis])  # inverted: skewed
            deadline = time.monotonic() + 30
            while f"{alarm} 1.0" not in (metrics := client.get("/metrics").text):
                assert time.monotonic() < deadline, [line for line in metrics.splitlines() if "skew_alarm" in line]
    finally:
        stop_gateway(gateway)
