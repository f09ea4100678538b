"""`gateway bench traffic`: phones sending photos of digits to a running gateway, and telling it the truth.

What the retraining loop (docs/retraining.md) needs from production, reproducibly: each digit
of ``--digits`` (uint8 [N, 28, 28] ``x`` and ``y``) becomes a phone-style photo
(``gateway.bench.photos``, a random EXIF orientation; or ``--renderer NAME`` from
``gateway.bench.renderers``), is classified over mTLS as one of ``--phones`` routing keys (so a
canary sees a sticky share of them), and a ``--feedback`` share of the answers gets its true
label back. Prints, per version that answered: requests, arm, accuracy against the truth.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from gateway.bench.photos import digit_photo
from gateway.bench.renderers import render
from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context

ORIENTATIONS = (1, 3, 6, 8)


def _photo(digit: np.ndarray, renderer: str | None, rng: np.random.Generator) -> bytes:
    if renderer is None:
        return digit_photo(digit, rng, orientation=int(rng.choice(ORIENTATIONS)))
    return render(digit.astype(np.float32) / 255.0, renderer, rng)


def main(args: argparse.Namespace) -> int:
    with np.load(args.digits) as data:
        x, y = data["x"][args.start : args.start + args.count], data["y"][args.start : args.start + args.count]
    rng = np.random.default_rng(args.seed)
    photos = [_photo(digit, args.renderer, rng) for digit in x]
    give = rng.random(len(x)) < args.feedback
    pki = PkiPaths(args.pki_dir)
    context = client_context(pki.ca_cert, pki.client_cert(args.identity), pki.client_key(args.identity))

    def one(i: int) -> tuple[str, str, bool, bool]:
        headers = {"content-type": "image/jpeg", "x-routing-key": f"phone-{(args.start + i) % args.phones}"}
        answer = client.post(f"/api/v1/models/{args.model}/classify", content=photos[i], headers=headers)
        answer.raise_for_status()
        body = answer.json()
        if give[i]:
            feedback = client.post(f"/api/v1/predictions/{body['request_id']}/feedback", json={"label": str(y[i])})
            while feedback.status_code == 404:  # the record is on its way to Redis: the log never blocks the answer
                feedback = client.post(f"/api/v1/predictions/{body['request_id']}/feedback", json={"label": str(y[i])})
            feedback.raise_for_status()
        return body["version"], body["arm"], body["label"] == str(y[i]), bool(give[i])

    with (
        httpx.Client(base_url=args.gateway, verify=context, timeout=60) as client,
        ThreadPoolExecutor(args.concurrency) as pool,
    ):
        outcomes = list(pool.map(one, range(len(photos))))
    versions: dict[str, Counter] = defaultdict(Counter)
    for version, arm, right, labelled in outcomes:
        versions[version].update({"requests": 1, f"arm:{arm}": 1, "right": int(right), "feedback": int(labelled)})
    summary = {
        "digits": f"{args.digits}[{args.start}:{args.start + len(x)}]",
        "photos": args.renderer or "gateway.bench.photos",
        "requests": len(outcomes),
        "feedback": int(give.sum()),
        "versions": {v: dict(c) | {"accuracy": round(c["right"] / c["requests"], 4)} for v, c in versions.items()},
    }
    for version, counts in sorted(summary["versions"].items()):
        arms = ", ".join(f"{k[4:]} {n}" for k, n in counts.items() if k.startswith("arm:"))
        print(f"v{version}: {counts['requests']} requests ({arms}), accuracy {counts['accuracy']:.2%}")
    print(json.dumps(summary))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("traffic", help="phone-style digit photos to a running gateway, with feedback")
    parser.add_argument("--digits", type=Path, required=True, help="npz with x (uint8 N,28,28) and y")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--feedback", type=float, default=0.8, help="share of answers given their true label")
    parser.add_argument("--renderer", help="a gateway.bench.renderers name (default: gateway.bench.photos)")
    parser.add_argument("--phones", type=int, default=200, help="distinct routing keys (phones)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--gateway", default="https://127.0.0.1:8443")
    parser.add_argument("--pki-dir", type=Path, default=Path("pki"))
    parser.add_argument("--identity", default="app", help="client certificate under PKI_DIR/clients/")
    parser.set_defaults(handler=main)
