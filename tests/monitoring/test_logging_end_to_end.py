"""Every answered request, whatever its surface, becomes a record in the shared Redis."""

from __future__ import annotations

import time

import numpy as np

from gateway.bench.photos import digit_photo
from gateway.monitoring.features import DIGIT_FEATURES
from gateway.security.pki import PkiPaths
from tests.conftest import start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer


def test_predictions_are_logged_with_features_and_survive_a_redis_outage(
    pki: PkiPaths, redis_server: RedisServer, tmp_path, heldout_sample
) -> None:
    x, _ = heldout_sample
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    rng = np.random.default_rng(5)
    try:
        with gateway.client() as client:
            photo = digit_photo(x[9], rng)
            answer = client.post("/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/jpeg"})
            tensor = client.post(
                "/v2/models/mnist/infer",
                json={
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "FP32",
                            "shape": [1, 1, 28, 28],
                            "data": (x[10] / 255.0).ravel().tolist(),
                        }
                    ]
                },
            )
            assert answer.status_code == 200 and tensor.status_code == 200
            deadline = time.monotonic() + 10
            while len(redis_server.records("mnist")) < 2:
                assert time.monotonic() < deadline, "the records never reached Redis"
            redis_server.stop()
            during_outage = [
                client.post(
                    "/api/v1/models/mnist/classify",
                    content=digit_photo(x[i], rng),
                    headers={"content-type": "image/jpeg"},
                )
                for i in range(11, 16)
            ]
            assert all(r.status_code == 200 for r in during_outage), "answers must not wait for the log"
    finally:
        stop_gateway(gateway)  # the spool is flushed to disk on the way out
    assert len((tmp_path / "spool" / "predictions.jsonl").read_text().splitlines()) == 5
    redis_server.start()
    restarted = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    try:
        deadline = time.monotonic() + 15
        while len(records := redis_server.records("mnist")) < 7:
            assert time.monotonic() < deadline, "the spool was not replayed after the restart"
    finally:
        stop_gateway(restarted)
    first = records[0]
    assert first["request_id"] == answer.json()["request_id"]
    assert first["client"] == "app" and first["input"] == "photo" and first["label"] == answer.json()["label"]
    assert set(first["features"]) == set(DIGIT_FEATURES)
    assert len(first["probabilities"]) == 10 and first["source_size"][0] > 0
    assert records[1]["input"] == "tensor" and set(records[1]["features"]) == set(DIGIT_FEATURES)
    assert [r["request_id"] for r in records[2:]] == [r.json()["request_id"] for r in during_outage]
