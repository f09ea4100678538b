"""The accept loop of ``AdmittingServer`` on real loopback sockets with real certificates: a burst of
connections past an address's rate, queued before the loop wakes, is reset and counted, one by one, while the
admitted connection and another address get their handshake and a whole answer; a refused connection leaves
no TIME_WAIT behind on the gateway's side (a reset, not a close)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from gateway.ingress.admission import AddressBuckets, AdmittingServer
from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context, server_context

ATTACKER, OTHER = "127.0.0.2", "127.0.0.3"
ANSWER = b"x" * 4_000_000
"""More than the socket buffers hold: still being sent when the server closes the connection."""
BURST = 40


class Answer(asyncio.Protocol):
    """Sends ANSWER at once and closes (TLS close_notify after the last byte, then the TCP close)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(ANSWER)  # type: ignore[attr-defined]
        transport.close()


class Running:
    """An AdmittingServer on its own event loop in a thread; ``paused`` holds the loop so that connections
    queue in the listener before it wakes."""

    def __init__(self, pki: PkiPaths, buckets: AddressBuckets) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=BURST * 2)
        self.port = self.sock.getsockname()[1]
        self.buckets = buckets
        self.context = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
        self.loop = asyncio.new_event_loop()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: AdmittingServer | None = None

    def __enter__(self) -> Running:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self.server = AdmittingServer(self.sock, Answer, self.context, self.buckets, 10.0)

    def hold(self) -> threading.Event:
        """Blocks the loop until the returned event is set."""
        release = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (self.paused.set(), release.wait(20)))
        assert self.paused.wait(10)
        return release

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.sock.close()


@pytest.fixture
def running(pki: PkiPaths) -> Iterator[Running]:
    with Running(pki, AddressBuckets(rate_per_s=0.001, burst=1)) as server:
        yield server


def answer_of(running: Running, raw: socket.socket, pki: PkiPaths) -> bytes:
    """The whole answer on ``raw`` after an mTLS handshake, up to the server's close_notify."""
    context = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        answer = b""
        while chunk := sock.recv(1 << 20):
            answer += chunk
    return answer


def test_a_queued_burst_past_the_rate_is_reset_and_counted_and_the_admitted_get_whole_answers(running, pki) -> None:
    release = running.hold()
    burst = [
        socket.create_connection(("127.0.0.1", running.port), timeout=20, source_address=(ATTACKER, 0))
        for _ in range(BURST)
    ]  # all queued in the listener (the handshake of each waits for the server): one wake-up takes them
    release.set()
    first, refused = burst[0], burst[1:]
    assert answer_of(running, first, pki) == ANSWER  # the address's one token: admitted, answered in full
    for sock in refused:
        with pytest.raises(ConnectionResetError):
            while sock.recv(1):  # a reset, not an orderly close (that would read b"" and end the loop)
                pass
        sock.close()
    assert running.buckets.refused == BURST - 1
    other = socket.create_connection(("127.0.0.1", running.port), timeout=20, source_address=(OTHER, 0))
    assert answer_of(running, other, pki) == ANSWER  # another address: its own bucket


def test_a_refused_connection_leaves_no_time_wait(running, pki) -> None:
    assert answer_of(
        running, socket.create_connection(("127.0.0.1", running.port), timeout=20, source_address=(ATTACKER, 0)), pki
    )
    sock = socket.socket()
    sock.settimeout(20)
    sock.bind((ATTACKER, 0))
    client_port = sock.getsockname()[1]
    with contextlib.suppress(ConnectionResetError), pytest.raises(ssl.SSLError):  # reset at once, or at the hello
        sock.connect(("127.0.0.1", running.port))
        answer_of(running, sock, pki)
    sock.close()
    assert running.buckets.refused == 1
    with open("/proc/net/tcp") as table:  # state 06: TIME_WAIT; local address as hex ip:port
        rows = [line.split() for line in table.readlines()[1:]]
    server_side = f"{running.port:04X}"
    assert not [
        r for r in rows if r[1].endswith(":" + server_side) and r[2].endswith(f":{client_port:04X}") and r[3] == "06"
    ]
