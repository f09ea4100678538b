"""What every gRPC service of the gateway shares: the error mapping and the caller's identity."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from gateway.core.errors import (
    CallerGone,
    Conflict,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from gateway.core.types import Identity
from gateway.ingress.grpc_limits import CALLER_PEM
from gateway.monitoring.tracing import TRACING
from gateway.security.identity import DEV_IDENTITY, peer_from_pem
from gateway.security.tls_reload import check_not_revoked

GRPC_STATUS: dict[type[GatewayError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Conflict: grpc.StatusCode.ABORTED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    CallerGone: grpc.StatusCode.CANCELLED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    GatewayError: grpc.StatusCode.INTERNAL,
}
"""The one place gateway errors become gRPC status codes, looked up along the class hierarchy."""


def grpc_status_for(error: GatewayError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return grpc.StatusCode.INTERNAL


def grpc_code(error: GatewayError) -> str:
    """The metric label of an error on a gRPC surface."""
    return grpc_status_for(error).name


def _trailers(error: GatewayError) -> tuple[tuple[str, str], ...]:
    trailers = [("gateway-error-code", error.code)]
    if TRACING.on:
        trailers.append(("trace-id", TRACING.trace_id() or ""))
    if isinstance(error, Overloaded):
        trailers.append(("grpc-retry-pushback-ms", str(int(error.retry_after_s * 1000))))
    return tuple(trailers)


async def abort(context: grpc.aio.ServicerContext, error: GatewayError) -> NoReturn:
    await context.abort(grpc_status_for(error), error.message, trailing_metadata=_trailers(error))


Method = TypeVar("Method", bound=Callable)


def grpc_errors(method: Method) -> Method:
    """The one place a servicer's GatewayError becomes the call's status (GRPC_STATUS) and trailing metadata
    (``gateway-error-code``, and ``grpc-retry-pushback-ms`` when overloaded). Wraps unary and streaming methods."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self, request, context: grpc.aio.ServicerContext):
            try:
                async for answer in method(self, request, context):
                    yield answer
            except GatewayError as exc:
                await abort(context, exc)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except GatewayError as exc:
            await abort(context, exc)

    return unary  # type: ignore[return-value]


Message = TypeVar("Message")
Answer = TypeVar("Answer")


async def answer_concurrently(
    messages: AsyncIterator[Message], answer: Callable[[Message], Awaitable[Answer]]
) -> AsyncIterator[Answer]:
    """The answers to a request stream, each message answered as soon as it arrives and concurrently with the
    others (so they batch together), yielded as they finish. ``answer`` turns a refused request into an answer
    of its own, so the stream goes on; a failure of the request stream itself ends it. When the caller cancels
    (or its deadline passes) the answers in flight are cancelled with it."""
    answers: asyncio.Queue[Answer | None] = asyncio.Queue()

    async def one(message: Message) -> None:
        answers.put_nowait(await answer(message))

    async def read_all() -> None:
        async with asyncio.TaskGroup() as group:
            async for message in messages:
                group.create_task(one(message))

    reader = asyncio.create_task(read_all())
    reader.add_done_callback(lambda _: answers.put_nowait(None))
    try:
        while (item := await answers.get()) is not None:
            yield item
        await reader  # surface a failure of the request stream itself
    finally:
        reader.cancel()


ROUTING_KEY_METADATA = "x-routing-key"


def routing_key(context: grpc.aio.ServicerContext) -> str | None:
    """The sticky rollout routing key from the call's metadata, if the client sent one."""
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return value
    return None


def caller_identity(context: grpc.aio.ServicerContext, mtls: bool) -> Identity:
    """The Identity in the verified client certificate (the local operator when mTLS is off)."""
    if not mtls:
        return DEV_IDENTITY
    pem = CALLER_PEM.get()
    if pem is None:  # no CallsPerClient in front of this servicer
        found = context.auth_context().get("x509_pem_cert")
        pem = found[0] if found else None
    if not pem:
        raise Unauthenticated("no verified client certificate on this connection")
    identity, serial = peer_from_pem(pem)
    check_not_revoked(serial)
    return identity
