"""JSON answers of the HTTP surfaces: a broken model's NaN or infinity is a 500, never a silent null."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gateway.ingress.http_common import json_response


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("as_array", [True, False])
def test_a_probability_that_is_not_finite_is_refused_as_jsonresponse_refused_it(bad: float, as_array: bool) -> None:
    values = [0.25, bad, 0.75]
    numbers = np.array(values, dtype=np.float32) if as_array else {"a": 0.25, "b": bad}.values()
    with pytest.raises(ValueError, match="not JSON compliant"):
        json_response({"p": [0.25, None]}, {}, numbers)


def test_finite_numbers_are_answered_as_json_with_the_headers() -> None:
    probabilities = np.array([[0.1, 0.9]], dtype=np.float32)
    response = json_response({"p": probabilities.tolist()}, {"x-model-version": "3"}, probabilities)
    assert response.media_type == "application/json"
    assert response.headers["x-model-version"] == "3"
    assert json.loads(response.body) == {"p": probabilities.tolist()}
