"""TensorFlow Serving's REST API: ``GET /v1/models/{m}[/versions/{v}|/labels/{l}]`` (version status)
and ``POST .../{m}[/versions/{v}|/labels/{l}]:predict`` in the "instances" (row) and "inputs"
(columnar) formats."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.core.errors import InvalidInput
from gateway.core.types import new_request_id
from gateway.ingress.http_common import (
    ROUTING_KEY_HEADER,
    TFSERVING_PREFIX,
    caller_identity,
    http_code,
    read_body,
    version_headers,
)
from gateway.ingress.tfserving_common import resolve
from gateway.preprocess.tensors import batch_from_values
from gateway.routing.repository import ModelSpec
from gateway.service import GatewayService


def _numbers(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a (nested) list of numbers of one shape") from None


def _unwrap(value: Any, spec: ModelSpec, what: str) -> Any:
    """A named input ({"image": ...}) or the bare input (the model has one)."""
    if isinstance(value, dict):
        if set(value) != {spec.input.name}:
            raise InvalidInput(f"{what} names inputs {sorted(value)}; model {spec.name!r} takes {spec.input.name!r}")
        return value[spec.input.name]
    return value


def parse_predict(payload: Any, spec: ModelSpec) -> tuple[str, np.ndarray]:
    """("instances" or "inputs", the validated batch)."""
    if not isinstance(payload, dict) or ("instances" in payload) == ("inputs" in payload):
        raise InvalidInput('the body must be a JSON object with either "instances" (rows) or "inputs" (columns)')
    if "instances" in payload:
        rows = payload["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInput('"instances" must be a non-empty list, one entry per input row')
        array = _numbers([_unwrap(row, spec, "an instance") for row in rows], '"instances"')
        return "instances", _batch(array, spec)
    array = _numbers(_unwrap(payload["inputs"], spec, '"inputs"'), '"inputs"')
    return "inputs", _batch(array, spec)


def _batch(array: np.ndarray, spec: ModelSpec) -> np.ndarray:
    return batch_from_values("FP32", list(array.shape), array.ravel().tolist(), spec)


def tfserving_router(service: GatewayService, *, mtls: bool, max_body_bytes: int) -> APIRouter:
    router = APIRouter(prefix=TFSERVING_PREFIX)

    @router.get("/{model}")
    @router.get("/{model}/versions/{version}")
    @router.get("/{model}/labels/{label}")
    async def version_status(request: Request, model: str, version: str | None = None, label: str | None = None):
        caller_identity(request, mtls)
        _, route = resolve(service, model, version, label, None)
        chosen = route.version
        versions = [chosen] if version or label else service.loaded_versions(model)
        return {
            "model_version_status": [
                {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in versions
            ]
        }

    @router.post("/{model}:predict")
    @router.post("/{model}/versions/{version}:predict")
    @router.post("/{model}/labels/{label}:predict")
    async def predict(
        request: Request, model: str, version: str | None = None, label: str | None = None
    ) -> JSONResponse:
        with service.observe("tfserving-http", model, version, http_code) as observed:
            identity = caller_identity(request, mtls)
            body = await read_body(request, max_body_bytes)
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InvalidInput(f"the predict request is not valid JSON: {exc}") from None
            signature = payload.get("signature_name") if isinstance(payload, dict) else None
            routing_key = request.headers.get(ROUTING_KEY_HEADER)
            spec, route = resolve(service, model, version, label, signature, identity, routing_key)
            layout, batch = parse_predict(payload, spec)
            probabilities = await service.classify_rows(
                spec.name, route.version, batch, identity, new_request_id(), None, route=route
            )
            observed.done("200", route.version)
        rows = probabilities.tolist()
        return JSONResponse(
            {"predictions": rows} if layout == "instances" else {"outputs": rows}, headers=version_headers(route)
        )

    return router
