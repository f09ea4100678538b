"""gRPC transport (gateway.v1.Classifier; model metadata from KServe ModelConfig): sync and async."""

from __future__ import annotations

import grpc
from tritonclient.grpc import service_pb2 as kserve_pb2
from tritonclient.grpc import service_pb2_grpc as kserve_pb2_grpc

from gateway.v1 import classifier_pb2, classifier_pb2_grpc
from mobile_client.errors import ClientError, DeadlineExceeded, GatewayUnreachable
from mobile_client.values import ModelInfo, Prediction, Upload

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
PREPROCESSING_PARAMETER = "gateway.preprocessing"


def credentials(ca: bytes, cert: bytes | None, key: bytes | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _error(exc: grpc.RpcError) -> ClientError:
    code = exc.code()
    trailers = dict(exc.trailing_metadata() or ())
    gateway_code = trailers.get("gateway-error-code")
    pushback = trailers.get("grpc-retry-pushback-ms")
    retry_after = int(pushback) / 1000.0 if pushback and pushback.isdigit() else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(exc.details() or "deadline exceeded", status=code.name)
    if code == grpc.StatusCode.UNAVAILABLE and gateway_code is None:
        return GatewayUnreachable(f"no answer from the gateway: {exc.details()}", status=code.name)
    return ClientError(
        exc.details() or code.name,
        code=gateway_code or code.name.lower(),
        status=code.name,
        retryable=code in RETRYABLE,
        retry_after_s=retry_after,
    )


def _request(upload: Upload, model: str, priority: int | None, version: str | None) -> classifier_pb2.ClassifyRequest:
    return classifier_pb2.ClassifyRequest(model=model, image=upload.body, version=version or "", priority=priority or 0)


def _prediction(answer: classifier_pb2.ClassifyResponse, upload: Upload) -> Prediction:
    return Prediction(
        model=answer.model,
        version=answer.version,
        label=answer.label,
        probabilities=dict(answer.probabilities),
        request_id=answer.request_id,
        latency_ms=answer.latency_ms,
        upload_bytes=len(upload.body),
    )


def _model_info(answer: kserve_pb2.ModelConfigResponse) -> ModelInfo:
    config = answer.config
    dims = list(config.input[0].dims)
    channels, height, width = dims[-3:] if len(dims) >= 3 else (1, *dims[-2:])
    parameter = config.parameters.get(PREPROCESSING_PARAMETER)
    return ModelInfo(config.name, parameter.string_value if parameter else "", channels, height, width)


class GrpcTransport:
    def __init__(self, target: str, creds: grpc.ChannelCredentials) -> None:
        self._channel = grpc.secure_channel(target, creds)
        self._classifier = classifier_pb2_grpc.ClassifierStub(self._channel)
        self._kserve = kserve_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    def model_info(self, model: str, timeout_s: float) -> ModelInfo:
        try:
            return _model_info(self._kserve.ModelConfig(kserve_pb2.ModelConfigRequest(name=model), timeout=timeout_s))
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def classify(
        self, upload: Upload, model: str, *, key: str, timeout_s: float, priority: int | None, version: str | None
    ) -> Prediction:
        try:
            answer = self._classifier.Classify(
                _request(upload, model, priority, version), timeout=timeout_s, metadata=(("idempotency-key", key),)
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return _prediction(answer, upload)

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcTransport:
    def __init__(self, target: str, creds: grpc.ChannelCredentials) -> None:
        self._channel = grpc.aio.secure_channel(target, creds)
        self._classifier = classifier_pb2_grpc.ClassifierStub(self._channel)
        self._kserve = kserve_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def model_info(self, model: str, timeout_s: float) -> ModelInfo:
        try:
            request = kserve_pb2.ModelConfigRequest(name=model)
            return _model_info(await self._kserve.ModelConfig(request, timeout=timeout_s))
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    async def classify(
        self, upload: Upload, model: str, *, key: str, timeout_s: float, priority: int | None, version: str | None
    ) -> Prediction:
        try:
            answer = await self._classifier.Classify(
                _request(upload, model, priority, version), timeout=timeout_s, metadata=(("idempotency-key", key),)
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return _prediction(answer, upload)

    async def close(self) -> None:
        await self._channel.close()
