"""parse_json reads every body as the standard library's decoder does (the rule), though orjson parses most."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.errors import GatewayError
from gateway.ingress import json_body
from tests.fuzz.strategies import FUZZ


def parsed(body: bytes) -> str:
    """parse_json's value (as canonical text: ints and floats, NaN included, stay apart) or its error message."""
    try:
        value = json_body.parse_json(body, max_bytes=1 << 20, max_depth=64, what="the body", setting="s")
    except GatewayError as exc:
        return f"{type(exc).__name__}: {exc.message}"
    return json.dumps(value)


def by_the_standard_decoder(body: bytes) -> str:
    try:
        value = json_body._DECODER.decode(body.decode("utf-8"))
    except GatewayError as exc:
        return f"{type(exc).__name__}: {exc.message}"
    except ValueError as exc:
        return f"InvalidInput: the body is not valid JSON: {exc}"
    return json.dumps(value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [{"name": "image", "shape": [1, 2], "data": [0.5, 1]}]}',
        b'{"a": 1, "a": 2}',
        b'{"outer": {"b": 1, "b": 2}}',
        b'{"a\\"b": 1, "a\\"b": 2}',
        b'{"k": "x\\": 1", "k2": 2}',
        b"[123456789012345678901234567890, -9223372036854775809, 9223372036854775807]",
        b"[NaN, Infinity, -Infinity, 1e400]",
        b'{"s": "\\ud800"}',
        b"\xef\xbb\xbf[1]",
        b"[1, 2",
        b"[1] 2",
        b"-0",
        b'{"a" :1, "b"\t:\n2}',
    ],
)
def test_edge_cases_read_as_the_standard_decoder_reads_them(body: bytes) -> None:
    assert parsed(body) == by_the_standard_decoder(body)


keys = st.text(alphabet=st.sampled_from('ab"\\:{}[] \u00e9\U0001f600'), max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.sampled_from('xy"\\:{}[],\n\u00e9'), max_size=8)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=20
)


@FUZZ
@given(value=values, compact=st.booleans(), ascii_only=st.booleans(), duplicate=st.booleans())
def test_any_json_reads_as_the_standard_decoder_reads_it(value, compact: bool, ascii_only: bool, duplicate: bool):
    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps(value, separators=separators, ensure_ascii=ascii_only)
    if duplicate and text.startswith("{") and text != "{}":
        first = text[1:].split(separators[0] + '"', 1)[0].removesuffix("}")
        text = "{" + first + separators[0] + text[1:]  # the first member twice
    body = text.encode()
    assert parsed(body) == by_the_standard_decoder(body)
