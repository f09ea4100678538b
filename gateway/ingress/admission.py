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
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable

from gateway.security.ratelimit import LocalBucket

log = logging.getLogger(__name__)

RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close sends a reset, and the socket leaves no TIME_WAIT behind."""
ACCEPT_RETRY_S = 0.1
BUCKETS_KEPT = 100_000
"""Above this many addresses, the full buckets (addresses quiet for a while) are forgotten."""


class AddressBuckets:
    """One token bucket per source address."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, LocalBucket] = {}
        self.refused = 0

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
        return False

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {a: b for a, b in self._buckets.items() if now - b.updated < full_after}


class AdmittingServer:
    """Accepts on ``sock``; an admitted connection gets its TLS handshake (``loop.connect_accepted_socket``) and
    then ``protocol``, a refused one is reset before anything is read from it. Closes like an asyncio Server
    (the caller closes the socket)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        buckets: AddressBuckets,
        handshake_timeout_s: float,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._protocol = protocol
        self._context = context
        self._buckets = buckets
        self._timeout_s = handshake_timeout_s
        self._handshakes: set[asyncio.Task] = set()
        self._closing = False
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever(), name="accept")

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as exc:  # out of file descriptors, say: the listener stays, the kernel queues meanwhile
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if isinstance(peer, tuple) and not self._buckets.take(peer[0]):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                conn.close()
                continue
            task = loop.create_task(self._handshake(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        try:
            _, protocol = await asyncio.get_running_loop().connect_accepted_socket(
                self._protocol, conn, ssl=self._context, ssl_handshake_timeout=self._timeout_s
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # ConnectionError is an OSError
            log.debug("TLS handshake failed: %s", exc)
            conn.close()
            return
        if self._closing and hasattr(protocol, "shutdown"):
            protocol.shutdown()  # connected after the server's shutdown began: answered, then closed

    def close(self) -> None:
        """Stop accepting; handshakes under way finish (their client may already have sent its request)."""
        self._closing = True
        self._accepting.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._accepting, *self._handshakes, return_exceptions=True)
