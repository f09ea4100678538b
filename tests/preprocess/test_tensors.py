import numpy as np
import pytest

from gateway.core.errors import InvalidInput
from gateway.models.repository import load_repository
from gateway.preprocess.tensors import batch_from_raw, batch_from_values
from tests.conftest import MODEL_REPO

SPEC = load_repository(MODEL_REPO)["mnist"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raw_tensors_are_refused(bad: float) -> None:
    """Binary tensors (KServe raw contents, TF tensor_content) used to pass NaN through to the model."""
    batch = np.zeros((2, 1, 28, 28), np.float32)
    batch[1, 0, 3, 4] = bad
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        batch_from_raw("FP32", [2, 1, 28, 28], batch.astype("<f4").tobytes(), SPEC)


def test_non_finite_values_are_refused() -> None:
    values = [0.0] * 784
    values[5] = float("nan")
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        batch_from_values("FP32", [1, 1, 28, 28], values, SPEC)


def test_a_finite_raw_tensor_round_trips() -> None:
    batch = np.random.default_rng(0).random((3, 1, 28, 28), np.float32)
    np.testing.assert_array_equal(batch_from_raw("FP32", [3, 1, 28, 28], batch.tobytes(), SPEC), batch)
