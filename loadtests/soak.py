"""``python -m loadtests.soak``: hold a steady load for a long time and watch for leaks.

Starts a gateway, runs locust (as a subprocess) with paced MNIST photo uploads at a steady
rate (default 21 req/s, ~70% of the capacity measured with ``python -m loadtests``), and every
``--sample-s`` seconds records the gateway's resident memory, open file descriptors, threads,
queue depth and the answers so far. At the end it fits a line through each series (after a
warm-up) and writes ``soak.json`` and ``samples.csv``: a leak shows as a growth per hour well
above the noise; any 5xx is counted. Not run in CI (it takes as long as you ask).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from gateway.bench.server_process import GatewayProcess, start_gateway
from gateway.security.pki import init_pki
from gateway.security.tls import client_context
from loadtests.fixtures import REPO_ROOT, write_photos
from loadtests.metrics import parse
from loadtests.report import read_events
from loadtests.run import LOCUSTFILE, warm_up


def process_sample(gateway: GatewayProcess) -> dict[str, float]:
    pid = gateway.process.pid
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
    }


def trend_per_hour(times: list[float], values: list[float]) -> float:
    """Slope of the least-squares line through the samples, per hour."""
    if len(times) < 3:
        return 0.0
    slope, _ = np.polyfit(np.asarray(times) - times[0], np.asarray(values, dtype=float), 1)
    return float(slope * 3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=21.0, help="requests/s held for the whole run")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-fraction", type=float, default=0.2, help="share of the run left out of the trends")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "soak")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    pki = init_pki(work / "pki")
    photos = write_photos(work / "photos")
    gateway = start_gateway(["--pki-dir", str(pki.root), "--model-repo", str(REPO_ROOT / "model_repo")], cwd=REPO_ROOT)
    tls = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    events = args.out / "events.jsonl"
    events.unlink(missing_ok=True)
    users = max(1, round(args.rate))
    duration_s = args.minutes * 60
    env = {
        **os.environ,
        "LOADTEST_CA": str(pki.ca_cert),
        "LOADTEST_CERT": str(pki.client_cert("app")),
        "LOADTEST_KEY": str(pki.client_key("app")),
        "LOADTEST_PHOTOS": str(photos),
        "LOADTEST_GRPC_TARGET": gateway.grpc_target,
        "LOADTEST_STEPS": str(users),
        "LOADTEST_STEP_S": str(duration_s),
        "LOADTEST_RATE_PER_USER": str(args.rate / users),
        "LOADTEST_EVENTS": str(events),
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", gateway.base_url]
    command += ["--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5", "PhotoAppUser"]
    warm_up(gateway.base_url, tls, photos)
    samples: list[dict[str, float]] = []
    started = time.time()
    locust = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=gateway.base_url, verify=tls, timeout=10) as client:
            while locust.poll() is None and gateway.alive():
                metrics = parse(client.get("/metrics").text, "mnist")
                sample = {"t": round(time.time() - started, 1), **process_sample(gateway)}
                sample["queue_depth"] = metrics.get("gateway_queue_depth", 0.0)
                sample["batches"] = metrics.get("gateway_batch_size_count", 0.0)
                samples.append(sample)
                print(json.dumps(sample), flush=True)
                time.sleep(args.sample_s)  # the sampling period itself, not a synchronisation
    finally:
        if locust.poll() is None:
            locust.terminate()
        locust_output = locust.communicate(timeout=60)[0].decode()
        gateway_alive = gateway.alive()
        gateway.stop()
    (args.out / "locust.log").write_text(locust_output)
    recorded = read_events(events)
    errors = Counter(e["error"] for e in recorded if e["error"] is not None)
    steady = [s for s in samples if s["t"] >= args.warmup_fraction * duration_s]
    times = [s["t"] for s in steady]
    summary = {
        "command": "python -m loadtests.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "rate": args.rate,
        "minutes": args.minutes,
        "requests": len(recorded),
        "achieved_rps": round(len(recorded) / max(duration_s, 1), 1),
        "errors": dict(errors),
        "server_errors": sum(n for error, n in errors.items() if re.search(r"\b5\d\d\b", error)),
        "gateway_survived": gateway_alive,
        "samples": len(samples),
        "rss_mib": {"first": steady[0]["rss_mib"], "last": steady[-1]["rss_mib"]} if steady else None,
        "open_fds": {"first": steady[0]["open_fds"], "last": steady[-1]["open_fds"]} if steady else None,
        "trend_per_hour": {
            key: round(trend_per_hour(times, [s[key] for s in steady]), 2)
            for key in ("rss_mib", "open_fds", "threads", "queue_depth")
        },
        "max_queue_depth": max((s["queue_depth"] for s in samples), default=0),
    }
    with (args.out / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(samples[0]) if samples else ["t"])
        writer.writeheader()
        writer.writerows(samples)
    (args.out / "soak.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0 if summary["server_errors"] == 0 and gateway_alive else 1


if __name__ == "__main__":
    sys.exit(main())
