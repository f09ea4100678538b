"""`gateway predictions photo REQUEST_ID --out FILE`: fetch a photo sampled for retraining from a running gateway."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context


def main(args: argparse.Namespace) -> int:
    pki = PkiPaths(args.pki_dir)
    context = client_context(pki.ca_cert, pki.client_cert(args.identity), pki.client_key(args.identity))
    with httpx.Client(base_url=args.gateway, verify=context, timeout=30) as client:
        response = client.get(f"/api/v1/predictions/{args.request_id}/photo")
    if response.status_code != 200:
        print(f"gateway: error: {response.status_code} {response.text}", file=sys.stderr)
        return 1
    args.out.write_bytes(response.content)
    print(
        f"wrote {args.out} ({response.headers['content-type']}, {len(response.content):,} bytes; "
        f"model {response.headers['x-model']} v{response.headers['x-model-version']}, "
        f"photo id {response.headers['x-photo-id']})"
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "photo", help="a photo sampled for retraining (predictions.sample_photos), as uploaded"
    )
    parser.add_argument("request_id", help="the request id of the prediction (its answer's request_id)")
    parser.add_argument("--out", type=Path, required=True, help="write the photo's bytes here")
    parser.add_argument("--gateway", default="https://127.0.0.1:8443")
    parser.add_argument("--pki-dir", type=Path, default=Path("pki"))
    parser.add_argument("--identity", default="operator", help="client certificate under PKI_DIR/clients/")
    parser.set_defaults(handler=main)
