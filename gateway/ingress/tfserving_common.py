"""What TensorFlow Serving's gRPC and REST surfaces share: model spec resolution and signatures."""

from __future__ import annotations

from gateway.core.errors import NotFound
from gateway.core.types import Identity, Route
from gateway.dataplane import DataPlane
from gateway.models.repository import ModelSpec

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
STABLE_LABEL = "stable"
"""TF Serving version labels are the rollout's labels: stable, canary, shadow."""
METADATA_CALLER = Identity(name="", role="app")


def predict_spec(plane: DataPlane, model: str, signature: str | None) -> ModelSpec:
    """The model a predict addresses, with its one signature, or NotFound naming what exists."""
    spec = plane.spec(model)
    if signature not in (None, "", DEFAULT_SIGNATURE):
        raise NotFound(f"model {model!r} has no signature {signature!r}; it has {DEFAULT_SIGNATURE!r}")
    return spec


def metadata_route(plane: DataPlane, model: str, version: str | None, label: str | None) -> tuple[ModelSpec, Route]:
    """The model and the version a metadata or status request addresses (neither version nor label: stable)."""
    spec = predict_spec(plane, model, None)
    label = None if version else (label or STABLE_LABEL)
    return spec, plane.route(model, version or None, label, METADATA_CALLER, None)
