"""The one internal request type and its answer. Ingress adapters convert to and from these."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np


def new_request_id() -> str:
    """128 random bits as 32 hex digits (uuid4().hex's shape). From the process's Mersenne Twister, seeded
    from the OS and reseeded in every forked worker: uuid4 reads os.urandom, a system call per request,
    and these ids need to be unique, not secret."""
    return f"{random.getrandbits(128):032x}"


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


@dataclass(slots=True)
class PhotoRequest:
    """One photo to classify, whatever protocol it arrived on (REST, the gateway's gRPC Classifier)."""

    model: str
    photo: bytes
    """As uploaded (JPEG, PNG or WebP): decoded and preprocessed by the data plane."""
    identity: Identity
    version: str | None = None
    label: str | None = None
    """A rollout label to pin (stable, canary, shadow); ``version`` wins when both are set."""
    routing_key: str | None = None
    """Sticky routing key (``x-routing-key``); None: the caller's identity."""
    timeout_s: float | None = None
    """The caller's deadline, relative to ``received_at``; None means the model's default."""
    priority: int | None = None
    """Batching priority level (1 is the highest); None means the model's default."""
    request_id: str = field(default_factory=new_request_id)
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class RowRequest:
    """One already-preprocessed input row to classify (one item of the model's input shape)."""

    model: str
    row: np.ndarray
    identity: Identity
    version: str | None = None
    label: str | None = None
    routing_key: str | None = None
    timeout_s: float | None = None
    priority: int | None = None
    request_id: str = field(default_factory=new_request_id)
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class RowsRequest:
    """A batch of already-preprocessed rows [N, *dims] (KServe v2, TF Serving): all run on ``route``'s version,
    which the edge chose (``DataPlane.route``) before parsing, so an unknown version is refused first."""

    model: str
    rows: np.ndarray
    identity: Identity
    route: Route
    timeout_s: float | None = None
    request_id: str = field(default_factory=new_request_id)
    """Row ``i`` is logged as ``{request_id}.{i}``."""
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True, slots=True)
class RowsAnswer:
    """The probabilities [N, classes] of a RowsRequest, in row order, and the version that computed them."""

    route: Route
    probabilities: np.ndarray


@dataclass(frozen=True)
class Prediction:
    """The answer to one PhotoRequest or RowRequest."""

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
