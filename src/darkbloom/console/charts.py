"""Small SVG charts drawn on the server (console.md: no CDN, no charting framework).

Each chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` that says the figures in
words, so a screen reader gets the numbers, and uses presentation attributes only (the
Content-Security-Policy forbids inline ``style``). Labels pass through ``markupsafe.escape``.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 600, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 12, 28
ACCENT = "#5b21b6"
GRID = "#d4d0e2"


def _nice_ceiling(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at or above the largest value."""
    if value <= 0:
        return 1.0
    power = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    while power > value:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _frame(title: str, summary: str, top: float, body: list[str], labels: Sequence[str],
           xs: Sequence[float], every: int) -> Markup:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title><desc>{escape(summary)}</desc>"]
    for i in range(5):
        y = TOP + plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{GRID}" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(_number(top * (4 - i) / 4))}</text>")
    parts.extend(body)
    last = len(labels) - 1
    for i, (label, x) in enumerate(zip(labels, xs, strict=True)):
        if i % every == 0 or i == last:
            # The outermost labels hang inwards, so none is cut at the chart's edge.
            anchor = "end" if i == last and i else "start" if i == 0 and last else "middle"
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _summary(labels: Sequence[str], values: Sequence[float], unit: str) -> str:
    if not values:
        return "no data"
    total = sum(values)
    peak = max(range(len(values)), key=lambda i: values[i])
    return (f"{len(values)} points from {labels[0]} to {labels[-1]}; total {total:g} {unit}; "
            f"highest {values[peak]:g} {unit} at {labels[peak]}")


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], unit: str,
              every: int = 1) -> Markup:
    """Vertical bars, one per label; each bar has its own tooltip title."""
    top = _nice_ceiling(max(values, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(values), 1)
    body, xs = [], []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * value / top
        x = LEFT + slot * i
        xs.append(x + slot / 2)
        body.append(f'<rect x="{x + slot * 0.15:.1f}" y="{TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
                    f'height="{h:.1f}" fill="{ACCENT}"><title>{escape(label)}: {value:g} '
                    f"{escape(unit)}</title></rect>")
    return _frame(title, _summary(labels, values, unit), top, body, labels, xs, every)


def line_chart(title: str, labels: Sequence[str], values: Sequence[float], unit: str,
               every: int = 5) -> Markup:
    """A line with its area shaded: for per-minute series."""
    top = _nice_ceiling(max(values, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(values) - 1, 1)
    xs = [LEFT + step * i for i in range(len(values))]
    ys = [TOP + plot_h - plot_h * v / top for v in values]
    body: list[str] = []
    if values:
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        base = TOP + plot_h
        body.append(f'<polygon points="{xs[0]:.1f},{base:.1f} {points} {xs[-1]:.1f},{base:.1f}" '
                    f'fill="{ACCENT}" fill-opacity="0.15"/>')
        body.append(f'<polyline points="{points}" fill="none" stroke="{ACCENT}" stroke-width="2"/>')
    return _frame(title, _summary(labels, values, unit), top, body, labels, xs, every)
