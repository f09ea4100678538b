"""deploy/gpu/run_gpu_bench.sh --dry-run: every step of the GPU benchmark runs on the CPU and writes its JSON,
saying what this host lacks instead of leaving it out."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_the_dry_run_measures_every_step_and_names_what_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": str(REPO_ROOT / ".venv" / "bin" / "python")}
    result = subprocess.run(
        ["deploy/gpu/run_gpu_bench.sh", "--dry-run"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert report["dry_run"] is True and "CPUExecutionProvider" in report["providers"]
    assert set(report["model_alone"]) == {"hotdog/cpu", "mnist/cpu"}
    assert all(rate > 0 for figures in report["model_alone"].values() for rate in figures.values())
    for model in ("hotdog", "mnist"):
        decode = report["decode"][model]
        assert decode["cpu"]["photos_per_s"] > 0 and decode["cpu"]["cpu_ms_per_photo"] > 0
        assert "torch" in decode["torchvision"] and "torch" in decode["nvimagecodec"], "each missing decoder named"
        stand_in = decode["host_stand_in/batch_8"]
        assert stand_in["photos_per_s"] > 0 and decode["host_stand_in/parity"]["refused"] == 0
        assert decode["host_stand_in/parity"]["max_levels"] <= 8, "the device path's shrink is the CPU path's"
    assert re.search(r"^mnist +cpu +[\d.]+ +[\d.]+ +\(the reference\)$", result.stdout, re.M)
    assert re.search(r"^hotdog +best GPU: host_stand_in/batch_\d+, [\d.]+x one CPU core", result.stdout, re.M)
    runs = report["gateway"]
    surfaces = ["hotdog/rest", "mnist/rest"] + [f"{m}/kserve_rows_{r}" for m in ("hotdog", "mnist") for r in (1, 8)]
    expected = {f"{surface}/decode_cpu/batching_{b}" for surface in surfaces for b in ("on", "off")}
    assert set(runs) == expected
    assert all(run["errors"] == 0 and run["rps"] > 0 and run["gateway_cpu_ms_per_request"] > 0 for run in runs.values())
    assert (
        runs["mnist/kserve_rows_8/decode_cpu/batching_on"]["rows_per_s"]
        > runs["mnist/kserve_rows_8/decode_cpu/batching_on"]["rps"]
    )
    assert "no CUDA provider" in report["gateway_cores_per_gpu"]["mnist"]
    environment = (tmp_path / "environment.txt").read_text()
    assert "onnxruntime 1." in environment and "providers" in environment
