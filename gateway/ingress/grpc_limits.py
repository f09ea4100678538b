"""What one gRPC client may hold on to: connections, handshake and idle time, calls per connection and per identity.

gRPC's core enforces the connection limits, as channel arguments of the server (``server_options``):
the connections of one worker (``limits.max_connections``; past it a new connection is closed at once),
the TLS and HTTP/2 handshake (``limits.tls_handshake_timeout_s``; the client's first SETTINGS frame
included), idle connections (``limits.grpc_idle_timeout_s``: no call for that long, GOAWAY) and the
concurrent calls of one connection (``limits.grpc_max_streams_per_connection``, HTTP/2
``SETTINGS_MAX_CONCURRENT_STREAMS``). grpcio shows the application no connection, only calls, so
the per-identity limit is on calls: ``CallsPerClient`` counts the calls in progress of each client
certificate in this worker; past ``limits.grpc_max_calls_per_client`` a call is answered
``RESOURCE_EXHAUSTED`` at once, so one identity's stalled calls cannot take a worker from another's.
"""

from __future__ import annotations

import contextvars
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.config import LimitSettings

Behaviour = Callable[..., Any]


def server_options(limits: LimitSettings) -> list[tuple[str, int]]:
    """The channel arguments that bound connections (see the module docstring)."""
    return [
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.server_handshake_timeout_ms", int(limits.tls_handshake_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.grpc_idle_timeout_s * 1000)),
        ("grpc.max_concurrent_streams", limits.grpc_max_streams_per_connection),
    ]


CALLER_PEM: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("caller_pem", default=None)
"""The verified client certificate (PEM) of the call in progress, as ``CallsPerClient`` read it: the servicer's
``caller_identity`` takes it from here instead of building the call's auth context a second time."""


def _client_of(context: grpc.aio.ServicerContext) -> tuple[bytes | None, bytes | None]:
    """(the client certificate's subject, its PEM); (None, None) without a certificate: mTLS off, or refused
    later. One ``auth_context()`` per call: grpcio builds a new dict of the peer's properties each time."""
    auth = context.auth_context()
    pem = auth.get("x509_pem_cert")
    found = auth.get("x509_subject") or pem
    return (found[0] if found else None), (pem[0] if pem else None)


class CallsPerClient(grpc.aio.ServerInterceptor):
    """Calls in progress per client certificate in this worker; past ``per_client``, RESOURCE_EXHAUSTED."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._open: Counter[bytes] = Counter()
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """Per method: the service's handler and its counted wrapper, made once (not per call)."""

    def in_progress(self, client: bytes) -> int:
        return self._open[client]

    async def _enter(self, context: grpc.aio.ServicerContext) -> bytes | None:
        client, pem = _client_of(context)
        CALLER_PEM.set(pem)
        if client is None:
            return None
        if self._open[client] >= self.per_client:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client certificate already has {self.per_client} calls in progress on this gateway process "
                "(limits.grpc_max_calls_per_client); wait for one to finish",
            )
        self._open[client] += 1
        return client

    def _leave(self, client: bytes | None) -> None:
        if client is None:
            return
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]

    def _counted(self, behaviour: Behaviour) -> Behaviour:
        """``behaviour`` counted while it runs: an async generator stays one (its answers are yielded), anything
        else (a coroutine, one that writes its answers with ``context.write``, a plain function) is awaited."""
        if inspect.isasyncgenfunction(behaviour):
            return self._generator(behaviour)

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            client = await self._enter(context)
            try:
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                self._leave(client)

        return counted

    def _generator(self, behaviour: Behaviour) -> Behaviour:
        async def counted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            client = await self._enter(context)
            try:
                async for answer in behaviour(request, context):
                    yield answer
            finally:
                self._leave(client)

        return counted

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: Any
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        known = self._wrapped.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._counted(handler.unary_unary), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._counted(handler.stream_unary), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._counted(handler.unary_stream), **codec)
        return grpc.stream_stream_rpc_method_handler(self._counted(handler.stream_stream), **codec)
