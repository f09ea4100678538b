"""Write exported prediction rows as one Parquet file (pyarrow), a row group at a time, and read it back.

``DIR/predictions.parquet`` holds one row per logged prediction (SCHEMA); ``DIR/manifest.json``
says what was asked and what came out (model, version, time range, counts, labels, source).
The file is written as ``.predictions.parquet.partial`` and renamed when complete, so a
directory never holds half an export under the real name.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gateway.monitoring.logged_input import decode_input

DATA_FILE = "predictions.parquet"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
ROW_GROUP_ROWS = 4_096
ROW_GROUP_BYTES = 64 * 1024 * 1024
"""Rows are held until a row group has this many rows or bytes (photos, mostly), then written."""

SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC")),
        pa.field("stream_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("version", pa.string()),
        pa.field("surface", pa.string()),
        pa.field("arm", pa.string()),
        pa.field("client", pa.string()),
        pa.field("preprocessing", pa.string()),
        pa.field("input", pa.list_(pa.float32())),
        pa.field("input_shape", pa.list_(pa.int32())),
        pa.field("features", pa.map_(pa.string(), pa.float64())),
        pa.field("label", pa.string()),
        pa.field("probabilities", pa.list_(pa.float32())),
        pa.field("top_probability", pa.float64()),
        pa.field("feedback", pa.string()),
        pa.field("photo", pa.binary()),
        pa.field("photo_content_type", pa.string()),
        pa.field("photo_id", pa.string()),
        pa.field("photo_dropped", pa.string()),
        pa.field("source_width", pa.int32()),
        pa.field("source_height", pa.int32()),
        pa.field("latency_ms", pa.float64()),
        pa.field("batch_size", pa.int32()),
    ]
)
"""``input`` is the model input flattened (float32), ``input_shape`` its shape; ``probabilities`` follow the
model's labels (the manifest's ``labels``); ``feedback`` is the true label where one was given."""


def _arrow_row(row: dict[str, Any]) -> dict[str, Any]:
    stored = row.get("model_input")
    values = decode_input(stored) if stored else None
    return {
        **{name: row.get(name) for name in SCHEMA.names},
        "time": int(row["time"] * 1_000_000) if row.get("time") is not None else None,
        "input": values.ravel() if values is not None else None,
        "input_shape": list(values.shape) if values is not None else None,
        "features": list(row["features"].items()) if row.get("features") else None,
        "photo": base64.b64decode(row["photo"]) if row.get("photo") else None,
    }


class ParquetExportWriter:
    """Rows in, one Parquet file out; ``close()`` renames it into place and writes the manifest."""

    def __init__(self, out_dir: Path, *, force: bool = False) -> None:
        self.out_dir = out_dir
        self.path = out_dir / DATA_FILE
        if self.path.exists() and not force:
            raise FileExistsError(f"{self.path} exists (an earlier export); choose another --out or pass --force")
        out_dir.mkdir(parents=True, exist_ok=True)
        self._partial = out_dir / f".{DATA_FILE}.partial"
        self._writer = pq.ParquetWriter(self._partial, SCHEMA, compression="zstd")
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self.counts = {"records": 0, "with_feedback": 0, "with_input": 0, "with_photo": 0}

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            arrow_row = _arrow_row(row)
            self._pending.append(arrow_row)
            values = arrow_row["input"]
            self._pending_bytes += len(arrow_row["photo"] or b"") + (values.nbytes if values is not None else 0)
            self.counts["records"] += 1
            self.counts["with_feedback"] += row.get("feedback") is not None
            self.counts["with_input"] += arrow_row["input"] is not None
            self.counts["with_photo"] += arrow_row["photo"] is not None
        if len(self._pending) >= ROW_GROUP_ROWS or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=SCHEMA))
            self._pending, self._pending_bytes = [], 0

    def close(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Finish the file, move it into place and write the manifest (``manifest`` plus the counts)."""
        self._flush()
        self._writer.close()
        os.replace(self._partial, self.path)
        written = {
            "format_version": FORMAT_VERSION,
            **manifest,
            **self.counts,
            "file": DATA_FILE,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (self.out_dir / MANIFEST_FILE).write_text(json.dumps(written, indent=2) + "\n")
        return written

    def abort(self) -> None:
        """Stop without leaving a file behind (an interrupted or failed export)."""
        self._writer.close()
        self._partial.unlink(missing_ok=True)


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = export_dir / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir} is not a prediction export: no {MANIFEST_FILE}")
    return json.loads(path.read_text())


def iter_batches(export_dir: Path, columns: list[str] | None = None, batch_rows: int = 4_096) -> Iterator[pa.Table]:
    """The export's rows in tables of at most ``batch_rows`` (bounded memory, whatever the file's size)."""
    with pq.ParquetFile(export_dir / DATA_FILE) as handle:
        for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([batch])
