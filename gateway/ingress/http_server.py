"""Run the REST app on uvicorn with mTLS, exposing the verified peer certificate to the app.

uvicorn verifies client certificates but does not put them in the ASGI scope; the
protocol subclass below adds ``scope["extensions"]["tls"]["peercert"]`` (the dict from
``ssl.SSLSocket.getpeercert()``) to every request on the connection, and
``scope["extensions"][HANG_UP]``: the connection's :class:`HangUp`, so that a handler learns of a
client that hangs up without a watcher task of its own per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import STARTUP_FAILURE

from gateway.config import Settings
from gateway.ingress.admission import AddressBuckets, AdmittingServer, HandshakeSlots
from gateway.ingress.connections import ClientConnections, refusal
from gateway.security.tls_reload import TlsMaterial
from gateway.stop_signals import StopSignals

if TYPE_CHECKING:
    from gateway.monitoring.metrics import GatewayMetrics

HANG_UP = "gateway.hang_up"
"""The ASGI scope extension that holds the connection's HangUp."""


class HangUp:
    """One per connection: the task to cancel if the client hangs up while it waits (``watch``), and whether
    it has (``lost``). uvicorn runs one request of a connection at a time, so one slot is enough."""

    __slots__ = ("lost", "_task")

    def __init__(self) -> None:
        self.lost = False
        self._task: asyncio.Task | None = None

    def watch(self, task: asyncio.Task | None) -> None:
        """Cancel ``task`` when the connection is lost (None: nothing to cancel any more)."""
        self._task = task

    def connection_lost(self) -> None:
        self.lost = True
        if self._task is not None:
            self._task.cancel()
            self._task = None


class OneWritePerStep:
    """The connection's transport, with the writes made in one step of the event loop joined into one.

    uvicorn writes a response's status line and headers, then its body, as two writes; over TLS each is a
    record of its own and a send of its own (a third of a KServe HTTP call's CPU on the event loop, py-spy:
    docs/performance.md). Here the first write of a step waits for the loop's next turn (``call_soon``), and
    the writes made meanwhile go out with it. ``close`` sends what waits first; ``abort`` drops it, as the
    transport drops its own buffer. Everything else is the transport's."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is not None:
            self._pending.append(data)
            return
        self._pending = [data]
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class PeerCertHttpToolsProtocol(HttpToolsProtocol):
    """Adds the peer certificate to the scope, and holds every connection to its limits
    (``gateway.ingress.connections``): the request line and headers within ``max_header_bytes``
    (431) and ``header_timeout_s`` (408), and its client within ``clients.per_client`` open
    connections (429). Each refusal is answered and the connection closed.

    Header bytes are counted as the parser reports each piece; llhttp buffers one header line until
    it ends, so the bytes received while the headers are still incomplete count too (memory stays
    within the limit and a read)."""

    max_header_bytes = 32 * 1024
    header_timeout_s = 10.0
    clients: ClientConnections
    """Set per server by protocol_class."""
    drain_idle_s = 0.5
    """On shutdown an idle keep-alive connection stays open this long, so that a request already on its way
    is answered (with ``Connection: close``) instead of being cut off unanswered (uvicorn closes idle
    connections at once, and a client that had just sent its next request saw a disconnect)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = OneWritePerStep(transport, self.loop)  # type: ignore[assignment]
        self._peercert = transport.get_extra_info("peercert")
        self._header_bytes = self._unparsed_header_bytes = 0
        self._in_headers = self._began = False
        self._refusal: bytes | None = None
        self._draining = False
        self._client = _subject(self._peercert)
        self._hang_up = HangUp()
        if self._client is not None and not self.clients.open(self._client):
            self._client, self._refusal = None, self._too_many_connections()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._client is not None:
            self.clients.close(self._client)
            self._client = None
        self._header_timer.cancel()
        self._hang_up.connection_lost()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {"tls": {"peercert": self._peercert}, HANG_UP: self._hang_up}
        self._header_bytes = self._unparsed_header_bytes = 0
        self._in_headers = self._began = True
        self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_timer.cancel()
        if self._refusal is not None:
            raise ValueError("refused")  # stops the parser; uvicorn answers via send_400_response
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def shutdown(self) -> None:
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(self.drain_idle_s, self._close_if_idle)
        else:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._refusal = self._headers_too_large()
            raise ValueError("headers too large")  # stops the parser; uvicorn answers via send_400_response

    def data_received(self, data: bytes) -> None:
        self._began = False
        super().data_received(data)
        if self._in_headers and self._refusal is None and not self.transport.is_closing():
            self._unparsed_header_bytes = 0 if self._began else self._unparsed_header_bytes + len(data)
            if self._header_bytes + self._unparsed_header_bytes > self.max_header_bytes:
                self._refusal = self._headers_too_large()
                self.send_400_response("headers too large")

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        self.transport.write(self._refusal)
        self.transport.close()

    def _on_header_timeout(self) -> None:
        """No complete request line and headers within header_timeout_s of the connection or the request's start."""
        if self.transport.is_closing() or (self.cycle is not None and not self._in_headers):
            return
        message = f"the request line and headers did not arrive within {self.header_timeout_s:g} s"
        self.transport.write(refusal(408, "Request Timeout", "header_timeout", f"{message} (limits.header_timeout_s)"))
        self.transport.close()

    def _headers_too_large(self) -> bytes:
        message = (
            f"the request line and headers exceed {self.max_header_bytes:,} bytes (limits.max_header_bytes); "
            "send large values in the body"
        )
        return refusal(431, "Request Header Fields Too Large", "headers_too_large", message)

    def _too_many_connections(self) -> bytes:
        message = (
            f"this client already has {self.clients.per_client} connections open to this gateway process "
            "(limits.max_connections_per_client); reuse them (keep-alive) or close some"
        )
        return refusal(429, "Too Many Requests", "too_many_connections", message)


def _subject(peercert: dict | None) -> tuple | None:
    """The client certificate's subject (hashable): whose connection this is; None without one."""
    return peercert.get("subject") if peercert else None


def protocol_class(settings: Settings) -> type[PeerCertHttpToolsProtocol]:
    """The HTTP protocol uvicorn instantiates per connection, with this gateway's limits (one
    ClientConnections per server: the class is made per call)."""
    limits = settings.limits
    attributes = {
        "max_header_bytes": limits.max_header_bytes,
        "header_timeout_s": limits.header_timeout_s,
        "clients": ClientConnections(limits.max_connections_per_client),
    }
    return type("GatewayHttpProtocol", (PeerCertHttpToolsProtocol,), attributes)


class GatewayServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once its own shutdown is done, which would kill the process
    before the gRPC server and the batchers are drained; the gateway finishes its shutdown instead.
    Its listeners bound the TLS handshake (``tls_handshake_timeout_s``; asyncio's default is 60 s) and, with
    ``admission``, the new connections of each source address before their handshake, and with ``slots`` its
    handshakes in progress (see ``admission``). ``stop_signals``: the stop signals caught before uvicorn's own
    handlers (gateway.stop_signals): one caught there shuts the server down as soon as it has started."""

    def __init__(
        self,
        config: uvicorn.Config,
        tls_handshake_timeout_s: float = 10.0,
        admission: AddressBuckets | None = None,
        slots: HandshakeSlots | None = None,
    ) -> None:
        super().__init__(config)
        self._handshake_timeout_s = tls_handshake_timeout_s
        self.admission = admission
        self.slots = slots
        self.stop_signals: StopSignals | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            early = self.stop_signals.requested if self.stop_signals is not None else None
            if early is not None:  # (looked at once uvicorn's handlers are in: no signal falls between the two)
                logging.getLogger("gateway").info("%s during start-up: stopping", early.name)
                self.should_exit = True
            yield
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start on given sockets, with the handshake timeout that its own does not pass."""
        if sockets is None:
            await super().startup(sockets)
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        loop = asyncio.get_running_loop()
        if config.ssl and (self.admission is not None or self.slots is not None):
            timeout_s = self._handshake_timeout_s
            self.servers = [  # type: ignore[list-item]  # closes and waits like an asyncio Server
                AdmittingServer(sock, create_protocol, config.ssl, self.admission, timeout_s, self.slots)
                for sock in sockets
            ]
        else:
            timeout = {"ssl_handshake_timeout": self._handshake_timeout_s} if config.ssl else {}
            self.servers = [
                await loop.create_server(create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog, **timeout)
                for sock in sockets
            ]
        self.started = True


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind and listen before serving, so the real port is known even when ``port`` is 0.

    With ``reuse_port``, several gateway processes listen on the same port and the kernel
    spreads new connections across them (SO_REUSEPORT; gRPC's listener does this by default).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build_server(
    app: FastAPI, settings: Settings, material: TlsMaterial | None = None, metrics: GatewayMetrics | None = None
) -> uvicorn.Server:
    """``material``: the reloadable TLS files (new handshakes follow a rotation); None: loaded once from settings.
    ``metrics``: where refused connections are counted (``gateway_connections_refused``)."""
    ssl_factory: Callable[..., ssl.SSLContext] | None = None
    if settings.tls.enabled:
        tls_material = material or TlsMaterial(settings.tls)

        def ssl_factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            return tls_material.server_context()

    config = uvicorn.Config(
        app,
        http=protocol_class(settings),
        limit_concurrency=settings.limits.max_connections,
        ssl_context_factory=ssl_factory,
        log_level="info",
        log_config=None,  # uvicorn's lines go through the gateway's handler (text or JSON)
        access_log=False,  # the gateway writes its own line per request (gateway.monitoring.event_log)
        proxy_headers=False,  # callers are known by their certificates; X-Forwarded-* is read by nobody
        timeout_keep_alive=settings.server.http_keep_alive_s,  # type: ignore[arg-type]  # a float works (call_later)
        timeout_graceful_shutdown=10,
    )
    limits = settings.limits
    rate_refused, queue_refused = _refusal_counters(metrics)
    admission = (
        AddressBuckets(limits.accept_rate_per_address, limits.accept_burst_per_address, rate_refused)
        if limits.accept_rate_per_address > 0
        else None
    )
    slots = (
        HandshakeSlots(limits.tls_handshakes_per_address, on_refused=queue_refused)
        if limits.tls_handshakes_per_address
        else None
    )
    return GatewayServer(config, limits.tls_handshake_timeout_s, admission, slots)


def _refusal_counters(metrics: GatewayMetrics | None) -> tuple[Callable[[], None], Callable[[], None]]:
    """The increments of ``gateway_connections_refused`` for the accept rate and the handshake queue."""
    if metrics is None:
        return (lambda: None), (lambda: None)
    refused = metrics.connections_refused
    return refused.labels("accept_rate").inc, refused.labels("handshake_queue").inc


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvicorn's choice of event loop (uvloop when installed); REST and gRPC share it.

    ``log_config=None``: a Config with a log_config installs uvicorn's own handlers (not the gateway's)."""
    return uvicorn.Config(app=None, log_config=None).get_loop_factory()
