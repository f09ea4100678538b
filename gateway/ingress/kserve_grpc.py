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
from gateway.core.errors import GatewayError, InvalidInput, NotFound
from gateway.core.types import Identity, new_request_id
from gateway.ingress.grpc_common import abort, caller_identity, grpc_code, routing_key
from gateway.preprocess.tensors import KSERVE_DATATYPES, batch_from_raw, batch_from_values, kserve_datatype
from gateway.routing.repository import ModelSpec
from gateway.service import GatewayService

SERVER_NAME = "image-gateway"
EXTENSIONS = ("model_configuration", "binary_tensor_data")


def input_batch(request: service_pb2.ModelInferRequest, spec: ModelSpec) -> np.ndarray:
    """The request's one input as a validated [N, *dims] batch."""
    if len(request.inputs) != 1:
        raise InvalidInput(
            f"model {spec.name!r} takes exactly one input, {spec.input.name!r}; the request has {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if tensor.name != spec.input.name:
        raise InvalidInput(f"unknown input {tensor.name!r}; model {spec.name!r} takes {spec.input.name!r}")
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"{len(request.raw_input_contents)} raw_input_contents for 1 input")
        return batch_from_raw(tensor.datatype, tensor.shape, request.raw_input_contents[0], spec)
    return batch_from_values(tensor.datatype, tensor.shape, tensor.contents.fp32_contents, spec)


def check_requested_outputs(request: service_pb2.ModelInferRequest, spec: ModelSpec) -> None:
    for output in request.outputs:
        if output.name != spec.output.name:
            raise InvalidInput(f"unknown output {output.name!r}; model {spec.name!r} has {spec.output.name!r}")


def tensor_metadata(name: str, dtype: str, dims: tuple[int, ...]) -> service_pb2.ModelMetadataResponse.TensorMetadata:
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=name, datatype=KSERVE_DATATYPES[dtype], shape=[-1, *dims]
    )


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: GatewayService, *, mtls: bool) -> None:
        self._service = service
        self._mtls = mtls

    async def _guard(self, context: grpc.aio.ServicerContext) -> Identity:
        try:
            return caller_identity(context, self._mtls)
        except GatewayError as exc:
            await abort(context, exc)

    async def ServerLive(self, request, context):  # noqa: N802 - RPC names
        await self._guard(context)
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        await self._guard(context)
        return service_pb2.ServerReadyResponse(ready=self._service.ready)

    async def ModelReady(self, request, context):  # noqa: N802
        await self._guard(context)
        try:
            self._service.resolve_version(request.name, request.version or None)
        except NotFound:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):  # noqa: N802
        await self._guard(context)
        return service_pb2.ServerMetadataResponse(name=SERVER_NAME, version=gateway.__version__, extensions=EXTENSIONS)

    async def _addressed_model(self, request, context: grpc.aio.ServicerContext) -> ModelSpec:
        """The model (and version) a metadata or config request names, or the call aborts with NOT_FOUND."""
        await self._guard(context)
        try:
            self._service.resolve_version(request.name, request.version or None)
            return self._service.spec(request.name)
        except GatewayError as exc:
            await abort(context, exc)

    async def ModelMetadata(self, request, context):  # noqa: N802
        spec = await self._addressed_model(request, context)
        return service_pb2.ModelMetadataResponse(
            name=spec.name,
            versions=self._service.loaded_versions(spec.name),
            platform=spec.platform,
            inputs=[tensor_metadata(spec.input.name, spec.input.dtype, spec.input.dims)],
            outputs=[tensor_metadata(spec.output.name, spec.output.dtype, spec.output.dims)],
        )

    async def ModelConfig(self, request, context):  # noqa: N802
        spec = await self._addressed_model(request, context)
        return service_pb2.ModelConfigResponse(config=spec.config)

    async def ModelInfer(self, request, context):  # noqa: N802
        identity = await self._guard(context)
        observation = self._service.observe("kserve-grpc", request.model_name, request.model_version or None, grpc_code)
        try:
            with observation as observed:
                spec = self._service.spec(request.model_name)
                route = self._service.route(
                    request.model_name, request.model_version or None, None, identity, routing_key(context)
                )
                version = route.version
                batch = input_batch(request, spec)
                check_requested_outputs(request, spec)
                probabilities = await self._service.classify_rows(
                    spec.name,
                    version,
                    batch,
                    identity,
                    request.id or new_request_id(),
                    context.time_remaining(),
                    route=route,
                )
                observed.done("OK", version)
        except GatewayError as exc:
            await abort(context, exc)
        response = service_pb2.ModelInferResponse(model_name=spec.name, model_version=version, id=request.id)
        output = response.outputs.add()
        output.name = spec.output.name
        output.datatype = kserve_datatype(spec)
        output.shape.extend(probabilities.shape)
        response.raw_output_contents.append(probabilities.astype("<f4").tobytes())
        return response
