"""``python -m loadtests`` (``make loadtest``): start a gateway, run a locust scenario against it as a
subprocess with a step ramp of users, scrape the gateway's /metrics meanwhile, and write report.json
and report.html (throughput, p50/p95/p99 per endpoint, errors by code, batch sizes and queue, the
highest step rate with p99 under 100 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from gateway.bench.server_process import start_gateway
from gateway.security.pki import init_pki
from gateway.security.tls import client_context
from loadtests.fixtures import REPO_ROOT, model_repo_with_priorities, write_hotdog_photos, write_photos
from loadtests.metrics import Scraper
from loadtests.report import capacity, endpoints, errors_by_code, read_events, steps, write_html

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SCENARIOS = {
    "capacity": ["PhotoAppUser"],
    "mix": ["PhotoAppUser", "GrpcClassifyUser", "KServeInferUser", "BrowsingUser", "HotdogAppUser", "BulkRescoreUser"],
    "grpc": ["GrpcClassifyUser", "KServeInferUser"],
}


def _children_cpu_s() -> float:
    """User + system CPU of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _per_request_ms(cpu_s: float | None, requests: list) -> float | None:
    return round(1000 * cpu_s / len(requests), 3) if cpu_s and requests else None


def _run_locust(command: list[str], env: dict[str, str], timeout_s: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run locust to its end; its result and the CPU seconds it used (the gateway, still running, is not a
    child that has exited: it does not count)."""
    before = _children_cpu_s()
    locust = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    return locust, _children_cpu_s() - before


def warm_up(base_url: str, tls, photos: Path, count: int = 20) -> None:
    """A few requests first, so the first step does not measure the model's first runs."""
    with httpx.Client(base_url=base_url, verify=tls, timeout=30) as client:
        for photo in sorted(photos.glob("*.jpg"))[:count]:
            client.post(
                "/api/v1/models/mnist/classify", content=photo.read_bytes(), headers={"content-type": "image/jpeg"}
            )


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="loadtest-"))
    pki = init_pki(work / "pki")
    repo = model_repo_with_priorities(work / "model_repo")
    photos = write_photos(work / "photos")
    hotdogs = write_hotdog_photos(work / "hotdog_photos", 8) if "HotdogAppUser" in SCENARIOS[args.scenario] else None
    gateway = start_gateway(
        ["--pki-dir", str(pki.root), "--model-repo", str(repo)], cwd=REPO_ROOT, workers=args.workers
    )
    tls = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    scraper = Scraper(gateway.base_url, tls)
    events = args.out / "events.jsonl"
    events.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LOADTEST_CA": str(pki.ca_cert),
        "LOADTEST_CERT": str(pki.client_cert("app")),
        "LOADTEST_KEY": str(pki.client_key("app")),
        "LOADTEST_PHOTOS": str(photos),
        "LOADTEST_HOTDOG_PHOTOS": str(hotdogs or ""),
        "LOADTEST_GRPC_TARGET": gateway.grpc_target,
        "LOADTEST_STEPS": ",".join(map(str, args.steps)),
        "LOADTEST_STEP_S": str(args.step_s),
        "LOADTEST_RATE_PER_USER": str(args.rate_per_user),
        "LOADTEST_EVENTS": str(events),
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", gateway.base_url]
    command += ["--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5", *SCENARIOS[args.scenario]]
    warm_up(gateway.base_url, tls, photos)
    scraper.start()
    started = time.time()
    try:
        locust, locust_cpu_s = _run_locust(command, env, timeout_s=len(args.steps) * args.step_s + 90)
    finally:
        scraper.stop()
        gateway_cpu_s = gateway.cpu_seconds() if gateway.alive() else None
        gateway.stop()
    (args.out / "locust.log").write_text(locust.stdout + locust.stderr)
    recorded = read_events(events)
    step_rows = steps(recorded, args.steps, args.step_s)
    summary = {
        "scenario": args.scenario,
        "command": "python -m loadtests " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "user_classes": SCENARIOS[args.scenario],
        "duration_s": round(time.time() - started, 1),
        "locust_exit_code": locust.returncode,
        "requests": len(recorded),
        "gateway_cpu_s": gateway_cpu_s,
        "cpu_ms_per_request": {
            "gateway": _per_request_ms(gateway_cpu_s, recorded),
            "locust": _per_request_ms(locust_cpu_s, recorded),
        },
        "endpoints": endpoints(recorded),
        "errors": errors_by_code(recorded),
        "steps": step_rows,
        "capacity": capacity(step_rows),
    }
    series = scraper.series()
    (args.out / "report.json").write_text(json.dumps(summary | {"gateway_metrics": series}, indent=1))
    write_html(args.out / "report.html", summary, recorded, series)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="capacity")
    parser.add_argument("--steps", type=lambda t: [int(s) for s in t.split(",")], default=[20, 40, 60, 80, 100, 120])
    parser.add_argument("--step-s", type=float, default=15.0, help="seconds per step")
    parser.add_argument("--rate-per-user", type=float, default=1.0, help="requests/s each paced user aims at")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "loadtest")
    parser.add_argument(
        "--workers", type=int, help="server.workers of the gateway (default: its configuration, one per core)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = run(args)
    for name, figures in summary["endpoints"].items():
        print(f"{name}: {figures}")
    for row in summary["steps"]:
        print(f"step {row}")
    print(f"errors: {summary['errors']}")
    print(f"CPU ms per request (the two share the machine): {summary['cpu_ms_per_request']}")
    found = summary["capacity"]
    print(
        f"capacity (p99 < 100 ms): {found['rps']} req/s at {found['users']} users" if found else "capacity: none found"
    )
    print(f"report: {args.out / 'report.html'}")
    return 0 if summary["locust_exit_code"] in (0, 1) and summary["requests"] else 1
