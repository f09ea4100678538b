"""`gateway bench traffic` against a live gateway: photos answered, the truth given back for the chosen share."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.conftest import SAMPLE, RunningGateway


def test_traffic_sends_photos_and_feedback(gateway: RunningGateway, tmp_path) -> None:
    with np.load(SAMPLE) as data:
        np.savez(tmp_path / "digits.npz", x=data["x"][::30], y=data["y"][::30])  # one digit of each class
    command = [sys.executable, "-m", "gateway.cli", "bench", "traffic", "--digits", str(tmp_path / "digits.npz")]
    options = ["--count", "10", "--feedback", "1.0", "--gateway", gateway.base_url, "--pki-dir", str(gateway.pki.root)]
    done = subprocess.run([*command, *options], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["requests"], summary["feedback"]) == (10, 10)
    [(version, counts)] = summary["versions"].items()
    assert counts["feedback"] == 10 and counts["accuracy"] >= 0.8
    with gateway.client("operator") as operator:
        live = operator.get("/api/v1/models/mnist/accuracy").json()["versions"][version]
    assert live["feedback"] >= 10, "the feedback reached the gateway"
