"""``python -m mobile_client classify PHOTO... --model mnist --gateway https://127.0.0.1:8443 --cert --key --ca``

Also ``drain`` (send what an offline queue holds) and ``compare`` (bytes and time to first answer, prepared
on the device vs the original upload; see mobile_client/compare.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobile_client.client import Client
from mobile_client.errors import ClientError
from mobile_client.offline import OfflineQueue, Queued, classify_or_queue
from mobile_client.retry import RetryPolicy


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", default="https://127.0.0.1:8443", help="https://HOST:PORT or grpcs://HOST:PORT")
    parser.add_argument("--ca", type=Path, default=Path("pki/ca.pem"), help="the gateway's CA certificate")
    parser.add_argument("--cert", type=Path, default=Path("pki/clients/app.pem"), help="the app's client certificate")
    parser.add_argument("--key", type=Path, default=Path("pki/clients/app.key"), help="its private key")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per photo, retries included")
    parser.add_argument("--attempts", type=int, default=4, help="tries per photo")


def _client(args: argparse.Namespace, prepare: bool = True) -> Client:
    return Client(
        args.gateway,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        deadline_s=args.deadline,
        retry=RetryPolicy(attempts=args.attempts),
        prepare=prepare,
    )


def _classify(args: argparse.Namespace) -> int:
    status = 0
    queue = OfflineQueue(args.queue) if args.queue else None
    with _client(args, prepare=not args.original) as client:
        for photo in args.photos:
            try:
                if queue is None:
                    answer = client.classify(photo, args.model, priority=args.priority)
                else:
                    answer = classify_or_queue(client, queue, photo, args.model)
            except (ClientError, OSError) as error:
                print(f"{photo}\terror\t{error}", file=sys.stderr)
                status = 1
                continue
            if isinstance(answer, Queued):
                print(f"{photo}\tqueued\t{answer.key}")
            elif args.json:
                print(json.dumps({"photo": str(photo), **answer.__dict__}))
            else:
                print(f"{photo}\t{answer.label}\t{answer.confidence:.4f}")
    return status


def _drain(args: argparse.Namespace) -> int:
    queue = OfflineQueue(args.queue)
    with _client(args) as client:
        report = queue.drain(client)
    for entry, prediction in report.sent:
        print(f"{entry.key}\t{prediction.label}\t{prediction.confidence:.4f}")
    for entry, error in report.failed:
        print(f"{entry.key}\tfailed\t{error}", file=sys.stderr)
    print(f"sent {len(report.sent)}, failed {len(report.failed)}, still queued {report.remaining}", file=sys.stderr)
    return 0 if report.remaining == 0 and not report.failed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mobile_client", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="classify photos, printing label and confidence")
    classify.add_argument("photos", nargs="+", type=Path)
    classify.add_argument("--model", required=True)
    classify.add_argument("--priority", type=int, default=None, help="batching priority, 1 is the highest")
    classify.add_argument("--original", action="store_true", help="upload the photo unchanged (no downscale)")
    classify.add_argument("--queue", type=Path, help="offline queue directory: keep photos there when unreachable")
    classify.add_argument("--json", action="store_true", help="one JSON object per photo")
    _connection_arguments(classify)
    classify.set_defaults(handler=_classify)
    drain = commands.add_parser("drain", help="send the photos an offline queue holds, each once")
    drain.add_argument("--queue", type=Path, required=True)
    _connection_arguments(drain)
    drain.set_defaults(handler=_drain)
    from mobile_client import compare

    compare.add_parser(commands, _connection_arguments)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)
