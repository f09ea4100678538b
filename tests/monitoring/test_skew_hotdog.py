"""Skew for colour photos on a live gateway: the hot dog model's own calibration photos are quiet,
the same photos in black and white raise the saturation alarm."""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from gateway.monitoring.features import PHOTO_FEATURES, SOURCE_FEATURES
from gateway.security.pki import PkiPaths
from tests.conftest import REPO_ROOT, start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer

PHOTOS = REPO_ROOT / "model_repo/training/hotdog_photos"
WINDOW = 150


def calibration_photos() -> list[bytes]:
    with (PHOTOS / "labels.csv").open() as rows:
        paths = [row["path"] for row in csv.DictReader(rows)]
    order = np.random.default_rng(7).permutation(len(paths))  # labels mixed, as live traffic is
    return [(PHOTOS / paths[i]).read_bytes() for i in order]


def black_and_white(photo: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("L").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def send(client: httpx.Client, photos: list[bytes]) -> None:
    def one(photo: bytes) -> int:
        headers = {"content-type": "image/jpeg"}
        return client.post("/api/v1/models/hotdog/classify", content=photo, headers=headers).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(one, photos)) == {200}


def skew_when(client: httpx.Client, done, what: str) -> dict:
    deadline = time.monotonic() + 30
    params = {"window": WINDOW, "surface": "photo"}
    while not done(report := client.get("/api/v1/models/hotdog/skew", params=params).json()["surfaces"]["photo"]):
        assert time.monotonic() < deadline, f"{what}: {report}"
    return report


def test_colour_features_are_quiet_in_distribution_and_alarm_on_black_and_white(
    pki: PkiPaths, redis_server: RedisServer, tmp_path
) -> None:
    photos = calibration_photos()
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    try:
        with gateway.client() as client:
            send(client, photos[:WINDOW])
            quiet = skew_when(client, lambda r: r["window"] >= WINDOW, "records never reached the log")
            send(client, [black_and_white(p) for p in photos[:WINDOW]])
            alarmed = skew_when(client, lambda r: r["alarm"], "black-and-white photos never raised the alarm")
    finally:
        stop_gateway(gateway)
    assert set(quiet["features"]) == set(PHOTO_FEATURES) | set(SOURCE_FEATURES)
    assert quiet["enough_data"] and not quiet["alarm"], {n: f["distance"] for n, f in quiet["features"].items()}
    assert alarmed["features"]["saturation"]["alarm"]
    assert not alarmed["features"]["aspect_ratio"]["alarm"]
