"""One answered prediction as the prediction log keeps it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.monitoring.photos import PHOTO_KEY
from gateway.monitoring.stores import INPUT_KEY


@dataclass(slots=True)
class PredictionRecord:
    """What is logged for one answered item. ``row`` becomes summary features in the log's writer (off the
    request path); ``photo`` (a sampled upload, by reference) goes to ``photos:{model}``."""

    request_id: str
    client: str
    model: str
    version: str
    arm: str
    preprocessing: str
    label: str
    top_probability: float
    probabilities: list[float]
    latency_ms: float
    batch_size: int
    row: np.ndarray
    source_size: tuple[int, int] | None = None
    """(width, height) of the uploaded photo; None for a tensor."""
    photo: bytes | None = None
    time: float = field(default_factory=time.time)

    def as_log_entry(self) -> dict[str, Any]:
        """The record in the log's format (a JSON object per stream entry)."""
        entry: dict[str, Any] = {
            "time": self.time,
            "request_id": self.request_id,
            "client": self.client,
            "model": self.model,
            "version": self.version,
            "arm": self.arm,
            "input": "photo" if self.source_size is not None else "tensor",
            "source_size": list(self.source_size) if self.source_size is not None else None,
            "preprocessing": self.preprocessing,
            "label": self.label,
            "top_probability": self.top_probability,
            "probabilities": self.probabilities,
            "latency_ms": round(self.latency_ms, 3),
            "batch_size": self.batch_size,
            INPUT_KEY: self.row,
        }
        if self.photo is not None:
            entry[PHOTO_KEY] = self.photo
        return entry
