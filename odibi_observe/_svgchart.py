"""The stacked-bar chart of the self-contained HTML pages, as inline SVG.

The reconciliation report (discrepancies over time) and the status page (runs by status over
time) draw the same chart: one bar a time bucket, one stacked segment a series, three grid
lines, a tick label every few bars. One drawing keeps the two pages alike and needs no script
and no external resource (both pages promise to open anywhere, offline).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

GRID: str = "#e3e7ee"
INK: str = "#5b6578"


@dataclass(frozen=True)
class Bar:
    """One time bucket: its count per series, its tick label and the time its tooltips name."""

    counts: Mapping[str, int]
    tick: str
    stamp: str


@dataclass(frozen=True)
class Frame:
    """The chart's size in SVG units, and how many tick labels it shows at most."""

    width: int
    height: int
    bottom: int
    ticks: int
    tick_y: float
    left: int = 40
    top: int = 10


def stacked_bars(
    bars: Sequence[Bar],
    series: Sequence[str],
    colour: Callable[[str], str],
    frame: Frame,
    label: str,
) -> str:
    """The ``<svg>`` of ``bars``, stacking ``series`` in order (unknown series are not drawn)."""
    peak = max((sum(b.counts.get(s, 0) for s in series) for b in bars), default=0) or 1
    plot_w = frame.width - frame.left - 10
    plot_h = frame.height - frame.bottom - frame.top
    bar_w = plot_w / max(len(bars), 1)
    out = []
    for fraction in (0, 0.5, 1):
        y = frame.top + plot_h * (1 - fraction)
        out.append(
            f'<line x1="{frame.left}" x2="{frame.width - 10}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="{GRID}"/><text x="{frame.left - 6}" y="{y + 4:.1f}" '
            f'font-size="11" text-anchor="end" fill="{INK}">'
            f"{round(peak * fraction):,}</text>"
        )
    label_every = max(1, round(len(bars) / frame.ticks))
    for i, bar in enumerate(bars):
        x = frame.left + i * bar_w
        y = frame.top + plot_h
        for name in series:
            n = bar.counts.get(name, 0)
            if not n:
                continue
            h = plot_h * n / peak
            y -= h
            out.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour(name)}"><title>{escape(bar.stamp)} '
                f"{escape(name)}: {n:,}</title></rect>"
            )
        if i % label_every == 0:
            out.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{frame.tick_y}" font-size="11" '
                f'text-anchor="middle" fill="{INK}">{escape(bar.tick)}</text>'
            )
    return (
        f'<svg width="100%" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'aria-label="{escape(label)}">{"".join(out)}</svg>'
    )
