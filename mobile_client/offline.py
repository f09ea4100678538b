"""Photos taken while the gateway is unreachable wait on disk, and are sent when it is back, each once.

Layout of the queue directory::

    pending/<seq>-<key>.photo   the upload's bytes (prepared when the model's metadata was known)
    pending/<seq>-<key>.json    model, content type, idempotency key, enqueue time; written last (commit)
    answers.jsonl               one line per photo sent: key, model, the prediction
    failed/                     photos the gateway refused for good (bad photo, unknown model), with why

Exactly once: each photo gets its idempotency key when it is queued, and every send uses that key.
If the app dies after the gateway answered but before the entry was removed, the next drain sends it
again with the same key and the gateway answers from its memory of the first send (same request id,
one prediction record). ``drain`` holds an exclusive lock, so two drains never send the same entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mobile_client.client import Client, Photo, new_idempotency_key, read_photo
from mobile_client.errors import ClientError, DeadlineExceeded, GatewayUnreachable
from mobile_client.values import Prediction, Upload


@dataclass(frozen=True)
class Queued:
    """A photo kept for later: the gateway was unreachable."""

    key: str
    model: str
    path: Path


@dataclass(frozen=True)
class DrainReport:
    sent: list[tuple[Queued, Prediction]]
    failed: list[tuple[Queued, ClientError]]
    remaining: int


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class OfflineQueue:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.pending = self.directory / "pending"
        self.failed_dir = self.directory / "failed"
        self.answers = self.directory / "answers.jsonl"
        for folder in (self.pending, self.failed_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def put(self, upload: Upload, model: str, key: str | None = None) -> Queued:
        key = key or new_idempotency_key()
        stem = f"{time.time_ns():020d}-{key}"
        _write_atomically(self.pending / f"{stem}.photo", upload.body)
        meta = {"key": key, "model": model, "content_type": upload.content_type, "size": list(upload.size)}
        meta |= {"original_bytes": upload.original_bytes, "queued_at": time.time()}
        _write_atomically(self.pending / f"{stem}.json", json.dumps(meta).encode())
        return Queued(key, model, self.pending / f"{stem}.photo")

    def __len__(self) -> int:
        return sum(1 for _ in self.pending.glob("*.json"))

    def entries(self) -> list[tuple[Queued, Upload]]:
        """Committed entries, oldest first (a photo without its .json was never committed and is ignored)."""
        found = []
        for meta_path in sorted(self.pending.glob("*.json")):
            meta = json.loads(meta_path.read_text())
            photo = meta_path.with_suffix(".photo")
            upload = Upload(photo.read_bytes(), meta["content_type"], meta["original_bytes"], tuple(meta["size"]))
            found.append((Queued(meta["key"], meta["model"], photo), upload))
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _remove(self, entry: Queued) -> None:
        entry.path.with_suffix(".json").unlink(missing_ok=True)  # uncommit first
        entry.path.unlink(missing_ok=True)

    def drain(self, client: Client, *, deadline_s: float | None = None) -> DrainReport:
        """Send every queued photo, oldest first; stop at the first sign the gateway is still unreachable."""
        sent: list[tuple[Queued, Prediction]] = []
        failed: list[tuple[Queued, ClientError]] = []
        with self._locked():
            for entry, upload in self.entries():
                try:
                    prediction = client.classify(
                        b"", entry.model, upload=upload, idempotency_key=entry.key, deadline_s=deadline_s
                    )
                except (GatewayUnreachable, DeadlineExceeded):
                    break  # still offline, or too slow: keep it for the next drain
                except ClientError as error:
                    if error.retryable:
                        break  # overloaded or failing: keep it for the next drain
                    self._fail(entry, error)
                    failed.append((entry, error))
                    continue
                self._answer(entry, prediction)
                sent.append((entry, prediction))
        return DrainReport(sent, failed, len(self))

    def _answer(self, entry: Queued, prediction: Prediction) -> None:
        line = json.dumps({"key": entry.key, "model": entry.model, "prediction": asdict(prediction)})
        with open(self.answers, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._remove(entry)

    def _fail(self, entry: Queued, error: ClientError) -> None:
        why = {
            "key": entry.key,
            "model": entry.model,
            "code": error.code,
            "status": error.status,
            "message": str(error),
        }
        _write_atomically(self.failed_dir / f"{entry.path.stem}.json", json.dumps(why).encode())
        os.replace(entry.path, self.failed_dir / entry.path.name)
        entry.path.with_suffix(".json").unlink(missing_ok=True)


def classify_or_queue(
    client: Client, queue: OfflineQueue, photo: Photo, model: str, *, deadline_s: float | None = None
) -> Prediction | Queued:
    """Classify now; if the gateway cannot be reached, keep the photo in ``queue`` and return where it went."""
    data = read_photo(photo)
    key = new_idempotency_key()
    info = client.cached_model_info(model)
    upload = client.make_upload(data, info)
    try:
        prepared = upload if info is not None else None
        return client.classify(data, model, idempotency_key=key, deadline_s=deadline_s, upload=prepared)
    except GatewayUnreachable:
        return queue.put(upload, model, key)
