"""Sampled raw photos for retraining: a bounded Redis Stream per model, referenced from the prediction record.

Contract:
- Off by default (``predictions.sample_photos = 0``). When on, a sampled photo request's
  record carries the photo's bytes exactly as uploaded under PHOTO_KEY (a reference to the
  request's bytes, not a copy) until the log's writer stores them off the request path.
- The writer adds each photo to ``photos:{model}`` (``XADD``, approximate ``MAXLEN``
  ``predictions.photo_maxlen``) and replaces PHOTO_KEY in the record by ``photo_id``,
  the photo's entry id in that stream. Tensors are never sampled.
- Photos never go to the disk spool: a sampled photo whose record is spooled (Redis
  unreachable, or the log's buffer full) is dropped, and its record says so
  (``photo_id: null``, ``photo_dropped: "spooled"``). The record itself is kept as always.
- Photos waiting in the log's buffer are bounded too (MAX_PENDING_PHOTO_BYTES): a photo
  sampled beyond it is dropped the same way (``photo_dropped: "memory_limit"``), so a
  slow Redis cannot grow memory.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.monitoring.feedback import prediction_key

PHOTO_KEY = "_photo"
"""A sampled record carries its uploaded photo under this key until the log's writer stores it."""
PHOTO_STREAM_PREFIX = "photos:"
MAX_PENDING_PHOTO_BYTES = 64 * 1024 * 1024
"""Sampled photo bytes the log may hold in memory before they reach Redis; beyond it, photos are dropped."""

DROPPED_SPOOLED = "spooled"
"""The record went to the disk spool (Redis unreachable, or the log still replaying older records)."""
DROPPED_MEMORY = "memory_limit"
"""MAX_PENDING_PHOTO_BYTES of sampled photos were already waiting for Redis."""

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"WEBP", 8, "image/webp"),
)


def photo_stream(model: str) -> str:
    return PHOTO_STREAM_PREFIX + model


def content_type_of(photo: bytes) -> str:
    """The photo's media type from its signature (the gateway only accepts these three)."""
    for signature, offset, media_type in _SIGNATURES:
        if photo[offset : offset + len(signature)] == signature:
            return media_type
    return "application/octet-stream"


class PhotoSampler:
    """``sampler()`` is True for a ``fraction`` of calls (never when 0: then it is one comparison)."""

    def __init__(self, fraction: float, draw: Callable[[], float] = random.random) -> None:
        self.fraction = fraction
        self._draw = draw

    def __call__(self) -> bool:
        return self.fraction > 0.0 and self._draw() < self.fraction


def mark_dropped(record: dict[str, Any], reason: str) -> None:
    """The record was sampled but its photo could not be kept; say why, in the record."""
    record.pop(PHOTO_KEY, None)
    record["photo_id"] = None
    record["photo_dropped"] = reason


def photo_fields(record: dict[str, Any], photo: bytes) -> dict[str, str | bytes]:
    """What one entry of ``photos:{model}`` holds."""
    return {
        "request_id": record.get("request_id", ""),
        "version": record.get("version", ""),
        "content_type": content_type_of(photo),
        "photo": photo,
    }


@dataclass(frozen=True)
class StoredPhoto:
    request_id: str
    model: str
    version: str
    content_type: str
    photo: bytes
    photo_id: str


async def read_photo(client: aioredis.Redis, request_id: str) -> StoredPhoto | None:
    """The sampled photo of prediction ``request_id``, or None (not sampled, dropped, or trimmed away)."""
    index = await client.hmget(prediction_key(request_id), ["model", "photo_id"])
    model, photo_id = (value.decode() if value is not None else None for value in index)
    if model is None or photo_id is None:
        return None
    entries = await client.xrange(photo_stream(model), min=photo_id, max=photo_id, count=1)
    if not entries:
        return None
    fields = entries[0][1]
    return StoredPhoto(
        request_id=request_id,
        model=model,
        version=fields[b"version"].decode(),
        content_type=fields[b"content_type"].decode(),
        photo=fields[b"photo"],
        photo_id=photo_id,
    )
