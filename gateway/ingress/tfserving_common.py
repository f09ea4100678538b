"""What TensorFlow Serving's gRPC and REST surfaces share: model spec resolution and signatures."""

from __future__ import annotations

from gateway.core.errors import NotFound
from gateway.core.types import Identity, Route
from gateway.routing.repository import ModelSpec
from gateway.service import GatewayService

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
STABLE_LABEL = "stable"
"""TF Serving version labels are the rollout's labels: stable, canary, shadow."""


def resolve(
    service: GatewayService,
    model: str,
    version: str | None,
    label: str | None,
    signature: str | None,
    identity: Identity | None = None,
    routing_key: str | None = None,
) -> tuple[ModelSpec, Route]:
    """The model and the version a TF Serving request addresses (a predict without version or label is routed
    by the rollout; metadata without either describes stable), or NotFound naming what exists."""
    spec = service.spec(model)
    if signature not in (None, "", DEFAULT_SIGNATURE):
        raise NotFound(f"model {model!r} has no signature {signature!r}; it has {DEFAULT_SIGNATURE!r}")
    if identity is None and not version:
        label = label or STABLE_LABEL
    caller = identity or Identity(name="", role="app")
    return spec, service.route(model, version or None, label or None, caller, routing_key)
