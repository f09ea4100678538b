"""The loop closed on a live gateway and a real Redis: logged photos with feedback -> export -> retrain ->
re-scan loads the new version -> shadow -> canary -> agreement and live accuracy per version -> promote;
and the guard rolls back a version retrained on a deliberately damaged export."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families

from gateway.bench.photos import digit_photo
from gateway.security.pki import PkiPaths
from tests.conftest import REPO_ROOT, RunningGateway, start_gateway, stop_gateway
from tests.redis_server import RedisServer
from tests.rollout.broken_model import model_repo_with_versions

FINETUNE = REPO_ROOT / "model_repo" / "training" / "finetune_head.py"
TRAFFIC, SHADOWED, CANARIED = range(0, 150), range(150, 210), range(210, 300)


def classify(client: httpx.Client, photo: bytes, key: str) -> dict:
    headers = {"content-type": "image/jpeg", "x-routing-key": key}
    response = client.post("/api/v1/models/mnist/classify", content=photo, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def give_feedback(client: httpx.Client, answers: list[dict], truths: np.ndarray) -> None:
    for answer, truth in zip(answers, truths, strict=True):
        response = client.post(f"/api/v1/predictions/{answer['request_id']}/feedback", json={"label": str(truth)})
        deadline = time.monotonic() + 10
        while response.status_code == 404:  # the record is still on its way to Redis (the log never blocks)
            assert time.monotonic() < deadline, "the prediction never reached the log"
            response = client.post(f"/api/v1/predictions/{answer['request_id']}/feedback", json={"label": str(truth)})
        assert response.status_code == 200, response.text


def wait_for(check, message: str | Callable[[], str], timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, message() if callable(message) else message
    return result


def metric(client: httpx.Client, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def export(gateway: RunningGateway, pki: PkiPaths, out: Path) -> dict:
    command = [sys.executable, "-m", "gateway.cli", "predictions", "export", "--model", "mnist", "--out", str(out)]
    options = ["--gateway", gateway.base_url, "--pki-dir", str(pki.root)]
    done = subprocess.run([*command, *options], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "manifest.json").read_text())


def retrain(base: Path, extra: Path, out: Path) -> dict:
    done = subprocess.run(
        [sys.executable, str(FINETUNE), "--base", str(base), "--extra", str(extra), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{extra}: " in done.stdout and "rows used" in done.stdout, "the script says which data went in"
    return json.loads((out / "training_metrics.json").read_text())


def damaged_copy(export_dir: Path, out: Path) -> None:
    """The same export with every feedback label shifted by one digit (7 becomes 8): a mislabelled data set."""
    out.mkdir()
    table = pq.read_table(export_dir / "predictions.parquet")
    feedback = table.column("feedback").to_pylist()
    shifted = pa.array([None if f is None else str((int(f) + 1) % 10) for f in feedback], pa.string())
    pq.write_table(
        table.set_column(table.schema.get_field_index("feedback"), "feedback", shifted), out / "predictions.parquet"
    )
    (out / "manifest.json").write_text((export_dir / "manifest.json").read_text())


def test_feedback_becomes_a_version_that_is_canaried_and_promoted_and_a_damaged_one_is_rolled_back(
    pki: PkiPaths, redis_server: RedisServer, tmp_path: Path, heldout_sample
) -> None:
    x, y = heldout_sample
    rng = np.random.default_rng(20261201)
    photos = [digit_photo(digit, rng, orientation=int(rng.choice((1, 3, 6, 8)))) for digit in x]
    repo = model_repo_with_versions(tmp_path / "repo")
    settings = {
        "GATEWAY_PREDICTIONS_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "GATEWAY_PREDICTIONS_SPOOL_DIR": str(tmp_path / "spool"),
        "GATEWAY_PREDICTIONS_SAMPLE_PHOTOS": "1.0",
        "GATEWAY_ROLLOUT_SCAN_INTERVAL_S": "0.5",
        "GATEWAY_ROLLOUT_GUARD_INTERVAL_S": "0.5",
        "GATEWAY_ROLLOUT_GUARD_MIN_FEEDBACK": "30",
        "GATEWAY_ROLLOUT_GUARD_MIN_COMPARED": "30",
    }
    gateway = start_gateway(pki, "--model-repo", str(repo), env=settings)
    try:
        with gateway.client() as app, gateway.client("operator") as operator:
            # 1. photo traffic, with the truth given back for every answer
            traffic = [classify(app, photos[i], f"phone-{i}") for i in TRAFFIC]
            give_feedback(app, traffic, y[TRAFFIC])
            # 2. the log as a data set
            manifest = export(gateway, pki, tmp_path / "export")
            assert (manifest["records"], manifest["with_feedback"], manifest["with_input"]) == (150, 150, 150)
            # 3. retrained into the live repository; 4. the re-scan loads it
            metrics = retrain(repo / "mnist" / "1", tmp_path / "export", repo / "mnist" / "2")
            assert metrics["data"]["exports"][0]["used"] == 150
            assert metrics["heldout_accuracy"]["new"] >= 0.97, metrics["heldout_accuracy"]
            wait_for(lambda: "2" in operator.get("/api/v1/models/mnist").json()["versions"], "version 2 never loaded")
            # 5. shadowed: callers get version 1, version 2 answers the same photos on the side
            assert operator.put("/api/v1/models/mnist/rollout", json={"shadow": "2"}).status_code == 200
            shadowed = [classify(app, photos[i], f"phone-{i}") for i in SHADOWED]
            assert {(a["version"], a["arm"]) for a in shadowed} == {("1", "stable")}
            compared = wait_for(
                lambda: metric(operator, "gateway_shadow_comparisons_total", version="2", agree="true"),
                "no shadow comparison counted",
            )
            agreement = wait_for(
                lambda: metric(operator, "gateway_shadow_agreement", version="2"), "the guard never judged the shadow"
            )
            assert compared >= 0.9 * len(SHADOWED) and agreement >= 0.95
            # 6. canaried to half of the phones (sticky by routing key), the truth given back again
            change = {"canary": "2", "canary_percent": 50, "shadow": None}
            assert operator.put("/api/v1/models/mnist/rollout", json=change).status_code == 200
            canaried = [classify(app, photos[i], f"phone-{i}") for i in CANARIED]
            arms = {a["arm"] for a in canaried}
            assert arms == {"stable", "canary"}, arms
            give_feedback(app, canaried, y[CANARIED])
            accuracy_url = "/api/v1/models/mnist/accuracy"
            accuracy = operator.get(accuracy_url).json()["versions"]
            assert accuracy["2"]["feedback"] == sum(a["version"] == "2" for a in canaried)
            assert accuracy["1"]["feedback"] == len(TRAFFIC) + sum(a["version"] == "1" for a in canaried)
            # 7. promoted, because it is as good as the stable on live photos
            assert accuracy["2"]["accuracy"] >= 0.95 and accuracy["2"]["accuracy"] >= accuracy["1"]["accuracy"] - 0.03
            promoted = operator.post("/api/v1/models/mnist/rollout/promote").json()
            assert (promoted["after"]["stable"], promoted["after"]["previous_stable"]) == ("2", "1")
            assert {classify(app, photos[i], f"phone-{i}")["version"] for i in SHADOWED[:10]} == {"2"}

            # The same loop on a damaged export: every label shifted by one digit.
            damaged_copy(tmp_path / "export", tmp_path / "damaged")
            bad = retrain(repo / "mnist" / "2", tmp_path / "damaged", repo / "mnist" / "3")
            assert bad["heldout_accuracy"]["new"] < 0.8, "trained on wrong labels, it answers wrongly"
            wait_for(lambda: "3" in operator.get("/api/v1/models/mnist").json()["versions"], "version 3 never loaded")
            change = {"canary": "3", "canary_percent": 100}
            assert operator.put("/api/v1/models/mnist/rollout", json=change).status_code == 200
            # A head fine-tuned on 150 rows learns those digits' wrong labels rather than a rule: it errs on new
            # photos of the digits it was trained on (the same phones sending them again), so the canary gets those.
            again = np.random.default_rng(7)
            retaken = [digit_photo(x[i], again, orientation=int(again.choice((1, 3, 6, 8)))) for i in TRAFFIC[:40]]
            wrong = [classify(app, photo, f"phone-{i}") for i, photo in enumerate(retaken)]
            assert {a["version"] for a in wrong} == {"3"}
            give_feedback(app, wrong, y[TRAFFIC[:40]])
            wait_for(
                lambda: operator.get("/api/v1/models/mnist/rollout").json()["canary"] is None,
                lambda: (
                    f"the guard did not roll back the damaged version: {operator.get(accuracy_url).text}\n"
                    + "".join(gateway.output[-20:])
                ),
            )
            last = operator.get("/api/v1/models/mnist/rollout/audit", params={"count": 1}).json()["entries"][-1]
            assert last["action"] == "guard-rollback" and "live accuracy" in last["reason"], last
            assert {classify(app, photos[i], f"phone-{i}")["version"] for i in SHADOWED[:10]} == {"2"}
    finally:
        stop_gateway(gateway)
    labelled = pq.read_table(tmp_path / "export" / "predictions.parquet").filter(pc.is_valid(pc.field("feedback")))
    assert labelled.num_rows == 150
