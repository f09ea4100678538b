"""The data plane: admit a caller, classify a photo, infer rows. Knows nothing of HTTP or gRPC.

Every inference surface makes one call here (``classify`` for a photo or one row, ``infer`` for a
batch of rows). Inside: admission (the authorization policy, then the caller's rate limit), routing
(the rollout's choice of version and arm), preprocessing off the event loop (bounded), the dynamic
batcher of the chosen version, the arm's outcome for the guard, the prediction record and the
shadow copy. Errors are GatewayErrors; each edge maps them to its status codes. ``meter`` counts a
request of an edge in the request metrics however it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from gateway.core.errors import DeadlineExceeded, GatewayError, Overloaded, Unavailable
from gateway.core.types import (
    Identity,
    PhotoRequest,
    Prediction,
    PreparedInput,
    Route,
    RowRequest,
    RowsAnswer,
    RowsRequest,
)
from gateway.models.registry import ModelRegistry
from gateway.models.repository import ModelSpec
from gateway.monitoring.metrics import GatewayMetrics, RequestMeter, note_request
from gateway.monitoring.monitor import Monitor
from gateway.monitoring.record import PredictionRecord
from gateway.monitoring.tracing import TRACING, traced
from gateway.preprocess.gpu_decode import PhotoDecoder
from gateway.preprocess.pipeline import prepare_photo
from gateway.rollout.manager import RolloutManager
from gateway.rollout.router import shadow_of
from gateway.rollout.shadowing import ShadowCopies, ShadowedAnswer
from gateway.security.policy import Authorizer
from gateway.security.ratelimit import RateLimiter


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        rollout: RolloutManager,
        authz: Authorizer,
        rate_limiter: RateLimiter,
        monitor: Monitor,
        shadows: ShadowCopies,
        metrics: GatewayMetrics,
        preprocess_pool: Executor,
        *,
        max_pending_photos: int,
        max_image_pixels: int,
        log_requests: bool = False,
        photo_decoder: PhotoDecoder | None = None,
    ) -> None:
        self._registry = registry
        self._rollout = rollout
        self._authz = authz
        self._rate_limiter = rate_limiter
        self._monitor = monitor
        self._shadows = shadows
        self._metrics = metrics
        self._pool = preprocess_pool
        self._max_pending_photos = max_pending_photos
        self._max_image_pixels = max_image_pixels
        self._decoder = photo_decoder
        self._pending_photos = 0
        self._log_requests = log_requests
        self._record = monitor.record
        if TRACING.on:  # wrapped once, here: an untraced gateway's requests pay nothing for tracing
            self._prepare = traced("prepare", self._prepare)
            self._record = traced("log write", monitor.record)

    async def admit(self, identity: Identity, model: str) -> None:
        """The gate of every inference surface: the policy must allow ``classify`` on ``model`` (403 /
        PERMISSION_DENIED, audited), then the caller's token bucket must have a token (429 /
        RESOURCE_EXHAUSTED with when to retry; one Redis round trip, only when limits are on)."""
        note_request(client=identity.name)
        self._authz.check(identity, "classify", model)
        await self._rate_limiter.take(identity, model)

    def spec(self, model: str) -> ModelSpec:
        """The model's spec (what an edge parses a request against), or NotFound naming what exists."""
        return self._registry.spec(model)

    def route(
        self, model: str, version: str | None, label: str | None, identity: Identity, routing_key: str | None
    ) -> Route:
        """The version (and arm) that answers a request: pinned version, pinned label, or the rollout's choice
        for its routing key (``x-routing-key``, else the caller's certificate identity); NotFound if not loaded."""
        loaded = self._registry.model(model)
        route = self._rollout.route(model, version, label, routing_key or identity.name)
        loaded.version(route.version)
        return route

    async def classify(self, request: PhotoRequest | RowRequest) -> Prediction:
        """Admit the caller, then classify one photo (decoded and preprocessed here) or one input row."""
        note_request(request.request_id)
        await self.admit(request.identity, request.model)
        spec = self._registry.spec(request.model)
        route = self.route(request.model, request.version, request.label, request.identity, request.routing_key)
        prepared = await self._prepare(request.photo, spec) if isinstance(request, PhotoRequest) else None
        row = request.row if prepared is None else prepared.tensor
        probabilities, latency_s = await self._run(
            spec, route, row, request, request.request_id, request.priority, prepared
        )
        return Prediction(
            request_id=request.request_id,
            model=spec.name,
            version=route.version,
            label=spec.labels[int(probabilities.argmax())],
            probabilities={label: float(p) for label, p in zip(spec.labels, probabilities, strict=True)},
            latency_ms=latency_s * 1000.0,
            arm=route.arm,
        )

    async def infer(self, request: RowsRequest) -> RowsAnswer:
        """Probabilities [N, classes] for already-preprocessed rows (KServe, TF Serving), on one version.

        Admitted once, whatever the number of rows; each row is submitted on its own, so rows batch with
        other traffic; all-or-nothing, in row order. Row ``i`` is logged as ``{request_id}.{i}``.
        """
        note_request(request.request_id)
        spec = self._registry.spec(request.model)
        route = request.route
        await self.admit(request.identity, request.model)
        prefix = request.request_id

        async def one(index: int, row: np.ndarray) -> np.ndarray:
            probabilities, _ = await self._run(spec, route, row, request, f"{prefix}.{index}", None, None)
            return probabilities

        if len(request.rows) == 1:  # the usual call: no task group, no task per row
            return RowsAnswer(route, (await one(0, request.rows[0]))[np.newaxis].astype(np.float32, copy=False))
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(i, row)) for i, row in enumerate(request.rows)]
        except* GatewayError as failures:
            raise failures.exceptions[0] from None
        return RowsAnswer(route, np.stack([task.result() for task in tasks]).astype(np.float32, copy=False))

    def meter(
        self, protocol: str, model: str, version: str | None, error_code: Callable[[GatewayError], str]
    ) -> RequestMeter:
        """``with plane.meter(...) as meter:`` around one request of an edge; see RequestMeter."""
        return RequestMeter(
            self._metrics, self.metric_labels, protocol, model, version, error_code, log=self._log_requests
        )

    def metric_labels(self, model: str, version: str | None) -> tuple[str, str]:
        """Model and version as metric labels; names no caller can grow without bound."""
        loaded = self._registry.find(model)
        if loaded is None:
            return "_unknown", ""
        chosen = version or self._rollout.policy(model).stable
        return model, chosen if chosen in loaded.versions else ""

    async def _prepare(self, photo: bytes, spec: ModelSpec) -> PreparedInput:
        """Decode and preprocess off the event loop, refusing at once when too many photos wait."""
        if self._pending_photos >= self._max_pending_photos:
            raise Overloaded(f"{self._pending_photos} photos are waiting to be decoded; retry shortly")
        self._pending_photos += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: prepare_photo(photo, spec, max_pixels=self._max_image_pixels, decoder=self._decoder)
            )
        finally:
            self._pending_photos -= 1

    async def _run(
        self,
        spec: ModelSpec,
        route: Route,
        row: np.ndarray,
        request: PhotoRequest | RowRequest | RowsRequest,
        request_id: str,
        priority: int | None,
        prepared: PreparedInput | None,
    ) -> tuple[np.ndarray, float]:
        """Batch one row on the routed version; record the arm's outcome, the prediction and the shadow copy.
        Returns (probabilities, seconds since the request arrived)."""
        model = self._registry.model(spec.name)
        version = model.version(route.version)
        try:
            probabilities, batch_size = await version.batcher.submit(
                row, priority=priority, timeout_s=_remaining(request.timeout_s, request.received_at)
            )
        except (Unavailable, DeadlineExceeded):
            self._rollout.record_outcome(spec.name, route, True, time.perf_counter() - request.received_at)
            raise
        latency_s = time.perf_counter() - request.received_at
        self._rollout.record_outcome(spec.name, route, False, latency_s)
        best = int(probabilities.argmax())
        label = spec.labels[best]
        photo = request.photo if prepared is not None and self._monitor.sample_photo() else None
        self._record(
            PredictionRecord(
                request_id=request_id,
                client=request.identity.name,
                model=spec.name,
                version=route.version,
                arm=route.arm,
                preprocessing=spec.preprocessing,
                label=label,
                top_probability=float(probabilities[best]),
                probabilities=probabilities.tolist(),
                latency_ms=latency_s * 1000.0,
                batch_size=batch_size,
                row=row,
                source_size=(prepared.source_width, prepared.source_height) if prepared is not None else None,
                photo=photo,
            )
        )
        shadow = shadow_of(self._rollout.policy(spec.name), route, model.versions)
        if shadow is not None:
            answer = ShadowedAnswer(request_id, route.version, label)
            self._shadows.send(spec.name, shadow, model.versions[shadow].batcher, spec.labels, row, answer)
        return probabilities, latency_s


def _remaining(timeout_s: float | None, received_at: float) -> float | None:
    """What is left of the caller's deadline, or DeadlineExceeded if nothing is."""
    if timeout_s is None:
        return None
    remaining = timeout_s - (time.perf_counter() - received_at)
    if remaining <= 0:
        raise DeadlineExceeded(f"the deadline of {timeout_s * 1000:.0f} ms passed before batching")
    return remaining
