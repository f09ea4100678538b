"""What a model version's monitoring is built from: reference items per surface, as the model sees them.

Shared by ``model_repo/training/build_monitoring.py`` (which writes a version's baselines,
thresholds and temperature) and ``gateway bench skew`` (which measures them), so both put
photos through the gateway's own decoding and preprocessing and describe them with the
features the prediction log computes for live records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.core.errors import GatewayError
from gateway.models.repository import ModelSpec
from gateway.monitoring.baseline import compute_baseline
from gateway.monitoring.features import source_features
from gateway.monitoring.null_calibration import calibrate
from gateway.monitoring.stores import FEATURES_BY_PREPARATION, SIZE_FEATURES_FOR
from gateway.preprocess.pipeline import prepare_photo

MAX_PIXELS = 40_000_000


@dataclass
class Reference:
    """Items of one surface as the model receives them: inputs, upload sizes (photos), truth, group."""

    tensors: np.ndarray
    sizes: np.ndarray | None
    truth: np.ndarray
    groups: np.ndarray
    refused: int = 0
    """Photos the gateway's preprocessing refused (the client would get a 400): not in the reference."""
    sources: np.ndarray | None = None
    """The original each item was made from, where several items share one (hot dog: one photo, three uploads)."""

    def save(self, path: Path) -> None:
        """Kept as a cache file (making a photo reference costs minutes of CPU); ``sources`` is not kept."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"tensors": self.tensors, "truth": self.truth, "groups": self.groups, "refused": self.refused}
        np.savez_compressed(path, sizes=self.sizes, **arrays)

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path) as data:
            return cls(data["tensors"], data["sizes"], data["truth"], data["groups"], int(data["refused"]))

    def features(self, preprocessing: str) -> dict[str, np.ndarray]:
        """The features the prediction log computes for these items' records."""
        values = FEATURES_BY_PREPARATION[preprocessing](self.tensors)
        if self.sizes is not None and preprocessing in SIZE_FEATURES_FOR:
            values |= source_features(self.sizes)
        return values


def photo_reference(
    photos: Sequence[bytes],
    truth: Sequence[int],
    groups: Sequence[int],
    spec: ModelSpec,
    sources: Sequence[int] | None = None,
) -> Reference:
    """Photos through the gateway's decoding and preprocessing (refused ones left out and counted)."""
    tensors, sizes, kept = [], [], []
    for index, photo in enumerate(photos):
        try:
            prepared = prepare_photo(photo, spec, max_pixels=MAX_PIXELS)
        except GatewayError:
            continue
        tensors.append(prepared.tensor)
        sizes.append((prepared.source_width, prepared.source_height))
        kept.append(index)
    return Reference(
        np.stack(tensors),
        np.asarray(sizes, np.float64),
        np.asarray(truth)[kept],
        np.asarray(groups)[kept],
        refused=len(photos) - len(kept),
        sources=None if sources is None else np.asarray(sources)[kept],
    )


class OnnxModel:
    """A version's model.onnx run in process, in batches (probabilities out)."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def probabilities(self, tensors: np.ndarray, batch: int = 64) -> np.ndarray:
        parts = [
            self._session.run(None, {self._input: tensors[i : i + batch].astype(np.float32)})[0]
            for i in range(0, len(tensors), batch)
        ]
        return np.concatenate(parts)


def surface_baseline(
    reference: Reference,
    predicted: np.ndarray,
    spec: ModelSpec,
    surface: str,
    source: str,
    *,
    false_alarm_rate: float,
    trials: int,
    seed: int = 0,
) -> dict:
    """The baseline of one surface with its thresholds calibrated on the null."""
    values = reference.features(spec.preprocessing)
    baseline = compute_baseline(values, predicted, list(spec.labels), source, surface)
    baseline["thresholds"] = calibrate(
        baseline,
        values,
        predicted,
        groups=reference.groups,
        clusters=reference.sources,
        false_alarm_rate=false_alarm_rate,
        trials=trials,
        seed=seed,
    )
    return baseline
