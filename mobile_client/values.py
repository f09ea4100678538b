"""The values the client hands back: model metadata, a prepared upload, a prediction."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelInfo:
    """What the client needs to know about a model to prepare photos for it (read once per model)."""

    name: str
    preprocessing: str
    channels: int
    height: int
    width: int
    labels: tuple[str, ...] = ()

    @classmethod
    def from_rest(cls, body: dict) -> ModelInfo:
        """From ``GET /api/v1/models/{model}``: inputs[0].shape is [-1, C, H, W]."""
        _, channels, height, width = body["inputs"][0]["shape"]
        return cls(body["name"], body.get("preprocessing", ""), channels, height, width, tuple(body.get("labels", ())))


@dataclass(frozen=True)
class Upload:
    """The bytes that go over the network for one photo, and what they came from."""

    body: bytes
    content_type: str
    original_bytes: int
    size: tuple[int, int]
    """(width, height) of the uploaded picture, upright."""
    prepare_ms: float = 0.0

    @property
    def saved_bytes(self) -> int:
        return self.original_bytes - len(self.body)


@dataclass(frozen=True)
class Prediction:
    """One answer: the label, its probability, every class's probability, and how the call went."""

    model: str
    version: str
    label: str
    probabilities: dict[str, float]
    request_id: str
    latency_ms: float
    """The gateway's own latency for the request."""
    attempts: int = 1
    upload_bytes: int = 0
    replayed: bool = False
    """The gateway answered a retry from its memory of the first attempt (same request id, logged once)."""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def confidence(self) -> float:
        return self.probabilities.get(self.label, 0.0)
