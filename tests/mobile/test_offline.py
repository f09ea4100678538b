"""Photos taken offline wait on disk and reach the gateway's log exactly once when it is back."""

from __future__ import annotations

import time

import numpy as np

from gateway.bench.photos import digit_photo
from gateway.core.types import Identity
from gateway.ingress.idempotency import request_id_for
from gateway.security.pki import PkiPaths
from mobile_client import Client, OfflineQueue, Prediction, Queued, RetryPolicy, Upload, classify_or_queue
from tests.conftest import start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer, free_port

APP = Identity(name="app", role="app")


def test_photos_queued_offline_are_sent_once_each_when_the_gateway_is_back(
    pki: PkiPaths, redis_server: RedisServer, tmp_path, heldout_sample
) -> None:
    x, y = heldout_sample
    rng = np.random.default_rng(11)
    photos = [digit_photo(x[i], rng) for i in range(3)]
    tls = {"ca": pki.ca_cert, "cert": pki.client_cert("app"), "key": pki.client_key("app")}
    queue = OfflineQueue(tmp_path / "queue")
    offline = Client(f"https://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=1), **tls)
    with offline:
        queued = [classify_or_queue(offline, queue, photo, "mnist") for photo in photos]
    assert all(isinstance(q, Queued) for q in queued) and len(queue) == 3

    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool")
    try:
        with Client(gateway.base_url, **tls) as online:
            # The app sent the first one and died before it could take it off the queue:
            crashed = online.classify(photos[0], "mnist", idempotency_key=queued[0].key)
            report = queue.drain(online)
            again = queue.drain(online)
            marker = online.classify(photos[1], "mnist")
        deadline = time.monotonic() + 15
        logged: list[str] = []
        while marker.request_id not in logged:
            assert time.monotonic() < deadline, "the records never reached Redis"
            logged = [r["request_id"] for r in redis_server.records("mnist")]
    finally:
        stop_gateway(gateway)
    assert [entry.key for entry, _ in report.sent] == [q.key for q in queued]
    assert [p.label for _, p in report.sent] == [str(label) for label in y[:3]]
    assert report.remaining == 0 and not report.failed and not again.sent and len(queue) == 0
    assert report.sent[0][1].request_id == crashed.request_id and report.sent[0][1].replayed
    for q in queued:
        assert logged.count(request_id_for(APP, q.key)) == 1
    assert len(logged) == 4
    answers = (tmp_path / "queue" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == 3


def test_a_photo_the_gateway_refuses_for_good_leaves_the_queue_for_failed(gateway, tmp_path) -> None:
    pki = gateway.pki
    queue = OfflineQueue(tmp_path / "queue")
    queue.put(Upload(b"not a photo", "image/jpeg", 11, (0, 0)), "mnist")
    with Client(gateway.base_url, ca=pki.ca_cert, cert=pki.client_cert("app"), key=pki.client_key("app")) as client:
        report = queue.drain(client)
    assert len(report.failed) == 1 and report.failed[0][1].code == "invalid_input" and len(queue) == 0
    assert len(list((tmp_path / "queue" / "failed").glob("*.json"))) == 1


def test_prediction_is_importable_from_the_package() -> None:
    assert Prediction("m", "1", "a", {"a": 0.5}, "r", 1.0).confidence == 0.5
