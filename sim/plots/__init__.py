"""Figures of runs, comparisons, sweeps and load tests: the only package that imports matplotlib.

It sets matplotlib's Agg backend once, before pyplot loads. The figure functions take plain data
(time series, the scenario, sweep points, curves) and return matplotlib Figures; `save_figure`
writes them as PNG and SVG, `figure_images` also gives the PNG bytes a report embeds.

    >>> fig = run_figure(result.timeseries, result.scenario)
    >>> png, paths = figure_images(fig, Path("out/quickstart/storm"))
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sim.scenario import Scenario  # noqa: E402
from sim.units import format_duration  # noqa: E402

__all__ = ["run_figure", "compare_figure", "gallery_figure", "heatmap_figure", "phase_figure", "versus_figure",
           "save_figure", "png_bytes", "figure_images", "time_unit", "capacity_series", "event_marks",
           "mark_events", "log_scale_if_wide", "Figure", "COLORS", "SPANS", "DPI"]

COLORS = {"online": "#2a9d8f", "connecting": "#e9c46a", "gave_up": "#e76f51", "offline": "#8d99ae",
          "attempts": "#264653", "capacity": "#d62828", "successes": "#2a9d8f", "wasted": "#e76f51",
          "queue": "#6a4c93", "busy": "#f4a261", "workers": "#d62828", "supernodes": "#457b9d"}
SPANS = {"outage": "#d62828", "partition": "#f4a261", "surge": "#6a4c93", "failover": "#d62828"}
#: dots per inch of every PNG, written or embedded: readable on a laptop screen
DPI = 110


def time_unit(duration: float) -> tuple[float, str]:
    """Seconds per unit of the time axis and its name: minutes up to 3 h, hours up to 3 d, else days."""
    if duration <= 3 * 3600:
        return 60.0, "minutes"
    if duration <= 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def capacity_series(ts: dict[str, np.ndarray], s: Scenario) -> np.ndarray:
    """Logins/s the workers can complete in each bin: workers / mean service time, 0 in an outage."""
    mean = s.server.service_time.mean
    capacity = ts["workers"] / mean if mean > 0 else np.full(len(ts["t"]), np.inf)
    width = s.bin_width
    for e in s.events:
        if e.kind == "outage":
            down = (ts["t"] + width > e.at) & (ts["t"] < e.at + e.duration)
            overlap = np.clip(np.minimum(ts["t"] + width, e.at + e.duration) - np.maximum(ts["t"], e.at), 0, width)
            capacity = np.where(down, capacity * (1 - overlap / width), capacity)
    return capacity


def event_marks(s: Scenario) -> list[tuple[float, float, str, str]]:
    """(start, end, kind, label) of each event as drawn: a line where end == start, else a band."""
    marks = []
    for e in s.events:
        if e.at >= s.duration:
            continue
        if e.kind in ("reboot", "disconnect", "login"):
            for offset, share in e.wave_table():
                label = f"{e.kind} {e.fraction:.0%}" + (f" (wave {share:.0%})" if len(e.wave_table()) > 1 else "")
                marks.append((e.at + offset, e.at + offset, e.kind, label))
        elif e.kind in ("outage", "partition", "surge"):
            marks.append((e.at, e.at + e.duration, e.kind, f"{e.kind} {format_duration(e.duration)}"))
        elif e.kind == "admit":
            marks.append((e.at, e.at, e.kind, f"admit {e.fraction:.0%}"))
        elif e.kind == "capacity":
            marks.append((e.at, e.at + e.ramp, e.kind, f"capacity x{e.factor:g}"))
        elif e.kind == "p2p-rules":
            marks.append((e.at, e.at, e.kind, "p2p: " + ", ".join(f"{k}={v:g}" for k, v in e.changes().items())))
        else:
            marks.append((e.at, e.at, e.kind, f"failover x{e.factor:g}"))
    return marks


def mark_events(axes, s: Scenario, unit: float, shown_until: float, label_top: bool = True) -> None:
    """Markers for the events that start within the plotted time (a run cut short by --until
    plots less than the scenario's duration)."""
    # Labels closer than 2.5 % of the axis to the previous label would print over it: the
    # line is drawn, the label is left out (the scenario's event table has them all).
    min_gap = 0.025 * shown_until
    for k, ax in enumerate(axes):
        labelled = -math.inf
        for start, end, kind, label in sorted(event_marks(s)):
            if start >= shown_until:
                continue
            end = min(end, shown_until)
            color = SPANS.get(kind, "#555555")
            if end > start and kind in SPANS:
                ax.axvspan(start / unit, end / unit, color=color, alpha=0.12, lw=0)
            ax.axvline(start / unit, color=color, ls="--", lw=1, alpha=0.8, gid=f"event:{kind}")
            if k == 0 and label_top and start - labelled >= min_gap:
                labelled = start
                ax.annotate(label, (start / unit, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                            textcoords="offset points", va="top", fontsize=8, color=color, rotation=90,
                            bbox=dict(facecolor="white", alpha=0.75, lw=0, pad=0.5))


def log_scale_if_wide(ax, *series: np.ndarray) -> None:
    """A log scale where the plotted range spans more than two decades."""
    values = np.concatenate([np.asarray(x, dtype=float) for x in series])
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive) and positive.max() / max(positive.min(), 1e-12) > 300:
        ax.set_yscale("symlog", linthresh=max(1e-3, float(np.percentile(positive, 5))))


def png_bytes(fig: Figure) -> bytes:
    """The figure as the PNG `save_figure` writes, for a page to embed; the figure is left open."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_figure(fig: Figure, stem: Path, svg: bool = True) -> list[Path]:
    """Write `stem`.png (readable on a laptop screen) and `stem`.svg; closes the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png")] + ([stem.with_suffix(".svg")] if svg else [])
    fig.savefig(paths[0], dpi=DPI)
    if svg:
        fig.savefig(paths[1])
    plt.close(fig)
    return paths


def figure_images(fig: Figure, stem: Path, svg: bool = True, keep_layout: bool = False) -> tuple[bytes, list[Path]]:
    """The PNG bytes for a report to embed, then the files `save_figure` writes; closes the figure.

    `keep_layout` keeps the layout the first rendering computed for the files (big sweep figures:
    a constrained layout need not be redone twice more)."""
    png = png_bytes(fig)
    if keep_layout:
        fig.set_layout_engine("none")
    return png, save_figure(fig, stem, svg)


# The figures, after the helpers they import from here.
from sim.plots.compare import compare_figure  # noqa: E402
from sim.plots.run import gallery_figure, run_figure  # noqa: E402
from sim.plots.sweep import heatmap_figure, phase_figure  # noqa: E402
from sim.plots.versus import versus_figure  # noqa: E402
