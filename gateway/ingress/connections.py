"""What one HTTP connection may hold on to: its share of a client's connections, and time to send headers.

``ClientConnections`` counts the open connections of each client certificate in one worker; past
``limits.max_connections_per_client`` a new connection's first request is answered 429 and the
connection closed, so one identity's stalled or leaked connections cannot take a worker's
capacity from another's. The per-worker total (``limits.max_connections``, 503 beyond) is
uvicorn's ``limit_concurrency``; the TLS handshake timeout is asyncio's ``ssl_handshake_timeout``;
idle keep-alive is uvicorn's ``timeout_keep_alive``; the header timeout is the protocol's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable


class ClientConnections:
    """Open connections per client identity (the certificate's subject) in this worker."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._open: Counter[Hashable] = Counter()

    def open(self, client: Hashable) -> bool:
        """Count a new connection of ``client``; False (not counted) when it already has its limit open."""
        if self._open[client] >= self.per_client:
            return False
        self._open[client] += 1
        return True

    def close(self, client: Hashable) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]


def refusal(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, for refusals made before the application runs."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
