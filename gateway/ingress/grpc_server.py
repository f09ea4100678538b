"""The gRPC surface (grpc.aio): the gateway's own Classifier service, KServe v2, health checking, reflection.

Same mTLS as REST (a client without a certificate from our CA is refused in the
handshake); the peer certificate gives the Identity, the call's deadline becomes the
request's timeout, and gateway errors map to gRPC status codes in one table.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2 as kserve_pb2
from tritonclient.grpc import service_pb2_grpc as kserve_pb2_grpc

from gateway.app import Gateway
from gateway.config import Settings
from gateway.core.errors import GatewayError
from gateway.core.types import Identity, PhotoRequest, Prediction, new_request_id
from gateway.dataplane import DataPlane
from gateway.ingress import tfserving_grpc
from gateway.ingress.grpc_common import (
    answer_concurrently,
    caller_identity,
    grpc_code,
    grpc_errors,
    grpc_status_for,
    routing_key,
)
from gateway.ingress.grpc_limits import CallsPerClient, server_options
from gateway.ingress.idempotency import IDEMPOTENCY_HEADER, IdempotentCalls, request_id_for
from gateway.ingress.kserve_grpc import KServeServicer
from gateway.monitoring.tracing import TRACING, TracingInterceptor
from gateway.security.tls_reload import TlsMaterial
from gateway.v1 import classifier_pb2, classifier_pb2_grpc

CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
KSERVE_SERVICE = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _response(prediction: Prediction) -> classifier_pb2.ClassifyResponse:
    return classifier_pb2.ClassifyResponse(
        request_id=prediction.request_id,
        model=prediction.model,
        version=prediction.version,
        label=prediction.label,
        probabilities=prediction.probabilities,
        latency_ms=prediction.latency_ms,
    )


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, plane: DataPlane, idempotent_calls: IdempotentCalls, *, mtls: bool) -> None:
        self._plane = plane
        self._calls = idempotent_calls
        self._mtls = mtls

    async def _classify(
        self, message: classifier_pb2.ClassifyRequest, identity: Identity, context: grpc.aio.ServicerContext
    ) -> Prediction:
        started = time.perf_counter()
        remaining = context.time_remaining()
        key = dict(context.invocation_metadata() or ()).get(IDEMPOTENCY_HEADER)
        if key is not None:
            message.request_id = request_id_for(identity, key)
        request = PhotoRequest(
            model=message.model,
            photo=message.image,
            identity=identity,
            version=message.version or None,
            routing_key=routing_key(context),
            timeout_s=remaining,
            priority=message.priority or None,
            request_id=message.request_id or new_request_id(),
            received_at=started,
        )
        with self._plane.meter("grpc", message.model, message.version or None, grpc_code) as meter:
            if key is None:
                prediction = await self._plane.classify(request)
            else:
                prediction, _ = await self._calls.run(request.request_id, lambda: self._plane.classify(request))
            meter.done("OK", prediction.version)
        return prediction

    @grpc_errors
    async def Classify(  # noqa: N802 - the name is the RPC's
        self, request: classifier_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        return _response(await self._classify(request, caller_identity(context, self._mtls), context))

    async def _stream_answer(
        self, message: classifier_pb2.ClassifyRequest, identity: Identity, context: grpc.aio.ServicerContext
    ) -> classifier_pb2.ClassifyStreamResponse:
        request_id = message.request_id or new_request_id()
        message.request_id = request_id
        try:
            prediction = await self._classify(message, identity, context)
        except GatewayError as exc:
            error = classifier_pb2.Error(code=exc.code, message=exc.message, grpc_status=grpc_status_for(exc).value[0])
            return classifier_pb2.ClassifyStreamResponse(request_id=request_id, error=error)
        return classifier_pb2.ClassifyStreamResponse(request_id=request_id, prediction=_response(prediction))

    @grpc_errors
    async def ClassifyStream(  # noqa: N802 - the name is the RPC's
        self, request_iterator: AsyncIterator[classifier_pb2.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[classifier_pb2.ClassifyStreamResponse]:
        """Photos are classified concurrently as they arrive (so they batch); answers go out as they finish."""
        identity = caller_identity(context, self._mtls)
        async for answer in answer_concurrently(
            request_iterator, lambda message: self._stream_answer(message, identity, context)
        ):
            yield answer


async def build_grpc_server(
    gateway: Gateway, settings: Settings, material: TlsMaterial | None = None
) -> tuple[grpc.aio.Server, int]:
    """Create the server with every service registered and its port bound; returns (server, port).

    ``material``: the reloadable TLS files (new handshakes follow a rotation); None: loaded once from settings."""
    limits = settings.limits
    options = [
        ("grpc.max_receive_message_length", limits.grpc_max_message_bytes),
        ("grpc.max_metadata_size", limits.grpc_max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", limits.grpc_max_metadata_bytes),
        *server_options(limits),
    ]
    interceptors = [
        CallsPerClient(limits.grpc_max_calls_per_client),
        *([TracingInterceptor(TRACING)] if TRACING.on else []),
    ]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    mtls, parse_limits = settings.tls.enabled, limits.parse_limits()
    classifier = ClassifierServicer(gateway.plane, gateway.idempotent_calls, mtls=mtls)
    classifier_pb2_grpc.add_ClassifierServicer_to_server(classifier, server)
    kserve = KServeServicer(gateway.plane, gateway.registry, gateway.repository, mtls=mtls, limits=parse_limits)
    kserve_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(kserve, server)
    tfserving_services = tfserving_grpc.add_to_server(
        gateway.plane, gateway.repository, server, mtls=mtls, limits=parse_limits
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", CLASSIFIER_SERVICE, KSERVE_SERVICE, *tfserving_services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection(
        (CLASSIFIER_SERVICE, KSERVE_SERVICE, *tfserving_services, health_service, reflection.SERVICE_NAME), server
    )
    address = f"{settings.server.host}:{settings.server.grpc_port}"
    if settings.tls.enabled:
        port = server.add_secure_port(address, (material or TlsMaterial(settings.tls)).grpc_credentials())
    else:
        port = server.add_insecure_port(address)
    return server, port
