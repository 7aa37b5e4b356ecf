"""The geometry of the statement's two charts, drawn as inline SVG by its HTML template.

Two small charts need no charting library: a library would either pull JavaScript into a
page that must open without a network, or bring a plotting stack for a few rectangles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 900, 340
PICO_PER_USD = 10**12
LEFT, RIGHT, TOP, BOTTOM = 90, 20, 20, 90


@dataclass(frozen=True)
class Bar:
    """One step of the waterfall: `start` -> `end` in pico-dollars; totals start at 0."""

    name: str
    start: int
    end: int
    total: bool
    x: float = 0
    y: float = 0
    width: float = 0
    height: float = 0

    @property
    def amount(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (y, dollars)
    zero_y: float
    connectors: list[tuple[float, float, float]]  # (x1, x2, y): a step's end to the next
    width: int = WIDTH
    height: int = HEIGHT


def _nice_step(span: float, count: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about `count` ticks."""
    raw = span / count if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(f * magnitude for f in (1, 2, 2.5, 5, 10) if f * magnitude >= raw)


def waterfall(billed: int, reconciled: int, steps: Sequence[tuple[str, int]]) -> Chart:
    """Billed and reconciled as totals, then each step from reconciled on: the last one
    (the residual) ends at billed when the statement ties."""
    bars = [Bar("billed", 0, billed, True), Bar("reconciled_actual", 0, reconciled, True)]
    level = reconciled
    for name, amount in steps:
        bars.append(Bar(name, level, level + amount, False))
        level += amount
    values = [0, *(b.start for b in bars), *(b.end for b in bars)]
    low, high = min(values), max(values)
    step = _nice_step(float(high - low))
    low = int(step * (low // step)) if low < 0 else 0
    high = int(step * -(-high // step)) if high > 0 else int(step)
    plot_h = HEIGHT - TOP - BOTTOM
    plot_w = WIDTH - LEFT - RIGHT

    def y_of(value: int) -> float:
        return round(TOP + plot_h * (high - value) / (high - low), 2)

    slot = plot_w / len(bars)
    placed = []
    for n, bar in enumerate(bars):
        top, bottom = y_of(max(bar.start, bar.end)), y_of(min(bar.start, bar.end))
        placed.append(
            Bar(
                bar.name,
                bar.start,
                bar.end,
                bar.total,
                x=round(LEFT + n * slot + slot * 0.15, 2),
                y=top,
                width=round(slot * 0.7, 2),
                height=max(round(bottom - top, 2), 1.0),
            )
        )
    decimals = min(6, max(2, -math.floor(math.log10(step / PICO_PER_USD))))
    ticks = []
    value = float(low)
    while value <= high + step / 2:
        dollars = value / PICO_PER_USD
        label = f"{'-' if dollars < 0 else ''}${abs(dollars):,.{decimals}f}"
        ticks.append((y_of(int(value)), label))
        value += step
    connectors = [
        (round(bar.x + bar.width, 2), after.x, y_of(bar.end))
        for bar, after in itertools.pairwise(placed[1:])
    ]
    return Chart(placed, ticks, y_of(0), connectors)


@dataclass(frozen=True)
class Trend:
    """Polylines of the daily ratios (share 0..1 mapped to the plot; None: no point)."""

    series: dict[str, str]
    points: dict[str, list[tuple[float, float, str, float]]]
    labels: list[tuple[float, str]]
    ticks: list[tuple[float, str]]
    width: int = WIDTH
    height: int = 260


def trend(days: Sequence[str], series: dict[str, Sequence[float | None]]) -> Trend:
    """Each series over the days, on one scale from min(0, lowest) to max(1, highest)."""
    height, bottom = 260, 50
    known = [v for values in series.values() for v in values if v is not None]
    low, high = min([0.0, *known]), max([1.0, *known])
    plot_h = height - TOP - bottom
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)

    def place(n: int, value: float) -> tuple[float, float]:
        return (
            round(LEFT + slot * (n + 0.5), 2),
            round(TOP + plot_h * (high - value) / (high - low), 2),
        )

    lines, points = {}, {}
    for name, values in series.items():
        found = [(*place(n, v), days[n], v) for n, v in enumerate(values) if v is not None]
        points[name] = found
        lines[name] = " ".join(f"{x},{y}" for x, y, _, _ in found)
    every = math.ceil(len(days) / 12) or 1
    labels = [(place(n, low)[0], day[5:]) for n, day in enumerate(days) if n % every == 0]
    ticks = []
    for n in range(6):
        value = low + (high - low) * n / 5
        ticks.append((place(0, value)[1], f"{value:.0%}"))
    return Trend(lines, points, labels, ticks)
