"""TensorFlow Serving's gRPC ``PredictionService`` (Predict, GetModelMetadata) and ``ModelService``
(GetModelStatus; HandleReloadConfigRequest refused: the configuration is the model repository).

The messages come from a byte-compatible subset of TensorFlow Serving's protos compiled
into ``gateway.tfs`` at install time, so the gateway needs no TensorFlow; real
``tensorflow-serving-api`` clients talk to it unchanged.
"""

from __future__ import annotations

import grpc
import numpy as np

from gateway.core.errors import InvalidInput
from gateway.core.limits import DEFAULT_LIMITS, ParseLimits
from gateway.core.types import Identity, RowsAnswer, RowsRequest
from gateway.dataplane import DataPlane
from gateway.ingress.grpc_common import caller_identity, grpc_code, grpc_errors, routing_key
from gateway.ingress.tfserving_common import (
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    VersionStatus,
    metadata_route,
    predict_spec,
    version_statuses,
)
from gateway.models.repository import ModelSpec, TensorSpec
from gateway.models.repository_service import RepositoryService
from gateway.models.tensors import KSERVE_BY_TENSORFLOW, TENSORFLOW_BY_KSERVE, kserve_datatype
from gateway.preprocess.tensors import (
    MAX_TENSOR_ELEMENTS,
    batch_from_raw,
    batch_from_values,
    check_input_names,
    check_output_names,
)
from gateway.tfs import error_codes_pb2, serving_pb2, serving_pb2_grpc, tensor_pb2

RELOAD_REFUSED = (
    "the gateway's configuration is its model repository (config.pbtxt and the version directories), not a "
    "ModelServerConfig; change the repository, or load and unload versions with the rollout admin API "
    "(POST /api/v1/models/{m}/versions/{v}/load) or Triton's RepositoryModelLoad"
)


def _shape(proto: tensor_pb2.TensorShapeProto) -> list[int]:
    return [dim.size for dim in proto.dim]


def _shape_proto(shape: tuple[int, ...] | list[int]) -> tensor_pb2.TensorShapeProto:
    return tensor_pb2.TensorShapeProto(dim=[tensor_pb2.TensorShapeProto.Dim(size=size) for size in shape])


def _tf_dtype(tensor: TensorSpec) -> int:
    return tensor_pb2.DataType.Value(TENSORFLOW_BY_KSERVE[kserve_datatype(tensor)])


def input_batch(
    request: serving_pb2.PredictRequest, spec: ModelSpec, max_elements: int = MAX_TENSOR_ELEMENTS
) -> np.ndarray:
    check_input_names(sorted(request.inputs), spec)
    tensor = request.inputs[spec.input.name]
    dtype_name = tensor_pb2.DataType.Name(tensor.dtype)
    datatype = KSERVE_BY_TENSORFLOW.get(dtype_name, dtype_name)
    shape = _shape(tensor.tensor_shape)
    if tensor.tensor_content:
        return batch_from_raw(datatype, shape, tensor.tensor_content, spec, max_elements=max_elements)
    return batch_from_values(datatype, shape, tensor.float_val, spec, max_elements=max_elements)


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
    def info(tensor: TensorSpec) -> tensor_pb2.TensorInfo:
        shape = _shape_proto([-1, *tensor.dims])
        return tensor_pb2.TensorInfo(name=tensor.name, dtype=_tf_dtype(tensor), tensor_shape=shape)

    return tensor_pb2.SignatureDef(
        inputs={spec.input.name: info(spec.input)},
        outputs={spec.output.name: info(spec.output)},
        method_name=PREDICT_METHOD,
    )


def rows_request(
    request: serving_pb2.PredictRequest,
    plane: DataPlane,
    identity: Identity,
    context: grpc.aio.ServicerContext,
    limits: ParseLimits,
) -> tuple[ModelSpec, RowsRequest]:
    version, label = _requested_version(request.model_spec)
    spec = predict_spec(plane, request.model_spec.name, request.model_spec.signature_name)
    route = plane.route(spec.name, version, label or None, identity, routing_key(context))
    batch = input_batch(request, spec, limits.max_tensor_elements)
    check_output_names(request.output_filter, spec)
    rows = RowsRequest(spec.name, batch, identity, route, timeout_s=context.time_remaining())
    return spec, rows


def predict_response(spec: ModelSpec, answer: RowsAnswer) -> serving_pb2.PredictResponse:
    output = tensor_pb2.TensorProto(
        dtype=_tf_dtype(spec.output),
        tensor_shape=_shape_proto(answer.probabilities.shape),
        tensor_content=np.ascontiguousarray(answer.probabilities, "<f4").tobytes(),
    )
    model_spec = _model_spec(spec, answer.route.version)
    return serving_pb2.PredictResponse(model_spec=model_spec, outputs={spec.output.name: output})


class PredictionServicer(serving_pb2_grpc.PredictionServiceServicer):
    def __init__(self, plane: DataPlane, *, mtls: bool, limits: ParseLimits | None = None) -> None:
        self._plane = plane
        self._mtls = mtls
        self._limits = limits or DEFAULT_LIMITS

    @grpc_errors
    async def Predict(self, request, context):  # noqa: N802 - RPC names
        version, _ = _requested_version(request.model_spec)
        with self._plane.meter("tfserving-grpc", request.model_spec.name, version, grpc_code) as meter:
            identity = caller_identity(context, self._mtls)
            spec, rows = rows_request(request, self._plane, identity, context, self._limits)
            answer = await self._plane.infer(rows)
            meter.done("OK", answer.route.version)
        return predict_response(spec, answer)

    @grpc_errors
    async def GetModelMetadata(self, request, context):  # noqa: N802
        version, label = _requested_version(request.model_spec)
        caller_identity(context, self._mtls)
        spec, route = metadata_route(self._plane, request.model_spec.name, version, label)
        if list(request.metadata_field) != ["signature_def"]:
            raise InvalidInput(f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
        response = serving_pb2.GetModelMetadataResponse(model_spec=_model_spec(spec, route.version))
        response.metadata["signature_def"].Pack(
            serving_pb2.SignatureDefMap(signature_def={DEFAULT_SIGNATURE: signature_def(spec)})
        )
        return response


def version_status_proto(status: VersionStatus) -> serving_pb2.ModelVersionStatus:
    return serving_pb2.ModelVersionStatus(
        version=int(status.version),
        state=serving_pb2.ModelVersionStatus.State.Value(status.state),
        status=serving_pb2.StatusProto(
            error_code=error_codes_pb2.Code.Value(status.error_code), error_message=status.error_message
        ),
    )


class ModelServicer(serving_pb2_grpc.ModelServiceServicer):
    def __init__(self, plane: DataPlane, repository: RepositoryService, *, mtls: bool) -> None:
        self._plane = plane
        self._repository = repository
        self._mtls = mtls

    @grpc_errors
    async def GetModelStatus(self, request, context):  # noqa: N802 - RPC names
        caller_identity(context, self._mtls)
        version, label = _requested_version(request.model_spec)
        statuses = version_statuses(self._plane, self._repository, request.model_spec.name, version, label)
        return serving_pb2.GetModelStatusResponse(model_version_status=[version_status_proto(s) for s in statuses])

    @grpc_errors
    async def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        caller_identity(context, self._mtls)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, RELOAD_REFUSED)


def add_to_server(
    plane: DataPlane, repository: RepositoryService, server: grpc.aio.Server, *, mtls: bool, limits: ParseLimits
) -> tuple[str, str]:
    """Register the servicers; returns their full service names (for health and reflection)."""
    serving_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(plane, mtls=mtls, limits=limits), server
    )
    serving_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(plane, repository, mtls=mtls), server)
    services = serving_pb2.DESCRIPTOR.services_by_name
    return services["PredictionService"].full_name, services["ModelService"].full_name
