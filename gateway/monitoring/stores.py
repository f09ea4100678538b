"""The Redis-backed prediction stores (log, feedback, reader) and the Redis they share: a URL, or an embedded
redis-server (``embedded_redis``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis

from gateway.config import PredictionLogSettings
from gateway.monitoring.embedded_redis import EmbeddedRedis
from gateway.monitoring.features import digit_features, photo_features, source_features
from gateway.monitoring.feedback import FeedbackStore
from gateway.monitoring.log_reader import LogReader
from gateway.monitoring.logged_input import MODEL_INPUT_KEY, encode_input
from gateway.monitoring.prediction_log import PredictionLog
from gateway.redis_link import RedisLink, confirm_replicated

FEATURES_BY_PREPARATION: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]] = {
    "mnist_digit": digit_features,
    "imagenet_rgb": photo_features,
}
SIZE_FEATURES_FOR = {"imagenet_rgb"}
"""Preparations whose baseline also describes the uploaded photo's size (megapixels, aspect ratio)."""
INPUT_KEY = "_input"
"""A record carries its input row under this key until the log's writer turns it into features."""


def add_batch_features(records: list[dict[str, Any]], max_input_values: int = 0) -> list[dict[str, Any]]:
    """Replace each record's input row by its summary features (computed off the request path, in the
    writer, once per preparation for the whole chunk: one vectorised pass instead of one per record), and
    keep the row itself (see ``logged_input``) when it has at most ``max_input_values`` values."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if INPUT_KEY in record:
            groups.setdefault(record.get("preprocessing", ""), []).append(record)
    for preprocessing, group in groups.items():
        rows = [record.pop(INPUT_KEY) for record in group]
        for record, row in zip(group, rows, strict=True):
            if 0 < row.size <= max_input_values:
                record[MODEL_INPUT_KEY] = encode_input(row)
        features = FEATURES_BY_PREPARATION.get(preprocessing)
        if features is None:
            continue
        values = features(np.stack(rows))
        sized = [i for i, record in enumerate(group) if record.get("source_size")]
        if sized and preprocessing in SIZE_FEATURES_FOR:
            sizes = source_features(np.array([group[i]["source_size"] for i in sized]))
            for name, column in sizes.items():
                full = np.full(len(group), np.nan)
                full[sized] = column
                values[name] = full
        names = list(values)
        columns = np.round(np.stack([values[name] for name in names], axis=1).astype(np.float64), 6).tolist()
        for record, row in zip(group, columns, strict=True):
            record["features"] = {name: value for name, value in zip(names, row, strict=True) if value == value}
    return records


def add_features(record: dict[str, Any], max_input_values: int = 0) -> dict[str, Any]:
    """add_batch_features for one record."""
    return add_batch_features([record], max_input_values)[0]


class SharedRedis:
    """The Redis every replica shares (prediction log, feedback, rollout state, rate limits).

    ``predictions.redis_url``, or (unset) an embedded redis-server that ``start`` launches.
    ``connect()`` makes a new client; before an embedded server is started it raises
    ``redis.ConnectionError`` (callers treat it as Redis being unreachable).
    """

    def __init__(self, settings: PredictionLogSettings, on_failover: Callable[[], None] | None = None) -> None:
        self._link = RedisLink(settings.redis_url, on_failover=on_failover) if settings.redis_url else None
        self._db_path = settings.embedded_db
        self._wait_replicas = settings.wait_replicas
        self._wait_timeout_ms = settings.redis_wait_timeout_ms
        self.embedded: EmbeddedRedis | None = None

    async def confirm(self, client: aioredis.Redis) -> None:
        """Return once the configured replicas hold every write made so far (``predictions.redis_wait_replicas``),
        else raise NotReplicated (a RedisError)."""
        await confirm_replicated(client, self._wait_replicas, self._wait_timeout_ms)

    def start(self) -> None:
        if self._link is None and self.embedded is None:
            self.embedded = EmbeddedRedis(self._db_path)

    def connect(self) -> aioredis.Redis:
        if self._link is not None:
            return self._link.connect()
        if self.embedded is None:
            raise redis.ConnectionError("the embedded Redis is not started yet")
        return aioredis.Redis(unix_socket_path=self.embedded.socket_path, socket_timeout=2, socket_connect_timeout=2)

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.close()


@dataclass
class PredictionStores:
    """The Redis-backed stores of predictions: the log (and its spool), feedback, and their reader."""

    log: PredictionLog
    feedback: FeedbackStore
    reader: LogReader
    redis: SharedRedis
    owns_redis: bool
    """Stop the Redis on close (it was started for these stores alone)."""

    @property
    def embedded(self) -> EmbeddedRedis | None:
        return self.redis.embedded

    async def aclose(self) -> None:
        """Close the stores, then stop an embedded Redis of their own (its data is saved)."""
        await self.log.aclose()
        await self.feedback.aclose()
        await self.reader.aclose()
        if self.owns_redis:
            self.redis.close()


def open_prediction_stores(settings: PredictionLogSettings, redis_link: SharedRedis | None = None) -> PredictionStores:
    """The prediction stores on ``redis_link`` (started here; None: a new one from ``settings``)."""
    shared = redis_link or SharedRedis(settings)
    shared.start()
    log = PredictionLog(
        shared.connect,
        settings.spool_dir / "predictions.jsonl",
        buffer_size=settings.buffer_size,
        stream_maxlen=settings.stream_maxlen,
        photo_maxlen=settings.photo_maxlen,
        enrich=functools.partial(add_batch_features, max_input_values=settings.input_max_values),
        confirm=shared.confirm,
    )
    return PredictionStores(
        log, FeedbackStore(shared.connect), LogReader(shared.connect), shared, owns_redis=redis_link is None
    )
