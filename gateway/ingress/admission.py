"""New connections per source address, limited before their TLS handshake costs anything.

A TLS handshake is the dearest thing a stranger can make the gateway do (a few milliseconds of the event
loop's one core for the key exchange and the client certificate's check), and it happens before any
identity is known. Without a bound, a client that reconnects in bursts (its stalled connections all
dropped by the same timeout at once, say) queues thousands of handshakes ahead of everyone else's.

``AdmittingServer`` accepts each connection itself, takes one token from the peer address's bucket
(``limits.accept_rate_per_address`` per second, up to ``limits.accept_burst_per_address``), and only then
hands the socket to the event loop with TLS (``connect_accepted_socket``, with the handshake timeout) and the
HTTP protocol. Without a token the connection is reset at once: an accept and a close, no cryptography,
nothing read.
The address is the TCP peer's: behind a NAT or a load balancer that hides clients' addresses, raise the
limit or set it to 0 (off).

An admitted connection then waits for one of its address's handshake slots (``HandshakeSlots``,
``limits.tls_handshakes_per_address`` in progress at once): the event loop runs every handshake step in the order
the data arrived, so a hundred handshakes of one address in progress put a hundred steps of cryptography ahead of
each step of another address's handshake. With the slots, another address's handshake waits behind at most that
many of one address's. The time waiting for a slot counts towards the handshake timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable

from gateway.security.ratelimit import LocalBucket

log = logging.getLogger(__name__)

RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close sends a reset, and the socket leaves no TIME_WAIT behind."""
GRACEFUL = struct.pack("ii", 0, 0)
"""SO_LINGER off: close sends what is left, then a FIN (an admitted connection's answer is not cut)."""
ACCEPT_RETRY_S = 0.1
ACCEPTS_PER_WAKE = 256
"""Connections taken from the listen queue per wake-up: a burst costs one wake-up per this many, and the
connections already admitted still get their turn between batches."""
BUCKETS_KEPT = 100_000
"""Above this many addresses, the full buckets (addresses quiet for a while) are forgotten."""


class AddressBuckets:
    """One token bucket per source address; ``on_refused`` is called for each connection refused (a metric)."""

    def __init__(self, rate_per_s: float, burst: int, on_refused: Callable[[], None] = lambda: None) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, LocalBucket] = {}
        self.refused = 0
        self._on_refused = on_refused

    def take(self, address: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= BUCKETS_KEPT:
                self._forget_full(now)
            bucket = self._buckets[address] = LocalBucket(float(self.burst), now)
        if bucket.take(self.rate, self.burst, now) == 0.0:
            return True
        self.refused += 1
        self._on_refused()
        return False

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {a: b for a, b in self._buckets.items() if now - b.updated < full_after}


WAITING_PER_ADDRESS = 1_000
"""Connections of one address waiting for a handshake slot; beyond it a new one is reset (the accept rate
normally keeps it far lower: the burst plus the rate times the handshake timeout)."""


class HandshakeSlots:
    """At most ``per_address`` TLS handshakes in progress for one source address (0: no bound); the address's
    next connections wait, in order of arrival, and each finished handshake hands its slot to the next.
    ``on_refused`` is called for each connection refused because too many of its address's already wait."""

    def __init__(
        self,
        per_address: int,
        waiting_per_address: int = WAITING_PER_ADDRESS,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.per_address = per_address
        self._waiting_per_address = waiting_per_address
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque] = {}
        self.refused = 0
        self._on_refused = on_refused

    def submit(self, address: str, item: object) -> bool | None:
        """True: ``item`` has a slot, start it now; False: it waits (``finished`` hands it over); None: too
        many of the address's connections already wait, refuse it."""
        running = self._running.get(address, 0)
        if not self.per_address or running < self.per_address:
            self._running[address] = running + 1
            return True
        waiting = self._waiting.setdefault(address, deque())
        if len(waiting) >= self._waiting_per_address:
            self.refused += 1
            self._on_refused()
            return None
        waiting.append(item)
        return False

    def finished(self, address: str) -> object | None:
        """A handshake of ``address`` ended: the waiting item that takes its slot (start it), or None."""
        waiting = self._waiting.get(address)
        if waiting:
            item = waiting.popleft()
            if not waiting:
                del self._waiting[address]
            return item
        running = self._running[address] - 1
        if running:
            self._running[address] = running
        else:
            del self._running[address]
        return None

    def waiting(self) -> list:
        """Every waiting item, taken out (at shutdown)."""
        items = [item for queue in self._waiting.values() for item in queue]
        self._waiting.clear()
        return items


class AdmittingServer:
    """Accepts on ``sock``; an admitted connection gets its TLS handshake (``loop.connect_accepted_socket``) and
    then ``protocol``, a refused one is reset before anything is read from it. ``buckets`` (None: no accept rate)
    refuse an address's connections past its rate, ``slots`` hold them back while that address has enough
    handshakes in progress. Closes like an asyncio Server (the caller closes the socket).

    Refusing is most of what the gateway does under a reconnect storm, so it is kept to two system calls: the
    listener stays registered with the event loop, each wake-up takes up to ``ACCEPTS_PER_WAKE`` queued
    connections as bare descriptors (no socket object, no future, no epoll change per connection), and a refused
    descriptor is closed with the listener's SO_LINGER of 0, which every accepted connection inherits: a reset,
    no TIME_WAIT. An admitted connection gets a socket object and its ordinary close back."""

    def __init__(
        self,
        sock: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        buckets: AddressBuckets | None,
        handshake_timeout_s: float,
        slots: HandshakeSlots | None = None,
    ) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        self._sock = sock
        self._protocol = protocol
        self._context = context
        self._buckets = buckets
        self._slots = slots or HandshakeSlots(0)
        self._timeout_s = handshake_timeout_s
        self._handshakes: set[asyncio.Task] = set()
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._accept_queued)

    def _accept_queued(self) -> None:
        now = time.monotonic()
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                fd, peer = self._sock._accept()  # the descriptor alone; socket.accept would wrap it in an object
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # reset by its client while queued
                continue
            except OSError as exc:  # out of file descriptors, say: paused, the kernel queues meanwhile
                log.warning("accepting a connection failed: %s", exc)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(ACCEPT_RETRY_S, self._resume)
                return
            self._admit(fd, peer[0] if isinstance(peer, tuple) else "", now)

    def _resume(self) -> None:
        if not self._closing:
            self._loop.add_reader(self._sock.fileno(), self._accept_queued)

    def _admit(self, fd: int, address: str, now: float) -> None:
        if self._buckets is not None and address and not self._buckets.take(address, now):
            os.close(fd)  # a reset (the inherited SO_LINGER of 0)
            return
        conn = socket.socket(self._sock.family, socket.SOCK_STREAM, 0, fd)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, GRACEFUL)
        conn.setblocking(False)
        accepted = (conn, now)
        admitted = self._slots.submit(address, accepted)
        if admitted:
            self._start(address, accepted)
        elif admitted is None:
            _reset(conn)

    def _start(self, address: str, accepted: tuple[socket.socket, float]) -> None:
        task = asyncio.get_running_loop().create_task(self._handshake(address, *accepted))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, address: str, conn: socket.socket, accepted_at: float) -> None:
        try:
            left_s = self._timeout_s - (time.monotonic() - accepted_at)
            if left_s <= 0:  # waited for a slot past the handshake timeout
                _reset(conn)
                return
            _, protocol = await asyncio.get_running_loop().connect_accepted_socket(
                self._protocol, conn, ssl=self._context, ssl_handshake_timeout=left_s
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # ConnectionError is an OSError
            log.debug("TLS handshake failed: %s", exc)
            conn.close()
            return
        finally:
            following = self._slots.finished(address)
            if following is not None:
                self._start(address, following)  # type: ignore[arg-type]
        if self._closing and hasattr(protocol, "shutdown"):
            protocol.shutdown()  # connected after the server's shutdown began: answered, then closed

    def close(self) -> None:
        """Stop accepting; handshakes under way finish (their client may already have sent its request), the
        connections still waiting for a slot are reset."""
        if not self._closing:
            self._loop.remove_reader(self._sock.fileno())
        self._closing = True
        for conn, _ in self._slots.waiting():
            _reset(conn)

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._handshakes, return_exceptions=True)


def _reset(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # a peer already gone: closed all the same
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    conn.close()
