"""The model registry: which versions of which models are loaded, kept in line with the repository.

Contract: ``load()`` at start-up loads every model of the repository (a model none of whose
versions loads stops start-up with its reason; a version that fails is left out and reported).
Afterwards ``sync_versions`` (run by the repository scan, by a rollout change, by the admin API)
loads new or replaced version files off the event loop and retires what is no longer selected;
a version the rollout routes to is never retired. Lookups raise NotFound naming what exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from gateway.batching.policy import BatchingPolicy
from gateway.core.errors import InvalidInput, NotFound
from gateway.core.types import Identity
from gateway.models.loader import ModelVersion, VersionLoader, file_state
from gateway.models.repository import ModelSpec, RepositoryError, version_paths
from gateway.monitoring.metrics import GatewayMetrics
from gateway.preprocess.pipeline import preparation_for
from gateway.rollout.manager import RolloutManager
from gateway.rollout.policy import RolloutPolicy
from gateway.rollout.store import ChangeResult

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One model's static spec and its versions loaded now."""

    spec: ModelSpec
    batching: BatchingPolicy
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    failed: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)
    """Versions whose file failed to load: (file state, reason); tried again when the file changes."""
    loading: set[str] = field(default_factory=set)
    """Versions being loaded now (off the event loop)."""
    syncing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def version(self, version: str) -> ModelVersion:
        try:
            return self.versions[version]
        except KeyError:
            raise NotFound(
                f"model {self.spec.name!r} has no loaded version {version!r}; "
                f"loaded: {', '.join(sorted(self.versions, key=int))}"
            ) from None


class ModelRegistry:
    """Loads, syncs, scans and retires model versions; answers which model and version a name means."""

    def __init__(
        self,
        specs: dict[str, ModelSpec],
        loader: VersionLoader,
        rollout: RolloutManager,
        metrics: GatewayMetrics,
        *,
        scan_interval_s: float,
    ) -> None:
        self._specs = specs
        self._loader = loader
        self._rollout = rollout
        self._metrics = metrics
        self._scan_interval_s = scan_interval_s
        self._models: dict[str, LoadedModel] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- start-up --------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load every model in the repository, or raise RepositoryError with the reason."""
        for spec in self._specs.values():
            preparation_for(spec)
            model = LoadedModel(spec, self._loader.batching_policy(spec))
            exclude: set[str] = set()
            while pending := [v for v in self._selected(model, exclude) if v not in model.versions]:
                version = pending[0]
                try:
                    model.versions[version] = self._loader.load(spec, version, model.batching)
                except RepositoryError as exc:
                    self._refuse(model, version, exc)
                    exclude.add(version)
            if not model.versions:
                reasons = "; ".join(reason for _, reason in model.failed.values())
                raise RepositoryError(f"{spec.directory}: no version of model {spec.name!r} loads: {reasons}")
            self._models[spec.name] = model
            wanted = spec.initial_stable
            stable = wanted if wanted in model.versions else max(model.versions, key=int)
            self._rollout.init_model(spec.name, RolloutPolicy(stable=stable))
            batching = model.batching
            log.info(
                "loaded model %s versions %s (max batch %d, delay %.0f us, %d instance(s))",
                spec.name,
                ", ".join(sorted(model.versions, key=int)),
                batching.max_batch_size,
                batching.max_queue_delay_s * 1e6,
                batching.instances,
            )

    @staticmethod
    def _selected(model: LoadedModel, exclude: set[str], include: frozenset[str] = frozenset()) -> list[str]:
        spec = model.spec
        return list(version_paths(spec.directory, spec.config, frozenset(exclude), include))

    def _refuse(self, model: LoadedModel, version: str, exc: Exception) -> None:
        reason = str(exc)
        model.failed[version] = (file_state(model.spec.model_file(version)), reason)
        self._metrics.version_loads.labels(model.spec.name, version, "failed").inc()
        log.error("model %s version %s refused (loaded versions keep serving): %s", model.spec.name, version, reason)

    # -- keeping in line with the repository and the rollout -------------------------------------------

    async def sync_versions(self, name: str) -> None:
        """Bring the loaded versions of ``name`` in line with its directory, version_policy and rollout.

        A version whose file fails to load is refused and left out of the selection (so the
        version_policy picks among the versions that work); the version it would have replaced
        keeps serving. Versions the rollout routes to are never unloaded.
        """
        model = self.model(name)
        async with model.syncing:
            policy = self._rollout.policy(name)
            while True:
                exclude = {v for v, (state, _) in model.failed.items() if state == file_state(model.spec.model_file(v))}
                exclude |= set(policy.unload)
                selected = self._selected(model, exclude, frozenset(policy.load))
                for version in [v for v in model.failed if v not in exclude]:
                    del model.failed[version]  # its file changed (or went): judge it again
                pending = [v for v in selected if v not in model.versions or self._replaced(model, v)]
                if not pending:
                    break
                await self._load_into(model, pending[0])
            keep = set(selected) | self._rollout.needed_versions(name)
            for version in [v for v in model.versions if v not in keep]:
                retired = model.versions.pop(version)
                self._metrics.inference.forget(name, version)
                log.info("model %s version %s unloaded", name, version)
                await retired.retire()

    @staticmethod
    def _replaced(model: LoadedModel, version: str) -> bool:
        return model.versions[version].file_state != file_state(model.spec.model_file(version))

    async def _load_into(self, model: LoadedModel, version: str) -> None:
        """Load ``version`` off the event loop and swap it in (retiring the one it replaces), or refuse it."""
        try:
            loaded = await self._load_off_loop(model, version)
        except RepositoryError as exc:
            self._refuse(model, version, exc)
            return
        old = model.versions.get(version)
        model.versions[version] = loaded
        self._metrics.version_loads.labels(model.spec.name, version, "loaded").inc()
        log.info("model %s version %s %s", model.spec.name, version, "reloaded" if old else "loaded")
        if old is not None:
            await old.retire()

    async def _load_off_loop(self, model: LoadedModel, version: str) -> ModelVersion:
        model.loading.add(version)
        try:
            return await asyncio.to_thread(self._loader.load, model.spec, version, model.batching)
        finally:
            model.loading.discard(version)

    def schedule_sync(self, name: str) -> None:
        """Sync ``name`` soon, in the background (the rollout calls this when its loads or unloads change)."""
        if name in self._models:
            self._spawn(self._sync_logged(name), f"sync-{name}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync_logged(self, name: str) -> None:
        try:
            await self.sync_versions(name)
        except (RepositoryError, OSError) as exc:
            log.error("model %s: the repository cannot be read: %s", name, exc)

    async def start(self) -> None:
        """Sync every model once, then re-scan the repository every ``scan_interval_s`` (0: never)."""
        for name in self.names():
            await self._sync_logged(name)
        if self._scan_interval_s > 0:
            self._spawn(self._scan(), "repository-scan")

    async def _scan(self) -> None:
        while True:
            await asyncio.sleep(self._scan_interval_s)
            for name in self.names():
                await self._sync_logged(name)

    # -- the admin API ---------------------------------------------------------------------------------

    async def load_version(self, name: str, version: str, identity: Identity) -> ChangeResult:
        """Load ``version`` whatever the version_policy, on every replica. Refused (400, with the reason)
        when its file does not load here; the loaded versions keep serving."""
        model = self.model(name)
        if not version.isdigit():
            raise InvalidInput(f"version must be a number, got {version!r}")
        path = model.spec.model_file(version)
        if not path.is_file():
            raise NotFound(f"model {name!r} has no version directory with a model file: {path}")
        self._rollout.require_operator(identity, name)
        if version not in model.versions:
            try:
                loaded = await self._load_off_loop(model, version)
            except RepositoryError as exc:
                self._refuse(model, version, exc)
                raise InvalidInput(f"version {version} of {name!r} does not load: {exc}") from None
            async with model.syncing:
                if version in model.versions:
                    await loaded.retire()
                else:
                    model.versions[version] = loaded
        result = await self._rollout.explicit(name, version, identity, load=True)
        await self.sync_versions(name)
        return result

    async def unload_version(self, name: str, version: str, identity: Identity) -> ChangeResult:
        """Unload ``version`` on every replica (refused while the rollout routes to it)."""
        self.model(name)
        result = await self._rollout.explicit(name, version, identity, load=False)
        await self.sync_versions(name)
        return result

    # -- lookups ---------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self._models)

    def names(self) -> list[str]:
        return sorted(self._models)

    def model(self, name: str) -> LoadedModel:
        try:
            return self._models[name]
        except KeyError:
            raise NotFound(f"unknown model {name!r}; available: {', '.join(self.names())}") from None

    def find(self, name: str) -> LoadedModel | None:
        """The model, or None (for metric labels: no exception on the request path)."""
        return self._models.get(name)

    def spec(self, name: str) -> ModelSpec:
        return self.model(name).spec

    def loaded_versions(self, name: str) -> list[str]:
        return sorted(self.model(name).versions, key=int)

    def loaded_set(self, name: str) -> set[str]:
        """The loaded versions of ``name`` (empty for an unknown model): what the rollout may route to."""
        model = self._models.get(name)
        return set(model.versions) if model else set()

    def version(self, name: str, version: str | None) -> ModelVersion:
        """The loaded ``version`` of ``name`` (None: the stable version), or NotFound."""
        model = self.model(name)
        return model.version(version or self._rollout.policy(name).stable)

    def resolve_version(self, name: str, version: str | None) -> str:
        """The version a request for ``version`` (None: the stable version) would run on, or NotFound."""
        return self.version(name, version).version

    def describe_models(self) -> list[dict]:
        return [self.describe_model(name) for name in self.names()]

    def describe_model(self, name: str) -> dict:
        model = self.model(name)
        return describe(model, self._rollout.policy(name))

    async def aclose(self) -> None:
        """Stop the scan, answer everything queued, let running batches finish, then release the backends."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for model in self._models.values():
            for version in model.versions.values():
                await version.retire()


def describe(model: LoadedModel, rollout: RolloutPolicy) -> dict:
    """A model as ``GET /api/v1/models/{m}`` shows it: versions, rollout, batching, tensors, labels."""
    spec = model.spec
    batching = next(iter(model.versions.values())).batcher.policy
    return {
        "name": spec.name,
        "platform": spec.platform,
        "versions": sorted(model.versions, key=int),
        "default_version": rollout.stable,
        "failed_versions": {version: reason for version, (_, reason) in sorted(model.failed.items())},
        "rollout": {k: v for k, v in rollout.to_dict().items() if k not in ("load", "unload")},
        "max_batch_size": spec.max_batch_size,
        "batching": {
            "max_batch_size": batching.max_batch_size,
            "max_queue_delay_microseconds": round(batching.max_queue_delay_s * 1e6),
            "max_queue_size": batching.max_queue_size,
            "instances": batching.instances,
            "priority_levels": batching.priority_levels,
        },
        "preprocessing": spec.preprocessing,
        "inputs": [{"name": spec.input.name, "datatype": spec.input.dtype, "shape": [-1, *spec.input.dims]}],
        "outputs": [{"name": spec.output.name, "datatype": spec.output.dtype, "shape": [-1, *spec.output.dims]}],
        "labels": list(spec.labels),
    }
