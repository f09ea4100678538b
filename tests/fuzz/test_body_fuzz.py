"""Fuzz the request-body decoders: multipart uploads, KServe v2 JSON and binary tensors (HTTP and
gRPC messages), TF Serving REST JSON."""

from __future__ import annotations

import functools
import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from gateway.ingress.json_body import json_depth, parse_json
from gateway.ingress.kserve_grpc import input_batch
from gateway.ingress.kserve_http import parse_infer_request
from gateway.ingress.rest_classify import _image_from_multipart
from gateway.ingress.tfserving_http import parse_predict
from gateway.models.repository import load_repository
from tests.conftest import MODEL_REPO
from tests.fuzz.strategies import FUZZ, decodes_or_refuses, json_values, nested_json

SPEC = load_repository(MODEL_REPO)["mnist"]
ITEM = int(np.prod(SPEC.input.dims))


def assert_valid_batch(batch: np.ndarray | None) -> None:
    if batch is not None:
        assert batch.shape[1:] == SPEC.input.dims and batch.dtype == np.float32
        assert len(batch) >= 1 and np.isfinite(batch).all()


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=0, max_size=70))
    parts = draw(
        st.lists(st.tuples(st.sampled_from(["image", "other", "", 'im"age']), st.binary(max_size=64)), max_size=3)
    )
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n"
            for name, data in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    if draw(st.booleans()):  # damage it
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=16))
    header = draw(
        st.sampled_from(
            [f"multipart/form-data; boundary={boundary}", "multipart/form-data", "multipart/form-data; boundary="]
        )
    )
    return body, header


@FUZZ
@given(case=multipart_bodies())
def test_multipart_yields_the_image_field_or_a_clear_error(case: tuple[bytes, str]) -> None:
    body, content_type = case
    image = decodes_or_refuses(_image_from_multipart, body, content_type, 8)
    assert image is None or isinstance(image, bytes)


@st.composite
def kserve_payloads(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """Mostly-plausible KServe infer requests with lying shapes, types, sizes and binary parts."""
    rows = draw(st.integers(-2, 3))
    shape = draw(st.one_of(st.just([rows, *SPEC.input.dims]), st.lists(st.integers(-3, 30), max_size=5), json_values))
    tensor = {
        "name": draw(st.sampled_from(["image", "images", "", None])),
        "shape": shape,
        "datatype": draw(st.sampled_from(["FP32", "FP64", "INT8", "BYTES", "", None])),
    }
    binary = b""
    if draw(st.booleans()):
        binary = draw(st.binary(max_size=64)) if draw(st.booleans()) else bytes(4 * ITEM * max(rows, 0))
        tensor["parameters"] = {
            "binary_data_size": draw(st.sampled_from([len(binary), len(binary) + 1, -1, "x", None]))
        }
    else:
        tensor["data"] = draw(st.one_of(json_values, st.lists(st.floats(), min_size=ITEM, max_size=ITEM)))
    payload = {"inputs": draw(st.sampled_from([[tensor], [tensor, tensor], tensor, []]))}
    if draw(st.booleans()):
        payload["outputs"] = draw(json_values)
    header = json.dumps(payload).encode()
    length = draw(st.sampled_from([str(len(header)), str(len(header) + 5), "-1", "abc", None]))
    if binary and length is None:
        length = str(len(header))
    return header + binary, length


@FUZZ
@given(case=kserve_payloads() | st.tuples(st.binary(max_size=256), st.sampled_from([None, "0", "7"])))
def test_kserve_http_bodies_decode_or_are_refused(case: tuple[bytes, str | None]) -> None:
    body, header_length = case
    parsed = decodes_or_refuses(parse_infer_request, body, header_length, SPEC)
    if parsed is not None:
        assert_valid_batch(parsed[1])


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@FUZZ
@given(body=nested_json(), max_depth=st.integers(1, 512))
def test_nested_json_parses_within_the_depth_limit_or_is_refused(body: bytes, max_depth: int) -> None:
    """Any nesting is parsed (and then no deeper than the limit, as measured) or refused; never a
    RecursionError; the depth measured before parsing is the depth of what was parsed."""
    parsed = decodes_or_refuses(
        functools.partial(parse_json, max_bytes=1 << 20, max_depth=max_depth, what="x", setting="s"), body
    )
    if parsed is not None:
        assert depth_of(parsed) == json_depth(body) <= max_depth


@FUZZ
@given(body=nested_json(), header_length=st.sampled_from([None, "0", "3"]))
def test_kserve_http_nested_bodies_are_refused_cleanly(body: bytes, header_length: str | None) -> None:
    decodes_or_refuses(parse_infer_request, body, header_length, SPEC)


@FUZZ
@given(
    payload=json_values
    | st.fixed_dictionaries({"instances": json_values})
    | st.fixed_dictionaries({"inputs": json_values})
)
def test_tfserving_rest_bodies_decode_or_are_refused(payload) -> None:
    parsed = decodes_or_refuses(parse_predict, payload, SPEC)
    if parsed is not None:
        assert_valid_batch(parsed[1])


@st.composite
def model_infer_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="mnist")
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["image", "x"])),
            datatype=draw(st.sampled_from(["FP32", "FP16", "INT64", "BYTES", "nonsense"])),
        )
        tensor.shape.extend(draw(st.lists(st.integers(-(2**40), 2**40), max_size=5) | st.just([1, *SPEC.input.dims])))
        if draw(st.booleans()):
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=ITEM + 2)))
    for _ in range(draw(st.integers(0, 2))):
        size = draw(st.sampled_from([4 * ITEM, 4 * ITEM - 1, 0, 7]))
        if size == 4 * ITEM and draw(st.booleans()):  # right size, hostile values: NaN, infinities, extremes
            values = draw(st.lists(st.floats(width=32), min_size=ITEM, max_size=ITEM))
            request.raw_input_contents.append(np.array(values, "<f4").tobytes())
        else:
            request.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
    return request


@FUZZ
@given(request=model_infer_requests())
def test_kserve_grpc_messages_decode_or_are_refused(request: service_pb2.ModelInferRequest) -> None:
    assert_valid_batch(decodes_or_refuses(input_batch, request, SPEC))
