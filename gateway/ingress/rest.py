"""The REST surface (FastAPI): the gateway's own photo API and health endpoints."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field, ValidationError

from gateway.app import Gateway
from gateway.core.errors import InvalidInput
from gateway.core.limits import ParseLimits
from gateway.ingress.admin import admin_router
from gateway.ingress.health import readiness
from gateway.ingress.hot_routes import HotRoute, HotRoutes, route_pattern
from gateway.ingress.http_common import (
    KSERVE_PREFIX,
    ROUTING_KEY_HEADER,
    TFSERVING_PREFIX,
    SurfaceMount,
    caller_identity,
    error_handlers,
    gateway_error_body,
    http_status_for,
)
from gateway.ingress.idempotency import IDEMPOTENCY_HEADER
from gateway.ingress.json_body import json_object
from gateway.ingress.kserve_http import kserve_app, kserve_hot_routes
from gateway.ingress.rest_classify import (
    LABEL_PATTERN,
    MAX_PRIORITY,
    MAX_ROUTING_KEY,
    MAX_TIMEOUT_MS,
    PRIORITY_HEADER,
    TIMEOUT_HEADER,
    VERSION_PATTERN,
    Classify,
    ClassifyOptions,
    classify_arguments,
    classify_handler,
)
from gateway.ingress.tfserving_http import tfserving_app, tfserving_hot_routes
from gateway.monitoring.export import MAX_PAGE_RECORDS, PAGE_RECORDS
from gateway.monitoring.metrics import PROMETHEUS_CONTENT_TYPE
from gateway.monitoring.monitor import Monitor
from gateway.monitoring.tracing import TRACING, fastapi_telemetry

log = logging.getLogger(__name__)
__all__ = ["create_app", "http_status_for"]

CLASSIFY_PATH = "/api/v1/models/{model}/classify"

DOCS_ASSETS_URL = "/docs/assets"
"""/docs (Swagger UI) and /redoc load their scripts, CSS and icon from here: files of the fastapi-offline package,
so the pages work on a network without the internet (FastAPI's defaults load them from a public CDN)."""


class Feedback(BaseModel):
    label: str = Field(min_length=1, max_length=64, description="the true label")


def _feedback(payload: dict) -> Feedback:
    try:
        return Feedback.model_validate(payload)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"the feedback body is not valid: {details}") from None


PredictionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,128}$")]


def create_app(gateway: Gateway, *, mtls: bool, limits: ParseLimits) -> FastAPI:
    """The REST application around a built gateway: the photo API, admin, health, and the KServe v2 and
    TF Serving surfaces mounted as sub-applications (each answers errors in its clients' shape)."""
    app = FastAPIOffline(
        title="Image classifier gateway",
        version="1",
        exception_handlers=error_handlers(gateway_error_body),
        static_url=DOCS_ASSETS_URL,
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI's default validator badge calls a public host
        telemetry=fastapi_telemetry(TRACING),
    )
    plane, registry = gateway.plane, gateway.registry
    surfaces = (
        (KSERVE_PREFIX, kserve_app(plane, registry, gateway.repository, mtls=mtls, limits=limits)),
        (TFSERVING_PREFIX, tfserving_app(plane, gateway.repository, mtls=mtls, limits=limits)),
    )
    app.router.routes.extend(SurfaceMount(prefix, surface) for prefix, surface in surfaces)
    app.include_router(admin_router(registry, gateway.rollout, mtls=mtls, limits=limits))
    app.include_router(_health_router(gateway, mtls))
    app.include_router(_monitoring_router(gateway.monitor, mtls, limits))
    classify = classify_handler(gateway, mtls, limits)
    app.include_router(_classify_router(classify))
    hot_routes = [
        HotRoute(route_pattern(CLASSIFY_PATH), classify, app.exception_handlers, classify_arguments),
        *kserve_hot_routes(plane, mtls=mtls, limits=limits),
        *tfserving_hot_routes(plane, mtls=mtls, limits=limits),
    ]
    app.add_middleware(HotRoutes, routes=hot_routes)  # in front of FastAPI's router: see hot_routes.py

    @app.get("/api/v1/models")
    async def list_models(request: Request) -> dict:
        caller_identity(request, mtls)
        return {"models": registry.describe_models()}

    @app.get("/api/v1/models/{model}")
    async def describe_model(request: Request, model: str) -> dict:
        caller_identity(request, mtls)
        return registry.describe_model(model)

    return app


def _health_router(gateway: Gateway, mtls: bool) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict:
        return {"status": "live"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        return readiness(gateway)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        caller_identity(request, mtls)
        return Response(gateway.metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    return router


def _monitoring_router(monitor: Monitor, mtls: bool, limits: ParseLimits) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.post("/predictions/{request_id}/feedback")
    async def feedback(request: Request, request_id: PredictionId) -> dict:
        """The true label of an answered prediction (from the client that asked, or an operator).
        Body: ``{"label": "..."}``, read within ``limits.admin_max_bytes`` and ``limits.json_max_depth``."""
        identity = caller_identity(request, mtls)
        body = _feedback(await json_object(request, limits, '{"label": "hotdog"}'))
        return await monitor.record_feedback(request_id, body.label, identity)

    @router.get("/predictions/{request_id}/photo")
    async def sampled_photo(request: Request, request_id: PredictionId) -> Response:
        """The photo a prediction was made from, as uploaded, if it was sampled for retraining (operators only)."""
        photo = await monitor.sampled_photo(request_id, caller_identity(request, mtls))
        headers = {"x-model": photo.model, "x-model-version": photo.version, "x-photo-id": photo.photo_id}
        return Response(photo.photo, media_type=photo.content_type, headers=headers)

    @router.get("/models/{model}/predictions/export")
    async def export_predictions(
        request: Request,
        model: str,
        version: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$")] = None,
        since_ms: Annotated[int | None, Query(ge=0, description="stream time, Unix ms (inclusive)")] = None,
        until_ms: Annotated[int | None, Query(ge=0, description="Unix ms (inclusive); default: now")] = None,
        after: Annotated[str | None, Query(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$", description="a page's cursor")] = None,
        count: Annotated[int, Query(ge=1, le=MAX_PAGE_RECORDS)] = PAGE_RECORDS,
    ) -> dict:
        """One page of the prediction log with feedback and sampled photos (`gateway predictions export`)."""
        identity = caller_identity(request, mtls)
        return await monitor.export_page(model, version, since_ms, until_ms, after, count, identity)

    @router.get("/models/{model}/accuracy")
    async def live_accuracy(request: Request, model: str) -> dict:
        """Live accuracy per version, from the feedback received so far."""
        caller_identity(request, mtls)
        return {"model": model, "versions": await monitor.live_accuracy(model)}

    @router.get("/models/{model}/skew")
    async def skew(
        request: Request,
        model: str,
        version: Annotated[str | None, Query(pattern=r"^[0-9]{1,9}$")] = None,
        window: Annotated[int | None, Query(ge=10, le=100_000, description="newest N predictions")] = None,
        window_s: Annotated[
            int | None, Query(ge=0, le=366 * 86400, description="none older than this many seconds; 0: no limit")
        ] = None,
        surface: Annotated[str | None, Query(description="photo or tensor (default: both)")] = None,
    ) -> dict:
        """Training/serving skew of the newest logged predictions per input surface against its baseline."""
        caller_identity(request, mtls)
        return await monitor.skew(model, version, window, window_s, surface)

    return router


def _classify_router(handler: Classify) -> APIRouter:
    """FastAPI's route of the classify handler: it documents the parameters, and answers what the hot route passes
    on (a parameter to validate, tracing on)."""
    router = APIRouter()

    @router.post(CLASSIFY_PATH)
    async def classify(
        request: Request,
        model: str,
        version: Annotated[str | None, Query(pattern=VERSION_PATTERN, description="model version")] = None,
        label: Annotated[str | None, Query(pattern=LABEL_PATTERN, description="rollout label to pin")] = None,
        routing_key: Annotated[
            str | None,
            Header(alias=ROUTING_KEY_HEADER, max_length=MAX_ROUTING_KEY, description="sticky rollout routing key"),
        ] = None,
        timeout_ms: Annotated[
            int | None, Header(alias=TIMEOUT_HEADER, ge=1, le=MAX_TIMEOUT_MS, description="deadline for the answer")
        ] = None,
        priority: Annotated[
            int | None,
            Header(alias=PRIORITY_HEADER, ge=1, le=MAX_PRIORITY, description="batching priority, 1 is the highest"),
        ] = None,
        idempotency_key: Annotated[
            str | None, Header(alias=IDEMPOTENCY_HEADER, description="a retry with the same key is answered once")
        ] = None,
    ) -> Response:
        options = ClassifyOptions(version, label, routing_key, timeout_ms, priority, idempotency_key)
        return await handler(request, model, options)

    return router
