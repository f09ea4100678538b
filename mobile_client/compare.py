"""Prepared on the device vs uploaded as taken: bytes and time to first answer, on real-size phone photos.

``python -m mobile_client compare --model hotdog --photos 10 --gateway https://127.0.0.1:8443``

Hot dog: real photos from ``model_repo/training/hotdog_photos/``, each enlarged to a 4000 x 3000,
EXIF-rotated 12 MP JPEG (``gateway.bench.photo_path.phone_jpeg``). MNIST: held-out MNIST digits
drawn as phone photos of ink on paper, 3000-4500 px a side (``gateway.bench.photos.digit_photo``).
For each photo, one call uploads the original and one prepares it first (a fresh idempotency key
each); time to first answer is from the photo's bytes to the answer, preparation included. On a
loopback network the upload costs almost nothing, so the report also adds the time the bytes take
on a phone uplink of ``--uplink-mbps``: the measured time plus bytes x 8 / rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mobile_client.client import Client
from mobile_client.retry import RetryPolicy

HOTDOG_PHOTOS = Path("model_repo/training/hotdog_photos")
MNIST_SAMPLE = Path("tests/data/mnist_heldout_sample.npz")


def phone_photos(model: str, count: int, root: Path = Path(".")) -> Iterator[tuple[str, bytes]]:
    """(name, 12 MP-class phone JPEG) for ``model``, deterministic."""
    if model == "mnist":
        from gateway.bench.photos import digit_photo

        with np.load(root / MNIST_SAMPLE) as data:
            digits, labels = data["x"], data["y"]
        rng = np.random.default_rng(7)
        for i in range(count):
            yield f"digit-{i}-{labels[i]}", digit_photo(digits[i], rng, orientation=6, min_side=3000)
        return
    from gateway.bench.photo_path import phone_jpeg

    sources = sorted((root / HOTDOG_PHOTOS).glob("*/*.jpg"))
    step = max(1, len(sources) // max(1, count))
    for source in sources[::step][:count]:
        yield source.name, phone_jpeg(source, seed=len(source.name))


def _time(call) -> tuple[object, float]:
    started = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - started) * 1000.0


def compare(client: Client, model: str, photos: list[tuple[str, bytes]], uplinks_mbps: list[float]) -> dict:
    info, metadata_ms = _time(lambda: client.model_info(model))
    rows = []
    for name, data in photos:
        original = client.make_upload(data, None)
        as_taken, original_ms = _time(lambda: client.classify(data, model, upload=original))  # noqa: B023
        upload, _ = _time(lambda: client.make_upload(data, info))  # noqa: B023
        prepared, prepared_ms = _time(lambda: client.classify(data, model))  # noqa: B023 - prepares again, timed
        rows.append(
            {
                "photo": name,
                "original_bytes": len(data),
                "uploaded_bytes": len(upload.body),
                "uploaded_size": list(upload.size),
                "prepare_ms": round(upload.prepare_ms, 1),
                "original_ms": round(original_ms, 1),
                "prepared_ms": round(prepared_ms, 1),
                "same_label": as_taken.label == prepared.label,
                "label": prepared.label,
                "confidence_delta": round(prepared.confidence - as_taken.probabilities.get(prepared.label, 0.0), 4),
            }
        )
    original_bytes = statistics.median(r["original_bytes"] for r in rows)
    uploaded_bytes = statistics.median(r["uploaded_bytes"] for r in rows)
    summary = {
        "model": model,
        "transport": client.transport_name,
        "photos": len(rows),
        "metadata_ms": round(metadata_ms, 1),
        "median_original_bytes": int(original_bytes),
        "median_uploaded_bytes": int(uploaded_bytes),
        "bytes_saved_pct": round(
            100.0 * (1 - sum(r["uploaded_bytes"] for r in rows) / sum(len(d) for _, d in photos)), 1
        ),
        "median_prepare_ms": round(statistics.median(r["prepare_ms"] for r in rows), 1),
        "median_original_ms_loopback": round(statistics.median(r["original_ms"] for r in rows), 1),
        "median_prepared_ms_loopback": round(statistics.median(r["prepared_ms"] for r in rows), 1),
        "same_label": sum(r["same_label"] for r in rows),
        "uplinks": {},
    }
    for mbps in uplinks_mbps:
        summary["uplinks"][f"{mbps:g} Mbit/s"] = {
            "original_ms": round(summary["median_original_ms_loopback"] + original_bytes * 8 / (mbps * 1000), 1),
            "prepared_ms": round(summary["median_prepared_ms_loopback"] + uploaded_bytes * 8 / (mbps * 1000), 1),
        }
    return {"summary": summary, "photos": rows}


def _run(args: argparse.Namespace) -> int:
    photos = list(phone_photos(args.model, args.photos))
    client = Client(
        args.gateway, ca=args.ca, cert=args.cert, key=args.key, deadline_s=60.0, retry=RetryPolicy(attempts=1)
    )
    with client:
        report = compare(client, args.model, photos, args.uplink_mbps)
    s = report["summary"]
    print(
        f"{s['photos']} {args.model} photos over {s['transport']}: median upload {s['median_original_bytes']:,} B "
        f"-> {s['median_uploaded_bytes']:,} B ({s['bytes_saved_pct']}% fewer bytes in all), prepared in "
        f"{s['median_prepare_ms']} ms; time to answer on loopback {s['median_original_ms_loopback']} ms -> "
        f"{s['median_prepared_ms_loopback']} ms; same label {s['same_label']}/{s['photos']}"
    )
    for uplink, figures in s["uplinks"].items():
        print(f"  at {uplink}: {figures['original_ms']:.0f} ms -> {figures['prepared_ms']:.0f} ms")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1))
    else:
        print(json.dumps(s))
    return 0


def add_parser(commands: argparse._SubParsersAction, connection_arguments) -> None:
    parser = commands.add_parser("compare", help="prepared upload vs the original: bytes, time to first answer")
    parser.add_argument("--model", default="hotdog", choices=["hotdog", "mnist"])
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument(
        "--uplink-mbps", type=lambda t: [float(x) for x in t.split(",")], default=[2.0, 10.0], help="e.g. 2,10"
    )
    parser.add_argument("--json-out", type=Path)
    connection_arguments(parser)
    parser.set_defaults(handler=_run)
