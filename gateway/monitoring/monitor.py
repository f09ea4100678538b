"""The monitoring desk: the prediction log, training/serving skew, feedback and sampled photos.

Contract: ``record`` never blocks the request path (the log buffers, spools to disk while Redis
is down, and computes features in its writer). Everything read back (skew, accuracy, photos)
needs ``start`` first and raises Unavailable when Redis cannot be reached; reading photos and
giving feedback are authorized by the policy (``read_photos``, ``feedback``).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from gateway.config import PredictionLogSettings, SkewSettings
from gateway.core.errors import GatewayError, InvalidInput, NotFound, Unavailable
from gateway.core.types import Identity
from gateway.models.registry import ModelRegistry
from gateway.monitoring.export import ExportQuery, check_range
from gateway.monitoring.metrics import GatewayMetrics
from gateway.monitoring.photos import PhotoSampler, StoredPhoto
from gateway.monitoring.record import PredictionRecord
from gateway.monitoring.redis_probe import RedisProbe
from gateway.monitoring.skew import SkewThresholds
from gateway.monitoring.skew_surfaces import chosen_surfaces, history_span, version_baselines, version_report
from gateway.monitoring.stores import PredictionStores, SharedRedis, open_prediction_stores
from gateway.security.policy import Authorizer

log = logging.getLogger(__name__)


class Monitor:
    def __init__(
        self,
        predictions: PredictionLogSettings,
        skew: SkewSettings,
        redis: SharedRedis,
        registry: ModelRegistry,
        authz: Authorizer,
        metrics: GatewayMetrics,
    ) -> None:
        self._predictions = predictions
        self._skew = skew
        self._redis = redis
        self._registry = registry
        self._authz = authz
        self._metrics = metrics
        self.sample_photo = PhotoSampler(predictions.sample_photos)
        """True for the predictions.sample_photos fraction of photo requests: keep that photo."""
        self._stores: PredictionStores | None = None
        self._skew_task: asyncio.Task | None = None
        self._redis_probe = RedisProbe(redis.connect, lambda up: metrics.redis_up.set(int(up)))

    async def start(self) -> None:
        """Open the stores (replaying any spool a previous run left), start the skew watch and the Redis probe."""
        self._stores = open_prediction_stores(self._predictions, self._redis)
        self._stores.log.start()
        self._metrics.operations.watch_prediction_log(self._stores.log)
        self._redis_probe.start()
        if self._skew.background_check:
            self._skew_task = asyncio.get_running_loop().create_task(self._watch_skew(), name="skew-watch")

    def record(self, record: PredictionRecord) -> None:
        """Hand one answered prediction to the log (nothing happens before ``start``)."""
        if self._stores is not None:
            self._stores.log.record(record.as_log_entry())

    def _running(self) -> PredictionStores:
        if self._stores is None:
            raise Unavailable("the prediction log is not running")
        return self._stores

    async def flush_log(self) -> None:
        """Wait until every prediction answered so far is in Redis (or in the spool, while Redis is down)."""
        await self._running().log.flush()

    async def _watch_skew(self) -> None:
        """Refresh the skew gauges of every model's default version, off the request path."""
        while True:
            await asyncio.sleep(self._skew.interval_s)
            for name in self._registry.names():
                try:
                    await self.skew(name, None, None)
                except GatewayError as exc:
                    log.warning("skew check of %s failed: %s", name, exc.message)

    async def skew(
        self,
        model: str,
        version: str | None,
        window: int | None,
        window_s: int | None = None,
        surface: str | None = None,
    ) -> dict:
        """Skew of the newest ``window`` logged predictions of a model version per input surface, none older
        than ``window_s`` seconds (0: no age limit; None: ``skew.window_s``), against the surface's baseline."""
        spec = self._registry.spec(model)
        chosen = self._registry.resolve_version(model, version)
        version_dir = spec.model_file(chosen).parent
        baselines = version_baselines(model, chosen, version_dir, chosen_surfaces(surface))
        settings = self._skew
        size = window or settings.window
        max_age_s = settings.window_s if window_s is None else window_s
        stores = self._running()
        try:
            records = await stores.reader.recent_by_surface(
                model, chosen, history_span(size), max_age_s, tuple(baselines)
            )
            accuracy = (await stores.feedback.accuracy(model)).get(chosen)
        except RedisError as exc:
            raise Unavailable(f"the prediction log's Redis cannot be reached: {exc}") from None
        thresholds = SkewThresholds(
            settings.psi_threshold, settings.labels_threshold, settings.min_window, settings.per_feature
        )
        # the statistics of thousands of records, on a thread: the event loop goes on answering requests
        report = await asyncio.to_thread(
            version_report, model, chosen, version_dir, records, baselines, size, thresholds, accuracy
        )
        report["window_s"] = max_age_s
        self._metrics.observe_skew(model, chosen, report)
        return report

    async def record_feedback(self, request_id: str, label: str, identity: Identity) -> dict:
        """Join the true ``label`` to a logged prediction; updates the live accuracy of its model version."""
        self._authz.check(identity, "feedback")
        result = await self._running().feedback.record(request_id, label, identity, self._labels)
        if not result["already_recorded"]:
            accuracy = (await self.live_accuracy(result["model"])).get(result["version"], {}).get("accuracy")
            if accuracy is not None:
                self._metrics.live_accuracy.labels(result["model"], result["version"]).set(accuracy)
        return result

    def _labels(self, model: str) -> tuple[str, ...]:
        return self._registry.spec(model).labels

    async def sampled_photo(self, request_id: str, identity: Identity) -> StoredPhoto:
        """The photo sampled for retraining from prediction ``request_id`` (operators only: it is user data)."""
        self._authz.check(identity, "read_photos")
        try:
            photo = await self._running().reader.photo(request_id)
        except RedisError as exc:
            raise Unavailable(f"the prediction log's Redis cannot be reached: {exc}") from None
        if photo is None:
            raise NotFound(
                f"no sampled photo is kept for request id {request_id!r} (only a predictions.sample_photos "
                f"fraction of photo requests is kept, photos:{{model}} keeps the newest "
                f"{self._predictions.photo_maxlen}, and a photo is dropped while Redis is unreachable)"
            )
        self._authz.check(identity, "read_photos", photo.model)
        return photo

    async def export_page(
        self,
        model: str,
        version: str | None,
        since_ms: int | None,
        until_ms: int | None,
        after: str | None,
        count: int,
        identity: Identity,
    ) -> dict:
        """One page of ``gateway predictions export`` (the policy's ``export_predictions``: the log holds
        model inputs, photos and client names). ``until_ms`` None: the Redis server's now, echoed back so
        that the next pages ask for the same range."""
        self._authz.check(identity, "export_predictions", model)
        labels = list(self._registry.spec(model).labels)
        reader = self._running().reader
        try:
            if until_ms is None:
                until_ms = await reader.server_time_ms()
            try:
                check_range(since_ms, until_ms)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            page = await reader.export_page(ExportQuery(model, version, since_ms, until_ms), after, count)
        except RedisError as exc:
            raise Unavailable(f"the prediction log's Redis cannot be reached: {exc}") from None
        return {"model": model, "version": version, "labels": labels, "until_ms": until_ms, **page.to_dict()}

    async def live_accuracy(self, model: str) -> dict[str, dict[str, float]]:
        self._registry.model(model)
        return await self._running().feedback.accuracy(model)

    async def aclose(self) -> None:
        """Stop the skew watch; write out the log, close the stores and stop an embedded Redis."""
        if self._skew_task is not None:
            self._skew_task.cancel()
        await self._redis_probe.aclose()
        if self._stores is not None:
            await self._stores.aclose()
