"""Hypothesis strategies for hostile inputs, and the one property every decoder must keep.

The property: any input either decodes into a valid batch or raises one of the gateway's own
errors (GatewayError: a 4xx / INVALID_ARGUMENT with a message). Any other exception would be
a 500 / INTERNAL. Each fuzz test runs FUZZ_EXAMPLES inputs (default 150; set the environment
variable higher for a longer campaign, e.g. FUZZ_EXAMPLES=20000).
"""

from __future__ import annotations

import io
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.core.errors import GatewayError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,  # ms per input: a hang or a slow path is a failure too
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    derandomize=os.environ.get("FUZZ_RANDOM") is None,  # CI: the same inputs every run
)


def seed_images() -> list[bytes]:
    """Small valid photos in every accepted format and colour model: the fuzzers' starting points."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    seeds = []
    for fmt, mode in [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("WEBP", "RGB")]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, fmt)
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid photo with bytes flipped, cut, repeated or inserted: what broken uploads look like."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "header"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif action == "duplicate":
            data[position:position] = data[position : position + draw(st.integers(1, 256))]
        else:  # rewrite the first bytes: sizes, chunk lengths and markers live there
            data[: min(len(data), 32)] = draw(st.binary(min_size=0, max_size=32))
    return bytes(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)


def is_gateway_error(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError)


def decodes_or_refuses(decode, *args) -> np.ndarray | None:
    """Run ``decode``; return its batch, None for a GatewayError; any other exception fails the test."""
    try:
        return decode(*args)
    except GatewayError as exc:
        assert str(exc), "a refusal must say why"
        return None


@st.composite
def nested_json(draw: st.DrawFn) -> bytes:
    """JSON nested up to 3,000 deep (arrays, objects, or both), brackets also inside strings, sometimes
    unbalanced or cut: what a depth bomb, and a body that only looks like one, are made of."""
    depth = draw(st.integers(0, 3000))
    openers = draw(st.lists(st.sampled_from(["[", '{"k":', '["[{",']), min_size=1, max_size=4))
    prefix = "".join(openers[i % len(openers)] for i in range(depth))
    closers = {"[": "]", '{"k":': "}", '["[{",': "]"}
    suffix = "".join(closers[openers[i % len(openers)]] for i in reversed(range(depth)))
    leaf = draw(st.sampled_from(["0", '"]]}}"', '"\\"[["', "[]", "{}", "1e999", "9" * 5000]))
    body = (prefix + leaf + suffix).encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=8))
    return body
