"""What TensorFlow Serving's gRPC and REST surfaces share: model spec resolution, signatures, version status."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.errors import NotFound
from gateway.core.types import Identity, Route
from gateway.dataplane import DataPlane
from gateway.models.repository import ModelSpec
from gateway.models.repository_service import LOADING, READY, RepositoryService, VersionState

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


@dataclass(frozen=True)
class VersionStatus:
    """One version as TF Serving's GetModelStatus (and its REST form) reports it."""

    version: str
    state: str
    """AVAILABLE (serving), LOADING, or END (not serving: unloaded, not selected, or failed to load)."""
    error_code: str
    """OK, or UNAVAILABLE when the version failed to load."""
    error_message: str


def _tf_status(state: VersionState) -> VersionStatus:
    if state.state == READY:
        return VersionStatus(state.version, "AVAILABLE", "OK", "")
    if state.state == LOADING:
        return VersionStatus(state.version, "LOADING", "OK", "")
    failed = state.reason.startswith("failed")
    return VersionStatus(state.version, "END", "UNAVAILABLE" if failed else "OK", state.reason)


def version_statuses(
    plane: DataPlane, repository: RepositoryService, model: str, version: str | None, label: str | None
) -> list[VersionStatus]:
    """Every version of ``model`` (failed and unloaded ones included), or the one a version or label names;
    NotFound for an unknown model, version or label."""
    if label:
        version = metadata_route(plane, model, None, label)[1].version
    states = repository.versions(model)
    if version:
        states = [state for state in states if state.version == version]
        if not states:
            raise NotFound(f"model {model!r} has no version {version!r} in its repository directory")
    return [_tf_status(state) for state in states]
