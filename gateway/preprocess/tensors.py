"""Validate already-preprocessed tensors (KServe, TF Serving) against a model's input spec.

Protocol adapters decode their wire format into (datatype name, shape, raw bytes or a
flat list of numbers); this module checks them against config.pbtxt and returns the
batch [N, *dims] as the model's dtype, or raises InvalidInput saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.core.errors import InvalidInput
from gateway.routing.repository import ModelSpec

KSERVE_DATATYPES = {"float32": "FP32"}
"""numpy dtype name -> KServe v2 datatype name, for the input types models here declare."""


def _check_shape(shape: Sequence[int], spec: ModelSpec) -> int:
    expected = [-1, *spec.input.dims]
    if len(shape) != len(expected) or tuple(shape[1:]) != spec.input.dims:
        raise InvalidInput(
            f"input {spec.input.name!r} has shape {list(shape)}; model {spec.name!r} expects {expected} "
            f"(a batch of {'x'.join(map(str, spec.input.dims))} items)"
        )
    rows = int(shape[0])
    if not 1 <= rows <= spec.max_batch_size:
        raise InvalidInput(f"batch of {rows} rows; model {spec.name!r} accepts 1 to {spec.max_batch_size}")
    return rows


def kserve_datatype(spec: ModelSpec) -> str:
    return KSERVE_DATATYPES[spec.input.dtype]


def _check_datatype(datatype: str, spec: ModelSpec) -> None:
    expected = kserve_datatype(spec)
    if datatype != expected:
        raise InvalidInput(f"input {spec.input.name!r} has datatype {datatype}; model {spec.name!r} expects {expected}")


def batch_from_raw(datatype: str, shape: Sequence[int], raw: bytes, spec: ModelSpec) -> np.ndarray:
    """A batch from little-endian raw bytes (KServe raw_input_contents / binary tensor data)."""
    expected_type = kserve_datatype(spec)
    if datatype != expected_type:
        raise InvalidInput(
            f"input {spec.input.name!r} has datatype {datatype}; model {spec.name!r} expects {expected_type}"
        )
    rows = _check_shape(shape, spec)
    dtype = np.dtype(spec.input.dtype).newbyteorder("<")
    expected_bytes = rows * int(np.prod(spec.input.dims)) * dtype.itemsize
    if len(raw) != expected_bytes:
        raise InvalidInput(
            f"input {spec.input.name!r} carries {len(raw)} bytes; "
            f"shape {list(shape)} of {datatype} needs {expected_bytes}"
        )
    batch = np.frombuffer(raw, dtype=dtype).astype(spec.input.dtype)
    _check_finite(batch, spec)
    return batch.reshape(rows, *spec.input.dims)


def batch_from_values(datatype: str, shape: Sequence[int], values: Sequence[float], spec: ModelSpec) -> np.ndarray:
    """A batch from a flat list of numbers (KServe JSON ``data``, typed protobuf contents)."""
    expected_type = kserve_datatype(spec)
    if datatype != expected_type:
        raise InvalidInput(
            f"input {spec.input.name!r} has datatype {datatype}; model {spec.name!r} expects {expected_type}"
        )
    rows = _check_shape(shape, spec)
    expected = rows * int(np.prod(spec.input.dims))
    if len(values) != expected:
        raise InvalidInput(f"input {spec.input.name!r} has {len(values)} values; shape {list(shape)} needs {expected}")
    try:
        batch = np.asarray(values, dtype=spec.input.dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input {spec.input.name!r} holds values that are not numbers: {exc}") from None
    _check_finite(batch, spec)
    return batch.reshape(rows, *spec.input.dims)


def _check_finite(batch: np.ndarray, spec: ModelSpec) -> None:
    """NaN or infinity in, NaN out: refused here, before it reaches a batch (and a JSON answer)."""
    if not np.isfinite(batch).all():
        raise InvalidInput(f"input {spec.input.name!r} holds NaN or infinite values")
