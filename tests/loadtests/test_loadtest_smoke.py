"""The load-test harness end to end, briefly: a gateway, locust headless as a subprocess, a report."""

from __future__ import annotations

import json

import pytest

from loadtests.charts import line_chart
from loadtests.metrics import parse
from loadtests.report import capacity, steps
from loadtests.run import main


def test_a_short_mixed_run_writes_a_report_with_every_endpoint_and_the_gateway_metrics(tmp_path) -> None:
    out = tmp_path / "report"
    assert main(["--scenario", "mix", "--steps", "6", "--step-s", "6", "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    names = set(summary["endpoints"])
    assert {"POST REST classify mnist", "gRPC Classify mnist", "gRPC KServe ModelInfer mnist"} <= names
    assert "POST REST classify mnist bulk (priority 2)" in names
    assert summary["errors"] == {}, summary["errors"]
    assert summary["steps"][0]["users"] == 6 and summary["steps"][0]["rps"] > 0
    assert summary["gateway_metrics"]["batch_size"], "batch sizes were not scraped"
    # locust's own CPU, apart from the gateway's: on a shared machine it says which of the two limits the test
    assert summary["cpu_ms_per_request"]["locust"] > 0 and summary["cpu_ms_per_request"]["gateway"] > 0
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 5 and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_capacity_is_the_last_step_before_p99_passes_the_budget() -> None:
    events = [{"t": 100 + i / 10, "name": "a", "ms": 10.0, "users": 10, "error": None} for i in range(50)]
    events += [{"t": 110 + i / 20, "name": "a", "ms": 50.0, "users": 20, "error": None} for i in range(100)]
    events += [{"t": 120 + i / 30, "name": "a", "ms": 150.0, "users": 30, "error": None} for i in range(150)]
    events += [{"t": 130 + i / 40, "name": "a", "ms": 20.0, "users": 40, "error": None} for i in range(200)]
    rows = steps(events, [10, 20, 30, 40], step_s=10)
    assert [r["users"] for r in rows] == [10, 20, 30, 40]
    assert capacity(rows)["users"] == 20  # 40 users came back under budget, but after a step that failed it


def test_a_step_is_not_stretched_by_the_requests_of_the_users_stopping_at_the_end() -> None:
    events = [{"t": 100 + i / 100, "name": "a", "ms": 10.0, "users": 130, "error": None} for i in range(1500)]
    events += [{"t": 115 + i / 200, "name": "a", "ms": 300.0, "users": 250, "error": None} for i in range(3000)]
    # the run stops: locust stops its 250 users one by one, and the count passes 130 again
    events += [{"t": 130.2, "name": "a", "ms": 10.0, "users": 130, "error": None} for _ in range(3)]
    first, second = steps(events, [130, 250], step_s=15)
    assert first["rps"] == pytest.approx(100, rel=0.02)  # not 1,500 requests over 30 s
    assert second["rps"] == pytest.approx(200, rel=0.02)


def test_metrics_are_parsed_per_model_and_charts_are_svg() -> None:
    text = (
        'gateway_batch_size_sum{model="mnist",version="1"} 30.0\n'
        'gateway_batch_size_count{model="mnist",version="1"} 10.0\n'
        'gateway_batch_size_count{model="hotdog",version="1"} 99.0\n'
        'gateway_queue_depth{model="mnist",version="1"} 3.0\n'
    )
    assert parse(text, "mnist") == {
        "gateway_batch_size_sum": 30.0,
        "gateway_batch_size_count": 10.0,
        "gateway_queue_depth": 3.0,
    }
    assert line_chart({"x": [(0, 1), (1, 2)]}, "t", "y").startswith("<svg")
