"""`gateway predictions export`: the prediction log of a live gateway as Parquet, every record read back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis

from gateway.bench.photos import digit_photo
from gateway.monitoring import export
from gateway.monitoring.export import ExportQuery, read_page, time_range
from gateway.monitoring.features import digit_features
from gateway.monitoring.feedback import prediction_key
from gateway.monitoring.parquet_export import SCHEMA
from gateway.monitoring.photos import PHOTO_KEY
from gateway.monitoring.stores import add_features
from gateway.security.pki import PkiPaths
from tests.conftest import MNIST_STABLE, RunningGateway, start_gateway_on_redis, stop_gateway
from tests.monitoring.test_prediction_log import drain_and_close, make_log
from tests.redis_server import RedisServer

NOW = datetime(2026, 12, 1, 18, 0, tzinfo=UTC).timestamp()


def run_export(out: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "gateway.cli", "predictions", "export", "--model", "mnist", "--out", str(out)]
    return subprocess.run([*command, *options], capture_output=True, text=True, timeout=120)


def over_mtls(gateway: RunningGateway, pki: PkiPaths, identity: str = "operator") -> list[str]:
    return ["--gateway", gateway.base_url, "--pki-dir", str(pki.root), "--identity", identity]


def test_times_are_read_in_three_forms_and_an_empty_range_is_refused() -> None:
    assert export.parse_time("2026-12-01T17:00:00Z", NOW) == int((NOW - 3600) * 1000)
    assert export.parse_time("2026-12-01T17:00:00", NOW) == int((NOW - 3600) * 1000), "no zone means UTC"
    assert export.parse_time(str(NOW - 60), NOW) == int((NOW - 60) * 1000)
    assert export.parse_time("2h", NOW) == int((NOW - 7200) * 1000)
    assert time_range("2h", None, NOW) == (int((NOW - 7200) * 1000), int(NOW * 1000))
    assert time_range(None, "2027-01-01", NOW)[1] == int(NOW * 1000), "an export ends now, not in the future"
    with pytest.raises(ValueError, match="the time range is empty: --since 2026-12-01T17:00:00.000Z is not before"):
        time_range("1h", "2h", NOW)
    with pytest.raises(ValueError, match="is in the future"):
        time_range("2026-12-02", None, NOW)
    with pytest.raises(ValueError, match=r"--since 'yesterday' is not a time: give ISO 8601"):
        time_range("yesterday", None, NOW)


def test_a_record_keeps_its_model_input_up_to_the_configured_size() -> None:
    row = np.linspace(0, 1, 784, dtype=np.float32).reshape(1, 28, 28)
    kept = add_features({"preprocessing": "mnist_digit", "_input": row}, max_input_values=1024)
    stored = export.export_row("1-0", json.loads(json.dumps(kept)), None, None)["model_input"]
    from gateway.monitoring.logged_input import decode_input

    np.testing.assert_allclose(decode_input(stored), row, atol=5e-4)
    assert "model_input" not in add_features({"preprocessing": "mnist_digit", "_input": row}, max_input_values=783)
    assert "model_input" not in add_features({"preprocessing": "mnist_digit", "_input": row}, max_input_values=0)


def test_an_export_from_a_live_gateway_reads_back_every_record(
    pki: PkiPaths, redis_server: RedisServer, tmp_path: Path, heldout_sample
) -> None:
    x, y = heldout_sample
    rng = np.random.default_rng(18)
    photos = [digit_photo(x[i], rng) for i in range(12)]
    tensors = [(x[i] / 255.0).astype(np.float32) for i in range(12, 16)]
    gateway = start_gateway_on_redis(
        pki, redis_server, tmp_path / "spool", env={"GATEWAY_PREDICTIONS_SAMPLE_PHOTOS": "1.0"}
    )
    try:
        with gateway.client() as client:
            photo_answers = [
                client.post("/api/v1/models/mnist/classify", content=p, headers={"content-type": "image/jpeg"}).json()
                for p in photos
            ]
            for tensor in tensors:
                body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28]}]}
                body["inputs"][0]["data"] = tensor.ravel().tolist()
                assert client.post("/v2/models/mnist/infer", json=body).status_code == 200
            deadline = time.monotonic() + 15
            while len(redis_server.records("mnist")) < 16:
                assert time.monotonic() < deadline, "the records never reached Redis"
            for answer, truth in zip(photo_answers[:8], y[:8], strict=True):
                feedback = client.post(
                    f"/api/v1/predictions/{answer['request_id']}/feedback", json={"label": str(truth)}
                )
                assert feedback.status_code == 200, feedback.text
        paged = run_export(tmp_path / "over-mtls", *over_mtls(gateway, pki), "--page-size", "5")
        as_app = run_export(tmp_path / "as-app", *over_mtls(gateway, pki, "app"))
        again = run_export(tmp_path / "over-mtls", *over_mtls(gateway, pki))
        future = run_export(tmp_path / "future", *over_mtls(gateway, pki), "--since", "2999-01-01")
    finally:
        stop_gateway(gateway)
    direct = run_export(
        tmp_path / "direct", "--redis-url", f"redis://127.0.0.1:{redis_server.port}/0", "--version", MNIST_STABLE
    )

    assert paged.returncode == 0, paged.stderr
    assert "100%" in paged.stderr and "exported 16" in paged.stderr, "a progress bar on stderr"
    assert "16 predictions of mnist" in paged.stdout and "8 with feedback" in paged.stdout
    assert as_app.returncode == 1 and "403" in as_app.stderr and "export_predictions" in as_app.stderr
    assert not (tmp_path / "as-app" / "predictions.parquet").exists()
    assert again.returncode == 2 and "exists" in again.stderr, "an earlier export is not overwritten"
    assert future.returncode == 2 and "is in the future" in future.stderr
    assert direct.returncode == 0, direct.stderr

    records = redis_server.records("mnist")
    table = pq.read_table(tmp_path / "over-mtls" / "predictions.parquet")
    assert table.schema.equals(SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert [r["request_id"] for r in rows] == [r["request_id"] for r in records], "every record, in log order"
    sent_feedback = {a["request_id"]: str(t) for a, t in zip(photo_answers[:8], y[:8], strict=True)}
    for row, record in zip(rows, records, strict=True):
        assert (row["label"], row["version"], row["client"]) == (record["label"], MNIST_STABLE, "app")
        np.testing.assert_allclose(row["probabilities"], record["probabilities"], rtol=1e-6)
        assert row["feedback"] == sent_feedback.get(row["request_id"])
        assert row["time"].timestamp() == pytest.approx(record["time"], abs=1e-5)
        assert row["input_shape"] == [1, 28, 28] and len(row["input"]) == 784
        assert row["features"] is not None and dict(row["features"]) == pytest.approx(record["features"])
        live_mean = float(digit_features(np.asarray(row["input"]).reshape(1, 28, 28))["mean_intensity"][0])
        assert live_mean == pytest.approx(record["features"]["mean_intensity"], abs=1e-3)
    assert [r["surface"] for r in rows] == ["photo"] * 12 + ["tensor"] * 4
    assert [r["photo"] for r in rows[:12]] == photos, "each sampled photo exactly as uploaded"
    assert all(r["photo_content_type"] == "image/jpeg" for r in rows[:12])
    assert all(r["photo"] is None for r in rows[12:]), "tensors are never sampled"
    for row, tensor in zip(rows[12:], tensors, strict=True):
        np.testing.assert_allclose(np.asarray(row["input"]), tensor.ravel(), atol=5e-4)
    manifest = json.loads((tmp_path / "over-mtls" / "manifest.json").read_text())
    counts = {k: manifest[k] for k in ("records", "with_feedback", "with_input", "with_photo")}
    assert counts == {"records": 16, "with_feedback": 8, "with_input": 16, "with_photo": 12}
    assert manifest["labels"] == [str(d) for d in range(10)] and manifest["source"] == gateway.base_url

    direct_rows = pq.read_table(tmp_path / "direct" / "predictions.parquet").to_pylist()
    assert [(r["request_id"], r["feedback"]) for r in direct_rows] == [(r["request_id"], r["feedback"]) for r in rows]
    assert [r["photo"] for r in direct_rows] == [r["photo"] for r in rows]


def test_a_page_stops_at_its_photo_budget_and_the_next_goes_on_from_there(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = b"\xff\xd8\xff\xe0" + bytes(10_000)
    monkeypatch.setattr(export, "PAGE_PHOTO_BYTES", 25_000)
    monkeypatch.setattr(export, "PHOTO_FETCH_GROUP", 2)

    async def scenario() -> list[list[str]]:
        log = make_log(redis_server, tmp_path / "spool.jsonl")
        log.start()
        for i in range(30):
            log.record({"model": "mnist", "version": "1", "request_id": f"r{i}", "label": "1", PHOTO_KEY: photo})
        log.record({"model": "mnist", "version": "2", "request_id": "other-version", "label": "1"})
        await drain_and_close(log)
        redis.Redis(port=redis_server.port).hset(prediction_key("r7"), "feedback", "4")
        client = redis.asyncio.Redis(port=redis_server.port)
        pages, after = [], None
        until = int(time.time() * 1000) + 60_000
        while True:
            page = await read_page(client, ExportQuery("mnist", "1", None, until), after, count=100)
            pages.append([(r["request_id"], r["feedback"], len(r["photo"] or "")) for r in page.records])
            if page.done:
                break
            after = page.cursor
        await client.aclose()
        return pages

    pages = asyncio.run(scenario())
    assert all(len(page) <= 4 for page in pages), "about 25 kB of photos per page"
    rows = [row for page in pages for row in page]
    assert [r[0] for r in rows] == [f"r{i}" for i in range(30)], "each record once, in order; other versions left out"
    assert [r[1] for r in rows].count("4") == 1 and rows[7][1] == "4"
    assert all(r[2] > 10_000 for r in rows)
