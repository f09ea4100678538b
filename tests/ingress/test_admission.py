"""New connections per source address, limited before their TLS handshake: a bucket per address; against a
live gateway, an address past its burst is reset before any handshake while another address is served; an address whose
handshake stalls holds only its own slot (its next connection waits, another address is served)."""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from gateway.ingress.admission import AddressBuckets, HandshakeSlots
from tests.conftest import RunningGateway, gateway_with, metrics
from tests.security.helpers import metric_value

GET = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
ATTACKER, OTHER = "127.0.0.2", "127.0.0.3"  # not the address the start-up checks come from


def test_a_bucket_per_address_allows_its_burst_then_its_rate() -> None:
    told: list[None] = []
    buckets = AddressBuckets(rate_per_s=2.0, burst=3, on_refused=lambda: told.append(None))
    assert [buckets.take("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b", now=0.0)  # another address has its own bucket
    assert not buckets.take("a", now=0.25)  # half a token
    assert buckets.take("a", now=0.5) and not buckets.take("a", now=0.5)
    assert buckets.take("a", now=100.0) and buckets.refused == 3 and len(told) == 3


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


def refusals_counted(gateway: RunningGateway) -> float:
    return metric_value(metrics(gateway), "gateway_connections_refused_total", reason="accept_rate")


def test_an_address_past_its_burst_is_reset_before_the_handshake_and_another_is_served(admitting) -> None:
    assert all(ask(admitting, ATTACKER).startswith(b"HTTP/1.1 200 ") for _ in range(3))
    assert refused(admitting, ATTACKER)
    assert ask(admitting, OTHER).startswith(b"HTTP/1.1 200 ")
    assert refusals_counted(admitting) == 1  # on /metrics, summed over the workers
    resets = 1
    deadline = time.monotonic() + 20
    while refused(admitting, ATTACKER):  # a token comes back after 2 s
        resets += 1
        assert time.monotonic() < deadline, "the address never got a new token"
        time.sleep(0.2)  # polling interval only
    assert refusals_counted(admitting) == resets


def test_handshake_slots_per_address_hand_over_in_order_and_refuse_past_the_queue() -> None:
    told: list[None] = []
    slots = HandshakeSlots(per_address=2, waiting_per_address=2, on_refused=lambda: told.append(None))
    assert [slots.submit("a", n) for n in range(5)] == [True, True, False, False, None]
    assert slots.submit("b", "b0") is True  # another address has its own slots
    assert slots.finished("a") == 2 and slots.finished("a") == 3  # the waiting ones take the freed slots, in order
    assert slots.finished("a") is None and slots.finished("a") is None  # both slots free again
    assert slots.submit("a", 5) is True and slots.refused == 1 and len(told) == 1


@pytest.fixture(scope="module")
def one_slot(pki) -> Iterator[RunningGateway]:
    env = {"GATEWAY_LIMITS_ACCEPT_RATE_PER_ADDRESS": "0", "GATEWAY_LIMITS_TLS_HANDSHAKES_PER_ADDRESS": "1"}
    with gateway_with(pki, env) as running:
        yield running


def test_an_address_stalled_in_its_handshake_waits_alone_and_another_is_served(one_slot) -> None:
    host, port = one_slot.base_url.removeprefix("https://").rsplit(":", 1)
    stalled = socket.create_connection((host, int(port)), timeout=20, source_address=(ATTACKER, 0))
    stalled.sendall(b"\x16\x03\x01")  # three bytes of a ClientHello: holds the address's only slot
    context = ssl.create_default_context(cafile=str(one_slot.pki.ca_cert))
    context.load_cert_chain(str(one_slot.pki.client_cert("app")), str(one_slot.pki.client_key("app")))
    raw = socket.create_connection((host, int(port)), timeout=20, source_address=(ATTACKER, 0))
    raw.setblocking(False)
    queued = context.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
    with pytest.raises(ssl.SSLWantReadError):
        queued.do_handshake()  # the ClientHello is sent
    assert ask(one_slot, OTHER).startswith(b"HTTP/1.1 200 ")  # another address: served while the first waits
    assert select.select([queued], [], [], 1.0)[0] == []  # no ServerHello while the stalled one holds the slot
    stalled.close()  # the slot passes to the waiting connection
    queued.settimeout(20)
    queued.do_handshake()
    queued.sendall(GET)
    answer = b""
    while chunk := queued.recv(65536):
        answer += chunk
    queued.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
