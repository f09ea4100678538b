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


COLOURS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
LINE_WIDTH, LINE_HEIGHT = 420, 140


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _lines(series: dict[str, list[float | None]], top: float, guides: dict[float, str]) -> str:
    """One SVG: each series as a polyline over equally spaced points, 0 at the bottom, ``top`` at the top."""
    points = max((len(v) for v in series.values()), default=0)
    if points == 0:
        return "<p>no history yet</p>"
    x_of = (lambda i: LINE_WIDTH / 2) if points == 1 else (lambda i: i * LINE_WIDTH / (points - 1))

    def y_of(value: float) -> float:
        return LINE_HEIGHT - LINE_HEIGHT * min(value, top) / top

    parts = [
        f'<line x1="0" x2="{LINE_WIDTH}" y1="{y_of(level):.1f}" y2="{y_of(level):.1f}" stroke="{colour}" '
        f'stroke-dasharray="4 3"><title>{level:.3g}</title></line>'
        for level, colour in guides.items()
    ]
    legend = []
    for n, (name, values) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        coords = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in enumerate(values) if v is not None)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        legend.append(f'<span style="color:{colour}">&#9632; {html.escape(name)}</span>')
    svg = f'<svg width="{LINE_WIDTH}" height="{LINE_HEIGHT + 4}">{"".join(parts)}</svg>'
    return svg + "<div style='font-size:12px'>" + " &nbsp; ".join(legend) + "</div>"


def _calibration_line(skew: dict) -> str:
    calibration = skew.get("calibration")
    if calibration is None:
        return "fixed thresholds (this version's baseline has no calibration)"
    return (
        f"thresholds calibrated on the null for a {calibration['false_alarm_rate']:.1%} false-alarm rate per "
        f"window, whole model (window size {calibration['calibrated_window']}, per test "
        f"{calibration['per_test_level']:.4f}; {calibration['method']})"
    )


def _surface_html(name: str, skew: dict, live_accuracy: dict | None) -> str:
    status = "ALARM" if skew["alarm"] else ("no alarm" if skew["enough_data"] else "not enough data")
    history = skew["history"]
    tests = list(skew["features"]) + ["labels"]
    ratios = {
        test: [
            None
            if point["tests"][test]["distance"] is None
            else point["tests"][test]["distance"] / point["tests"][test]["threshold"]
            for point in history
        ]
        for test in tests
    }
    top = max([2.0, *(r for values in ratios.values() for r in values if r is not None)])
    measured = None if live_accuracy is None else live_accuracy.get("accuracy")
    accuracy_series = {"estimated (calibrated confidence)": [p["estimated_accuracy"] for p in history]}
    guides = {measured: "#e67e22"} if measured is not None else {}
    histograms = "".join(
        f"<h3>{html.escape(feature)}: PSI {r['distance']} (threshold {r['threshold']}) "
        f"{'ALARM' if r['alarm'] else 'ok'}</h3>"
        f"<p>mean: baseline {r['baseline_mean']}, live {r['live_mean']}</p>"
        + _bars(r["edges"], r["baseline_counts"], r["live_counts"])
        for feature, r in skew["features"].items()
    )
    labels = skew["labels"]
    return (
        f"<h2>{html.escape(name)} surface: {status}</h2>"
        f"<p>live window: {skew['window']} predictions; baseline: {html.escape(str(skew.get('baseline_source')))}</p>"
        f"<p>{html.escape(_calibration_line(skew))}</p>"
        f"<p>accuracy estimated without labels: {_percent(skew['estimated_accuracy'])} "
        f"({'trusted' if skew.get('estimate_trusted') else 'not trusted'}: "
        f"{html.escape(skew.get('estimate_note', ''))})"
        f"; measured from feedback (this version, all surfaces): {_percent(measured)}</p>"
        "<h3>distance / calibrated threshold over time (dashed: the threshold)</h3>"
        + _lines(ratios, top, {1.0: "#c0392b"})
        + "<h3>estimated accuracy over time (dashed orange: measured from feedback)</h3>"
        + _lines(accuracy_series, 1.0, guides)
        + f"<p>predicted labels vs baseline: L-inf {labels['distance']} (threshold {labels['threshold']})</p>"
        + histograms
    )


def render_html(report: dict) -> str:
    status = "ALARM" if report["alarm"] else "no alarm"
    sections = "".join(
        _surface_html(name, skew, report.get("live_accuracy")) for name, skew in report["surfaces"].items()
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>skew</title><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(report['model'])} v{report['version']}: {status}</h1>"
        + (f"<p>none older than {report['window_s']} s</p>" if report.get("window_s") else "")
        + "<p>histograms: grey = baseline of the surface, orange = live</p>"
        + sections
        + "</body>"
    )


def render_text(report: dict) -> str:
    age = f", none older than {report['window_s']} s" if report.get("window_s") else ""
    live = report.get("live_accuracy")
    measured = (
        "no feedback yet" if not live else f"{_percent(live['accuracy'])} on {int(live['feedback'])} with feedback"
    )
    lines = [
        f"{report['model']} v{report['version']}: alarm {report['alarm']}{age}; accuracy estimated "
        f"{_percent(report['estimated_accuracy'])}, measured from feedback {measured}"
    ]
    for name, skew in report["surfaces"].items():
        verdict = "ALARM" if skew["alarm"] else ("no alarm" if skew["enough_data"] else "not enough data")
        lines.append("")
        lines.append(
            f"{name}: window {skew['window']}, {verdict}, estimated accuracy {_percent(skew['estimated_accuracy'])}"
            + ("" if skew.get("estimate_trusted") else f" (not trusted: {skew.get('estimate_note')})")
        )
        lines.append(f"  {_calibration_line(skew)}")
        lines.append(f"  {'test':<16}{'distance':>10}{'threshold':>11}{'alarm':>7}{'base mean':>12}{'live mean':>11}")
        for feature, r in skew["features"].items():
            lines.append(
                f"  {feature:<16}{r['distance']!s:>10}{r['threshold']:>11}{'yes' if r['alarm'] else 'no':>7}"
                f"{r['baseline_mean']!s:>12}{r['live_mean']!s:>11}"
            )
        labels = skew["labels"]
        alarm = "yes" if labels["alarm"] else "no"
        lines.append(f"  {'labels (L-inf)':<16}{labels['distance']!s:>10}{labels['threshold']:>11}{alarm:>7}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    pki = PkiPaths(args.pki_dir)
    context = client_context(pki.ca_cert, pki.client_cert(args.identity), pki.client_key(args.identity))
    chosen = (
        ("version", args.version),
        ("window", args.window),
        ("window_s", args.window_s),
        ("surface", args.surface),
    )
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
    parser.add_argument("--surface", choices=("photo", "tensor"), help="one input surface (default: both)")
    parser.add_argument("--gateway", default="https://127.0.0.1:8443")
    parser.add_argument("--pki-dir", type=Path, default=Path("pki"))
    parser.add_argument("--identity", default="operator", help="client certificate under PKI_DIR/clients/")
    parser.add_argument(
        "--html",
        type=Path,
        help="also draw it into this HTML file (histograms, distance vs threshold and accuracy over time)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.set_defaults(handler=main)
