"""Run the REST app on uvicorn with mTLS, exposing the verified peer certificate to the app.

uvicorn verifies client certificates but does not put them in the ASGI scope; the
protocol subclass below adds ``scope["extensions"]["tls"]["peercert"]`` (the dict from
``ssl.SSLSocket.getpeercert()``) to every request on the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import Settings
from gateway.security.tls_reload import TlsMaterial


class PeerCertHttpToolsProtocol(HttpToolsProtocol):
    """Adds the peer certificate to the scope, and bounds the header block of every request: past
    ``max_header_bytes`` (the request line and headers) the answer is 431 and the connection closes.

    Counted as the parser reports each piece; llhttp buffers one header line until it ends, so the bytes
    received while the headers are still incomplete count too (memory stays within the limit and a read)."""

    max_header_bytes = 32 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peercert = transport.get_extra_info("peercert")
        self._header_bytes = self._unparsed_header_bytes = 0
        self._in_headers = self._began = self._headers_too_large = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {"tls": {"peercert": self._peercert}}
        self._header_bytes = self._unparsed_header_bytes = 0
        self._in_headers = self._began = True

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._headers_too_large = True
            raise ValueError("headers too large")  # stops the parser; uvicorn answers via send_400_response

    def data_received(self, data: bytes) -> None:
        self._began = False
        super().data_received(data)
        if self._in_headers and not self._headers_too_large and not self.transport.is_closing():
            self._unparsed_header_bytes = 0 if self._began else self._unparsed_header_bytes + len(data)
            if self._header_bytes + self._unparsed_header_bytes > self.max_header_bytes:
                self._headers_too_large = True
                self.send_400_response("headers too large")

    def send_400_response(self, msg: str) -> None:
        if not self._headers_too_large:
            super().send_400_response(msg)
            return
        message = (
            f"the request line and headers exceed {self.max_header_bytes:,} bytes (limits.max_header_bytes); "
            "send large values in the body"
        )
        body = json.dumps({"error": {"code": "headers_too_large", "message": message}}).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


def protocol_class(max_header_bytes: int) -> type[PeerCertHttpToolsProtocol]:
    """The HTTP protocol uvicorn instantiates per connection, with the configured header limit."""
    return type("GatewayHttpProtocol", (PeerCertHttpToolsProtocol,), {"max_header_bytes": max_header_bytes})


class GatewayServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once its own shutdown is done, which would kill the process
    before the gRPC server and the batchers are drained; the gateway finishes its shutdown instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


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


def build_server(app: FastAPI, settings: Settings, material: TlsMaterial | None = None) -> uvicorn.Server:
    """``material``: the reloadable TLS files (new handshakes follow a rotation); None: loaded once from settings."""
    ssl_factory: Callable[..., ssl.SSLContext] | None = None
    if settings.tls.enabled:
        tls_material = material or TlsMaterial(settings.tls)

        def ssl_factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            return tls_material.server_context()

    config = uvicorn.Config(
        app,
        http=protocol_class(settings.limits.max_header_bytes),
        ssl_context_factory=ssl_factory,
        log_level="info",
        access_log=False,
        timeout_keep_alive=settings.server.http_keep_alive_s,  # type: ignore[arg-type]  # a float works (call_later)
        timeout_graceful_shutdown=10,
    )
    return GatewayServer(config)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvicorn's choice of event loop (uvloop when installed); REST and gRPC share it."""
    return uvicorn.Config(app=None).get_loop_factory()
