"""`gateway predictions export --model M [--version V] [--since T] [--until T] --out DIR`: the log as Parquet.

Reads page after page, from a running gateway over mTLS (an identity the policy lets
``export_predictions``: operators by default) or straight from the prediction log's Redis
(``--redis-url``), and writes each page to ``DIR/predictions.parquet`` before asking for the
next: memory stays bounded by a page (500 records, about 16 MiB of photos) and a row group.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any, Protocol, TextIO

import httpx
from redis.exceptions import RedisError

from gateway.monitoring.export import (
    MAX_PAGE_RECORDS,
    PAGE_RECORDS,
    ExportPage,
    ExportQuery,
    format_ms,
    read_page,
    time_range,
)
from gateway.monitoring.parquet_export import ParquetExportWriter
from gateway.redis_link import RedisLink
from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context


class ExportError(Exception):
    """The source refused or failed; the message says what it answered."""


class PageSource(Protocol):
    description: str
    labels: list[str] | None

    async def now_s(self) -> float: ...

    async def page(self, query: ExportQuery, after: str | None, count: int) -> ExportPage: ...

    async def aclose(self) -> None: ...


class RedisSource:
    """The prediction log's Redis itself (no gateway needed; whoever can reach Redis can read everything)."""

    def __init__(self, url: str, labels: list[str] | None) -> None:
        self._client = RedisLink(url, timeout_s=10).connect()  # redis+sentinel:// too
        self.description = re.sub(r"//[^@/]*@", "//", url)  # never the password of redis://user:password@host
        self.labels = labels

    async def now_s(self) -> float:
        seconds, microseconds = await self._client.time()
        return seconds + microseconds / 1e6

    async def page(self, query: ExportQuery, after: str | None, count: int) -> ExportPage:
        return await read_page(self._client, query, after, count)

    async def aclose(self) -> None:
        await self._client.aclose()


class GatewaySource:
    """A running gateway's export endpoint, over mTLS with a client certificate from the PKI directory."""

    def __init__(self, base_url: str, pki_dir: Path, identity: str) -> None:
        pki = PkiPaths(pki_dir)
        context = client_context(pki.ca_cert, pki.client_cert(identity), pki.client_key(identity))
        self._client = httpx.AsyncClient(base_url=base_url, verify=context, timeout=60)
        self.description = base_url
        self.labels: list[str] | None = None

    async def now_s(self) -> float:
        return time.time()

    async def page(self, query: ExportQuery, after: str | None, count: int) -> ExportPage:
        params: dict[str, Any] = {"until_ms": query.until_ms, "count": count}
        for name, value in (("version", query.version), ("since_ms", query.since_ms), ("after", after)):
            if value is not None:
                params[name] = value
        response = await self._client.get(f"/api/v1/models/{query.model}/predictions/export", params=params)
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise ExportError(f"{response.status_code} {message}")
        body = response.json()
        self.labels = body["labels"]
        return ExportPage(body["records"], body["cursor"], body["done"], body["scanned"], body["progress"])

    async def aclose(self) -> None:
        await self._client.aclose()


class ProgressBar:
    """One line on stderr, redrawn at most every ``interval_s`` (and at the end)."""

    WIDTH = 30

    def __init__(self, stream: TextIO = sys.stderr, interval_s: float = 0.2) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._drawn_at = 0.0

    def update(self, fraction: float, counts: dict[str, int], scanned: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._drawn_at < self._interval_s:
            return
        self._drawn_at = now
        filled = int(round(fraction * self.WIDTH))
        self._stream.write(
            f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%}  scanned {scanned:,}, "
            f"exported {counts['records']:,} ({counts['with_feedback']:,} with feedback, "
            f"{counts['with_photo']:,} with a photo)" + ("\n" if final else "")
        )
        self._stream.flush()


async def export(source: PageSource, query: ExportQuery, writer: ParquetExportWriter, *, page_size: int) -> dict:
    """Every page of ``query`` into ``writer``; returns the manifest written beside the data."""
    progress = ProgressBar()
    after, scanned = None, 0
    while True:
        page = await source.page(query, after, page_size)
        writer.write(page.records)
        scanned += page.scanned
        progress.update(page.progress, writer.counts, scanned, final=page.done)
        if page.done:
            break
        after = page.cursor
    return writer.close(
        {
            "model": query.model,
            "version": query.version,
            "since": format_ms(query.since_ms) if query.since_ms is not None else None,
            "until": format_ms(query.until_ms),
            "scanned": scanned,
            "labels": source.labels,
            "source": source.description,
        }
    )


def _labels_from_repo(model_repo: Path, model: str) -> list[str] | None:
    path = model_repo / model / "labels.txt"
    return path.read_text().split() if path.is_file() else None


async def _run(args: argparse.Namespace) -> dict:
    if not 1 <= args.page_size <= MAX_PAGE_RECORDS:
        raise ValueError(f"--page-size must lie in 1-{MAX_PAGE_RECORDS}, got {args.page_size}")
    source: PageSource
    if args.redis_url:
        source = RedisSource(args.redis_url, _labels_from_repo(args.model_repo, args.model))
    else:
        source = GatewaySource(args.gateway, args.pki_dir, args.identity)
    try:
        since_ms, until_ms = time_range(args.since, args.until, await source.now_s())
        writer = ParquetExportWriter(args.out, force=args.force)
        try:
            return await export(
                source, ExportQuery(args.model, args.version, since_ms, until_ms), writer, page_size=args.page_size
            )
        except BaseException:
            writer.abort()
            raise
    finally:
        await source.aclose()


def main(args: argparse.Namespace) -> int:
    try:
        manifest = asyncio.run(_run(args))
    except (ExportError, RedisError, httpx.HTTPError) as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.out / manifest['file']}: {manifest['records']:,} predictions of {manifest['model']}"
        f"{' v' + manifest['version'] if manifest['version'] else ''} ({manifest['since'] or 'start'} .. "
        f"{manifest['until']}), {manifest['with_feedback']:,} with feedback, {manifest['with_input']:,} with their "
        f"model input, {manifest['with_photo']:,} with a photo"
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="the prediction log as a Parquet data set (inputs, outputs, feedback, sampled photos)"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", help="only this version's predictions (default: every version)")
    parser.add_argument("--since", help="from this time (ISO 8601, Unix seconds, or an age: 30m, 2h, 7d)")
    parser.add_argument("--until", help="up to this time (same forms; default: now)")
    parser.add_argument("--out", type=Path, required=True, help="directory for predictions.parquet + manifest.json")
    parser.add_argument("--force", action="store_true", help="replace an export already in --out")
    parser.add_argument("--page-size", type=int, default=PAGE_RECORDS, help="records per page (default %(default)s)")
    parser.add_argument("--gateway", default="https://127.0.0.1:8443")
    parser.add_argument("--pki-dir", type=Path, default=Path("pki"))
    parser.add_argument("--identity", default="operator", help="client certificate under PKI_DIR/clients/")
    parser.add_argument(
        "--redis-url", help="read the prediction log's Redis directly instead of a gateway (redis://host:6379/0)"
    )
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"), help="for the labels, with --redis-url")
    parser.set_defaults(handler=main)
