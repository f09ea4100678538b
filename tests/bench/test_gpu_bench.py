"""deploy/gpu/run_gpu_bench.sh --dry-run: every step of the GPU benchmark runs on the CPU and writes its JSON,
saying what this host lacks instead of leaving it out."""

from __future__ import annotations

import json
import os
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
    assert report["decode"]["cpu_photos_per_s"] > 0
    assert "needs a GPU JPEG decoder" in report["decode"]["gpu_decode_missing"]
    runs = report["gateway"]
    expected = {
        f"{surface}/decode_cpu/batching_{b}"
        for surface in ("hotdog/rest", "mnist/rest", "mnist/kserve")
        for b in ("on", "off")
    }
    assert set(runs) == expected
    assert all(run["errors"] == 0 and run["rps"] > 0 and run["gateway_cpu_ms_per_request"] > 0 for run in runs.values())
    assert (tmp_path / "onnxruntime.txt").read_text().startswith("1.")
