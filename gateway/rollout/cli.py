"""`gateway rollout show|set|promote|rollback|audit`: drive a running gateway's rollout admin API with an
operator certificate (``PKI_DIR/clients/operator.{pem,key}`` unless ``--identity`` names another)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context


def _client(args: argparse.Namespace) -> httpx.Client:
    pki = PkiPaths(args.pki_dir)
    context = client_context(pki.ca_cert, pki.client_cert(args.identity), pki.client_key(args.identity))
    return httpx.Client(base_url=args.gateway, verify=context, timeout=30)


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.stable is not None:
        body["stable"] = args.stable
    if args.no_canary:
        body["canary"] = None
    elif args.canary is not None:
        body["canary"] = args.canary
    if args.percent is not None:
        body["canary_percent"] = args.percent
    if args.no_shadow:
        body["shadow"] = None
    elif args.shadow is not None:
        body["shadow"] = args.shadow
    if args.revision is not None:
        body["revision"] = args.revision
    return body


def main(args: argparse.Namespace) -> int:
    base = f"/api/v1/models/{args.model}"
    with _client(args) as client:
        if args.action == "show":
            response = client.get(f"{base}/rollout")
        elif args.action == "audit":
            response = client.get(f"{base}/rollout/audit", params={"count": args.count})
        elif args.action == "set":
            body = _changes(args)
            if not body:
                print(
                    "gateway: error: nothing to set (give --stable, --canary, --percent or --shadow)", file=sys.stderr
                )
                return 2
            response = client.put(f"{base}/rollout", json=body)
        else:
            response = client.post(f"{base}/rollout/{args.action}")
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        print(f"gateway: error: {response.status_code} {message}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    rollout = commands.add_parser("rollout", help="versioned rollout of a model on a running gateway (operators)")
    actions = rollout.add_subparsers(dest="action", required=True)
    for name, help_text in (
        ("show", "the rollout policy as the gateway follows it"),
        ("set", "change stable / canary / canary percent / shadow"),
        ("promote", "the canary becomes stable for everyone"),
        ("rollback", "drop the canary (or, without one, return to the previous stable)"),
        ("audit", "who changed what, when"),
    ):
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("--model", required=True)
        parser.add_argument("--gateway", default="https://127.0.0.1:8443")
        parser.add_argument("--pki-dir", type=Path, default=Path("pki"))
        parser.add_argument("--identity", default="operator", help="client certificate under PKI_DIR/clients/")
        if name == "set":
            parser.add_argument("--stable")
            parser.add_argument("--canary")
            parser.add_argument("--no-canary", action="store_true", help="remove the canary")
            parser.add_argument("--percent", type=float, help="canary share of routing keys, 0-100")
            parser.add_argument("--shadow")
            parser.add_argument("--no-shadow", action="store_true", help="remove the shadow")
            parser.add_argument("--revision", type=int, help="refuse (409) unless the rollout is at this revision")
        if name == "audit":
            parser.add_argument("--count", type=int, default=20)
        parser.set_defaults(handler=main)
