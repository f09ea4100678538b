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


@dataclass(frozen=True)
class Route:
    """The model version that answers a request, and the rollout arm that chose it."""

    version: str
    arm: str
    """stable | canary | shadow (pinned by label) | pinned (the request named a version)."""


@dataclass
class ClassifyRequest:
    """One item to classify, whatever protocol it arrived on: a photo, or an already-preprocessed row."""

    model: str
    image: bytes
    identity: Identity
    tensor: np.ndarray | None = None
    """A preprocessed input row (KServe, TF Serving); when set, ``image`` is ignored."""
    version: str | None = None
    label: str | None = None
    """A rollout label to pin (stable, canary, shadow); ``version`` wins when both are set."""
    routing_key: str | None = None
    """Sticky routing key (``x-routing-key``); None: the caller's identity."""
    route: Route | None = None
    """Already chosen by the edge (KServe, TF Serving answer with the version before running)."""
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
    arm: str = "stable"
    """The rollout arm that chose the version (stable, canary, shadow, pinned)."""


@dataclass(frozen=True)
class PreparedInput:
    """A decoded, preprocessed photo: exactly one model input row, ready to batch."""

    tensor: np.ndarray
    source_width: int
    """Width of the photo as uploaded (upright), before any draft decoding or resizing."""
    source_height: int
