"""`gateway serve | pki | models | rollout | skew | predictions | bench`: the command-line entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.backends import triton_local
from gateway.bench import (
    accuracy,
    batching,
    gpu,
    http_edge,
    observability,
    onnx_throughput,
    overhead,
    photo_path,
    replicas,
    traffic,
)
from gateway.bench import skew as skew_bench
from gateway.bench import triton as triton_bench
from gateway.config import ConfigError, Settings, load_settings
from gateway.models.repository import RepositoryError, load_repository
from gateway.monitoring import export_cli, photo_download, skew_report
from gateway.monitoring.event_log import configure_logging as configure_event_log
from gateway.monitoring.tracing import activate as activate_tracing
from gateway.monitoring.tracing import build_tracing
from gateway.rollout import cli as rollout_cli
from gateway.security import pki
from gateway.stop_signals import StopSignals


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        args.config,
        overrides={
            "server": {"host": args.host, "http_port": args.http_port, "grpc_port": args.grpc_port},
            "tls": {"pki_dir": args.pki_dir, "enabled": False if args.insecure_no_tls else None},
            "models": {"repo": args.model_repo},
            "predictions": {"redis_url": args.redis_url},
            "backends": {"file": args.backends},
        },
    )
    configure_logging(settings)
    if settings.server.effective_workers > 1:
        from gateway.supervisor import Supervisor

        return Supervisor(settings, _print_banner).run()
    from gateway.ingress.http_server import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(run_gateway(settings))
    return 0


def configure_logging(settings: Settings) -> None:
    """The process's log as ``[logging]`` says (text or JSON lines on stderr), in the parent and every worker."""
    configure_event_log(settings.logging.format, settings.logging.level)


async def run_gateway(
    settings: Settings, on_ready: Callable[[], None] | None = None, stop: StopSignals | None = None
) -> None:
    """Load the models, then serve REST and gRPC from one event loop until SIGTERM/SIGINT.

    ``on_ready``: called once the ports are served instead of printing the banner (a supervised worker).
    A stop signal that comes before uvicorn listens for its own (while the models load, just after the
    banner) is kept and honoured once it starts: every stop drains. ``stop``: signals caught since earlier.
    """
    with contextlib.nullcontext(stop) if stop is not None else StopSignals() as caught:
        await _serve_until_stopped(settings, on_ready, caught)


async def _serve_until_stopped(settings: Settings, on_ready: Callable[[], None] | None, stop: StopSignals) -> None:
    from gateway.app import build_gateway
    from gateway.heap import settle_after_start_up
    from gateway.ingress.grpc_server import build_grpc_server
    from gateway.ingress.health import HealthServer
    from gateway.ingress.http_server import bind_socket, build_server
    from gateway.ingress.rest import create_app
    from gateway.security.tls_reload import TlsMaterial, activate

    tracing = build_tracing(settings.tracing)
    activate_tracing(tracing)  # before the gateway is built: its parts wrap their spans once, at construction
    gateway = build_gateway(settings)
    material = TlsMaterial(settings.tls) if settings.tls.enabled else None
    activate(material)
    if material is not None:
        gateway.metrics.operations.watch_tls(material)
    tls_watch = asyncio.get_running_loop().create_task(material.watch()) if material is not None else None
    await gateway.start()
    try:
        grpc_server, grpc_port = await build_grpc_server(gateway, settings, material)
        sock = bind_socket(settings.server.host, settings.server.http_port, reuse_port=settings.server.reuse_port)
        await grpc_server.start()
        health = None
        if settings.server.health_port:
            server = settings.server
            health = HealthServer(gateway, server.host, server.health_port, reuse_port=server.reuse_port)
            await health.start()
            if on_ready is None:
                _announce(
                    settings, f"gateway: health on http://{server.host}:{health.port} (/healthz /readyz /metrics)"
                )
        app = create_app(gateway, mtls=settings.tls.enabled, limits=settings.limits.parse_limits())
        settle_after_start_up()
        if on_ready is None:
            _print_banner(settings, sock.getsockname()[1], grpc_port)
        else:
            on_ready()  # the socket listens: connections wait in its backlog until uvicorn accepts them
        server = build_server(app, settings, material, gateway.metrics)
        server.stop_signals = stop  # stopped while starting: uvicorn starts, then shuts down at once
        try:
            await server.serve(sockets=[sock])
        finally:
            logging.getLogger("gateway").info("stopping gRPC (grace 10 s)")
            await grpc_server.stop(grace=10)
            if health is not None:
                await health.stop()
    finally:
        if tls_watch is not None:
            tls_watch.cancel()
        logging.getLogger("gateway").info("closing the batchers and the prediction log")
        await gateway.aclose()
        tracing.shutdown()  # exports the spans still buffered
        logging.getLogger("gateway").info("stopped")


def _announce(settings: Settings, text: str, level: int = logging.INFO) -> None:
    """A start-up line: printed for a person, or a log line like every other when the log is JSON."""
    if settings.logging.format == "json":
        logging.getLogger("gateway").log(level, text)
    else:
        print(text, flush=True)


def _print_banner(settings: Settings, port: int, grpc_port: int) -> None:
    host = settings.server.host
    url_host = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls.enabled else "http"
    if not settings.tls.enabled:
        _announce(
            settings,
            "gateway: WARNING: mTLS is disabled; every caller is treated as the local operator",
            logging.WARNING,
        )
    _announce(settings, f"gateway: gRPC on {url_host}:{grpc_port} ({'mTLS' if settings.tls.enabled else 'plaintext'})")
    _announce(settings, f"gateway: serving {scheme}://{url_host}:{port}")
    if settings.tls.enabled and settings.logging.format == "text":
        d = settings.tls.pki_dir
        print(
            f"  try: curl --cacert {settings.tls.ca_path} --cert {d}/clients/app.pem --key {d}/clients/app.key \\\n"
            "         -H 'Content-Type: image/jpeg' --data-binary @docs/examples/seven.jpg \\\n"
            f"         {scheme}://{url_host}:{port}/api/v1/models/mnist/classify",
            flush=True,
        )


def _pki_init(args: argparse.Namespace) -> int:
    paths = pki.init_pki(args.dir, force=args.force)
    print(
        f"created CA {paths.ca_cert}, server certificate {paths.server_cert}, "
        f"client identities {paths.client_cert('app')} and {paths.client_cert('operator')}"
    )
    return 0


def _pki_issue(args: argparse.Namespace) -> int:
    cert, key = pki.issue_client(pki.PkiPaths(args.dir), args.name, args.role, days=args.days)
    print(f"issued {cert} and {key} (role {args.role})")
    return 0


def _pki_crl(args: argparse.Namespace) -> int:
    paths = pki.PkiPaths(args.dir)
    serials = pki.write_crl(paths, crl=args.crl, days=args.days)
    print(f"wrote {args.crl or paths.crl}: {len(serials)} revoked certificate(s), valid {args.days} days")
    return 0


def _pki_revoke(args: argparse.Namespace) -> int:
    paths = pki.PkiPaths(args.dir)
    cert = args.cert or paths.client_cert(args.name)
    serials = pki.write_crl(paths, revoke=[cert], crl=args.crl, days=args.days)
    print(f"revoked {cert}; {args.crl or paths.crl} now lists {len(serials)} certificate(s)")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    specs = load_repository(args.model_repo)
    for spec in specs.values():
        print(
            json.dumps(
                {
                    "name": spec.name,
                    "versions": sorted(spec.versions, key=int),
                    "input": list(spec.input.dims),
                    "labels": list(spec.labels),
                }
            )
        )
    return 0


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the models over mTLS REST")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--model-repo", type=Path)
    serve.add_argument("--host")
    serve.add_argument("--http-port", type=int, help="0 picks a free port (printed on start)")
    serve.add_argument("--grpc-port", type=int, help="0 picks a free port (printed on start)")
    serve.add_argument("--pki-dir", type=Path)
    serve.add_argument("--redis-url", help="shared Redis for the prediction log (default: an embedded one)")
    serve.add_argument(
        "--backends", type=Path, help="TOML file: models served by Triton / TF Serving replicas (default: in process)"
    )
    serve.add_argument(
        "--insecure-no-tls", action="store_true", help="local development only: plain HTTP, no client certificates"
    )
    serve.set_defaults(handler=_serve)


def _add_pki_parser(commands: argparse._SubParsersAction) -> None:
    pki_parser = commands.add_parser("pki", help="development PKI")
    pki_commands = pki_parser.add_subparsers(dest="pki_command", required=True)
    init = pki_commands.add_parser("init", help="create a CA, a server certificate, app and operator clients")
    init.add_argument("--dir", type=Path, default=Path("pki"))
    init.add_argument("--force", action="store_true", help="replace an existing PKI")
    init.set_defaults(handler=_pki_init)
    issue = pki_commands.add_parser("issue", help="issue a client certificate")
    issue.add_argument("--dir", type=Path, default=Path("pki"))
    issue.add_argument("--name", required=True)
    issue.add_argument("--role", required=True, choices=pki.ROLES)
    issue.add_argument("--days", type=int, default=365)
    issue.set_defaults(handler=_pki_issue)
    for name, handler, text in (
        ("crl", _pki_crl, "write or refresh the revocation list (DIR/crl.pem); point tls.crl at it"),
        ("revoke", _pki_revoke, "revoke a client certificate: add it to the revocation list"),
    ):
        command = pki_commands.add_parser(name, help=text)
        command.add_argument("--dir", type=Path, default=Path("pki"))
        command.add_argument("--crl", type=Path, help="the revocation list to update (default: DIR/crl.pem)")
        command.add_argument("--days", type=int, default=30, help="validity of the written list")
        if name == "revoke":
            which = command.add_mutually_exclusive_group(required=True)
            which.add_argument("--name", help="a client issued into DIR/clients/")
            which.add_argument("--cert", type=Path, help="any certificate file issued by the CA")
        command.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Inference serving gateway for image classifiers")
    commands = parser.add_subparsers(dest="command", required=True)

    _add_serve_parser(commands)
    _add_pki_parser(commands)
    models = commands.add_parser("models", help="inspect the model repository")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    listing = models_commands.add_parser("list", help="list models and loadable versions")
    listing.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    listing.set_defaults(handler=_models_list)

    rollout_cli.add_parser(commands)

    skew = commands.add_parser("skew", help="training/serving skew")
    skew_commands = skew.add_subparsers(dest="skew_command", required=True)
    skew_report.add_parser(skew_commands)

    predictions = commands.add_parser("predictions", help="the prediction log")
    predictions_commands = predictions.add_subparsers(dest="predictions_command", required=True)
    photo_download.add_parser(predictions_commands)
    export_cli.add_parser(predictions_commands)

    triton_local.add_parser(commands)

    bench = commands.add_parser("bench", help="benchmarks and evaluations")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    accuracy.add_parser(bench_commands)
    batching.add_parser(bench_commands)
    gpu.add_parser(bench_commands)
    overhead.add_parser(bench_commands)
    http_edge.add_parser(bench_commands)
    skew_bench.add_parser(bench_commands)
    photo_path.add_parser(bench_commands)
    onnx_throughput.add_parser(bench_commands)
    triton_bench.add_parser(bench_commands)
    replicas.add_parser(bench_commands)
    observability.add_parser(bench_commands)
    traffic.add_parser(bench_commands)
    return parser


START_ERRORS = (ConfigError, RepositoryError, FileExistsError, FileNotFoundError, ValueError)
"""What a user can fix: said in one line, exit code 2 (a supervised worker exits with it too)."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except START_ERRORS as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
