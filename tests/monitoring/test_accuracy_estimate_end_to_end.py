"""Accuracy without labels on a live gateway: traffic shifts, feedback comes for part of it, and the
estimate from the model's temperature-scaled confidence lands within 3 points of the measured accuracy."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from gateway.bench.renderers import HELD_OUT_RENDERERS, render
from gateway.bench.skew import DIGIT_SHIFTS
from gateway.security.pki import PkiPaths
from tests.conftest import start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer

SHIFT = "rotated 35 degrees"
VERSION = "2"


def classify(client: httpx.Client, photo: bytes) -> dict | None:
    """The answer, or None when the preprocessing finds no ink (a 400 the client would see)."""
    response = client.post(
        "/api/v1/models/mnist/classify",
        params={"version": VERSION},
        content=photo,
        headers={"content-type": "image/jpeg"},
    )
    assert response.status_code in (200, 400), response.text
    return response.json() if response.status_code == 200 else None


def feedback(client: httpx.Client, request_id: str, label: str) -> bool:
    """The log is written off the request path: a prediction answered a moment ago may need a retry."""
    deadline = time.monotonic() + 15
    while (
        response := client.post(f"/api/v1/predictions/{request_id}/feedback", json={"label": label})
    ).status_code == 404:
        assert time.monotonic() < deadline, response.text
    assert response.status_code == 200, response.text
    return response.json()["correct"]


def test_the_estimate_follows_the_measured_accuracy_when_traffic_shifts(
    pki: PkiPaths, redis_server: RedisServer, tmp_path, heldout_sample
) -> None:
    x, y = heldout_sample
    rng = np.random.default_rng(11)
    shifted = np.stack([DIGIT_SHIFTS[SHIFT](d) for d in x[200:]])  # the last third of the traffic
    digits = np.concatenate([x[:200], shifted])
    photos = [render(d / 255.0, HELD_OUT_RENDERERS[i % 2], rng) for i, d in enumerate(digits)]
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    try:
        with gateway.client() as client, ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda photo: classify(client, photo), photos))
            answered = [i for i, answer in enumerate(answers) if answer is not None]
            assert len(answered) >= 0.95 * len(photos)
            with_feedback = answered[::2]  # every other prediction gets its true label
            correct = list(pool.map(lambda i: feedback(client, answers[i]["request_id"], str(y[i])), with_feedback))
            deadline = time.monotonic() + 15
            params = {"window": len(answered), "surface": "photo", "version": VERSION}
            while (report := client.get("/api/v1/models/mnist/skew", params=params).json())["surfaces"]["photo"][
                "window"
            ] < len(answered):
                assert time.monotonic() < deadline, report
    finally:
        stop_gateway(gateway)
    measured = report["live_accuracy"]
    assert measured["feedback"] == len(correct) and measured["accuracy"] == sum(correct) / len(correct)
    everything = np.mean([answers[i]["label"] == str(y[i]) for i in answered])
    assert measured["accuracy"] < 0.95 and everything < 0.95, "the shift must cost accuracy, or nothing is tested"
    estimate = report["surfaces"]["photo"]["estimated_accuracy"]
    assert abs(estimate - measured["accuracy"]) <= 0.03, (estimate, measured, everything)
    assert report["surfaces"]["photo"]["temperature"] > 0
