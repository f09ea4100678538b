"""Validate already-preprocessed tensors (KServe, TF Serving) against a model's input spec.

Protocol adapters decode their wire format into (datatype name, shape, raw bytes or a
flat list of numbers); this module checks them against config.pbtxt and returns the
batch [N, *dims] as the model's dtype, or raises InvalidInput saying what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from gateway.core.errors import InvalidInput, PayloadTooLarge
from gateway.core.limits import DEFAULT_LIMITS
from gateway.models.repository import ModelSpec
from gateway.models.tensors import kserve_datatype


def check_input_names(names: Sequence[str], spec: ModelSpec) -> None:
    """Every surface's one check of a request's inputs: exactly one tensor, named as config.pbtxt says."""
    if len(names) != 1:
        raise InvalidInput(
            f"model {spec.name!r} takes exactly one tensor, input {spec.input.name!r}; the request has {len(names)}"
        )
    if names[0] != spec.input.name:
        raise InvalidInput(f"unknown input {names[0]!r}; model {spec.name!r} takes {spec.input.name!r}")


def check_output_names(names: Iterable[object], spec: ModelSpec) -> None:
    """Every surface's one check of the outputs a request asks for: only the model's one output."""
    for name in names:
        if name != spec.output.name:
            raise InvalidInput(f"unknown output {name!r}; model {spec.name!r} has {spec.output.name!r}")


MAX_TENSOR_ELEMENTS = DEFAULT_LIMITS.max_tensor_elements


def check_elements(shape: Sequence[int], spec: ModelSpec, max_elements: int) -> None:
    """Refuse a declared shape of more elements than ``limits.max_tensor_elements`` before anything is read."""
    elements = math.prod(abs(int(d)) for d in shape)
    if elements > max_elements:
        raise PayloadTooLarge(
            f"input {spec.input.name!r} declares shape {list(shape)}, {elements:,} elements; the limit is "
            f"{max_elements:,} (limits.max_tensor_elements)"
        )


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


def _check_datatype(datatype: str, spec: ModelSpec) -> None:
    expected = kserve_datatype(spec.input)
    if datatype != expected:
        raise InvalidInput(f"input {spec.input.name!r} has datatype {datatype}; model {spec.name!r} expects {expected}")


def batch_from_raw(
    datatype: str, shape: Sequence[int], raw: bytes, spec: ModelSpec, *, max_elements: int = MAX_TENSOR_ELEMENTS
) -> np.ndarray:
    """A batch from little-endian raw bytes (KServe raw_input_contents / binary tensor data)."""
    check_elements(shape, spec, max_elements)
    _check_datatype(datatype, spec)
    rows = _check_shape(shape, spec)
    dtype = np.dtype(spec.input.dtype).newbyteorder("<")
    expected_bytes = rows * math.prod(spec.input.dims) * dtype.itemsize
    if len(raw) != expected_bytes:
        raise InvalidInput(
            f"input {spec.input.name!r} carries {len(raw)} bytes; "
            f"shape {list(shape)} of {datatype} needs {expected_bytes}"
        )
    # a read-only view of the request's bytes where the byte order is the machine's (the batcher copies each row
    # into its batch): no copy of the tensor on the request path
    batch = np.frombuffer(raw, dtype=dtype).astype(spec.input.dtype, copy=False)
    _check_finite(batch, spec)
    return batch.reshape(rows, *spec.input.dims)


def batch_from_values(
    datatype: str,
    shape: Sequence[int],
    values: Sequence[float],
    spec: ModelSpec,
    *,
    max_elements: int = MAX_TENSOR_ELEMENTS,
) -> np.ndarray:
    """A batch from a flat list of numbers (KServe JSON ``data``, typed protobuf contents)."""
    check_elements(shape, spec, max_elements)
    _check_datatype(datatype, spec)
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
