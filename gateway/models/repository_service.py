"""The model repository as Triton's and TF Serving's control calls see it: index, load, unload, statistics.

Every edge (KServe gRPC and HTTP, TF Serving gRPC and REST) makes one call here. The index lists
every version directory of every model with its state and why it is not serving; loading and
unloading go through the rollout's explicit load and unload (operators only, audited, followed by
every replica); statistics are the ones the gateway measures itself (``monitoring.statistics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import InvalidInput
from gateway.core.types import Identity
from gateway.models.registry import LoadedModel, ModelRegistry
from gateway.monitoring.statistics import InferenceStatistics
from gateway.rollout.manager import RolloutManager

READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
VERSION_PARAMETER = "version"
IGNORED_PARAMETERS = frozenset({"unload_dependents"})
"""Triton's unload parameter: a classifier has no dependents."""


@dataclass(frozen=True)
class VersionState:
    """One version directory of a model: READY (serving), LOADING, or UNAVAILABLE with the reason."""

    model: str
    version: str
    state: str
    reason: str = ""


class RepositoryService:
    def __init__(self, registry: ModelRegistry, rollout: RolloutManager, statistics: InferenceStatistics) -> None:
        self._registry = registry
        self._rollout = rollout
        self._statistics = statistics

    def index(self, *, ready_only: bool = False) -> list[VersionState]:
        """Every version of every model (failed and unloaded ones included, unless ``ready_only``)."""
        states = [state for name in self._registry.names() for state in self.versions(name)]
        return [state for state in states if state.state == READY or not ready_only]

    def versions(self, name: str) -> list[VersionState]:
        """The versions of one model, by number: on disk, loaded, loading or refused (NotFound: no such model)."""
        model = self._registry.model(name)
        return [_state(model, self._rollout.policy(name).unload, v) for v in _version_names(model)]

    def statistics(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """Triton's ``model_stats``: every loaded version (of ``name``; only ``version``), NotFound otherwise."""
        if not name:
            if version:
                raise InvalidInput("statistics of a version need the model's name")
            return self._statistics.to_triton(
                (model, v) for model in self._registry.names() for v in self._registry.loaded_versions(model)
            )
        versions = [self._registry.model(name).version(version).version] if version else None
        return self._statistics.to_triton((name, v) for v in versions or self._registry.loaded_versions(name))

    async def load(self, name: str, parameters: Mapping[str, Any], identity: Identity) -> None:
        """Triton's model load: ``version`` loads that version (whatever the version_policy); without it, every
        version an operator unloaded comes back and the model is synced with its directory."""
        version = self._admit(name, parameters, identity, refuse=("config",))
        if version is not None:
            await self._registry.load_version(name, version, identity)
            return
        for unloaded in self._rollout.policy(name).unload:
            await self._registry.load_version(name, unloaded, identity)
        await self._registry.sync_versions(name)

    async def unload(self, name: str, parameters: Mapping[str, Any], identity: Identity) -> None:
        """Triton's model unload, one version at a time (``version``): the gateway never stops serving a model."""
        version = self._admit(name, parameters, identity, refuse=())
        if version is None:
            routed = ", ".join(sorted(self._rollout.needed_versions(name), key=int))
            raise InvalidInput(
                f"model {name!r} keeps serving: the rollout routes to version {routed}; unload one version "
                f'with the parameter {{"{VERSION_PARAMETER}": "N"}}, or change the rollout first'
            )
        await self._registry.unload_version(name, version, identity)

    def _admit(
        self, name: str, parameters: Mapping[str, Any], identity: Identity, refuse: tuple[str, ...]
    ) -> str | None:
        """The operator check first (an app learns nothing more), then the model, then the parameters."""
        self._rollout.require_operator(identity, name)
        self._registry.model(name)
        for key in parameters:
            if key in refuse or key.startswith("file:"):
                raise InvalidInput(
                    f"parameter {key!r} is not accepted: configuration and files come from the model repository "
                    "(config.pbtxt and the version directories)"
                )
            if key not in IGNORED_PARAMETERS and key != VERSION_PARAMETER:
                raise InvalidInput(f"unknown parameter {key!r}; the gateway takes {VERSION_PARAMETER!r}")
        version = parameters.get(VERSION_PARAMETER)
        if version is None:
            return None
        if isinstance(version, bool) or not str(version).isdigit():
            raise InvalidInput(f"parameter {VERSION_PARAMETER!r} must be a version number, got {version!r}")
        return str(int(version))


def _version_names(model: LoadedModel) -> list[str]:
    spec = model.spec
    on_disk = {child.name for child in spec.directory.iterdir() if child.name.isdigit()}
    on_disk = {version for version in on_disk if spec.model_file(version).is_file()}
    return sorted(on_disk | set(model.versions) | set(model.failed) | model.loading, key=int)


def _state(model: LoadedModel, unloaded: tuple[str, ...], version: str) -> VersionState:
    name = model.spec.name
    if version in model.versions:
        return VersionState(name, version, READY)
    if version in model.loading:
        return VersionState(name, version, LOADING)
    if version in model.failed:
        return VersionState(name, version, UNAVAILABLE, f"failed to load: {model.failed[version][1]}")
    if version in unloaded:
        return VersionState(name, version, UNAVAILABLE, "unloaded by an operator")
    return VersionState(name, version, UNAVAILABLE, "not selected by the model's version_policy")
