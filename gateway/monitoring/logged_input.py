"""The model input a prediction record keeps, so that the log can become training data.

A record keeps its prepared input row (what the model ran on: after decoding and
preprocessing for a photo, as sent for a tensor) when it has at most
``predictions.input_max_values`` values: mnist's 1 x 28 x 28 (784) by default, not hot dog's
3 x 224 x 224 (its sampled photo stands in). It is stored under MODEL_INPUT_KEY as float16
(the inputs are in [0, 1]: float16 keeps them to 3-4 significant digits, far finer than the
8-bit pixels they came from), base64 in the record's JSON, so the disk spool keeps it too:
about 2.1 KB per mnist record.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

MODEL_INPUT_KEY = "model_input"
STORED_DTYPE = "float16"


def encode_input(row: np.ndarray) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}``: the row as little-endian float16, base64."""
    values = np.ascontiguousarray(row, dtype="<f2")
    return {"dtype": STORED_DTYPE, "shape": list(row.shape), "data": base64.b64encode(values.tobytes()).decode()}


def decode_input(stored: dict[str, Any]) -> np.ndarray:
    """The row back as float32 in its shape; ValueError if the stored form is not one encode_input wrote."""
    if stored.get("dtype") != STORED_DTYPE:
        raise ValueError(f"a logged model input has dtype {stored.get('dtype')!r}, expected {STORED_DTYPE}")
    values = np.frombuffer(base64.b64decode(stored["data"]), dtype="<f2")
    return values.astype(np.float32).reshape(stored["shape"])
