"""What TensorFlow Serving's gRPC and REST surfaces share: model spec resolution and signatures."""

from __future__ import annotations

from gateway.core.errors import NotFound
from gateway.routing.repository import ModelSpec
from gateway.service import GatewayService

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
STABLE_LABEL = "stable"
"""TF Serving version labels map to rollout labels; until a rollout policy exists, "stable" is the default version."""


def resolve(
    service: GatewayService, model: str, version: str | None, label: str | None, signature: str | None
) -> tuple[ModelSpec, str]:
    """The model and the version a TF Serving request addresses, or NotFound naming what exists."""
    spec = service.spec(model)
    if signature not in (None, "", DEFAULT_SIGNATURE):
        raise NotFound(f"model {model!r} has no signature {signature!r}; it has {DEFAULT_SIGNATURE!r}")
    if label:
        if label != STABLE_LABEL:
            raise NotFound(f"model {model!r} has no version labelled {label!r}; labels: {STABLE_LABEL!r}")
        return spec, service.resolve_version(model, None)
    return spec, service.resolve_version(model, version)
