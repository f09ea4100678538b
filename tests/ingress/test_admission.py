"""New connections per source address, limited before their TLS handshake: a bucket per address; against a
live gateway, an address past its burst is reset before any handshake while another address is served."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from gateway.ingress.admission import AddressBuckets
from tests.conftest import RunningGateway, gateway_with

GET = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
ATTACKER, OTHER = "127.0.0.2", "127.0.0.3"  # not the address the start-up checks come from


def test_a_bucket_per_address_allows_its_burst_then_its_rate() -> None:
    buckets = AddressBuckets(rate_per_s=2.0, burst=3)
    assert [buckets.take("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b", now=0.0)  # another address has its own bucket
    assert not buckets.take("a", now=0.25)  # half a token
    assert buckets.take("a", now=0.5) and not buckets.take("a", now=0.5)
    assert buckets.take("a", now=100.0) and buckets.refused == 3


@pytest.fixture(scope="module")
def admitting(pki) -> Iterator[RunningGateway]:
    env = {"GATEWAY_LIMITS_ACCEPT_RATE_PER_ADDRESS": "0.5", "GATEWAY_LIMITS_ACCEPT_BURST_PER_ADDRESS": "3"}
    with gateway_with(pki, env) as running:
        yield running


def ask(gateway: RunningGateway, source: str) -> bytes:
    """One request on a new mTLS connection from ``source``; raises OSError if the connection is refused."""
    pki = gateway.pki
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert("app")), str(pki.client_key("app")))
    host, port = gateway.base_url.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=20, source_address=(source, 0))
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(GET)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def refused(gateway: RunningGateway, source: str) -> bool:
    try:
        ask(gateway, source)
    except (ConnectionResetError, ssl.SSLError):  # reset before the handshake answered
        return True
    return False


def test_an_address_past_its_burst_is_reset_before_the_handshake_and_another_is_served(admitting) -> None:
    assert all(ask(admitting, ATTACKER).startswith(b"HTTP/1.1 200 ") for _ in range(3))
    assert refused(admitting, ATTACKER)
    assert ask(admitting, OTHER).startswith(b"HTTP/1.1 200 ")
    deadline = time.monotonic() + 20
    while refused(admitting, ATTACKER):  # a token comes back after 2 s
        assert time.monotonic() < deadline, "the address never got a new token"
        time.sleep(0.2)  # polling interval only
