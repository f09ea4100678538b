"""The one internal request type and its answer. Ingress adapters convert to and from these."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Identity:
    """Who is calling, as proven by the client certificate."""

    name: str
    role: str

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


@dataclass
class ClassifyRequest:
    """One item to classify, whatever protocol it arrived on: a photo, or an already-preprocessed row."""

    model: str
    image: bytes
    identity: Identity
    tensor: np.ndarray | None = None
    """A preprocessed input row (KServe, TF Serving); when set, ``image`` is ignored."""
    version: str | None = None
    timeout_s: float | None = None
    """The caller's deadline, relative to ``received_at``; None means the model's default."""
    priority: int | None = None
    """Batching priority level (1 is the highest); None means the model's default."""
    request_id: str = field(default_factory=new_request_id)
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Prediction:
    """The answer to one ClassifyRequest."""

    request_id: str
    model: str
    version: str
    label: str
    probabilities: dict[str, float]
    latency_ms: float


@dataclass(frozen=True)
class PreparedInput:
    """A decoded, preprocessed photo: exactly one model input row, ready to batch."""

    tensor: np.ndarray
    source_width: int
    """Width of the photo as uploaded (upright), before any draft decoding or resizing."""
    source_height: int
