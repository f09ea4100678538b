"""TensorFlow Serving's gRPC ``tensorflow.serving.PredictionService``: Predict and GetModelMetadata.

The messages come from a byte-compatible subset of TensorFlow Serving's protos compiled
into ``gateway.tfs`` at install time, so the gateway needs no TensorFlow; real
``tensorflow-serving-api`` clients talk to it unchanged.
"""

from __future__ import annotations

import grpc
import numpy as np

from gateway.core.errors import GatewayError, InvalidInput
from gateway.core.types import new_request_id
from gateway.ingress.grpc_common import abort, caller_identity, grpc_code, routing_key
from gateway.ingress.tfserving_common import DEFAULT_SIGNATURE, PREDICT_METHOD, resolve
from gateway.preprocess.tensors import batch_from_raw, batch_from_values
from gateway.routing.repository import ModelSpec
from gateway.service import GatewayService
from gateway.tfs import serving_pb2, serving_pb2_grpc, tensor_pb2

KSERVE_BY_TF_DTYPE = {tensor_pb2.DT_FLOAT: "FP32", tensor_pb2.DT_DOUBLE: "FP64", tensor_pb2.DT_INT32: "INT32"}


def _shape(proto: tensor_pb2.TensorShapeProto) -> list[int]:
    return [dim.size for dim in proto.dim]


def _shape_proto(shape: tuple[int, ...] | list[int]) -> tensor_pb2.TensorShapeProto:
    return tensor_pb2.TensorShapeProto(dim=[tensor_pb2.TensorShapeProto.Dim(size=size) for size in shape])


def input_batch(request: serving_pb2.PredictRequest, spec: ModelSpec) -> np.ndarray:
    if len(request.inputs) != 1 or spec.input.name not in request.inputs:
        raise InvalidInput(f"model {spec.name!r} takes one input, {spec.input.name!r}; got {sorted(request.inputs)}")
    tensor = request.inputs[spec.input.name]
    datatype = KSERVE_BY_TF_DTYPE.get(tensor.dtype, tensor_pb2.DataType.Name(tensor.dtype))
    shape = _shape(tensor.tensor_shape)
    if tensor.tensor_content:
        return batch_from_raw(datatype, shape, tensor.tensor_content, spec)
    return batch_from_values(datatype, shape, tensor.float_val, spec)


def _model_spec(spec: ModelSpec, version: str) -> serving_pb2.ModelSpec:
    model_spec = serving_pb2.ModelSpec(name=spec.name, signature_name=DEFAULT_SIGNATURE)
    model_spec.version.value = int(version)
    return model_spec


def _requested_version(model_spec: serving_pb2.ModelSpec) -> tuple[str | None, str | None]:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return str(model_spec.version.value), None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def signature_def(spec: ModelSpec) -> tensor_pb2.SignatureDef:
    def info(name: str, dims: tuple[int, ...]) -> tensor_pb2.TensorInfo:
        return tensor_pb2.TensorInfo(name=name, dtype=tensor_pb2.DT_FLOAT, tensor_shape=_shape_proto([-1, *dims]))

    return tensor_pb2.SignatureDef(
        inputs={spec.input.name: info(spec.input.name, spec.input.dims)},
        outputs={spec.output.name: info(spec.output.name, spec.output.dims)},
        method_name=PREDICT_METHOD,
    )


class PredictionServicer(serving_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: GatewayService, *, mtls: bool) -> None:
        self._service = service
        self._mtls = mtls

    async def Predict(self, request, context):  # noqa: N802 - RPC names
        version, label = _requested_version(request.model_spec)
        observation = self._service.observe("tfserving-grpc", request.model_spec.name, version, grpc_code)
        try:
            with observation as observed:
                identity = caller_identity(context, self._mtls)
                spec, route = resolve(
                    self._service,
                    request.model_spec.name,
                    version,
                    label,
                    request.model_spec.signature_name,
                    identity,
                    routing_key(context),
                )
                chosen = route.version
                batch = input_batch(request, spec)
                unknown = set(request.output_filter) - {spec.output.name}
                if unknown:
                    raise InvalidInput(
                        f"unknown outputs {sorted(unknown)}; model {spec.name!r} has {spec.output.name!r}"
                    )
                probabilities = await self._service.classify_rows(
                    spec.name, chosen, batch, identity, new_request_id(), context.time_remaining(), route=route
                )
                observed.done("OK", chosen)
        except GatewayError as exc:
            await abort(context, exc)
        output = tensor_pb2.TensorProto(
            dtype=tensor_pb2.DT_FLOAT,
            tensor_shape=_shape_proto(probabilities.shape),
            tensor_content=probabilities.astype("<f4").tobytes(),
        )
        return serving_pb2.PredictResponse(model_spec=_model_spec(spec, chosen), outputs={spec.output.name: output})

    async def GetModelMetadata(self, request, context):  # noqa: N802
        version, label = _requested_version(request.model_spec)
        try:
            caller_identity(context, self._mtls)
            spec, route = resolve(self._service, request.model_spec.name, version, label, None)
            chosen = route.version
            if list(request.metadata_field) != ["signature_def"]:
                raise InvalidInput(f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
        except GatewayError as exc:
            await abort(context, exc)
        response = serving_pb2.GetModelMetadataResponse(model_spec=_model_spec(spec, chosen))
        response.metadata["signature_def"].Pack(
            serving_pb2.SignatureDefMap(signature_def={DEFAULT_SIGNATURE: signature_def(spec)})
        )
        return response


def add_to_server(service: GatewayService, server: grpc.aio.Server, *, mtls: bool) -> str:
    """Register the servicer; returns its full service name (for health and reflection)."""
    serving_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(service, mtls=mtls), server)
    return serving_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
