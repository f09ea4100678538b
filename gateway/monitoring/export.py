"""The prediction log as a data set: pages of records joined with their feedback and sampled photos.

An export scans ``predictions:{model}`` in stream order over a time range of stream ids (the
Redis server's millisecond clock when each record was written), in pages of at most ``count``
records and about PAGE_PHOTO_BYTES of photos. Each record of the model (and version, if asked)
is joined with its feedback label (``prediction:{request_id}``) and its sampled photo
(``photos:{model}``). The same page reader serves the CLI reading Redis directly and the
gateway's export endpoint (operators, over mTLS); the CLI writes each page out
(``parquet_export``) before it asks for the next, so memory stays bounded by a page whatever
the size of the log. Pages are JSON-able: photos are base64, the model input as the log keeps
it (``logged_input``).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from gateway.monitoring.feedback import prediction_key
from gateway.monitoring.logged_input import MODEL_INPUT_KEY
from gateway.monitoring.photos import photo_stream
from gateway.monitoring.prediction_log import stream_name

PAGE_RECORDS = 500
MAX_PAGE_RECORDS = 5_000
PAGE_PHOTO_BYTES = 16 * 1024 * 1024
"""A page stops early once its photos pass this many bytes (the next page goes on from there)."""
PHOTO_FETCH_GROUP = 16
"""Photos are read this many at a time, so that a page never holds far more than PAGE_PHOTO_BYTES."""

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIME_FORMATS = (
    "ISO 8601 (2026-12-01T17:00:00Z; no zone means UTC), Unix seconds (1764608400), or an age (90s, 30m, 2h, 7d)"
)


def parse_time(text: str, now_s: float, option: str = "time") -> int:
    """``text`` as Unix milliseconds; ValueError naming ``option`` and the accepted formats."""
    value = text.strip()
    age = _AGE.match(value)
    if age:
        return int((now_s - float(age.group(1)) * _AGE_SECONDS[age.group(2)]) * 1000)
    try:
        return int(float(value) * 1000)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a time: give {TIME_FORMATS}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def format_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def time_range(since: str | None, until: str | None, now_s: float) -> tuple[int | None, int]:
    """``(since_ms or None, until_ms)``: until defaults to now and is never later than now (an export of a
    live log ends); ValueError when the range is empty, e.g. since in the future or not before until."""
    now_ms = int(now_s * 1000)
    since_ms = parse_time(since, now_s, "--since") if since is not None else None
    until_ms = min(parse_time(until, now_s, "--until"), now_ms) if until is not None else now_ms
    check_range(since_ms, until_ms, now_ms)
    return since_ms, until_ms


def check_range(since_ms: int | None, until_ms: int, now_ms: int | None = None) -> None:
    """ValueError unless ``since_ms`` (if any) lies before ``until_ms`` and before now."""
    if until_ms < 0:
        raise ValueError(f"--until {format_ms(until_ms)} lies before 1970")
    if since_ms is None:
        return
    if now_ms is not None and since_ms >= now_ms:
        raise ValueError(
            f"--since {format_ms(since_ms)} is in the future (now is {format_ms(now_ms)}): nothing to export"
        )
    if since_ms >= until_ms:
        raise ValueError(
            f"the time range is empty: --since {format_ms(since_ms)} is not before --until {format_ms(until_ms)}"
        )


@dataclass(frozen=True)
class ExportQuery:
    model: str
    version: str | None
    since_ms: int | None
    until_ms: int


@dataclass(frozen=True)
class ExportPage:
    records: list[dict[str, Any]]
    cursor: str | None
    """The stream id of the last entry this page looked at; the next page starts after it."""
    done: bool
    scanned: int
    """Entries of the stream this page looked at (other versions' records included)."""
    progress: float
    """Share of the time range scanned so far, 0-1."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "cursor": self.cursor,
            "done": self.done,
            "scanned": self.scanned,
            "progress": self.progress,
        }


def _id_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


async def read_page(
    client: aioredis.Redis, query: ExportQuery, after: str | None, count: int = PAGE_RECORDS
) -> ExportPage:
    """The next page of ``query`` after stream id ``after`` (None: from the start of the range)."""
    stream = stream_name(query.model)
    start = f"({after}" if after else (str(query.since_ms) if query.since_ms is not None else "-")
    entries = await client.xrange(stream, min=start, max=str(query.until_ms), count=count)
    records: list[tuple[str, dict[str, Any]]] = []
    for entry_id, fields in entries:
        record = json.loads(fields[b"record"])
        if record.get("model", query.model) == query.model and query.version in (None, record.get("version")):
            records.append((entry_id.decode(), record))
    rows, last = await _joined(client, query.model, records)
    cursor = entries[-1][0].decode() if entries else after
    scanned = len(entries)
    if last is not None:  # the photo budget ran out: go on after the last record taken
        cursor = last
        scanned = next(i for i, (entry_id, _) in enumerate(entries) if entry_id.decode() == last) + 1
    done = not entries or (last is None and len(entries) < count)
    return ExportPage(rows, cursor, done, scanned, 1.0 if done else await _progress(client, query, cursor))


async def _progress(client: aioredis.Redis, query: ExportQuery, cursor: str | None) -> float:
    if cursor is None:
        return 0.0
    low = query.since_ms
    if low is None:
        first = await client.xrange(stream_name(query.model), count=1)
        low = _id_ms(first[0][0].decode()) if first else query.until_ms
    span = query.until_ms - low
    return min(max((_id_ms(cursor) - low) / span, 0.0), 1.0) if span > 0 else 1.0


async def _joined(
    client: aioredis.Redis, model: str, records: list[tuple[str, dict[str, Any]]]
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows with feedback and photos; and the stream id of the last row taken if the photo budget cut the page."""
    if not records:
        return [], None
    async with client.pipeline(transaction=False) as pipe:
        for _, record in records:
            pipe.hget(prediction_key(record.get("request_id", "")), "feedback")
        feedback = await pipe.execute()
    rows, photo_bytes = [], 0
    for start in range(0, len(records), PHOTO_FETCH_GROUP):
        group = records[start : start + PHOTO_FETCH_GROUP]
        photos = await _photos(client, model, [record.get("photo_id") for _, record in group])
        for offset, ((entry_id, record), photo) in enumerate(zip(group, photos, strict=True)):
            label = feedback[start + offset]
            rows.append(export_row(entry_id, record, label.decode() if label is not None else None, photo))
            photo_bytes += len(photo[1]) if photo else 0
        if photo_bytes > PAGE_PHOTO_BYTES and start + len(group) < len(records):
            return rows, group[-1][0]
    return rows, None


async def _photos(client: aioredis.Redis, model: str, photo_ids: list[str | None]) -> list[tuple[str, bytes] | None]:
    """(content type, bytes) per photo id; None where there is no id or the photo was trimmed away."""
    wanted = [photo_id for photo_id in photo_ids if photo_id]
    if not wanted:
        return [None] * len(photo_ids)
    async with client.pipeline(transaction=False) as pipe:
        for photo_id in wanted:
            pipe.xrange(photo_stream(model), min=photo_id, max=photo_id, count=1)
        found = iter(await pipe.execute())
    photos: list[tuple[str, bytes] | None] = []
    for photo_id in photo_ids:
        entries = next(found) if photo_id else None
        if entries:
            fields = entries[0][1]
            photos.append((fields[b"content_type"].decode(), fields[b"photo"]))
        else:
            photos.append(None)
    return photos


def export_row(
    entry_id: str, record: dict[str, Any], feedback: str | None, photo: tuple[str, bytes] | None
) -> dict[str, Any]:
    """One exported row (JSON-able): the record's fields by their export names, its feedback and photo."""
    size = record.get("source_size") or [None, None]
    return {
        "stream_id": entry_id,
        "request_id": record.get("request_id"),
        "time": record.get("time"),
        "model": record.get("model"),
        "version": record.get("version"),
        "surface": record.get("surface") or record.get("input"),
        "arm": record.get("arm"),
        "client": record.get("client"),
        "preprocessing": record.get("preprocessing"),
        "model_input": record.get(MODEL_INPUT_KEY),
        "features": record.get("features"),
        "label": record.get("label"),
        "probabilities": record.get("probabilities"),
        "top_probability": record.get("top_probability"),
        "feedback": feedback,
        "photo": base64.b64encode(photo[1]).decode() if photo else None,
        "photo_content_type": photo[0] if photo else None,
        "photo_id": record.get("photo_id"),
        "photo_dropped": record.get("photo_dropped"),
        "source_width": size[0],
        "source_height": size[1],
        "latency_ms": record.get("latency_ms"),
        "batch_size": record.get("batch_size"),
    }
