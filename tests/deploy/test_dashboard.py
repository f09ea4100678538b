"""deploy/grafana: every query of the dashboard parses as PromQL (promtool) and names only metrics a live
gateway exports, and the dashboard covers what an operator looks at."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO_ROOT, RunningGateway
from tests.deploy.prometheus_server import INSTALL_HINT, PROMTOOL

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "gateway-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "$instance": ".*"}
"""What Grafana substitutes before a query reaches Prometheus (an "All" selection is the regex .*)."""
LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*\w+\)$")
METRIC_NAME = re.compile(r"\b(gateway_\w+)")
SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",), "gauge": ("",)}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    """Every PromQL query, as Prometheus receives it: panel targets, and the metric of each variable query."""
    found = [target["expr"] for panel in panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: not a label_values(metric, label) query"
            found.append(match.group(1))
    for name, value in GRAFANA_VARIABLES.items():
        found = [expression.replace(name, value) for expression in found]
    return found


def exported_names(gateway: RunningGateway) -> set[str]:
    with gateway.client("app") as client:
        text = client.get("/metrics").text
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    assert PROMTOOL, INSTALL_HINT
    queries = expressions()
    assert not [q for q in queries if "$" in q], "a Grafana variable is left unsubstituted"
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(queries)} rules found" in checked.stdout


def test_every_metric_the_dashboard_names_is_exported_by_a_live_gateway(gateway: RunningGateway) -> None:
    exported = exported_names(gateway)
    named = {name for expression in expressions() for name in METRIC_NAME.findall(expression)}
    assert named, "no gateway metric found in the dashboard"
    assert not named - exported, f"not exported by the gateway: {sorted(named - exported)}"


@pytest.mark.parametrize(
    "topic, metric",
    [
        ("throughput", "gateway_requests_total"),
        ("latency percentiles", "gateway_request_latency_seconds_bucket"),
        ("batch sizes", "gateway_batch_size_bucket"),
        ("queue depth", "gateway_queue_depth"),
        ("queue delay", "gateway_queue_delay_seconds_bucket"),
        ("skew distances", "gateway_skew_distance"),
        ("rollout arms", "gateway_routed_total"),
        ("guard state", "gateway_rollout_guard_rollbacks_total"),
        ("log spool", "gateway_prediction_log_spooled_records"),
    ],
)
def test_the_dashboard_shows(topic: str, metric: str) -> None:
    assert any(metric in expression for expression in expressions()), f"no panel shows {topic} ({metric})"


def test_panels_use_the_dashboards_datasource_variable_and_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        cells = {(grid["y"] + dy, grid["x"] + dx) for dy in range(grid["h"]) for dx in range(grid["w"])}
        assert grid["x"] + grid["w"] <= 24 and not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
