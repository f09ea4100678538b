"""KServe v2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``).

The servicer is generated from the stubs ``tritonclient.grpc`` ships, so Triton's own
clients work unchanged. Inputs are already-preprocessed tensors: each row of a request
goes through the same batcher as photos, so KServe traffic batches with everything else.
"""

from __future__ import annotations

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

import gateway
from gateway.core.errors import InvalidInput, NotFound
from gateway.core.limits import DEFAULT_LIMITS, ParseLimits
from gateway.core.types import Identity, RowsAnswer, RowsRequest, new_request_id
from gateway.dataplane import DataPlane
from gateway.ingress.grpc_common import caller_identity, grpc_code, grpc_errors, routing_key
from gateway.models.registry import ModelRegistry
from gateway.models.repository import ModelSpec
from gateway.models.tensors import kserve_datatype, tensor_metadata
from gateway.preprocess.tensors import (
    MAX_TENSOR_ELEMENTS,
    batch_from_raw,
    batch_from_values,
    check_input_names,
    check_output_names,
)

SERVER_NAME = "image-gateway"
EXTENSIONS = ("model_configuration", "binary_tensor_data")
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
    response.raw_output_contents.append(answer.probabilities.astype("<f4").tobytes())
    return response


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, plane: DataPlane, registry: ModelRegistry, *, mtls: bool, limits: ParseLimits | None = None
    ) -> None:
        self._plane = plane
        self._registry = registry
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

    @grpc_errors
    async def ModelInfer(self, request, context):  # noqa: N802
        identity = caller_identity(context, self._mtls)
        with self._plane.meter("kserve-grpc", request.model_name, request.model_version or None, grpc_code) as meter:
            spec, rows = rows_request(request, self._plane, identity, context, self._limits)
            answer = await self._plane.infer(rows)
            meter.done("OK", answer.route.version)
        return infer_response(request, spec, answer)
