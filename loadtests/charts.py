"""Line charts as inline SVG (no scripts, no network): what the HTML report draws."""

from __future__ import annotations

from html import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    y_label: str,
    *,
    width: int = 760,
    height: int = 240,
    threshold: float | None = None,
) -> str:
    """One SVG chart: x is seconds since the first point of any series, one polyline per series."""
    points = [p for values in series.values() for p in values]
    if not points:
        return f"<p>{escape(title)}: no data</p>"
    x0 = min(x for x, _ in points)
    x_max = max(max(x for x, _ in points) - x0, 1.0)
    y_max = max(max(y for _, y in points), threshold or 0.0) * 1.1 or 1.0
    left, right, top, bottom = 60, 150, 28, 34
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / x_max * plot_w

    def sy(y: float) -> float:
        return top + plot_h - y / y_max * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11"><text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for y in _ticks(0, y_max):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for x in _ticks(0, x_max):
        parts.append(f'<text x="{sx(x0 + x):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{x:.0f}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">seconds</text>')
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    if threshold is not None:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(threshold):.1f}" y2="{sy(threshold):.1f}" '
            f'stroke="#000" stroke-dasharray="4 3"/>'
        )
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(values))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        legend_y = top + 12 + i * 14
        parts.append(f'<rect x="{left + plot_w + 8}" y="{legend_y - 8}" width="10" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{left + plot_w + 22}" y="{legend_y}">{escape(name[:22])}</text>')
    parts.append("</svg>")
    return "".join(parts)
