"""Turn the per-request events and the scraped metrics into figures, a capacity finding and one HTML file."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from html import escape
from pathlib import Path

import numpy as np

from loadtests.charts import line_chart

P99_BUDGET_MS = 100.0


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1)}


def endpoints(events: list[dict]) -> dict[str, dict]:
    by_name: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        by_name[event["name"]].append(event)
    out = {}
    for name, group in sorted(by_name.items()):
        span = max(max(e["t"] for e in group) - min(e["t"] for e in group), 1.0)
        ok = [e["ms"] for e in group if e["error"] is None]
        out[name] = {"requests": len(group), "errors": len(group) - len(ok), "rps": round(len(group) / span, 1)}
        out[name] |= _percentiles(ok)
    return out


def errors_by_code(events: list[dict]) -> dict[str, int]:
    return dict(Counter(f"{e['name']}: {e['error']}" for e in events if e["error"] is not None).most_common())


def steps(events: list[dict], step_users: list[int], step_s: float) -> list[dict]:
    """Figures per step of the ramp (requests made while exactly that many users ran), all endpoints together.

    A step is the ``step_s`` seconds from its first request: when the run stops, locust stops its users one
    by one, and the user count passes every value again; those last requests are not the step's."""
    rows = []
    for users in step_users:
        group = [e for e in events if e.get("users") == users]
        if len(group) < 2:
            continue
        first = min(e["t"] for e in group)
        group = [e for e in group if e["t"] < first + step_s]
        times = sorted(e["t"] for e in group)
        trimmed = [e for e in group if e["t"] >= times[0] + 2.0] or group  # the first 2 s: users still starting
        span = max(max(e["t"] for e in trimmed) - min(e["t"] for e in trimmed), 1.0)
        ok = [e["ms"] for e in trimmed if e["error"] is None]
        errors = len(trimmed) - len(ok)
        rows.append({"users": users, "rps": round(len(trimmed) / span, 1), "errors": errors} | _percentiles(ok))
    return rows


def capacity(step_rows: list[dict], budget_ms: float = P99_BUDGET_MS) -> dict | None:
    """The highest step rate reached before the first step whose p99 passed the budget (or that had errors)."""
    best = None
    for row in step_rows:
        if row["p99"] >= budget_ms or row["errors"] > 0.01 * max(row["rps"], 1):
            break
        best = row
    return best


def per_second(events: list[dict]) -> tuple[dict, dict, dict]:
    """Throughput per endpoint, p99 per endpoint, and users, one point per second."""
    buckets: dict[tuple[str, int], list[float]] = defaultdict(list)
    users: dict[int, int] = {}
    for e in events:
        second = int(e["t"])
        buckets[(e["name"], second)].append(e["ms"])
        users[second] = max(users.get(second, 0), e.get("users", 0))
    throughput: dict[str, list] = defaultdict(list)
    p99: dict[str, list] = defaultdict(list)
    for (name, second), ms in sorted(buckets.items()):
        throughput[name].append((second, len(ms)))
        p99[name].append((second, float(np.percentile(ms, 99))))
    return dict(throughput), dict(p99), {"users": sorted(users.items())}


def write_html(path: Path, summary: dict, events: list[dict], metric_series: dict) -> None:
    throughput, p99, users = per_second(events)
    charts = [
        line_chart(users, "Users", "users"),
        line_chart(throughput, "Throughput per endpoint", "requests/s"),
        line_chart(p99, "p99 latency per endpoint (each second)", "ms", threshold=P99_BUDGET_MS),
        line_chart(
            {"mean batch size": metric_series.get("batch_size", [])}, "Gateway: mean batch size (mnist)", "rows"
        ),
        line_chart(
            {
                "queue depth": metric_series.get("queue_depth", []),
                "queue delay ms": metric_series.get("queue_delay_ms", []),
            },
            "Gateway: batcher queue depth and mean queue delay (mnist)",
            "requests / ms",
        ),
    ]

    def table(rows: list[dict]) -> str:
        if not rows:
            return "<p>none</p>"
        head = "".join(f"<th>{escape(str(k))}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    endpoint_rows = [{"endpoint": name} | figures for name, figures in summary["endpoints"].items()]
    error_rows = [{"endpoint: error": k, "count": v} for k, v in summary["errors"].items()]
    found = summary["capacity"]
    finding = (
        f"Highest step rate with p99 under {P99_BUDGET_MS:.0f} ms: <b>{found['rps']} req/s</b> "
        f"({found['users']} users, p99 {found['p99']} ms)"
        if found
        else f"No step kept p99 under {P99_BUDGET_MS:.0f} ms."
    )
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>Gateway load test</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f4f4f4}}</style></head><body>
<h1>Gateway load test: {escape(summary["scenario"])}</h1>
<p>{escape(summary["command"])}</p><p>{finding}</p>
<h2>Per endpoint</h2>{table(endpoint_rows)}
<h2>Per step of the ramp</h2>{table(summary["steps"])}
<h2>Errors by code</h2>{table(error_rows)}
<h2>Over time</h2>{"".join(f"<div>{chart}</div>" for chart in charts)}
</body></html>"""
    path.write_text(html)
