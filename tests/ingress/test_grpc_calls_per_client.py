"""CallsPerClient in front of a servicer: the call's certificate read once, handlers wrapped once per method.

grpcio's ServicerContext cannot be built outside a live call, so these tests hand the interceptor's wrapped
behaviour a stand-in context that counts ``auth_context()`` calls; the live behaviour (limits, identities
over real mTLS) is in test_grpc_limits.py and test_grpc.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from gateway.core.errors import Unauthenticated
from gateway.ingress.grpc_common import caller_identity
from gateway.ingress.grpc_limits import CallsPerClient
from gateway.security.pki import PkiPaths


class CountingContext:
    """What CallsPerClient and caller_identity read from a call's context, counting the reads."""

    def __init__(self, pem: bytes | None) -> None:
        self._auth = {"x509_pem_cert": [pem], "x509_subject": [b"CN=app"]} if pem else {}
        self.auth_reads = 0

    def auth_context(self) -> dict[str, list[bytes]]:
        self.auth_reads += 1
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def _identity_handler() -> grpc.RpcMethodHandler:
    async def behaviour(request: object, context: CountingContext) -> str:
        return caller_identity(context, mtls=True).name  # type: ignore[arg-type]

    return grpc.unary_unary_rpc_method_handler(behaviour)


async def _through(interceptor: CallsPerClient, handler: grpc.RpcMethodHandler, method: str):
    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return handler

    return await interceptor.intercept_service(continuation, SimpleNamespace(method=method))


def test_a_call_reads_its_certificate_once_and_the_servicer_gets_the_callers_identity(pki: PkiPaths) -> None:
    interceptor = CallsPerClient(per_client=4)
    context = CountingContext(pki.client_cert("app").read_bytes())

    async def call() -> str:
        wrapped = await _through(interceptor, _identity_handler(), "/svc/Method")
        return await wrapped.unary_unary(object(), context)

    assert asyncio.run(call()) == "app"
    assert context.auth_reads == 1  # CallsPerClient's read serves caller_identity too


def test_a_call_without_a_certificate_is_still_refused_by_the_servicer() -> None:
    interceptor = CallsPerClient(per_client=4)

    async def call() -> str:
        wrapped = await _through(interceptor, _identity_handler(), "/svc/Method")
        return await wrapped.unary_unary(object(), CountingContext(None))

    with pytest.raises(Unauthenticated):
        asyncio.run(call())


def test_a_methods_handler_is_wrapped_once_and_again_when_the_service_hands_out_a_new_one() -> None:
    interceptor = CallsPerClient(per_client=4)
    first, second = _identity_handler(), _identity_handler()

    async def wrapped_handlers() -> list[grpc.RpcMethodHandler]:
        return [
            await _through(interceptor, first, "/svc/A"),
            await _through(interceptor, first, "/svc/A"),
            await _through(interceptor, second, "/svc/A"),
        ]

    once, again, renewed = asyncio.run(wrapped_handlers())
    assert once is again
    assert renewed is not once and renewed.unary_unary is not once.unary_unary
