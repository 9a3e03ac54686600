"""Inline SVG charts for the HTML report (``kvtest report``, the pytest-html figures): no library, no
script, nothing fetched; a point's figure is its ``<title>`` (the browser's tooltip)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Bar", "Marker", "bar_chart", "line_chart", "nice_ticks"]

@dataclass(frozen=True)
class Marker:
    """A vertical line at ``index`` (a stack change) with a short label and a longer tooltip."""

    index: int
    label: str
    title: str


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    title: str
    css: str = "bar"


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least ``top``: 0, 0.5, 1.0, 1.5 or 0, 20, 40 ..."""
    if not top > 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _tick(value: float) -> str:
    return f"{value:g}"


def line_chart(labels: Sequence[str], values: Sequence[float | None], *, unit: str, title: str,
               markers: Sequence[Marker] = (), flagged: Sequence[tuple[int, str]] = (),
               width: int = 760, height: int = 170) -> str:
    """One series over ``labels`` (nights); None is a gap. ``flagged`` points (a regression) are drawn
    red and larger, with their own tooltip; ``markers`` are dashed verticals (a CANN change)."""
    left, right, top, bottom = 48, 12, 22, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    finite = [v for v in values if v is not None]
    ticks = nice_ticks(max(finite, default=0.0))
    y_max = ticks[-1]
    n = len(labels)

    def x(i: int) -> float:
        return left + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for t in ticks:
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{_num(y(t))}" '
                   f'y2="{_num(y(t))}"/><text class="tick" x="{left - 4}" y="{_num(y(t) + 4)}" '
                   f'text-anchor="end">{_tick(t)}</text>')
    out.append(f'<text class="tick" x="4" y="{top - 8}">{escape(unit)}</text>')
    step = max(1, math.ceil(n / 8))
    for i in range(0, n, step):
        out.append(f'<text class="tick" x="{_num(x(i))}" y="{height - 10}" '
                   f'text-anchor="middle">{escape(labels[i])}</text>')
    for m in markers:
        out.append(f'<g class="marker"><title>{escape(m.title)}</title><line x1="{_num(x(m.index))}" '
                   f'x2="{_num(x(m.index))}" y1="{top}" y2="{top + plot_h}"/>'
                   f'<text x="{_num(x(m.index) + 3)}" y="{top + 10}">{escape(m.label)}</text></g>')
    segment: list[str] = []
    segments: list[list[str]] = []
    for i, v in enumerate(values):
        if v is None:
            if segment:
                segments.append(segment)
            segment = []
        else:
            segment.append(f"{_num(x(i))},{_num(y(v))}")
    if segment:
        segments.append(segment)
    for seg in segments:
        out.append(f'<polyline class="series" points="{" ".join(seg)}"/>')
    red = dict(flagged)
    for i, v in enumerate(values):
        if v is None:
            continue
        tip = f"{labels[i]}: {v:.3g} {unit}" + (f" — {red[i]}" if i in red else "")
        css, r = ("point flagged", 5) if i in red else ("point", 2.5 if n > 40 else 3.5)
        out.append(f'<circle class="{css}" cx="{_num(x(i))}" cy="{_num(y(v))}" r="{r}">'
                   f'<title>{escape(tip)}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(bars: Sequence[Bar], *, unit: str, title: str, width: int = 760) -> str:
    """Horizontal bars, one per item, labelled on the left; an empty list draws nothing."""
    if not bars:
        return ""
    row, label_w, right, top = 18, 200, 60, 20
    height = top + row * len(bars) + 8
    ticks = nice_ticks(max(b.value for b in bars))
    scale = (width - label_w - right) / ticks[-1]
    out = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for t in ticks:
        gx = _num(label_w + t * scale)
        out.append(f'<line class="grid" x1="{gx}" x2="{gx}" y1="{top - 4}" y2="{height - 8}"/>'
                   f'<text class="tick" x="{gx}" y="{top - 8}" text-anchor="middle">{_tick(t)}</text>')
    out.append(f'<text class="tick" x="4" y="{top - 8}">{escape(unit)}</text>')
    for i, b in enumerate(bars):
        by = top + i * row
        label = b.label if len(b.label) <= 30 else "…" + b.label[-29:]
        out.append(f'<g><title>{escape(b.title)}</title><text class="label" x="{label_w - 6}" '
                   f'y="{by + 12}" text-anchor="end">{escape(label)}</text><rect class="{b.css}" '
                   f'x="{label_w}" y="{by + 2}" width="{_num(max(b.value * scale, 1.0))}" '
                   f'height="{row - 5}"/>'
                   f'<text class="tick" x="{_num(label_w + b.value * scale + 4)}" y="{by + 12}">'
                   f'{b.value:.3g}</text></g>')
    out.append("</svg>")
    return "".join(out)
