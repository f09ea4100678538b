"""No secrets or raw photos in the logs (the process's output, text or JSON, and the prediction log in Redis)
unless photo sampling is switched on; with sampling on, the same search finds the photo (so the search can fail)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import redis

from gateway.security.pki import PkiPaths
from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import REPO_ROOT, RunningGateway, start_gateway_on_redis, stop_gateway
from tests.redis_server import RedisServer

PHOTO = (REPO_ROOT / "docs" / "examples" / "seven.jpg").read_bytes()
NEEDLE = PHOTO[len(PHOTO) // 2 : len(PHOTO) // 2 + 48]


def _traffic(gateway: RunningGateway) -> None:
    """Photos on REST (raw and multipart) and gRPC, a broken photo, an idempotency key, a refused call."""
    with gateway.client("app") as client:
        for headers in ({"content-type": "image/jpeg"}, {"content-type": "image/jpeg", "idempotency-key": "k-123"}):
            assert client.post("/api/v1/models/mnist/classify", content=PHOTO, headers=headers).status_code == 200
        multipart = client.post("/api/v1/models/mnist/classify", files={"image": ("seven.jpg", PHOTO, "image/jpeg")})
        assert multipart.status_code == 200
        broken = PHOTO[: len(PHOTO) // 2 + 64]
        refused = client.post("/api/v1/models/mnist/classify", content=broken, headers={"content-type": "image/jpeg"})
        assert refused.status_code == 400
        assert client.get("/api/v1/models/mnist/rollout").status_code == 403
    with gateway.grpc_channel("app") as channel:
        classifier_pb2_grpc.ClassifierStub(channel).Classify(
            classifier_pb2.ClassifyRequest(model="mnist", image=PHOTO), timeout=30
        )


def _redis_contains(port: int, needle: bytes) -> bool:
    client = redis.Redis(port=port)
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"stream":
                values = [v for _, fields in client.xrange(key) for v in fields.values()]
            elif kind == b"hash":
                values = list(client.hgetall(key).values())
            elif kind == b"string":
                values = [client.get(key)]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            else:
                values = []
            if any(needle in value for value in values if value):
                return True
        return False
    finally:
        client.close()


def _secrets(pki: PkiPaths) -> list[str]:
    """Body lines of every private key the gateway or its clients hold."""
    keys = [pki.server_key, pki.ca_key, pki.client_key("app"), pki.client_key("operator")]
    return [line for key in keys for line in key.read_text().splitlines() if "-----" not in line]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_private_keys_or_photos_in_output_or_prediction_log_unless_sampling(
    pki: PkiPaths, redis_server: RedisServer, tmp_path: Path, log_format: str
) -> None:
    photo_forms = [NEEDLE.hex(), base64.b64encode(NEEDLE[:45]).decode(), repr(NEEDLE)[2:40]]
    logging_env = {"GATEWAY_LOGGING_FORMAT": log_format}
    gateway = start_gateway_on_redis(pki, redis_server, tmp_path / "spool", env=logging_env)
    try:
        _traffic(gateway)
        with gateway.client("operator") as operator:
            operator.post("/api/v1/models/mnist/classify", content=PHOTO, headers={"content-type": "image/jpeg"})
    finally:
        stop_gateway(gateway)  # flushes the prediction log
    output = "".join(gateway.output)
    assert output.count("gateway.requests") == 6  # the line of every classify request was searched too
    assert "PRIVATE KEY" not in output
    assert not [line for line in _secrets(pki) if line in output]
    assert not [form for form in photo_forms if form in output]
    assert "predictions:mnist" in {k.decode() for k in redis.Redis(port=redis_server.port).keys("predictions:*")}
    assert not _redis_contains(redis_server.port, NEEDLE)

    sampling = start_gateway_on_redis(
        pki, redis_server, tmp_path / "spool-sampling", env={"GATEWAY_PREDICTIONS_SAMPLE_PHOTOS": "1.0", **logging_env}
    )
    try:
        _traffic(sampling)
    finally:
        stop_gateway(sampling)
    assert _redis_contains(redis_server.port, NEEDLE)  # switched on, the photo is kept (in Redis, not the output)
    assert not [form for form in photo_forms if form in "".join(sampling.output)]
