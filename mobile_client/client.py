"""One API over REST and gRPC: ``Client(...).classify(photo, model="hotdog") -> Prediction`` (and AsyncClient).

The gateway address picks the transport: ``https://host:8443`` (REST) or ``grpcs://host:8444`` (gRPC).
Each call: the model's metadata (read once), the photo prepared on the device, one idempotency key for
every try, retries with backoff and jitter on 429 / 503 / UNAVAILABLE / RESOURCE_EXHAUSTED / no answer,
and one deadline for the whole call, which each try passes on to the gateway.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from gateway.security.tls import client_context
from mobile_client.errors import ClientError, DeadlineExceeded, GatewayUnreachable
from mobile_client.grpc_transport import AsyncGrpcTransport, GrpcTransport, credentials
from mobile_client.prepare import DEFAULT_QUALITY, original_upload, prepare_photo
from mobile_client.rest import AsyncRestTransport, RestTransport
from mobile_client.retry import RetryPolicy
from mobile_client.values import ModelInfo, Prediction, Upload

Photo = str | Path | bytes
DEFAULT_DEADLINE_S = 10.0


def read_photo(photo: Photo) -> bytes:
    return photo if isinstance(photo, bytes) else Path(photo).read_bytes()


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


class _Base:
    def __init__(
        self,
        gateway: str,
        *,
        ca: str | Path,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        retry: RetryPolicy | None = None,
        deadline_s: float = DEFAULT_DEADLINE_S,
        prepare: bool = True,
        quality: int = DEFAULT_QUALITY,
    ) -> None:
        url = urlsplit(gateway)
        if url.scheme not in ("https", "grpcs") or not url.hostname or not url.port:
            raise ValueError(f"gateway must be https://HOST:PORT (REST) or grpcs://HOST:PORT (gRPC), got {gateway!r}")
        self.transport_name = "grpc" if url.scheme == "grpcs" else "rest"
        self._url = url
        self._tls = (Path(ca), Path(cert) if cert else None, Path(key) if key else None)
        self.retry = retry or RetryPolicy()
        self.deadline_s = deadline_s
        self.prepare_photos = prepare
        self.quality = quality
        self._models: dict[str, ModelInfo] = {}

    def _grpc_credentials(self):
        ca, cert, key = self._tls
        return credentials(ca.read_bytes(), cert.read_bytes() if cert else None, key.read_bytes() if key else None)

    def _ssl_context(self):
        ca, cert, key = self._tls
        return client_context(ca, cert, key) if cert else client_context(ca)

    def cached_model_info(self, model: str) -> ModelInfo | None:
        return self._models.get(model)

    def make_upload(self, data: bytes, info: ModelInfo | None) -> Upload:
        """``data`` prepared for the model (or unchanged without metadata, or with prepare=False)."""
        if info is None or not self.prepare_photos:
            return original_upload(data)
        return prepare_photo(data, info, quality=self.quality)

    def _deadline(self, deadline_s: float | None) -> float:
        return time.monotonic() + (deadline_s if deadline_s is not None else self.deadline_s)

    def _next_wait(self, attempt: int, error: ClientError, deadline: float) -> float:
        """Seconds to wait before the next try, or raise ``error`` when no retry is possible in time."""
        if isinstance(error, GatewayUnreachable) and time.monotonic() >= deadline:
            raise DeadlineExceeded(f"no answer within the deadline ({error.message})") from error
        if not self.retry.should_retry(attempt, error):
            raise error
        delay = self.retry.delay_s(attempt, error)
        if time.monotonic() + delay >= deadline:
            raise error
        return delay


def _remaining(deadline: float, model: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded(f"the deadline for classifying with {model!r} passed while retrying")
    return remaining


class Client(_Base):
    """Blocking client. Use as a context manager, or call ``close()``."""

    def __init__(self, gateway: str, *, sleep: Callable[[float], None] = time.sleep, **kwargs) -> None:
        super().__init__(gateway, **kwargs)
        self._sleep = sleep
        if self.transport_name == "grpc":
            self._transport = GrpcTransport(self._url.netloc, self._grpc_credentials())
        else:
            self._transport = RestTransport(f"https://{self._url.netloc}", self._ssl_context())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def model_info(self, model: str, *, deadline_s: float | None = None) -> ModelInfo:
        """The model's input size, channels, preprocessing (and labels over REST); read once per model."""
        if model not in self._models:
            deadline = self._deadline(deadline_s)
            self._models[model] = self._with_retries(
                model, deadline, lambda remaining: self._transport.model_info(model, remaining)
            )
        return self._models[model]

    def prepare(self, photo: Photo, model: str) -> Upload:
        """What ``classify`` would upload for ``photo``."""
        info = self.model_info(model) if self.prepare_photos else None
        return self.make_upload(read_photo(photo), info)

    def classify(
        self,
        photo: Photo,
        model: str,
        *,
        deadline_s: float | None = None,
        priority: int | None = None,
        version: str | None = None,
        idempotency_key: str | None = None,
        upload: Upload | None = None,
    ) -> Prediction:
        """Classify one photo (a path or its bytes). Raises ClientError (GatewayUnreachable, DeadlineExceeded)."""
        deadline = self._deadline(deadline_s)
        if upload is None:
            info = self.model_info(model, deadline_s=_remaining(deadline, model)) if self.prepare_photos else None
            upload = self.make_upload(read_photo(photo), info)
        key = idempotency_key or new_idempotency_key()
        tries = 0

        def send(remaining: float) -> Prediction:
            nonlocal tries
            tries += 1
            return self._transport.classify(
                upload, model, key=key, timeout_s=remaining, priority=priority, version=version
            )

        prediction = self._with_retries(model, deadline, send)
        return replace(prediction, attempts=tries)

    def _with_retries(self, model: str, deadline: float, send: Callable[[float], object]):
        attempt = 0
        while True:
            try:
                return send(_remaining(deadline, model))
            except ClientError as error:
                self._sleep(self._next_wait(attempt, error, deadline))
                attempt += 1


class AsyncClient(_Base):
    """The same API for asyncio: ``await client.classify(photo, model="mnist")``."""

    def __init__(self, gateway: str, **kwargs) -> None:
        super().__init__(gateway, **kwargs)
        if self.transport_name == "grpc":
            self._transport = AsyncGrpcTransport(self._url.netloc, self._grpc_credentials())
        else:
            self._transport = AsyncRestTransport(f"https://{self._url.netloc}", self._ssl_context())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    async def model_info(self, model: str, *, deadline_s: float | None = None) -> ModelInfo:
        if model not in self._models:
            deadline = self._deadline(deadline_s)
            self._models[model] = await self._with_retries(
                model, deadline, lambda remaining: self._transport.model_info(model, remaining)
            )
        return self._models[model]

    async def classify(
        self,
        photo: Photo,
        model: str,
        *,
        deadline_s: float | None = None,
        priority: int | None = None,
        version: str | None = None,
        idempotency_key: str | None = None,
        upload: Upload | None = None,
    ) -> Prediction:
        deadline = self._deadline(deadline_s)
        if upload is None:
            info = None
            if self.prepare_photos:
                info = await self.model_info(model, deadline_s=_remaining(deadline, model))
            data = read_photo(photo)
            upload = await asyncio.get_running_loop().run_in_executor(None, self.make_upload, data, info)
        key = idempotency_key or new_idempotency_key()
        tries = 0

        async def send(remaining: float) -> Prediction:
            nonlocal tries
            tries += 1
            return await self._transport.classify(
                upload, model, key=key, timeout_s=remaining, priority=priority, version=version
            )

        prediction = await self._with_retries(model, deadline, send)
        return replace(prediction, attempts=tries)

    async def _with_retries(self, model: str, deadline: float, send):
        attempt = 0
        while True:
            try:
                return await send(_remaining(deadline, model))
            except ClientError as error:
                await asyncio.sleep(self._next_wait(attempt, error, deadline))
                attempt += 1
