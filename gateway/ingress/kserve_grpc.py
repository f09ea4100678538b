"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), with Triton's extensions.

The servicer is generated from the stubs ``tritonclient.grpc`` ships, so Triton's own
clients work unchanged. Inputs are already-preprocessed tensors: each row of a request
goes through the same batcher as photos, so KServe traffic batches with everything else.
Beyond the core calls: ``ModelStreamInfer`` (each request of the stream answered on it, by
id), ``ModelStatistics``, and the model repository (``RepositoryIndex``, ``RepositoryModelLoad``
and ``RepositoryModelUnload``, the last two for operators).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

import gateway
from gateway.core.errors import GatewayError, InvalidInput, NotFound
from gateway.core.limits import DEFAULT_LIMITS, ParseLimits
from gateway.core.types import Identity, RowsAnswer, RowsRequest, new_request_id
from gateway.dataplane import DataPlane
from gateway.ingress.grpc_common import (
    answer_concurrently,
    caller_identity,
    grpc_code,
    grpc_errors,
    grpc_status_for,
    routing_key,
)
from gateway.models.registry import ModelRegistry
from gateway.models.repository import ModelSpec
from gateway.models.repository_service import RepositoryService
from gateway.models.tensors import kserve_datatype, tensor_metadata
from gateway.preprocess.tensors import (
    MAX_TENSOR_ELEMENTS,
    batch_from_raw,
    batch_from_values,
    check_input_names,
    check_output_names,
)

SERVER_NAME = "image-gateway"
EXTENSIONS = ("model_configuration", "binary_tensor_data", "statistics", "model_repository")
TensorMetadata = service_pb2.ModelMetadataResponse.TensorMetadata


def input_batch(
    request: service_pb2.ModelInferRequest, spec: ModelSpec, max_elements: int = MAX_TENSOR_ELEMENTS
) -> np.ndarray:
    """The request's one input as a validated [N, *dims] batch."""
    check_input_names([tensor.name for tensor in request.inputs], spec)
    tensor = request.inputs[0]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"{len(request.raw_input_contents)} raw_input_contents for 1 input")
        raw = request.raw_input_contents[0]
        return batch_from_raw(tensor.datatype, tensor.shape, raw, spec, max_elements=max_elements)
    values = tensor.contents.fp32_contents
    return batch_from_values(tensor.datatype, tensor.shape, values, spec, max_elements=max_elements)


def rows_request(
    request: service_pb2.ModelInferRequest,
    plane: DataPlane,
    identity: Identity,
    context: grpc.aio.ServicerContext,
    limits: ParseLimits,
) -> tuple[ModelSpec, RowsRequest]:
    """The model and the RowsRequest of an infer call: routed first (an unknown version is refused before
    the tensors are read), then the input and the requested outputs checked against the model."""
    spec = plane.spec(request.model_name)
    route = plane.route(spec.name, request.model_version or None, None, identity, routing_key(context))
    batch = input_batch(request, spec, limits.max_tensor_elements)
    check_output_names([output.name for output in request.outputs], spec)
    rows = RowsRequest(
        model=spec.name,
        rows=batch,
        identity=identity,
        route=route,
        timeout_s=context.time_remaining(),
        request_id=request.id or new_request_id(),
    )
    return spec, rows


def infer_response(
    request: service_pb2.ModelInferRequest, spec: ModelSpec, answer: RowsAnswer
) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=spec.name, model_version=answer.route.version, id=request.id)
    output = response.outputs.add()
    output.name = spec.output.name
    output.datatype = kserve_datatype(spec.output)
    output.shape.extend(answer.probabilities.shape)
    response.raw_output_contents.append(np.ascontiguousarray(answer.probabilities, "<f4").tobytes())
    return response


def stream_error(request: service_pb2.ModelInferRequest, error: GatewayError) -> service_pb2.ModelStreamInferResponse:
    """A refused request of a stream, answered on the stream: the status and the request's id lead the message
    (Triton's client hands a stream callback the message only), the response carries the id and the model."""
    message = f"{grpc_status_for(error).name}: request {request.id!r}: {error.message}"
    echo = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    return service_pb2.ModelStreamInferResponse(error_message=message, infer_response=echo)


def repository_parameters(parameters) -> dict[str, object]:
    """A load or unload request's parameters as plain values."""
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "string_param") for key, value in parameters.items()
    }


def check_repository_name(name: str) -> None:
    """The gateway serves one repository; Triton's clients name none."""
    if name:
        raise NotFound(f"unknown repository {name!r}: the gateway serves one model repository; leave the name empty")


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        plane: DataPlane,
        registry: ModelRegistry,
        repository: RepositoryService,
        *,
        mtls: bool,
        limits: ParseLimits | None = None,
    ) -> None:
        self._plane = plane
        self._registry = registry
        self._repository = repository
        self._mtls = mtls
        self._limits = limits or DEFAULT_LIMITS

    def _addressed_model(self, request, context: grpc.aio.ServicerContext) -> ModelSpec:
        """The model (and version) a metadata or config request names, or NotFound."""
        caller_identity(context, self._mtls)
        self._registry.resolve_version(request.name, request.version or None)
        return self._registry.spec(request.name)

    @grpc_errors
    async def ServerLive(self, request, context):  # noqa: N802 - RPC names
        caller_identity(context, self._mtls)
        return service_pb2.ServerLiveResponse(live=True)

    @grpc_errors
    async def ServerReady(self, request, context):  # noqa: N802
        caller_identity(context, self._mtls)
        return service_pb2.ServerReadyResponse(ready=self._registry.ready)

    @grpc_errors
    async def ModelReady(self, request, context):  # noqa: N802
        try:
            self._addressed_model(request, context)
        except NotFound:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @grpc_errors
    async def ServerMetadata(self, request, context):  # noqa: N802
        caller_identity(context, self._mtls)
        return service_pb2.ServerMetadataResponse(name=SERVER_NAME, version=gateway.__version__, extensions=EXTENSIONS)

    @grpc_errors
    async def ModelMetadata(self, request, context):  # noqa: N802
        spec = self._addressed_model(request, context)
        return service_pb2.ModelMetadataResponse(
            name=spec.name,
            versions=self._registry.loaded_versions(spec.name),
            platform=spec.platform,
            inputs=[TensorMetadata(**tensor_metadata(spec.input))],
            outputs=[TensorMetadata(**tensor_metadata(spec.output))],
        )

    @grpc_errors
    async def ModelConfig(self, request, context):  # noqa: N802
        return service_pb2.ModelConfigResponse(config=self._addressed_model(request, context).config)

    async def _infer(
        self, request: service_pb2.ModelInferRequest, identity: Identity, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        with self._plane.meter("kserve-grpc", request.model_name, request.model_version or None, grpc_code) as meter:
            spec, rows = rows_request(request, self._plane, identity, context, self._limits)
            answer = await self._plane.infer(rows)
            meter.done("OK", answer.route.version)
        return infer_response(request, spec, answer)

    @grpc_errors
    async def ModelInfer(self, request, context):  # noqa: N802
        return await self._infer(request, caller_identity(context, self._mtls), context)

    @grpc_errors
    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Each request is inferred as it arrives, through the batcher like a unary call, and answered on the
        stream by its id as it finishes; a refused request is answered with its error and the stream goes on."""
        identity = caller_identity(context, self._mtls)

        async def answer(request: service_pb2.ModelInferRequest) -> service_pb2.ModelStreamInferResponse:
            try:
                response = await self._infer(request, identity, context)
            except GatewayError as exc:
                return stream_error(request, exc)
            return service_pb2.ModelStreamInferResponse(infer_response=response)

        async for response in answer_concurrently(request_iterator, answer):
            yield response

    @grpc_errors
    async def ModelStatistics(self, request, context):  # noqa: N802
        caller_identity(context, self._mtls)
        statistics = self._repository.statistics(request.name or None, request.version or None)
        return json_format.ParseDict({"model_stats": statistics}, service_pb2.ModelStatisticsResponse())

    @grpc_errors
    async def RepositoryIndex(self, request, context):  # noqa: N802
        caller_identity(context, self._mtls)
        check_repository_name(request.repository_name)
        index = self._repository.index(ready_only=request.ready)
        ModelIndex = service_pb2.RepositoryIndexResponse.ModelIndex  # noqa: N806 - a message class
        models = [ModelIndex(name=v.model, version=v.version, state=v.state, reason=v.reason) for v in index]
        return service_pb2.RepositoryIndexResponse(models=models)

    @grpc_errors
    async def RepositoryModelLoad(self, request, context):  # noqa: N802
        identity = caller_identity(context, self._mtls)
        check_repository_name(request.repository_name)
        await self._repository.load(request.model_name, repository_parameters(request.parameters), identity)
        return service_pb2.RepositoryModelLoadResponse()

    @grpc_errors
    async def RepositoryModelUnload(self, request, context):  # noqa: N802
        identity = caller_identity(context, self._mtls)
        check_repository_name(request.repository_name)
        await self._repository.unload(request.model_name, repository_parameters(request.parameters), identity)
        return service_pb2.RepositoryModelUnloadResponse()
