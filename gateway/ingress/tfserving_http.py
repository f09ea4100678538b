"""TensorFlow Serving's REST API: ``GET /v1/models/{m}[/versions/{v}|/labels/{l}]`` (version status)
and ``POST .../{m}[/versions/{v}|/labels/{l}]:predict`` in the "instances" (row) and "inputs"
(columnar) formats."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from gateway.core.errors import InvalidInput
from gateway.core.limits import DEFAULT_LIMITS, ParseLimits
from gateway.core.types import Identity, RowsRequest
from gateway.dataplane import DataPlane
from gateway.ingress.hot_routes import HotRoute, route_pattern
from gateway.ingress.http_common import (
    PLAIN_ERRORS,
    ROUTING_KEY_HEADER,
    TFSERVING_PREFIX,
    caller_identity,
    http_code,
    json_response,
    read_body,
    surface_app,
    version_headers,
)
from gateway.ingress.json_body import parse_json
from gateway.ingress.tfserving_common import VersionStatus, predict_spec, version_statuses
from gateway.models.repository import ModelSpec
from gateway.models.repository_service import RepositoryService
from gateway.preprocess.tensors import batch_from_values, check_input_names


def _numbers(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"{what} must be a (nested) list of numbers of one shape") from None


def _unwrap(value: Any, spec: ModelSpec, what: str) -> Any:
    """A named input ({"image": ...}) or the bare input (the model has one)."""
    if isinstance(value, dict):
        check_input_names(sorted(value), spec)
        return value[spec.input.name]
    return value


def parse_predict(payload: Any, spec: ModelSpec, limits: ParseLimits = DEFAULT_LIMITS) -> tuple[str, np.ndarray]:
    """("instances" or "inputs", the validated batch)."""
    if not isinstance(payload, dict) or ("instances" in payload) == ("inputs" in payload):
        raise InvalidInput('the body must be a JSON object with either "instances" (rows) or "inputs" (columns)')
    if "instances" in payload:
        rows = payload["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInput('"instances" must be a non-empty list, one entry per input row')
        array = _numbers([_unwrap(row, spec, "an instance") for row in rows], '"instances"')
        return "instances", _batch(array, spec, limits)
    array = _numbers(_unwrap(payload["inputs"], spec, '"inputs"'), '"inputs"')
    return "inputs", _batch(array, spec, limits)


def _batch(array: np.ndarray, spec: ModelSpec, limits: ParseLimits) -> np.ndarray:
    values = array.ravel().tolist()
    return batch_from_values("FP32", list(array.shape), values, spec, max_elements=limits.max_tensor_elements)


def _json(body: bytes, limits: ParseLimits) -> Any:
    return parse_json(
        body,
        max_bytes=limits.json_max_bytes,
        max_depth=limits.json_max_depth,
        what="the predict request",
        setting="limits.json_max_bytes",
    )


def predict_request(
    request: Request,
    plane: DataPlane,
    body: bytes,
    identity: Identity,
    model: str,
    version: str | None,
    label: str | None,
    limits: ParseLimits,
) -> tuple[str, RowsRequest]:
    """("instances" or "inputs", the RowsRequest) of a predict call."""
    payload = _json(body, limits)
    signature = payload.get("signature_name") if isinstance(payload, dict) else None
    spec = predict_spec(plane, model, signature)
    route = plane.route(spec.name, version, label or None, identity, request.headers.get(ROUTING_KEY_HEADER))
    layout, batch = parse_predict(payload, spec, limits)
    return layout, RowsRequest(spec.name, batch, identity, route)


def _status_json(status: VersionStatus) -> dict[str, Any]:
    error = {"error_code": status.error_code, "error_message": status.error_message}
    return {"version": status.version, "state": status.state, "status": error}


def tfserving_app(plane: DataPlane, repository: RepositoryService, *, mtls: bool, limits: ParseLimits) -> FastAPI:
    """TensorFlow Serving's REST API, mounted at ``/v1/models``; its errors are ``{"error": message}``."""
    app = surface_app()

    @app.get("/{model}")
    @app.get("/{model}/versions/{version}")
    @app.get("/{model}/labels/{label}")
    async def version_status(request: Request, model: str, version: str | None = None, label: str | None = None):
        caller_identity(request, mtls)
        statuses = version_statuses(plane, repository, model, version, label)
        return {
            "model_version_status": [
                {
                    "version": s.version,
                    "state": s.state,
                    "status": {"error_code": s.error_code, "error_message": s.error_message},
                }
                for s in statuses
            ]
        }

    handler = predict_handler(plane, mtls, limits)

    @app.post(PREDICT_PATHS[0])
    @app.post(PREDICT_PATHS[1])
    @app.post(PREDICT_PATHS[2])
    async def predict(request: Request, model: str, version: str | None = None, label: str | None = None) -> Response:
        return await handler(request, model, version, label)

    return app


PREDICT_PATHS = ("/{model}:predict", "/{model}/versions/{version}:predict", "/{model}/labels/{label}:predict")
Predict = Callable[..., Awaitable[Response]]


def predict_handler(plane: DataPlane, mtls: bool, limits: ParseLimits) -> Predict:
    """``predict(request, model, version=None, label=None)``: the answer to one predict call, or a GatewayError."""

    async def predict(request: Request, model: str, version: str | None = None, label: str | None = None) -> Response:
        with plane.meter("tfserving-http", model, version, http_code) as meter:
            identity = caller_identity(request, mtls)
            body = await read_body(request, limits.body_max_bytes)
            layout, rows = predict_request(request, plane, body, identity, model, version or None, label, limits)
            answer = await plane.infer(rows)
            meter.done("200", answer.route.version)
        probabilities = answer.probabilities.tolist()
        predictions = {"predictions": probabilities} if layout == "instances" else {"outputs": probabilities}
        return json_response(predictions, version_headers(answer.route), answer.probabilities)

    return predict


def tfserving_hot_routes(plane: DataPlane, *, mtls: bool, limits: ParseLimits) -> list[HotRoute]:
    """The predict routes served in front of FastAPI (gateway/ingress/hot_routes.py), at ``/v1/models``."""
    predict = predict_handler(plane, mtls, limits)
    return [HotRoute(route_pattern(TFSERVING_PREFIX + path), predict, PLAIN_ERRORS) for path in PREDICT_PATHS]
