"""The console's charts: matplotlib figures written as SVG (text kept as text), rendered off the event loop."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime

import matplotlib
from matplotlib.figure import Figure

matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "tailor", "font.size": 9,
                            "axes.spines.top": False, "axes.spines.right": False})
COLORS = ["#3b6fd8", "#e0793a", "#3aa76d", "#c94f7c", "#7b5fc9", "#8a8a8a"]


def _svg(figure: Figure) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", bbox_inches="tight")
    text = out.getvalue()
    return text[text.index("<svg"):]  # inline in the page: without the XML prolog and doctype


def _lines(title: str, series: dict[str, tuple[list[datetime], list[float]]], ylabel: str) -> str:
    figure = Figure(figsize=(6.4, 2.4))
    axes = figure.subplots()
    for (name, (xs, ys)), color in zip(series.items(), COLORS * 4):
        axes.plot(xs, ys, label=name, color=color, linewidth=1.6)  # type: ignore[arg-type]  # datetimes plot as dates
    axes.set_title(title, loc="left")
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=0)
    axes.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        axes.legend(frameon=False, loc="upper left")
    figure.autofmt_xdate()
    return _svg(figure)


def _bars(title: str, labels: list[str], values: list[float], ylabel: str, limit: float | None = None,
          threshold: float | None = None) -> str:
    figure = Figure(figsize=(6.4, 2.4))
    axes = figure.subplots()
    axes.bar(labels, values, color=[COLORS[i % len(COLORS)] for i in range(len(labels))])
    for x, value in enumerate(values):
        axes.annotate(f"{value:.0%}" if limit == 1 else f"{value:,.0f}", (x, value), ha="center", va="bottom")
    if threshold is not None:
        axes.axhline(threshold, color="#888", linestyle="--", linewidth=1)
    axes.set_title(title, loc="left")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, limit if limit is not None else max([*values, 1]) * 1.15)
    axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


async def lines(title: str, series: dict[str, tuple[list[datetime], list[float]]], ylabel: str = "") -> str:
    """A line chart, one line per named series of (times, values), as inline SVG."""
    return await asyncio.to_thread(_lines, title, series, ylabel)


async def bars(title: str, labels: list[str], values: list[float], ylabel: str = "", limit: float | None = None,
               threshold: float | None = None) -> str:
    """A bar chart with each bar's value written on it (as a percentage when limit is 1), as inline SVG."""
    return await asyncio.to_thread(_bars, title, labels, values, ylabel, limit, threshold)
