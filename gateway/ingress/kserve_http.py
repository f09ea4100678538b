"""KServe v2 / Open Inference Protocol over HTTP, with Triton's binary tensor data extension.

``/v2/health/{live,ready}``, ``/v2`` (server metadata), ``/v2/models/{m}[/versions/{v}]``
(metadata), ``.../ready``, ``.../config``, ``.../infer`` and ``.../stats`` (also ``/v2/models/stats``:
Triton's statistics extension), ``POST /v2/repository/index`` and ``POST /v2/repository/models/{m}/load``
and ``.../unload`` (Triton's model repository extension; load and unload for operators). An infer body is JSON, or
JSON followed by raw tensor bytes when the ``Inference-Header-Content-Length`` header
gives the JSON's length; outputs come back as JSON ``data`` or, when asked for with
``binary_data``, as raw bytes after the JSON header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from google.protobuf import json_format

import gateway
from gateway.core.errors import InvalidInput, NotFound
from gateway.core.limits import DEFAULT_LIMITS, ParseLimits
from gateway.core.types import Identity, RowsAnswer, RowsRequest, new_request_id
from gateway.dataplane import DataPlane
from gateway.ingress.hot_routes import HotRoute, route_pattern
from gateway.ingress.http_common import (
    KSERVE_PREFIX,
    PLAIN_ERRORS,
    ROUTING_KEY_HEADER,
    caller_identity,
    http_code,
    json_response,
    read_body,
    surface_app,
    version_headers,
)
from gateway.ingress.json_body import parse_json
from gateway.ingress.kserve_grpc import EXTENSIONS, SERVER_NAME
from gateway.models.registry import ModelRegistry
from gateway.models.repository import ModelSpec
from gateway.models.repository_service import RepositoryService
from gateway.models.tensors import kserve_datatype, tensor_metadata
from gateway.preprocess.tensors import (
    batch_from_raw,
    batch_from_values,
    check_elements,
    check_input_names,
    check_output_names,
)

HEADER_LENGTH = "inference-header-content-length"


def _json_body(data: bytes, limits: ParseLimits) -> dict:
    payload = parse_json(
        data,
        max_bytes=limits.json_max_bytes,
        max_depth=limits.json_max_depth,
        what="the inference request",
        setting="limits.json_max_bytes",
    )
    if not isinstance(payload, dict):
        raise InvalidInput("the inference request must be a JSON object with an 'inputs' list")
    return payload


def _flat_numbers(data: Any, name: str) -> list[float]:
    try:
        return np.asarray(data, dtype=np.float64).ravel().tolist()
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"input {name!r}: 'data' must be a (nested) list of numbers of one shape") from None


def parse_infer_request(
    body: bytes, header_length: str | None, spec: ModelSpec, limits: ParseLimits = DEFAULT_LIMITS
) -> tuple[dict, np.ndarray]:
    """(the JSON part, the validated input batch) of an infer request."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body"
            )
        split = int(header_length)
        payload, binary = _json_body(body[:split], limits), body[split:]
    else:
        payload, binary = _json_body(body, limits), b""
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(tensor, dict) for tensor in inputs):
        raise InvalidInput(f"'inputs' must list exactly one tensor, {spec.input.name!r}")
    check_input_names([tensor.get("name") for tensor in inputs], spec)
    tensor = inputs[0]
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape) or not isinstance(datatype, str):
        raise InvalidInput(f"input {name!r} needs an integer list 'shape' and a string 'datatype'")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise InvalidInput(f"input {name!r} declares binary_data_size {size!r}; the body carries {len(binary)}")
        return payload, batch_from_raw(datatype, shape, binary, spec, max_elements=limits.max_tensor_elements)
    if binary:
        raise InvalidInput("binary data follows the JSON header, but no input declares binary_data_size")
    if "data" not in tensor:
        raise InvalidInput(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    check_elements(shape, spec, limits.max_tensor_elements)
    values = _flat_numbers(tensor["data"], name)
    return payload, batch_from_values(datatype, shape, values, spec, max_elements=limits.max_tensor_elements)


def _wants_binary(payload: dict, spec: ModelSpec) -> bool:
    default = bool((payload.get("parameters") or {}).get("binary_data_output", False))
    outputs = payload.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    check_output_names([output.get("name") if isinstance(output, dict) else None for output in outputs], spec)
    for output in outputs:
        return bool((output.get("parameters") or {}).get("binary_data", default))
    return default


async def infer_request(
    request: Request, plane: DataPlane, identity: Identity, model: str, version: str | None, limits: ParseLimits
) -> tuple[ModelSpec, dict, bool, RowsRequest]:
    """(the model, the JSON part, whether the output goes back as binary, the RowsRequest) of an infer call.
    Routed first: an unknown version is refused before the body is read."""
    spec = plane.spec(model)
    route = plane.route(spec.name, version, None, identity, request.headers.get(ROUTING_KEY_HEADER))
    body = await read_body(request, limits.body_max_bytes)
    payload, batch = parse_infer_request(body, request.headers.get(HEADER_LENGTH), spec, limits)
    binary = _wants_binary(payload, spec)
    rows = RowsRequest(
        model=spec.name,
        rows=batch,
        identity=identity,
        route=route,
        request_id=str(payload.get("id") or new_request_id()),
    )
    return spec, payload, binary, rows


def infer_response(payload: dict, binary: bool, spec: ModelSpec, answer: RowsAnswer) -> Response:
    probabilities = answer.probabilities
    output: dict[str, Any] = {
        "name": spec.output.name,
        "datatype": kserve_datatype(spec.output),
        "shape": list(probabilities.shape),
    }
    reply: dict[str, Any] = {"model_name": spec.name, "model_version": answer.route.version, "outputs": [output]}
    if "id" in payload:
        reply["id"] = payload["id"]
    headers = version_headers(answer.route)
    if not binary:
        output["data"] = probabilities.ravel().tolist()
        return json_response(reply, headers, probabilities)
    raw = probabilities.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = orjson.dumps(reply)
    headers[HEADER_LENGTH] = str(len(header))
    return Response(header + raw, media_type="application/octet-stream", headers=headers)


INFER_PATHS = ("/models/{model}/infer", "/models/{model}/versions/{version}/infer")
Infer = Callable[..., Awaitable[Response]]


def infer_handler(plane: DataPlane, mtls: bool, limits: ParseLimits) -> Infer:
    """``infer(request, model, version=None)``: the answer to one infer call, or a GatewayError."""

    async def infer(request: Request, model: str, version: str | None = None) -> Response:
        with plane.meter("kserve-http", model, version, http_code) as meter:
            identity = caller_identity(request, mtls)
            spec, payload, binary, rows = await infer_request(request, plane, identity, model, version, limits)
            answer = await plane.infer(rows)
            meter.done("200", answer.route.version)
        return infer_response(payload, binary, spec, answer)

    return infer


def kserve_hot_routes(plane: DataPlane, *, mtls: bool, limits: ParseLimits) -> list[HotRoute]:
    """The infer routes served in front of FastAPI (gateway/ingress/hot_routes.py), at ``/v2``."""
    infer = infer_handler(plane, mtls, limits)
    return [HotRoute(route_pattern(KSERVE_PREFIX + path), infer, PLAIN_ERRORS) for path in INFER_PATHS]


def kserve_app(
    plane: DataPlane, registry: ModelRegistry, repository: RepositoryService, *, mtls: bool, limits: ParseLimits
) -> FastAPI:
    """The KServe v2 surface, mounted at ``/v2``; its errors are ``{"error": message}``."""
    app = surface_app()
    _add_repository_routes(app, repository, mtls, limits)  # before the metadata routes: /models/stats is not a model
    _add_metadata_routes(app, registry, mtls)
    handler = infer_handler(plane, mtls, limits)

    @app.post(INFER_PATHS[0])
    @app.post(INFER_PATHS[1])
    async def infer(request: Request, model: str, version: str | None = None) -> Response:
        return await handler(request, model, version)

    return app


async def _optional_json(request: Request, what: str, limits: ParseLimits) -> dict:
    """A control call's JSON object body, bounded like the admin API's; an empty body is ``{}``."""
    setting = "limits.admin_max_bytes"
    body = await read_body(request, limits.admin_max_bytes, setting)
    payload = (
        parse_json(
            body,
            max_bytes=limits.admin_max_bytes,
            max_depth=limits.json_max_depth,
            what=f"the {what} request",
            setting=setting,
        )
        if body.strip()
        else {}
    )
    if not isinstance(payload, dict):
        raise InvalidInput(f"the {what} request must be a JSON object")
    return payload


async def _parameters(request: Request, what: str, limits: ParseLimits) -> dict:
    parameters = (await _optional_json(request, what, limits)).get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f'the {what} request\'s "parameters" must be a JSON object')
    return parameters


def _add_repository_routes(app: FastAPI, repository: RepositoryService, mtls: bool, limits: ParseLimits) -> None:
    """Statistics, the repository index (any identity), model load and unload (operators)."""

    @app.get("/models/stats")
    @app.get("/models/{model}/stats")
    @app.get("/models/{model}/versions/{version}/stats")
    async def statistics(request: Request, model: str | None = None, version: str | None = None) -> dict:
        caller_identity(request, mtls)
        return {"model_stats": repository.statistics(model, version)}

    @app.post("/repository/index")
    async def index(request: Request) -> list[dict]:
        caller_identity(request, mtls)
        ready = (await _optional_json(request, "repository index", limits)).get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f'"ready" must be true or false, got {ready!r}')
        entries = repository.index(ready_only=ready)
        return [{"name": e.model, "version": e.version, "state": e.state, "reason": e.reason} for e in entries]

    @app.post("/repository/models/{model}/load")
    async def load(request: Request, model: str) -> dict:
        identity = caller_identity(request, mtls)
        await repository.load(model, await _parameters(request, "load", limits), identity)
        return {}

    @app.post("/repository/models/{model}/unload")
    async def unload(request: Request, model: str) -> dict:
        identity = caller_identity(request, mtls)
        await repository.unload(model, await _parameters(request, "unload", limits), identity)
        return {}


def _add_metadata_routes(app: FastAPI, registry: ModelRegistry, mtls: bool) -> None:
    """Health, server and model metadata, model readiness and config."""

    def addressed(request: Request, model: str, version: str | None) -> ModelSpec:
        """The model a metadata, readiness or config request names (and its version must be loaded)."""
        caller_identity(request, mtls)
        registry.resolve_version(model, version)
        return registry.spec(model)

    @app.get("/health/live")
    async def live(request: Request) -> dict:
        caller_identity(request, mtls)
        return {}

    @app.get("/health/ready")
    async def ready(request: Request) -> Response:
        caller_identity(request, mtls)
        return Response(status_code=200 if registry.ready else 400)

    @app.get("/")
    async def server_metadata(request: Request) -> dict:
        caller_identity(request, mtls)
        return {"name": SERVER_NAME, "version": gateway.__version__, "extensions": list(EXTENSIONS)}

    @app.get("/models/{model}")
    @app.get("/models/{model}/versions/{version}")
    async def model_metadata(request: Request, model: str, version: str | None = None) -> dict:
        spec = addressed(request, model, version)
        return {
            "name": spec.name,
            "versions": registry.loaded_versions(spec.name),
            "platform": spec.platform,
            "inputs": [tensor_metadata(spec.input)],
            "outputs": [tensor_metadata(spec.output)],
        }

    @app.get("/models/{model}/ready")
    @app.get("/models/{model}/versions/{version}/ready")
    async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
        try:
            addressed(request, model, version)
        except NotFound:
            return Response(status_code=400)
        return Response(status_code=200)

    @app.get("/models/{model}/config")
    @app.get("/models/{model}/versions/{version}/config")
    async def model_config(request: Request, model: str, version: str | None = None) -> dict:
        return json_format.MessageToDict(addressed(request, model, version).config, preserving_proto_field_name=True)
