"""A caller that hangs up is dropped from its batch: it is never executed."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.bench.photos import digit_png
from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context
from tests.conftest import MODEL_REPO, RunningGateway, start_gateway, stop_gateway

SLOW_DELAY_US = 3_000_000


@pytest.fixture
def slow_batching_gateway(pki: PkiPaths, tmp_path: Path):
    """The real model, but a batch waits up to 3 s to fill: a lone request sits in the queue."""
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPO / "mnist", repo / "mnist")
    config = repo / "mnist" / "config.pbtxt"
    config.write_text(
        re.sub(
            r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {SLOW_DELAY_US}", config.read_text()
        ).replace("preferred_batch_size: [ 16, 32 ]", "")
    )
    gateway = start_gateway(pki, "--model-repo", str(repo))
    yield gateway
    stop_gateway(gateway)


def send_and_wait_until_queued(gateway: RunningGateway, photo: bytes) -> ssl.SSLSocket:
    """Send a classify request on a raw mTLS socket; return it once the request waits in the batcher's queue."""
    pki = gateway.pki
    url = urlsplit(gateway.base_url)
    context = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    sock = context.wrap_socket(socket.create_connection((url.hostname, url.port)), server_hostname=url.hostname)
    sock.sendall(
        b"POST /api/v1/models/mnist/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(photo)}\r\n\r\n".encode()
        + photo
    )
    deadline = time.monotonic() + 3
    while 'gateway_queue_depth{model="mnist",version="1"} 1.0' not in metrics(gateway):
        assert time.monotonic() < deadline, "the request never reached the batcher's queue"
    return sock


def metrics(gateway: RunningGateway) -> str:
    with gateway.client() as client:
        return client.get("/metrics").text


def test_a_client_that_hangs_up_is_dropped_before_execution(slow_batching_gateway, heldout_sample) -> None:
    gateway = slow_batching_gateway
    photo = digit_png(heldout_sample[0][0])
    with send_and_wait_until_queued(gateway, photo):
        pass  # hang up while the request waits for its batch
    deadline = time.monotonic() + SLOW_DELAY_US / 1e6
    while 'code="499"' not in (text := metrics(gateway)):
        assert time.monotonic() < deadline, "the hang-up was not noticed while the request was queued"
    assert 'gateway_requests_total{code="499",model="mnist",protocol="rest",version="1"} 1.0' in text
    with gateway.client() as client:
        answer = client.post("/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"})
    assert answer.status_code == 200
    text = metrics(gateway)
    assert 'gateway_batch_size_count{model="mnist",version="1"} 1.0' in text
    assert 'gateway_batch_size_sum{model="mnist",version="1"} 1.0' in text, "the hung-up request was executed too"


def test_sigterm_finishes_requests_in_flight_then_exits(slow_batching_gateway, heldout_sample) -> None:
    """A request still queued for its batch when SIGTERM arrives is answered; then the process exits 0."""
    gateway = slow_batching_gateway
    with send_and_wait_until_queued(gateway, digit_png(heldout_sample[0][30])) as sock:
        gateway.server.process.terminate()
        sock.settimeout(SLOW_DELAY_US / 1e6 + 10)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert gateway.server.process.wait(timeout=30) == 0
