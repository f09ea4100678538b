"""NVIDIA Triton over gRPC (KServe v2), with ``tritonclient.grpc.aio`` and binary tensors."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from gateway.backends.remote import (
    RECONNECT_OPTIONS,
    ClientTls,
    RemoteMetadata,
    RemoteModelError,
    RemoteTensor,
    ReplicaDown,
)
from gateway.models.tensors import KSERVE_BY_NUMPY
from gateway.monitoring.tracing import TRACING

_CODES = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}


def _failure(endpoint: str, exc: InferenceServerException) -> Exception:
    status = exc.status() or "StatusCode.UNKNOWN"
    message = f"{endpoint}: {status.removeprefix('StatusCode.')}: {exc.message()}"
    return ReplicaDown(message) if status in _CODES else RemoteModelError(message)


class TritonModel:
    """One model version on one Triton server (a replica). Tensors travel as raw bytes (binary)."""

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
        self._model = model
        self._version = version
        self._input_name = input_name
        self._output_name = output_name
        self._timeout_s = timeout_s
        self._client = triton_aio.InferenceServerClient(
            endpoint, creds=tls.credentials() if tls else None, channel_args=RECONNECT_OPTIONS
        )

    async def metadata(self) -> RemoteMetadata:
        try:
            answer = await self._client.get_model_metadata(self._model, self._version, client_timeout=self._timeout_s)
        except InferenceServerException as exc:
            raise _failure(self.endpoint, exc) from None

        def tensors(items) -> tuple[RemoteTensor, ...]:
            return tuple(RemoteTensor(t.name, t.datatype, tuple(t.shape)) for t in items)

        return RemoteMetadata(tensors(answer.inputs), tensors(answer.outputs))

    async def ready(self) -> bool:
        try:
            timeout = min(self._timeout_s, 2.0)
            return await self._client.is_server_ready(client_timeout=timeout) and await self._client.is_model_ready(
                self._model, self._version, client_timeout=timeout
            )
        except InferenceServerException:
            return False

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        tensor = InferInput(self._input_name, list(batch.shape), KSERVE_BY_NUMPY[batch.dtype.name])
        tensor.set_data_from_numpy(batch)
        try:
            result = await self._client.infer(
                self._model,
                [tensor],
                model_version=self._version,
                outputs=[InferRequestedOutput(self._output_name)],
                client_timeout=self._timeout_s,
                headers=dict(TRACING.inject()) if TRACING.on else None,  # the trace goes on to Triton
            )
        except InferenceServerException as exc:
            raise _failure(self.endpoint, exc) from None
        output = result.as_numpy(self._output_name)
        if output is None:
            raise RemoteModelError(f"{self.endpoint}: the answer has no output {self._output_name!r}")
        return output

    async def close(self) -> None:
        await self._client.close()
