"""The composition root: build every part of the gateway from validated settings, start and stop them.

Nothing else constructs the parts or wires them together; each part receives its collaborators in
its constructor. The protocol edges (gateway.ingress) take the built ``Gateway``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.config import ConfigError, LimitSettings, Settings
from gateway.core.types import Identity
from gateway.dataplane import DataPlane
from gateway.ingress.idempotency import IdempotentCalls
from gateway.ingress.shared_answers import SharedAnswers
from gateway.models.loader import VersionLoader
from gateway.models.registry import ModelRegistry
from gateway.models.repository import load_repository
from gateway.models.repository_service import RepositoryService
from gateway.monitoring.metrics import GatewayMetrics
from gateway.monitoring.monitor import Monitor
from gateway.monitoring.stores import SharedRedis
from gateway.preprocess.gpu_decode import DeviceUnavailable, PhotoDecoder, open_photo_decoder
from gateway.rollout.manager import RolloutManager
from gateway.rollout.shadowing import ShadowCopies
from gateway.security.policy import Authorizer
from gateway.security.ratelimit import RateLimiter


@dataclass(frozen=True)
class Gateway:
    """Every part of one gateway process, built by ``build_gateway``."""

    settings: Settings
    metrics: GatewayMetrics
    registry: ModelRegistry
    rollout: RolloutManager
    monitor: Monitor
    plane: DataPlane
    authz: Authorizer
    idempotent_calls: IdempotentCalls
    """Shared by the REST and gRPC surfaces: a retry with the same Idempotency-Key is answered once."""
    redis: SharedRedis
    rate_limiter: RateLimiter
    shadows: ShadowCopies
    preprocess_pool: ThreadPoolExecutor
    repository: RepositoryService
    """The repository's control calls (index, load, unload, statistics) for the Triton and TF Serving edges."""

    @property
    def ready(self) -> bool:
        return self.registry.ready

    def model_names(self) -> list[str]:
        return self.registry.names()

    async def start(self) -> None:
        """Start the background work: the shared Redis and the prediction log (replaying any spool a previous
        run left), the rollout (following the shared state, the guard) and the repository scan."""
        self.redis.start()
        await self.monitor.start()
        await self.rollout.start(self.redis.connect, self.monitor.live_accuracy, confirm=self.redis.confirm)
        await self.registry.start()

    async def aclose(self) -> None:
        """Answer everything queued, let running batches finish, then release the backends and the stores."""
        await self.shadows.aclose()
        await self.rollout.aclose()
        await self.registry.aclose()
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)
        await self.rate_limiter.aclose()
        await self.idempotent_calls.aclose()
        await self.monitor.aclose()
        self.redis.close()


def build_gateway(settings: Settings) -> Gateway:
    """Read the repository and load every model (RepositoryError stops start-up), then wire the parts."""
    photo_decoder = _photo_decoder(settings)  # before any model loads: a missing GPU stops it
    metrics = GatewayMetrics()
    authz = _authorizer(settings, metrics, lambda model: registry.find(model) is not None)
    # The rollout routes among the registry's loaded versions and asks it to sync when a rollout change
    # loads or unloads a version; the registry asks the rollout what it routes to. The two closures below
    # are that cycle: they look ``registry`` up when called, after it is built.
    rollout = RolloutManager(
        settings.rollout,
        metrics,
        lambda name: registry.loaded_set(name),
        authorize=lambda identity, model: authz.check(identity, "rollout", model),
        on_change=lambda name: registry.schedule_sync(name),
    )
    registry = ModelRegistry(
        load_repository(settings.models.repo),
        _loader(settings, metrics),
        rollout,
        metrics,
        scan_interval_s=settings.rollout.scan_interval_s,
    )
    registry.load()
    redis = SharedRedis(settings.predictions, on_failover=metrics.redis_failovers.inc)
    rate_limiter = _rate_limiter(settings.limits, redis, metrics)
    monitor = Monitor(settings.predictions, settings.skew, redis, registry, authz, metrics)
    shadows = ShadowCopies(rollout, metrics, max_in_flight=settings.rollout.shadow_max_in_flight)
    pool = ThreadPoolExecutor(_preprocess_threads(settings, photo_decoder), thread_name_prefix="preprocess")
    limits = settings.limits
    plane = DataPlane(
        registry,
        rollout,
        authz,
        rate_limiter,
        monitor,
        shadows,
        metrics,
        pool,
        max_pending_photos=limits.max_pending_photos,
        max_image_pixels=limits.max_image_pixels,
        log_requests=settings.logging.requests,
        photo_decoder=photo_decoder,
    )
    calls = IdempotentCalls(shared=SharedAnswers(redis.connect, IdempotentCalls.ttl_s))
    return Gateway(
        settings,
        metrics,
        registry,
        rollout,
        monitor,
        plane,
        authz,
        calls,
        redis,
        rate_limiter,
        shadows,
        pool,
        RepositoryService(registry, rollout, metrics.inference),
    )


def _loader(settings: Settings, metrics: GatewayMetrics) -> VersionLoader:
    return VersionLoader(
        settings.backends.parsed,
        metrics,
        onnx_threads=settings.runtime.effective_onnx_threads,
        batching=settings.batching.enabled,
    )


def _authorizer(settings: Settings, metrics: GatewayMetrics, known: Callable[[str], bool]) -> Authorizer:
    """The policy checks; each denial is counted under its model (``*``: any, ``_unknown``: not a model)."""

    def denied(identity: Identity, action: str, model: str | None) -> None:
        label = "*" if model is None else (model if known(model) else "_unknown")
        metrics.authz_denied.labels(action, label).inc()

    security = settings.security
    return Authorizer(
        security.policy_file, reload_s=security.policy_reload_s, on_denied=denied, initial=security.parsed_policy
    )


def _rate_limiter(limits: LimitSettings, redis: SharedRedis, metrics: GatewayMetrics) -> RateLimiter:
    return RateLimiter(
        limits.rate_per_s,
        limits.burst,
        redis.connect,
        per_model=limits.rate_per_model,
        timeout_s=limits.rate_redis_timeout_ms / 1000.0,
        on_limited=lambda identity: metrics.rate_limited.labels(identity.name).inc(),
        on_fallback=metrics.rate_limit_fallbacks.inc,
    )


def _photo_decoder(settings: Settings) -> PhotoDecoder | None:
    """preprocess.device's decoder, or the start-up error saying what is missing. Batching off decodes every
    photo alone too."""
    batch = settings.preprocess.batch if settings.batching.enabled else 1
    try:
        return open_photo_decoder(settings.preprocess.device, batch)
    except DeviceUnavailable as exc:
        raise ConfigError(str(exc)) from None


def _preprocess_threads(settings: Settings, decoder: PhotoDecoder | None) -> int:
    """One per core; with a GPU decoder at least a device batch of them (they wait on the GPU, not a core)."""
    threads = settings.runtime.effective_preprocess_workers
    return threads if decoder is None else max(threads, settings.preprocess.batch)
