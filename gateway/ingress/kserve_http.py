"""KServe v2 / Open Inference Protocol over HTTP, with Triton's binary tensor data extension.

``/v2/health/{live,ready}``, ``/v2`` (server metadata), ``/v2/models/{m}[/versions/{v}]``
(metadata), ``.../ready``, ``.../config`` and ``.../infer``. An infer body is JSON, or
JSON followed by raw tensor bytes when the ``Inference-Header-Content-Length`` header
gives the JSON's length; outputs come back as JSON ``data`` or, when asked for with
``binary_data``, as raw bytes after the JSON header.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format

import gateway
from gateway.core.errors import InvalidInput, NotFound
from gateway.core.types import new_request_id
from gateway.ingress.http_common import (
    KSERVE_PREFIX,
    ROUTING_KEY_HEADER,
    caller_identity,
    http_code,
    read_body,
    version_headers,
)
from gateway.ingress.kserve_grpc import EXTENSIONS, SERVER_NAME
from gateway.preprocess.tensors import batch_from_raw, batch_from_values, kserve_datatype
from gateway.routing.repository import ModelSpec
from gateway.service import GatewayService

HEADER_LENGTH = "inference-header-content-length"


def _json_body(data: bytes) -> dict:
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput("the inference request must be a JSON object with an 'inputs' list")
    return payload


def _flat_numbers(data: Any, name: str) -> list[float]:
    try:
        return np.asarray(data, dtype=np.float64).ravel().tolist()
    except (TypeError, ValueError):
        raise InvalidInput(f"input {name!r}: 'data' must be a (nested) list of numbers of one shape") from None


def parse_infer_request(body: bytes, header_length: str | None, spec: ModelSpec) -> tuple[dict, np.ndarray]:
    """(the JSON part, the validated input batch) of an infer request."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body"
            )
        split = int(header_length)
        payload, binary = _json_body(body[:split]), body[split:]
    else:
        payload, binary = _json_body(body), b""
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"'inputs' must list exactly one tensor, {spec.input.name!r}")
    tensor = inputs[0]
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if name != spec.input.name:
        raise InvalidInput(f"unknown input {name!r}; model {spec.name!r} takes {spec.input.name!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape) or not isinstance(datatype, str):
        raise InvalidInput(f"input {name!r} needs an integer list 'shape' and a string 'datatype'")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise InvalidInput(f"input {name!r} declares binary_data_size {size!r}; the body carries {len(binary)}")
        return payload, batch_from_raw(datatype, shape, binary, spec)
    if binary:
        raise InvalidInput("binary data follows the JSON header, but no input declares binary_data_size")
    if "data" not in tensor:
        raise InvalidInput(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    return payload, batch_from_values(datatype, shape, _flat_numbers(tensor["data"], name), spec)


def _wants_binary(payload: dict, spec: ModelSpec) -> bool:
    default = bool((payload.get("parameters") or {}).get("binary_data_output", False))
    outputs = payload.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name != spec.output.name:
            raise InvalidInput(f"unknown output {name!r}; model {spec.name!r} has {spec.output.name!r}")
        return bool((output.get("parameters") or {}).get("binary_data", default))
    return default


def infer_response(payload: dict, spec: ModelSpec, version: str, probabilities: np.ndarray) -> Response:
    output: dict[str, Any] = {
        "name": spec.output.name,
        "datatype": kserve_datatype(spec),
        "shape": list(probabilities.shape),
    }
    answer: dict[str, Any] = {"model_name": spec.name, "model_version": version, "outputs": [output]}
    if "id" in payload:
        answer["id"] = payload["id"]
    if not _wants_binary(payload, spec):
        output["data"] = probabilities.ravel().tolist()
        return JSONResponse(answer)
    raw = probabilities.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(answer).encode()
    return Response(header + raw, media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})


def _tensor_metadata(name: str, dims: tuple[int, ...]) -> dict:
    return {"name": name, "datatype": "FP32", "shape": [-1, *dims]}


def kserve_router(service: GatewayService, *, mtls: bool, max_body_bytes: int) -> APIRouter:
    router = APIRouter(prefix=KSERVE_PREFIX)

    def model_and_version(request: Request, model: str, version: str | None) -> tuple[ModelSpec, str]:
        caller_identity(request, mtls)
        return service.spec(model), service.resolve_version(model, version)

    @router.get("/health/live")
    async def live(request: Request) -> dict:
        caller_identity(request, mtls)
        return {}

    @router.get("/health/ready")
    async def ready(request: Request) -> Response:
        caller_identity(request, mtls)
        return Response(status_code=200 if service.ready else 400)

    @router.get("")
    async def server_metadata(request: Request) -> dict:
        caller_identity(request, mtls)
        return {"name": SERVER_NAME, "version": gateway.__version__, "extensions": list(EXTENSIONS)}

    @router.get("/models/{model}")
    @router.get("/models/{model}/versions/{version}")
    async def model_metadata(request: Request, model: str, version: str | None = None) -> dict:
        spec, _ = model_and_version(request, model, version)
        return {
            "name": spec.name,
            "versions": service.loaded_versions(spec.name),
            "platform": spec.platform,
            "inputs": [_tensor_metadata(spec.input.name, spec.input.dims)],
            "outputs": [_tensor_metadata(spec.output.name, spec.output.dims)],
        }

    @router.get("/models/{model}/ready")
    @router.get("/models/{model}/versions/{version}/ready")
    async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
        try:
            model_and_version(request, model, version)
        except NotFound:
            return Response(status_code=400)
        return Response(status_code=200)

    @router.get("/models/{model}/config")
    @router.get("/models/{model}/versions/{version}/config")
    async def model_config(request: Request, model: str, version: str | None = None) -> dict:
        spec, _ = model_and_version(request, model, version)
        return json_format.MessageToDict(spec.config, preserving_proto_field_name=True)

    @router.post("/models/{model}/infer")
    @router.post("/models/{model}/versions/{version}/infer")
    async def infer(request: Request, model: str, version: str | None = None) -> Response:
        with service.observe("kserve-http", model, version, http_code) as observed:
            identity = caller_identity(request, mtls)
            spec = service.spec(model)
            route = service.route(model, version, None, identity, request.headers.get(ROUTING_KEY_HEADER))
            chosen = route.version
            body = await read_body(request, max_body_bytes)
            payload, batch = parse_infer_request(body, request.headers.get(HEADER_LENGTH), spec)
            request_id = str(payload.get("id") or new_request_id())
            probabilities = await service.classify_rows(
                spec.name, chosen, batch, identity, request_id, None, route=route
            )
            response = infer_response(payload, spec, chosen, probabilities)
            response.headers.update(version_headers(route))
            observed.done("200", chosen)
        return response

    return router
