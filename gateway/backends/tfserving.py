"""TensorFlow Serving over gRPC: ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata).

The messages are the gateway's byte-compatible subset of TF Serving's protos (``gateway.tfs``),
so no TensorFlow is needed. TF Serving's readiness lives in a separate ModelService; a replica
here counts as ready when GetModelMetadata for the version answers, which TF Serving does only
once that version is loaded (NOT_FOUND / UNAVAILABLE otherwise).
"""

from __future__ import annotations

import grpc
import numpy as np

from gateway.backends.remote import RECONNECT_OPTIONS, ClientTls, RemoteMetadata, RemoteTensor, grpc_failure
from gateway.models.tensors import KSERVE_BY_NUMPY, KSERVE_BY_TENSORFLOW, TENSORFLOW_BY_KSERVE
from gateway.monitoring.tracing import TRACING
from gateway.tfs import serving_pb2, serving_pb2_grpc, tensor_pb2

SIGNATURE = "serving_default"


def kserve_datatype_of(dtype: int) -> str:
    """The KServe v2 name of a TensorFlow DataType (its TF name when the table has none: DT_STRING)."""
    name = tensor_pb2.DataType.Name(dtype)
    return KSERVE_BY_TENSORFLOW.get(name, name)


def _shape(proto: tensor_pb2.TensorShapeProto) -> tuple[int, ...]:
    return tuple(dim.size for dim in proto.dim)


class TFServingModel:
    """One model version on one TensorFlow Serving server (a replica). Tensors travel as tensor_content."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        version: str,
        input_name: str,
        output_name: str,
        *,
        tls: ClientTls | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self._input_name = input_name
        self._output_name = output_name
        self._timeout_s = timeout_s
        self._spec = serving_pb2.ModelSpec(name=model, signature_name=SIGNATURE)
        self._spec.version.value = int(version)
        self._channel = (
            grpc.aio.secure_channel(endpoint, tls.credentials(), options=RECONNECT_OPTIONS)
            if tls
            else grpc.aio.insecure_channel(endpoint, options=RECONNECT_OPTIONS)
        )
        self._stub = serving_pb2_grpc.PredictionServiceStub(self._channel)

    async def _call(self, method, request, timeout_s: float):
        try:
            metadata = TRACING.inject() if TRACING.on else None  # the trace goes on to TF Serving
            return await method(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise grpc_failure(self.endpoint, exc.code(), exc.details() or "") from None

    async def metadata(self) -> RemoteMetadata:
        request = serving_pb2.GetModelMetadataRequest(model_spec=self._spec, metadata_field=["signature_def"])
        answer = await self._call(self._stub.GetModelMetadata, request, self._timeout_s)
        signatures = serving_pb2.SignatureDefMap()
        answer.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def[SIGNATURE]

        def tensors(infos) -> tuple[RemoteTensor, ...]:
            return tuple(
                RemoteTensor(name, kserve_datatype_of(info.dtype), _shape(info.tensor_shape))
                for name, info in sorted(infos.items())
            )

        return RemoteMetadata(tensors(signature.inputs), tensors(signature.outputs))

    async def ready(self) -> bool:
        request = serving_pb2.GetModelMetadataRequest(model_spec=self._spec, metadata_field=["signature_def"])
        try:
            await self._call(self._stub.GetModelMetadata, request, min(self._timeout_s, 2.0))
        except Exception:
            return False
        return True

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        tensor = tensor_pb2.TensorProto(
            dtype=tensor_pb2.DataType.Value(TENSORFLOW_BY_KSERVE[KSERVE_BY_NUMPY[batch.dtype.name]]),
            tensor_shape=tensor_pb2.TensorShapeProto(
                dim=[tensor_pb2.TensorShapeProto.Dim(size=n) for n in batch.shape]
            ),
            tensor_content=np.ascontiguousarray(batch, dtype=batch.dtype.newbyteorder("<")).tobytes(),
        )
        request = serving_pb2.PredictRequest(
            model_spec=self._spec, inputs={self._input_name: tensor}, output_filter=[self._output_name]
        )
        answer = await self._call(self._stub.Predict, request, self._timeout_s)
        output = answer.outputs[self._output_name]
        shape = _shape(output.tensor_shape)
        if output.tensor_content:
            return np.frombuffer(output.tensor_content, dtype="<f4").reshape(shape)
        return np.asarray(output.float_val, dtype=np.float32).reshape(shape)

    async def close(self) -> None:
        await self._channel.close()
