"""`gateway skew report`: ask a running gateway for a model's skew; print it, and draw it as HTML."""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

import httpx

from gateway.security.pki import PkiPaths
from gateway.security.tls import client_context

BAR_WIDTH, CHART_HEIGHT = 14, 120


def _bars(edges: list[float], baseline: list[int], live: list[int]) -> str:
    """One SVG: baseline (grey) and live (orange) shares per bin, side by side."""
    total_b, total_l = max(sum(baseline), 1), max(sum(live), 1)
    shares = [(b / total_b, v / total_l) for b, v in zip(baseline, live, strict=True)]
    top = max(max(pair) for pair in shares) or 1.0
    width = len(shares) * (2 * BAR_WIDTH + 4)
    rects = []
    for i, (b, v) in enumerate(shares):
        x = i * (2 * BAR_WIDTH + 4)
        for offset, share, colour in ((0, b, "#999"), (BAR_WIDTH, v, "#e67e22")):
            h = CHART_HEIGHT * share / top
            rects.append(
                f'<rect x="{x + offset}" y="{CHART_HEIGHT - h:.1f}" width="{BAR_WIDTH}" height="{h:.1f}" '
                f'fill="{colour}"><title>{edges[i]:.3g}-{edges[i + 1]:.3g}: {share:.1%}</title></rect>'
            )
    axis = f'<text x="0" y="{CHART_HEIGHT + 14}" font-size="11">{edges[0]:.3g}</text>'
    axis += f'<text x="{width - 30}" y="{CHART_HEIGHT + 14}" font-size="11">{edges[-1]:.3g}</text>'
    return f'<svg width="{width}" height="{CHART_HEIGHT + 20}">{"".join(rects)}{axis}</svg>'


def render_html(report: dict) -> str:
    status = "ALARM" if report["alarm"] else ("no alarm" if report["enough_data"] else "not enough data")
    sections = []
    for name, result in report["features"].items():
        verdict = "ALARM" if result["alarm"] else "ok"
        sections.append(
            f"<h2>{html.escape(name)}: PSI {result['distance']} (threshold {result['threshold']}) {verdict}</h2>"
            f"<p>mean: training {result['baseline_mean']}, live {result['live_mean']}</p>"
            + _bars(result["edges"], result["baseline_counts"], result["live_counts"])
        )
    labels = report["labels"]
    return (
        "<!doctype html><meta charset='utf-8'><title>skew</title><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(report['model'])} v{report['version']}: {status}</h1>"
        f"<p>live window: {report['window']} predictions"
        + (f", none older than {report['window_s']} s" if report.get("window_s") else "")
        + "; grey = training baseline, orange = live</p>"
        f"<p>predicted labels vs training labels: L-inf {labels['distance']} (threshold {labels['threshold']})</p>"
        + "".join(sections)
        + "</body>"
    )


def render_text(report: dict) -> str:
    age = f" (none older than {report['window_s']} s)" if report.get("window_s") else ""
    lines = [f"{report['model']} v{report['version']}: window {report['window']}{age}, alarm {report['alarm']}"]
    lines.append(f"{'feature':<16}{'distance':>10}{'threshold':>11}{'alarm':>7}{'train mean':>12}{'live mean':>11}")
    for name, r in report["features"].items():
        lines.append(
            f"{name:<16}{r['distance']!s:>10}{r['threshold']:>11}{'yes' if r['alarm'] else 'no':>7}"
            f"{r['baseline_mean']!s:>12}{r['live_mean']!s:>11}"
        )
    labels = report["labels"]
    alarm = "yes" if labels["alarm"] else "no"
    lines.append(f"{'labels (L-inf)':<16}{labels['distance']!s:>10}{labels['threshold']:>11}{alarm:>7}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    pki = PkiPaths(args.pki_dir)
    context = client_context(pki.ca_cert, pki.client_cert(args.identity), pki.client_key(args.identity))
    chosen = (("version", args.version), ("window", args.window), ("window_s", args.window_s))
    params = {k: v for k, v in chosen if v is not None}
    with httpx.Client(base_url=args.gateway, verify=context, timeout=30) as client:
        response = client.get(f"/api/v1/models/{args.model}/skew", params=params)
    if response.status_code != 200:
        print(f"gateway: error: {response.status_code} {response.text}")
        return 1
    report = response.json()
    print(render_text(report) if not args.json else json.dumps(report))
    if args.html:
        args.html.write_text(render_html(report))
        print(f"wrote {args.html}")
    return 2 if report["alarm"] else 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="a model's training/serving skew, from a running gateway")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version")
    parser.add_argument("--window", type=int, help="newest N predictions (default: the gateway's skew.window)")
    parser.add_argument(
        "--window-s", type=int, help="none older than this many seconds, 0: no limit (default: skew.window_s)"
    )
    parser.add_argument("--gateway", default="https://127.0.0.1:8443")
    parser.add_argument("--pki-dir", type=Path, default=Path("pki"))
    parser.add_argument("--identity", default="operator", help="client certificate under PKI_DIR/clients/")
    parser.add_argument("--html", type=Path, help="also draw baseline vs live histograms into this HTML file")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.set_defaults(handler=main)
