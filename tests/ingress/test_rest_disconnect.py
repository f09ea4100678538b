"""A caller that hangs up, or whose deadline passes while it waits for its batch, is dropped: never executed."""

from __future__ import annotations

import socket
import ssl
import time
from urllib.parse import urlsplit

from gateway.bench.photos import digit_png
from gateway.security.tls import client_context
from tests.conftest import MNIST_STABLE, SLOW_BATCH_DELAY_US, RunningGateway, executed, metrics, requests_counted

CLASSIFY = "/api/v1/models/mnist/classify"


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
    while f'gateway_queue_depth{{model="mnist",version="{MNIST_STABLE}"}} 1.0' not in metrics(gateway):
        assert time.monotonic() < deadline, "the request never reached the batcher's queue"
    return sock


def test_a_client_that_hangs_up_is_dropped_before_execution(slow_batching_gateway, heldout_sample) -> None:
    gateway = slow_batching_gateway
    photo = digit_png(heldout_sample[0][0])
    with send_and_wait_until_queued(gateway, photo):
        pass  # hang up while the request waits for its batch
    deadline = time.monotonic() + SLOW_BATCH_DELAY_US / 1e6
    while 'code="499"' not in (text := metrics(gateway)):
        assert time.monotonic() < deadline, "the hang-up was not noticed while the request was queued"
    assert f'gateway_requests_total{{code="499",model="mnist",protocol="rest",version="{MNIST_STABLE}"}} 1.0' in text
    with gateway.client() as client:
        answer = client.post("/api/v1/models/mnist/classify", content=photo, headers={"content-type": "image/png"})
    assert answer.status_code == 200
    text = metrics(gateway)
    assert f'gateway_batch_size_count{{model="mnist",version="{MNIST_STABLE}"}} 1.0' in text
    assert f'gateway_batch_size_sum{{model="mnist",version="{MNIST_STABLE}"}} 1.0' in text, (
        "the hung-up request was executed too"
    )


def test_sigterm_finishes_requests_in_flight_then_exits(slow_batching_gateway, heldout_sample) -> None:
    """A request still queued for its batch when SIGTERM arrives is answered; then the process exits 0."""
    gateway = slow_batching_gateway
    with send_and_wait_until_queued(gateway, digit_png(heldout_sample[0][30])) as sock:
        gateway.server.process.terminate()
        sock.settimeout(SLOW_BATCH_DELAY_US / 1e6 + 10)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert gateway.server.process.wait(timeout=30) == 0


def test_a_deadline_that_passes_in_the_queue_is_504_from_the_gateway_and_never_run(
    slow_batching_gateway, heldout_sample
) -> None:
    """The client waits far longer than its deadline: the 504 is the gateway's own answer, not the client's timer."""
    gateway = slow_batching_gateway
    photo = digit_png(heldout_sample[0][0])
    headers = {"content-type": "image/png"}
    with gateway.client() as client:
        late = client.post(CLASSIFY, content=photo, headers={**headers, "x-request-timeout-ms": "300"}, timeout=30)
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "deadline_exceeded", late.text
        assert requests_counted(gateway, "rest", "504") == 1
        assert executed(gateway) == (0, 0)
        on_time = client.post(CLASSIFY, content=photo, headers=headers, timeout=30)  # runs alone, 3 s later
    assert on_time.status_code == 200, on_time.text
    assert executed(gateway) == (1, 1), "the request whose deadline passed in the queue was run too"
