"""Connections that cannot hold a gateway process: per-client connection limit (429), header timeout
(408, slowloris), TLS handshake timeout, idle keep-alive timeout; against a live gateway over mTLS."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.conftest import RunningGateway, gateway_with

LIMITS = {
    "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_CLIENT": "3",
    "GATEWAY_LIMITS_HEADER_TIMEOUT_S": "2",
    "GATEWAY_LIMITS_TLS_HANDSHAKE_TIMEOUT_S": "2",
    "GATEWAY_SERVER_HTTP_KEEP_ALIVE_S": "2",
}
GET = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.fixture(scope="module")
def limited(pki) -> Iterator[RunningGateway]:
    with gateway_with(pki, LIMITS) as running:
        yield running


def address(gateway: RunningGateway) -> tuple[str, int]:
    host, port = gateway.base_url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def connect(gateway: RunningGateway, identity: str = "app") -> ssl.SSLSocket:
    """A TLS connection with its handshake done, presenting ``identity``'s certificate."""
    pki = gateway.pki
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert(identity)), str(pki.client_key(identity)))
    raw = socket.create_connection(address(gateway), timeout=20)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (the socket's 20 s timeout fails the test)."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def ask(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(GET)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        answer += sock.recv(65536)
    return answer


def test_a_client_past_its_connection_limit_gets_429_and_another_client_is_served(limited) -> None:
    held = [connect(limited) for _ in range(3)]
    try:
        assert all(ask(sock).startswith(b"HTTP/1.1 200 ") for sock in held)
        with connect(limited) as fourth:
            fourth.sendall(GET)
            answer = read_until_closed(fourth)
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:200]
        assert b"limits.max_connections_per_client" in answer
        with connect(limited, "operator") as other:
            assert ask(other).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
    with connect(limited) as again:  # closed connections are given back
        assert ask(again).startswith(b"HTTP/1.1 200 ")


def test_headers_that_trickle_in_get_408_and_the_connection_closed(limited) -> None:
    with connect(limited) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")  # and then nothing: slowloris
        answer = read_until_closed(slow)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"limits.header_timeout_s" in answer
    assert time.monotonic() - started >= 1.5  # not before the timeout (2 s)


def test_a_connection_that_never_finishes_its_tls_handshake_is_dropped(limited) -> None:
    with socket.create_connection(address(limited), timeout=20) as raw:
        raw.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and then nothing
        assert read_until_closed(raw) == b""  # closed by the gateway, within its 2 s (our timeout is 20 s)


def test_an_idle_keep_alive_connection_is_closed(limited) -> None:
    with connect(limited) as sock:
        assert ask(sock).startswith(b"HTTP/1.1 200 ")
        assert read_until_closed(sock) == b""
