"""`gateway bench http-edge`, run for real for a few requests: every surface answered both ways, one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_the_benchmark_times_every_hot_route_both_ways() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "http-edge", "--requests", "20", "--rounds", "1"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert set(result["surfaces"]) == {
        "REST classify (PNG body)",
        "KServe HTTP binary tensor",
        "KServe HTTP JSON tensor",
        "TF Serving REST predict",
    }
    for row in result["surfaces"].values():
        assert row["hot_route_us"] > 0 and row["fastapi_us"] > 0
        assert abs(row["ratio"] - row["hot_route_us"] / row["fastapi_us"]) < 0.01
