"""`gateway bench overhead`, run for real on two surfaces for a second each: its table, its JSON, its CPU reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gateway.bench.overhead import capacity_within, cpu_seconds
from gateway.bench.server_process import gateway_and_redis_pids
from tests.conftest import REPO_ROOT
from tests.redis_server import RedisServer, free_port


def test_the_benchmark_drives_real_surfaces_and_reads_the_gateways_cpu(tmp_path) -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "bench",
            "overhead",
            "--only",
            "Tensor",  # any case
            "--batching",
            "on",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--clients",
            "4",
            "--workers",
            "2",
            "--skip-preparation",
            "--open-loop",
            "0.5",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    surfaces = report["surfaces"]
    assert set(surfaces) == {"KServe gRPC tensor", "KServe HTTP binary tensor", "TF Serving gRPC tensor"}
    for name, modes in surfaces.items():
        row = modes["on"]
        assert row["errors"] == 0 and row["rps"] > 0, name
        assert row["gateway_cpu_ms"] > 0 and row["client_cpu_ms"] > 0, name
        assert row["mean_batch"] >= 1, name
        # the model's CPU, read from the gateway's own measurement, is a part of the gateway's, not all of it
        assert 0 < row["model_cpu_ms"] < row["gateway_cpu_ms"], name
        assert row["beyond_model_cpu_ms"] == pytest.approx(row["gateway_cpu_ms"] - row["model_cpu_ms"], abs=0.002)
        # the open loop paces at half the closed loop's rate: a closed loop of the same clients would answer twice it
        (paced,) = row["open_loop"]
        assert paced["errors"] == 0 and paced["offered_rps"] == pytest.approx(0.5 * row["rps"], rel=0.01), name
        assert 0.6 * paced["offered_rps"] < paced["rps"] < 1.4 * paced["offered_rps"], name
    assert "gateway CPU ms/req" in finished.stdout
    assert "capacity at p99 < 100 ms" in finished.stdout


def test_the_capacity_is_the_last_share_before_the_first_over_the_budget_or_with_errors() -> None:
    rows = [
        {"fraction": 0.9, "p99_ms": 40.0, "errors": 0},
        {"fraction": 0.5, "p99_ms": 20.0, "errors": 0},
        {"fraction": 0.7, "p99_ms": 30.0, "errors": 0},
    ]
    assert capacity_within(rows, 100.0)["fraction"] == 0.9
    rows[2]["p99_ms"] = 100.0  # 0.7 reaches the budget: 0.9's good p99 after it does not count
    assert capacity_within(rows, 100.0)["fraction"] == 0.5
    rows[1]["errors"] = 1
    assert capacity_within(rows, 100.0) is None


def test_a_selection_that_matches_no_surface_is_refused_with_the_names() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "overhead", "--only", "TF Servng", "--skip-preparation"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 2
    assert "--only 'TF Servng' matches no surface" in finished.stdout
    assert "TF Serving gRPC tensor" in finished.stdout


def test_cpu_seconds_counts_the_process_and_its_children(tmp_path) -> None:
    burn = "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    child = subprocess.Popen(
        [sys.executable, "-c", burn + "print('burnt', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == b"burnt\n"  # the child spent its CPU and waits
        own, _ = cpu_seconds(child.pid)
        tree, _ = cpu_seconds(os.getpid())
    finally:
        child.communicate(b"")
    assert own >= 0.25
    assert tree >= own + sum(os.times()[:2]) - 0.05  # ours and the child's (to the clock tick)


def test_a_child_that_has_exited_still_counts(tmp_path) -> None:
    before, _ = cpu_seconds(os.getpid())
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    subprocess.run([sys.executable, "-c", burn], check=True)  # reaped: only our cutime holds its CPU now
    after, _ = cpu_seconds(os.getpid())
    assert after - before >= 0.25


def test_the_embedded_redis_server_is_its_own_column_not_the_gateways(tmp_path) -> None:
    # the gateway's parent starts redis-server as its child; here the test process plays the parent
    redis = RedisServer(free_port(), tmp_path)
    redis.start()  # answers PING: it works in its --dir
    try:
        gateway, servers = gateway_and_redis_pids(os.getpid())
    finally:
        redis.stop()
    assert redis.process.pid in servers  # (with any other redis-server this test session started)
    assert os.getpid() in gateway and not set(servers) & set(gateway)
