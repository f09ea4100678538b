"""The one pipeline behind every ingress: find the model, preprocess, batch, run, postprocess."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from redis.exceptions import RedisError

from gateway.backends.base import Backend
from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.backends.remote_config import load_backends_config, remote_backend
from gateway.batching.batcher import DynamicBatcher
from gateway.batching.policy import BatchingPolicy
from gateway.config import Settings
from gateway.core.errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    NotFound,
    Overloaded,
    Unavailable,
)
from gateway.core.types import ClassifyRequest, Identity, Prediction, PreparedInput, Route
from gateway.monitoring.baseline import read_baseline
from gateway.monitoring.log_sink import INPUT_KEY, LogSink, build_log_sink
from gateway.monitoring.metrics import GatewayMetrics
from gateway.monitoring.photos import PHOTO_KEY, PhotoSampler, StoredPhoto
from gateway.monitoring.skew import SkewThresholds, compute_skew
from gateway.preprocess.pipeline import preparation_for, prepare_photo
from gateway.rollout.manager import RolloutManager
from gateway.rollout.policy import RolloutPolicy
from gateway.rollout.router import shadow_of
from gateway.rollout.store import ChangeResult
from gateway.routing.repository import ModelSpec, RepositoryError, load_repository, version_paths
from gateway.security.policy import Authorizer
from gateway.security.ratelimit import RateLimiter

log = logging.getLogger(__name__)


@dataclass
class ModelVersion:
    version: str
    backend: Backend
    batcher: DynamicBatcher
    file_state: tuple[int, int] = (0, 0)
    """(mtime_ns, size) of the model file it was loaded from: a replaced file is loaded again."""


@dataclass
class LoadedModel:
    spec: ModelSpec
    versions: dict[str, ModelVersion]
    failed: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)
    """Versions whose file failed to load: (file state, reason); tried again when the file changes."""
    syncing: asyncio.Lock = field(default_factory=asyncio.Lock)


def _file_state(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


def _describe(model: LoadedModel, rollout: RolloutPolicy) -> dict:
    spec = model.spec
    policy = next(iter(model.versions.values())).batcher.policy
    return {
        "name": spec.name,
        "platform": spec.platform,
        "versions": sorted(model.versions, key=int),
        "default_version": rollout.stable,
        "failed_versions": {version: reason for version, (_, reason) in sorted(model.failed.items())},
        "rollout": {k: v for k, v in rollout.to_dict().items() if k not in ("load", "unload")},
        "max_batch_size": spec.max_batch_size,
        "batching": {
            "max_batch_size": policy.max_batch_size,
            "max_queue_delay_microseconds": round(policy.max_queue_delay_s * 1e6),
            "max_queue_size": policy.max_queue_size,
            "instances": policy.instances,
            "priority_levels": policy.priority_levels,
        },
        "preprocessing": spec.preprocessing,
        "inputs": [{"name": spec.input.name, "datatype": spec.input.dtype, "shape": [-1, *spec.input.dims]}],
        "outputs": [{"name": spec.output.name, "datatype": spec.output.dtype, "shape": [-1, *spec.output.dims]}],
        "labels": list(spec.labels),
    }


class ObservedRequest:
    """Counts one request in the request metrics however it ends: ``done(code)``, or a GatewayError raised
    inside the ``with`` block (counted under ``error_code(error)``)."""

    def __init__(
        self,
        service: GatewayService,
        protocol: str,
        model: str,
        version: str | None,
        error_code: Callable[[GatewayError], str],
    ) -> None:
        self._service = service
        self._protocol = protocol
        self._model = model
        self._version = version
        self._error_code = error_code
        self._started = time.perf_counter()
        self._counted = False

    def done(self, code: str, version: str | None = None) -> None:
        labels = self._service.metric_labels(self._model, version or self._version)
        self._service.metrics.observe_request(self._protocol, *labels, code, time.perf_counter() - self._started)
        self._counted = True

    def __enter__(self) -> ObservedRequest:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if isinstance(exc, GatewayError) and not self._counted:
            self.done(self._error_code(exc))


class GatewayService:
    """Owns the loaded models and answers ClassifyRequests; knows nothing of HTTP or gRPC."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self._settings = settings
        self.metrics = metrics or GatewayMetrics()
        self._models: dict[str, LoadedModel] = {}
        self._pending_photos = 0
        self._log_sink: LogSink | None = None
        self._skew_task: asyncio.Task | None = None
        self._sample_photo = PhotoSampler(settings.predictions.sample_photos)
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.runtime.effective_preprocess_workers, thread_name_prefix="preprocess"
        )
        self.authz = Authorizer(
            settings.security.policy_file, reload_s=settings.security.policy_reload_s, on_denied=self._denied
        )
        self.rate_limiter = self._rate_limiter(None)
        self.rollout = RolloutManager(settings.rollout, self.metrics, self._loaded_set)
        self.rollout.authorize = lambda identity, model: self.authz.check(identity, "rollout", model)
        self.rollout.on_change = self._schedule_sync
        self._shadows: set[asyncio.Task] = set()
        self._scan_task: asyncio.Task | None = None
        self._policies: dict[str, BatchingPolicy] = {}

    def _rate_limiter(self, connect: Callable | None) -> RateLimiter:
        limits = self._settings.limits
        return RateLimiter(
            limits.rate_per_s,
            limits.burst,
            connect,
            per_model=limits.rate_per_model,
            timeout_s=limits.rate_redis_timeout_ms / 1000.0,
            on_limited=lambda identity: self.metrics.rate_limited.labels(identity.name).inc(),
            on_fallback=self.metrics.rate_limit_fallbacks.inc,
        )

    def _denied(self, identity: Identity, action: str, model: str | None) -> None:
        label = model if model in self._models else ("*" if model is None else "_unknown")
        self.metrics.authz_denied.labels(action, label).inc()

    async def admit(self, identity: Identity, model: str) -> None:
        """The gate of every inference surface: the policy must allow ``classify`` on ``model`` (403 /
        PERMISSION_DENIED, audited), then the caller's token bucket must have a token (429 /
        RESOURCE_EXHAUSTED with when to retry; one Redis round trip, only when limits are on)."""
        self.authz.check(identity, "classify", model)
        await self.rate_limiter.take(identity, model)

    def _policy(self, spec: ModelSpec) -> BatchingPolicy:
        try:
            policy = BatchingPolicy.from_model_config(spec.config)
        except ValueError as exc:
            raise RepositoryError(f"{spec.directory}/config.pbtxt: {exc}") from None
        return policy if self._settings.batching.enabled else BatchingPolicy.unbatched(policy)

    def _load_version(self, spec: ModelSpec, version: str, policy: BatchingPolicy, path: Path) -> ModelVersion:
        state = _file_state(path)
        remote = remote_backend(load_backends_config(self._settings.backends.file), spec, version)
        if remote is not None:  # replicas on Triton / TF Serving: as many batches in flight as they take
            policy = dataclasses.replace(policy, instances=remote.max_concurrent_batches)
        backend = remote or OnnxRuntimeBackend(
            path, spec.input, spec.output, threads=self._settings.runtime.effective_onnx_threads
        )
        batcher = DynamicBatcher(
            backend.infer,
            policy,
            spec.input.dims,
            spec.input.dtype,
            on_batch=lambda stats: self.metrics.observe_batch(spec.name, version, stats),
            on_queue_depth=self.metrics.queue_depth.labels(spec.name, version).set,
        )
        return ModelVersion(version, backend, batcher, state)

    def load(self) -> None:
        """Load every model in the repository; an inconsistent config, or a model none of whose versions
        loads, stops start-up with its reason. A version that fails to load is left out (and reported)."""
        for spec in load_repository(self._settings.models.repo).values():
            preparation_for(spec)
            policy = self._policies[spec.name] = self._policy(spec)
            model = LoadedModel(spec, {})
            exclude: set[str] = set()
            while True:
                paths = version_paths(spec.directory, spec.config, frozenset(exclude))
                pending = [v for v in paths if v not in model.versions]
                if not pending:
                    break
                for version in pending:
                    try:
                        model.versions[version] = self._load_version(spec, version, policy, paths[version])
                    except RepositoryError as exc:
                        self._refuse(model, version, paths[version], exc)
                        exclude.add(version)
                        break
            if not model.versions:
                reasons = "; ".join(reason for _, reason in model.failed.values())
                raise RepositoryError(f"{spec.directory}: no version of model {spec.name!r} loads: {reasons}")
            model.spec = replace(spec, versions={v: paths[v] for v in model.versions})
            self._models[spec.name] = model
            self.rollout.init_model(spec.name, self._initial_policy(model))
            versions = model.versions
            log.info(
                "loaded model %s versions %s (max batch %d, delay %.0f us, %d instance(s))",
                spec.name,
                ", ".join(sorted(versions, key=int)),
                policy.max_batch_size,
                policy.max_queue_delay_s * 1e6,
                policy.instances,
            )

    def _initial_policy(self, model: LoadedModel) -> RolloutPolicy:
        """Stable = the config's gateway.stable_version if loaded, else the latest loaded version."""
        wanted = model.spec.initial_stable
        stable = wanted if wanted in model.versions else max(model.versions, key=int)
        return RolloutPolicy(stable=stable)

    def _refuse(self, model: LoadedModel, version: str, path: Path, exc: Exception) -> None:
        reason = str(exc)
        model.failed[version] = (_file_state(path), reason)
        self.metrics.version_loads.labels(model.spec.name, version, "failed").inc()
        log.error("model %s version %s refused (loaded versions keep serving): %s", model.spec.name, version, reason)

    def _loaded_set(self, name: str) -> set[str]:
        model = self._models.get(name)
        return set(model.versions) if model else set()

    async def sync_versions(self, name: str) -> None:
        """Bring the loaded versions of ``name`` in line with its directory, version_policy and rollout:
        load new (or replaced) version files off the event loop, unload what is no longer selected.

        A version whose file fails to load is refused and left out of the selection (so the
        version_policy picks among the versions that work); the version it would have replaced
        keeps serving. Versions the rollout routes to are never unloaded.
        """
        model = self._model(name)
        async with model.syncing:
            spec, policy = model.spec, self.rollout.policy(name)
            while True:
                exclude = {v for v, (state, _) in model.failed.items() if state == _file_state(self._path(spec, v))}
                exclude |= set(policy.unload)
                paths = version_paths(spec.directory, spec.config, frozenset(exclude), frozenset(policy.load))
                for version in [v for v in model.failed if v not in exclude]:
                    del model.failed[version]  # its file changed (or went): judge it again
                pending = [
                    v for v in paths if v not in model.versions or model.versions[v].file_state != _file_state(paths[v])
                ]
                if not pending:
                    break
                version = pending[0]
                try:
                    loaded = await asyncio.to_thread(
                        self._load_version, spec, version, self._policies[name], paths[version]
                    )
                except RepositoryError as exc:
                    self._refuse(model, version, paths[version], exc)
                    continue
                old = model.versions.get(version)
                model.versions[version] = loaded
                self.metrics.version_loads.labels(name, version, "loaded").inc()
                log.info("model %s version %s %s", name, version, "reloaded" if old else "loaded")
                if old is not None:
                    await self._retire(old)
            keep = set(paths) | self.rollout.needed_versions(name)
            for version in [v for v in model.versions if v not in keep]:
                retired = model.versions.pop(version)
                log.info("model %s version %s unloaded", name, version)
                await self._retire(retired)
            model.spec = replace(spec, versions={v: self._path(spec, v) for v in model.versions})

    def _path(self, spec: ModelSpec, version: str) -> Path:
        return spec.directory / version / (spec.config.default_model_filename or "model.onnx")

    async def _retire(self, version: ModelVersion) -> None:
        """Answer what is queued on a version no longer selected, then free it."""
        await version.batcher.close()
        version.backend.close()

    def _schedule_sync(self, name: str) -> None:
        if name in self._models:
            asyncio.get_running_loop().create_task(self._sync_logged(name), name=f"sync-{name}")

    async def _sync_logged(self, name: str) -> None:
        try:
            await self.sync_versions(name)
        except (RepositoryError, OSError) as exc:
            log.error("model %s: the repository cannot be read: %s", name, exc)

    async def _scan(self) -> None:
        while True:
            await asyncio.sleep(self._settings.rollout.scan_interval_s)
            for name in self.model_names():
                await self._sync_logged(name)

    async def load_version(self, name: str, version: str, identity: Identity) -> ChangeResult:
        """Admin: load ``version`` whatever the version_policy, on every replica. Refused (400, with the
        reason) when its file does not load here; the loaded versions keep serving."""
        model = self._model(name)
        if not version.isdigit():
            raise InvalidInput(f"version must be a number, got {version!r}")
        path = self._path(model.spec, version)
        if not path.is_file():
            raise NotFound(f"model {name!r} has no version directory with a model file: {path}")
        self.rollout.require_operator(identity, name)
        if version not in model.versions:
            try:
                loaded = await asyncio.to_thread(self._load_version, model.spec, version, self._policies[name], path)
            except RepositoryError as exc:
                self._refuse(model, version, path, exc)
                raise InvalidInput(f"version {version} of {name!r} does not load: {exc}") from None
            async with model.syncing:
                if version in model.versions:
                    await self._retire(loaded)
                else:
                    model.versions[version] = loaded
                    model.spec = replace(model.spec, versions={**model.spec.versions, version: path})
        result = await self.rollout.explicit(name, version, identity, load=True)
        await self.sync_versions(name)
        return result

    async def unload_version(self, name: str, version: str, identity: Identity) -> ChangeResult:
        """Admin: unload ``version`` on every replica (refused while the rollout routes to it)."""
        self._model(name)
        result = await self.rollout.explicit(name, version, identity, load=False)
        await self.sync_versions(name)
        return result

    async def start(self) -> None:
        """Start the background work: the prediction log (replaying any spool a previous run left), the
        rollout (following the shared state, the guard) and the repository scan."""
        self._log_sink = build_log_sink(self._settings.predictions)
        self._log_sink.log.start()
        self.rate_limiter = self._rate_limiter(self._log_sink.connect)
        self._skew_task = asyncio.get_running_loop().create_task(self._watch_skew(), name="skew-watch")
        await self.rollout.start(self._log_sink.connect, self.live_accuracy)
        for name in self.model_names():
            await self._sync_logged(name)
        if self._settings.rollout.scan_interval_s > 0:
            self._scan_task = asyncio.get_running_loop().create_task(self._scan(), name="repository-scan")

    async def _watch_skew(self) -> None:
        """Refresh the skew gauges of every model's default version, off the request path."""
        while True:
            await asyncio.sleep(self._settings.skew.interval_s)
            for name in self.model_names():
                try:
                    await self.skew(name, None, None)
                except GatewayError as exc:
                    log.warning("skew check of %s failed: %s", name, exc.message)

    async def skew(self, model: str, version: str | None, window: int | None, window_s: int | None = None) -> dict:
        """Skew of the newest ``window`` logged predictions of a model version, none older than ``window_s``
        seconds (0: no age limit; None: ``skew.window_s``), against its training baseline."""
        spec = self._model(model).spec
        chosen = self.resolve_version(model, version)
        baseline_path = spec.versions[chosen].parent / "baseline.json"
        if not baseline_path.is_file():
            raise NotFound(f"model {model!r} version {chosen} has no training baseline ({baseline_path})")
        settings = self._settings.skew
        size = window or settings.window
        max_age_s = settings.window_s if window_s is None else window_s
        try:
            records = await self._sink().reader.recent(model, chosen, size, max_age_s)
        except RedisError as exc:
            raise Unavailable(f"the prediction log's Redis cannot be reached: {exc}") from None
        thresholds = SkewThresholds(
            settings.psi_threshold, settings.labels_threshold, settings.min_window, settings.per_feature
        )
        report = {
            "model": model,
            "version": chosen,
            "window_s": max_age_s,
            **compute_skew(read_baseline(baseline_path), records, thresholds),
        }
        self.metrics.observe_skew(model, chosen, report)
        return report

    async def flush_log(self) -> None:
        """Wait until every prediction answered so far is in Redis (or in the spool, while Redis is down)."""
        await self._sink().log.flush()

    def _sink(self) -> LogSink:
        if self._log_sink is None:
            raise Unavailable("the prediction log is not running")
        return self._log_sink

    async def record_feedback(self, request_id: str, label: str, identity: Identity) -> dict:
        """Join the true ``label`` to a logged prediction; updates the live accuracy of its model version."""
        self.authz.check(identity, "feedback")
        result = await self._sink().feedback.record(request_id, label, identity, lambda m: self._model(m).spec.labels)
        if not result["already_recorded"]:
            accuracy = (await self.live_accuracy(result["model"])).get(result["version"], {}).get("accuracy")
            if accuracy is not None:
                self.metrics.live_accuracy.labels(result["model"], result["version"]).set(accuracy)
        return result

    async def sampled_photo(self, request_id: str, identity: Identity) -> StoredPhoto:
        """The photo sampled for retraining from prediction ``request_id`` (operators only: it is user data)."""
        self.authz.check(identity, "read_photos")
        try:
            photo = await self._sink().reader.photo(request_id)
        except RedisError as exc:
            raise Unavailable(f"the prediction log's Redis cannot be reached: {exc}") from None
        if photo is None:
            raise NotFound(
                f"no sampled photo is kept for request id {request_id!r} (only a predictions.sample_photos "
                f"fraction of photo requests is kept, photos:{{model}} keeps the newest "
                f"{self._settings.predictions.photo_maxlen}, and a photo is dropped while Redis is unreachable)"
            )
        self.authz.check(identity, "read_photos", photo.model)
        return photo

    async def live_accuracy(self, model: str) -> dict[str, dict[str, float]]:
        self._model(model)
        return await self._sink().feedback.accuracy(model)

    @property
    def ready(self) -> bool:
        return bool(self._models)

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def _model(self, name: str) -> LoadedModel:
        try:
            return self._models[name]
        except KeyError:
            raise NotFound(f"unknown model {name!r}; available: {', '.join(self.model_names())}") from None

    def require_model(self, name: str) -> None:
        """Raise NotFound for an unknown model, so an edge can refuse before reading a body."""
        self._model(name)

    def spec(self, name: str) -> ModelSpec:
        return self._model(name).spec

    def loaded_versions(self, name: str) -> list[str]:
        return sorted(self._model(name).versions, key=int)

    def resolve_version(self, name: str, version: str | None) -> str:
        """The version a request for ``version`` (None: the stable version) would run on, or NotFound."""
        return self._version(self._model(name), version).version

    def route(
        self, name: str, version: str | None, label: str | None, identity: Identity, routing_key: str | None
    ) -> Route:
        """The version (and arm) that answers a request: pinned version, pinned label, or the rollout's choice
        for its routing key (``x-routing-key``, else the caller's certificate identity); NotFound if not loaded."""
        model = self._model(name)
        route = self.rollout.route(name, version, label, routing_key or identity.name)
        self._version(model, route.version)
        return route

    def observe(
        self, protocol: str, model: str, version: str | None, error_code: Callable[[GatewayError], str]
    ) -> ObservedRequest:
        """``with service.observe(...) as observed:`` around one request of an edge; see ObservedRequest."""
        return ObservedRequest(self, protocol, model, version, error_code)

    def metric_labels(self, model: str, version: str | None) -> tuple[str, str]:
        """Model and version as metric labels; names no caller can grow without bound."""
        loaded = self._models.get(model)
        if loaded is None:
            return "_unknown", ""
        chosen = version or self.rollout.policy(model).stable
        return model, chosen if chosen in loaded.versions else ""

    def describe_models(self) -> list[dict]:
        return [_describe(self._models[name], self.rollout.policy(name)) for name in self.model_names()]

    def describe_model(self, name: str) -> dict:
        return _describe(self._model(name), self.rollout.policy(name))

    def _version(self, model: LoadedModel, version: str | None) -> ModelVersion:
        chosen = version or self.rollout.policy(model.spec.name).stable
        try:
            return model.versions[chosen]
        except KeyError:
            raise NotFound(
                f"model {model.spec.name!r} has no loaded version {chosen!r}; "
                f"loaded: {', '.join(sorted(model.versions, key=int))}"
            ) from None

    def _remaining(self, request: ClassifyRequest) -> float | None:
        if request.timeout_s is None:
            return None
        remaining = request.timeout_s - (time.perf_counter() - request.received_at)
        if remaining <= 0:
            raise DeadlineExceeded(f"the deadline of {request.timeout_s * 1000:.0f} ms passed before batching")
        return remaining

    async def _prepare(self, request: ClassifyRequest, spec: ModelSpec) -> PreparedInput:
        """Decode and preprocess off the event loop, refusing at once when too many photos wait."""
        limits = self._settings.limits
        if self._pending_photos >= limits.max_pending_photos:
            raise Overloaded(f"{self._pending_photos} photos are waiting to be decoded; retry shortly")
        self._pending_photos += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._preprocess_pool, lambda: prepare_photo(request.image, spec, max_pixels=limits.max_image_pixels)
            )
        finally:
            self._pending_photos -= 1

    async def classify(self, request: ClassifyRequest) -> Prediction:
        """Admit the caller (policy, rate limit), then classify one photo or row."""
        await self.admit(request.identity, request.model)
        return await self._classify(request)

    async def _classify(self, request: ClassifyRequest) -> Prediction:
        model = self._model(request.model)
        route = request.route or self.route(
            request.model, request.version, request.label, request.identity, request.routing_key
        )
        version = self._version(model, route.version)
        prepared = None if request.tensor is not None else await self._prepare(request, model.spec)
        row = request.tensor if prepared is None else prepared.tensor
        try:
            probabilities, batch_size = await version.batcher.submit(
                row, priority=request.priority, timeout_s=self._remaining(request)
            )
        except (Unavailable, DeadlineExceeded):
            self.rollout.observe(model.spec.name, route, True, time.perf_counter() - request.received_at)
            raise
        best = int(probabilities.argmax())
        prediction = Prediction(
            request_id=request.request_id,
            model=model.spec.name,
            version=version.version,
            label=model.spec.labels[best],
            probabilities={label: float(p) for label, p in zip(model.spec.labels, probabilities, strict=True)},
            latency_ms=(time.perf_counter() - request.received_at) * 1000.0,
            arm=route.arm,
        )
        self.rollout.observe(model.spec.name, route, False, prediction.latency_ms / 1000.0)
        self._log_prediction(request, model.spec, prepared, row, prediction, batch_size)
        shadow = shadow_of(self.rollout.policy(model.spec.name), route, model.versions)
        if shadow is not None:
            self._shadow(model, shadow, row, prediction)
        return prediction

    def _shadow(self, model: LoadedModel, version: str, row: np.ndarray, prediction: Prediction) -> None:
        """Send a copy of an answered request to the shadow version, off the caller's path (the copy waits
        for the caller's answer to be handed back first); at most rollout.shadow_max_in_flight at once."""
        name = model.spec.name
        if len(self._shadows) >= self._settings.rollout.shadow_max_in_flight:
            self.metrics.shadow_dropped.labels(name, "in_flight").inc()
            return

        async def run() -> None:
            await asyncio.sleep(0)  # the caller's answer goes first
            try:
                probabilities, _ = await model.versions[version].batcher.submit(row)
                label = model.spec.labels[int(probabilities.argmax())]
                agreed = label == prediction.label
                if self.rollout.shadow is not None:
                    stable, shadow = (prediction.version, prediction.label), (version, label)
                    agreed = await self.rollout.shadow.record(name, prediction.request_id, stable, shadow)
                self.metrics.shadow_comparisons.labels(name, version, str(agreed).lower()).inc()
            except (GatewayError, RedisError, KeyError, OSError) as exc:
                self.metrics.shadow_dropped.labels(name, "failed").inc()
                log.debug("shadow copy of %s to version %s failed: %s", prediction.request_id, version, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    def _log_prediction(
        self,
        request: ClassifyRequest,
        spec: ModelSpec,
        prepared: PreparedInput | None,
        row: np.ndarray,
        prediction: Prediction,
        batch_size: int,
    ) -> None:
        """Hand the record to the prediction log (it never blocks; features are computed by its writer).

        A sampled photo request also hands over the photo as uploaded (a reference, not a copy).
        """
        if self._log_sink is None:
            return
        record = {
            "time": time.time(),
            "request_id": prediction.request_id,
            "client": request.identity.name,
            "model": prediction.model,
            "version": prediction.version,
            "arm": prediction.arm,
            "input": "photo" if prepared is not None else "tensor",
            "source_size": [prepared.source_width, prepared.source_height] if prepared is not None else None,
            "preprocessing": spec.preprocessing,
            "label": prediction.label,
            "top_probability": prediction.probabilities[prediction.label],
            "probabilities": [prediction.probabilities[label] for label in spec.labels],
            "latency_ms": round(prediction.latency_ms, 3),
            "batch_size": batch_size,
            INPUT_KEY: row,
        }
        if prepared is not None and self._sample_photo():
            record[PHOTO_KEY] = request.image
        self._log_sink.log.record(record)

    async def classify_rows(
        self,
        model: str,
        version: str | None,
        batch: np.ndarray,
        identity: Identity,
        request_id: str,
        timeout_s: float | None,
        route: Route | None = None,
    ) -> np.ndarray:
        """Probabilities [N, classes] for already-preprocessed rows (KServe, TF Serving).

        Each row is submitted on its own, so rows batch with other traffic; all-or-nothing, in row order.
        ``route``: the version the edge chose (so every row runs on the version its answer names).
        """
        started = time.perf_counter()
        labels = self._model(model).spec.labels
        await self.admit(identity, model)  # once per request, whatever its number of rows

        async def one(index: int, row: np.ndarray) -> np.ndarray:
            prediction = await self._classify(
                ClassifyRequest(
                    model=model,
                    image=b"",
                    identity=identity,
                    tensor=row,
                    version=version,
                    route=route,
                    timeout_s=timeout_s,
                    request_id=f"{request_id}.{index}",
                    received_at=started,
                )
            )
            return np.array([prediction.probabilities[label] for label in labels], dtype=np.float32)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(i, row)) for i, row in enumerate(batch)]
        except* GatewayError as failures:
            raise failures.exceptions[0] from None
        return np.stack([task.result() for task in tasks])

    async def aclose(self) -> None:
        """Answer everything queued, let running batches finish, then release the backends."""
        if self._scan_task is not None:
            self._scan_task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)
        await self.rollout.aclose()
        for model in self._models.values():
            for version in model.versions.values():
                await version.batcher.close()
                version.backend.close()
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
        if self._skew_task is not None:
            self._skew_task.cancel()
        await self.rate_limiter.aclose()
        if self._log_sink is not None:
            await self._log_sink.aclose()
