"""The REST surface end to end: a real `gateway serve` process, real sockets, real certificates."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.bench.photos import digit_photo, digit_png
from gateway.models.repository import load_repository
from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context
from tests.badinputs import image_bytes, png_bomb, truncated_jpeg
from tests.conftest import BODY_LIMIT, MNIST_STABLE, MODEL_REPO, RunningGateway, start_gateway, stop_gateway
from tests.memory import peak_growth

CLASSIFY = "/api/v1/models/mnist/classify"
STREAMED_BYTES = 64 * 1024 * 1024


def classify_png(client: httpx.Client, digit: np.ndarray, **params) -> httpx.Response:
    return client.post(CLASSIFY, content=digit_png(digit), headers={"content-type": "image/png"}, params=params)


def assert_error(response: httpx.Response, status: int, code: str, message: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert message in body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]


def assert_still_serving(gateway: RunningGateway, digit: np.ndarray, label: int) -> None:
    gateway.assert_alive()
    with gateway.client() as client:
        response = classify_png(client, digit)
    assert response.status_code == 200, response.text
    assert response.json()["label"] == str(label)


@pytest.fixture(scope="module")
def good(heldout_sample) -> tuple[np.ndarray, int]:
    x, y = heldout_sample
    return x[0], int(y[0])


def test_clean_digit_is_classified_with_full_answer(gateway: RunningGateway, heldout_sample) -> None:
    x, y = heldout_sample
    with gateway.client() as client:
        answers = [classify_png(client, x[i]) for i in range(0, 300, 30)]
    for i, response in zip(range(0, 300, 30), answers, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == str(y[i])
        assert body["model"] == "mnist" and body["version"] == MNIST_STABLE
        assert sorted(body["probabilities"]) == [str(d) for d in range(10)]
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-4
        assert max(body["probabilities"], key=body["probabilities"].get) == body["label"]
        assert body["request_id"] == response.headers["x-request-id"]
        assert body["latency_ms"] > 0


def test_phone_photo_multipart_with_exif_rotation(gateway: RunningGateway, heldout_sample) -> None:
    x, y = heldout_sample
    rng = np.random.default_rng(7)
    with gateway.client() as client:
        for i, orientation in ((5, 6), (41, 3), (77, 8), (150, 1)):
            photo = digit_photo(x[i], rng, orientation=orientation)
            response = client.post(CLASSIFY, files={"image": ("photo.jpg", photo, "image/jpeg")})
            assert response.status_code == 200, response.text
            assert response.json()["label"] == str(y[i])


def test_concurrent_callers_each_get_their_own_answer(gateway: RunningGateway, heldout_sample) -> None:
    x, y = heldout_sample
    indices = list(range(0, 300, 7))
    with gateway.client() as client, ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: classify_png(client, x[i]), indices))
    labels = [r.json()["label"] for r in responses]
    expected = [str(y[i]) for i in indices]
    agreement = np.mean([a == b for a, b in zip(labels, expected, strict=True)])
    assert agreement >= 0.95
    assert len({r.json()["request_id"] for r in responses}) == len(indices)


def test_model_description_and_health(gateway: RunningGateway) -> None:
    with gateway.client() as client:
        models = client.get("/api/v1/models").json()["models"]
        mnist = client.get("/api/v1/models/mnist").json()
        assert client.get("/healthz").json() == {"status": "live"}
        ready = client.get("/readyz")
    assert [m["name"] for m in models] == ["hotdog", "mnist"]
    assert mnist["versions"] == sorted(load_repository(MODEL_REPO)["mnist"].versions, key=int)  # version_policy
    assert mnist["inputs"] == [{"name": "image", "datatype": "float32", "shape": [-1, 1, 28, 28]}]
    assert mnist["labels"] == [str(d) for d in range(10)]
    assert ready.status_code == 200 and ready.json()["models"] == ["hotdog", "mnist"]


def test_metrics_count_batches_and_answers_by_code(gateway: RunningGateway, good) -> None:
    with gateway.client() as client:
        classify_png(client, good[0])
        client.post("/api/v1/models/no-such-model/classify", content=b"x", headers={"content-type": "image/png"})
        text = client.get("/metrics").text
    assert f'gateway_requests_total{{code="200",model="mnist",protocol="rest",version="{MNIST_STABLE}"}}' in text
    assert 'gateway_requests_total{code="404",model="_unknown",protocol="rest",version=""}' in text
    batches = float(
        re.search(rf'^gateway_batch_size_count\{{model="mnist",version="{MNIST_STABLE}"\}} (\S+)$', text, re.M).group(1)
    )
    assert batches >= 1
    assert f'gateway_queue_depth{{model="mnist",version="{MNIST_STABLE}"}}' in text
    assert "gateway_batch_execution_seconds_bucket" in text and "gateway_queue_delay_seconds_bucket" in text


def tls_refused(gateway: RunningGateway, context: ssl.SSLContext) -> None:
    with pytest.raises(httpx.TransportError), httpx.Client(base_url=gateway.base_url, verify=context) as client:
        client.get("/healthz")


def test_no_client_certificate_is_refused(gateway: RunningGateway, good) -> None:
    tls_refused(gateway, client_context(gateway.pki.ca_cert))
    assert_still_serving(gateway, *good)


def test_certificate_from_another_ca_is_refused(gateway: RunningGateway, foreign_pki: PkiPaths, good) -> None:
    context = client_context(gateway.pki.ca_cert, foreign_pki.client_cert("app"), foreign_pki.client_key("app"))
    tls_refused(gateway, context)
    assert_still_serving(gateway, *good)


def test_certificate_without_a_role_is_forbidden(gateway: RunningGateway, tmp_path, good) -> None:
    pki = gateway.pki
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no-role")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "c.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = client_context(pki.ca_cert, tmp_path / "c.pem", tmp_path / "c.key")
    with httpx.Client(base_url=gateway.base_url, verify=context) as client:
        response = classify_png(client, good[0])
    assert_error(response, 403, "permission_denied", "exactly one gateway role")


@pytest.mark.parametrize(
    ("path", "content", "content_type", "status", "code", "message"),
    [
        (
            "/api/v1/models/cifar/classify",
            b"x",
            "image/png",
            404,
            "not_found",
            "unknown model 'cifar'; available: hotdog, mnist",
        ),
        (CLASSIFY, b"hello, I am text", "image/jpeg", 400, "invalid_input", "not a JPEG, PNG or WebP"),
        (CLASSIFY, truncated_jpeg(), "image/jpeg", 400, "invalid_input", "truncated or corrupt"),
        (CLASSIFY, b"", "image/png", 400, "invalid_input", "has no image"),
        (CLASSIFY, b"a,b\n1,2\n", "text/csv", 415, "unsupported_media_type", "Content-Type text/csv"),
        (CLASSIFY, image_bytes("GIF", mode="L"), "image/png", 415, "unsupported_media_type", "the image is GIF"),
        (CLASSIFY, png_bomb(), "image/png", 413, "payload_too_large", "pixels"),
        (CLASSIFY, png_bomb(7_000, 7_000), "image/png", 413, "payload_too_large", "7000x7000"),
        (
            CLASSIFY + "?version=9",
            digit_png(np.zeros((28, 28), np.uint8)),
            "image/png",
            404,
            "not_found",
            "no loaded version '9'",
        ),
        (CLASSIFY + "?version=latest", b"x", "image/png", 400, "invalid_input", "query.version"),
        (CLASSIFY, digit_png(np.zeros((28, 28), np.uint8)), "image/png", 400, "invalid_input", "no digit found"),
        (
            CLASSIFY,
            b'--x\r\nContent-Disposition: form-data; name="photo"\r\n\r\nabc\r\n--x--\r\n',
            "multipart/form-data; boundary=x",
            400,
            "invalid_input",
            "no field named 'image'",
        ),
        (CLASSIFY, b"garbage", "multipart/form-data; boundary=x", 400, "invalid_input", "cannot be parsed"),
        (CLASSIFY, b"--x--", "multipart/form-data", 400, "invalid_input", "no boundary parameter"),
        ("/api/v1/nothing", b"", "image/png", 404, "not_found", "Not Found"),
    ],
    ids=[
        "unknown-model",
        "not-an-image",
        "truncated-jpeg",
        "empty-body",
        "wrong-content-type",
        "gif",
        "bomb-50k",
        "bomb-7k",
        "unknown-version",
        "bad-version",
        "blank-photo",
        "multipart-without-image",
        "multipart-garbage",
        "multipart-no-boundary",
        "unknown-path",
    ],
)
def test_bad_requests_get_precise_errors_and_the_gateway_keeps_serving(
    gateway: RunningGateway, good, path: str, content: bytes, content_type: str, status: int, code: str, message: str
) -> None:
    with gateway.client() as client:
        response = client.post(path, content=content, headers={"content-type": content_type})
    assert_error(response, status, code, message)
    assert_still_serving(gateway, *good)


@pytest.fixture
def own_gateway(pki: PkiPaths) -> Iterator[RunningGateway]:
    """A gateway started for this test alone: what its memory does is this test's doing."""
    running = start_gateway(
        pki, "--model-repo", str(MODEL_REPO), env={"GATEWAY_LIMITS_MAX_BODY_BYTES": str(BODY_LIMIT)}
    )
    yield running
    stop_gateway(running)


def test_bomb_does_not_spike_server_memory(own_gateway: RunningGateway, good) -> None:
    gateway = own_gateway
    with gateway.client() as client:
        assert_still_serving(gateway, *good)  # warmed up: the model and the decoder pool are loaded
        for size in ((50_000, 50_000), (12_000, 12_000), (6_500, 6_500)):
            with peak_growth(gateway.server.process.pid) as growth:
                response = client.post(CLASSIFY, content=png_bomb(*size), headers={"content-type": "image/png"})
            assert response.status_code == 413
            print(f"\n{size[0]}x{size[1]} bomb: the gateway's RSS peaked {growth.peak_kib:,} KiB above its start")
            assert growth.peak_kib < 50_000, f"refusing a {size[0]}x{size[1]} bomb took {growth.peak_kib:,} KiB"


def raw_tls_socket(gateway: RunningGateway) -> ssl.SSLSocket:
    pki = gateway.pki
    url = urlsplit(gateway.base_url)
    context = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    return context.wrap_socket(sock, server_hostname=url.hostname)


def read_status(sock: ssl.SSLSocket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_declared_oversize_body_is_refused_before_it_is_sent(gateway: RunningGateway, good) -> None:
    with raw_tls_socket(gateway) as sock:
        sock.sendall(
            b"POST " + CLASSIFY.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 1073741824\r\n\r\n" + b"\xff" * 65536
        )
        assert read_status(sock) == 413
    assert_still_serving(gateway, *good)


def test_wrong_content_type_is_refused_before_the_body_is_sent(gateway: RunningGateway, good) -> None:
    with raw_tls_socket(gateway) as sock:
        sock.sendall(
            b"POST " + CLASSIFY.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 1048576\r\n\r\n"
        )
        assert read_status(sock) == 415
    assert_still_serving(gateway, *good)


def test_streamed_oversize_body_is_refused_at_the_limit_without_buffering_it(own_gateway: RunningGateway, good) -> None:
    def body():
        chunk = b"\xff" * 65536
        for _ in range(STREAMED_BYTES // len(chunk)):
            yield chunk

    gateway = own_gateway
    assert_still_serving(gateway, *good)
    with gateway.client() as client, peak_growth(gateway.server.process.pid) as growth:
        response = client.post(CLASSIFY, content=body(), headers={"content-type": "image/jpeg"})
    assert_error(response, 413, "payload_too_large", f"exceeds the limit of {BODY_LIMIT:,} bytes")
    assert response.headers["connection"] == "close"
    print(f"\nstreaming {STREAMED_BYTES:,} bytes: the gateway's RSS peaked {growth.peak_kib:,} KiB above its start")
    assert growth.peak_kib < STREAMED_BYTES // 1024 // 4, f"the gateway buffered the body: {growth.peak_kib:,} KiB"
    assert_still_serving(gateway, *good)
