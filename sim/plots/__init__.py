"""Figures of runs, comparisons, sweeps and load tests: the only package that imports matplotlib.

It sets matplotlib's Agg backend once, before pyplot loads. The figure functions take plain data
(time series, the scenario, sweep points, curves) and return matplotlib Figures; `save_figure`
writes them as PNG and SVG, `figure_images` also gives the PNG bytes a report embeds.

    >>> fig = run_figure(result.timeseries, result.scenario)
    >>> png, paths = figure_images(fig, Path("out/quickstart/storm"))
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sim.scenario import Scenario  # noqa: E402
from sim.units import format_duration  # noqa: E402

__all__ = ["run_figure", "compare_figure", "gallery_figure", "heatmap_figure", "phase_figure", "versus_figure",
           "save_figure", "png_bytes", "figure_images", "time_unit", "capacity_series", "EventMark", "event_marks",
           "mark_events", "key_marks", "merged_bands", "event_strip", "log_scale_if_wide", "Figure", "COLORS",
           "SPANS", "GREY", "DPI", "MAX_MARKS", "STRIP_BINS", "STRIP_HEIGHT"]

COLORS = {"online": "#2a9d8f", "connecting": "#e9c46a", "gave_up": "#e76f51", "offline": "#8d99ae",
          "attempts": "#264653", "capacity": "#d62828", "successes": "#2a9d8f", "wasted": "#e76f51",
          "queue": "#6a4c93", "busy": "#f4a261", "workers": "#d62828", "supernodes": "#457b9d",
          "suppressed": "#9b5de5", "short_circuited": "#f15bb5",
          "resumptions": "#00a6a6"}
SPANS = {"outage": "#d62828", "partition": "#f4a261", "surge": "#6a4c93", "failover": "#d62828"}
GREY = "#555555"  # the events without a band colour: reboots, logins, admits, capacity changes
#: dots per inch of every PNG, written or embedded: readable on a laptop screen
DPI = 110
#: more event marks than this within the plotted time are aggregated (`mark_events`)
MAX_MARKS = 30
#: columns and height (share of a panel) of the strip that counts events when they are aggregated
STRIP_BINS, STRIP_HEIGHT = 200, 0.06


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


class EventMark(NamedTuple):
    """An event as drawn: a line at `start`, a band to `end` where it is later; `share`: the share of
    the clients it hits (1 for what hits the whole tier), which ranks events when there are many."""

    start: float
    end: float
    kind: str
    label: str
    share: float = 1.0


def event_marks(s: Scenario) -> list[EventMark]:
    """The marks of the scenario's events, one per wave of a wave event, in the scenario's order."""
    marks = []
    for e in s.events:
        if e.at >= s.duration:
            continue
        if e.kind in ("reboot", "disconnect", "login"):
            waves = e.wave_table()
            for offset, share in waves:
                label = f"{e.kind} {e.fraction:.0%}" + (f" (wave {share:.0%})" if len(waves) > 1 else "")
                marks.append(EventMark(e.at + offset, e.at + offset, e.kind, label, e.fraction * share))
        elif e.kind in ("outage", "partition", "surge"):
            marks.append(EventMark(e.at, e.at + e.duration, e.kind, f"{e.kind} {format_duration(e.duration)}",
                                   e.fraction if e.kind == "partition" else 1.0))
        elif e.kind == "admit":  # the gate turns away the clients outside `fraction`
            marks.append(EventMark(e.at, e.at, e.kind, f"admit {e.fraction:.0%}", 1.0 - e.fraction))
        elif e.kind == "capacity":
            marks.append(EventMark(e.at, e.at + e.ramp, e.kind, f"capacity x{e.factor:g}"))
        elif e.kind == "p2p-rules":
            marks.append(EventMark(e.at, e.at, e.kind,
                                   "p2p: " + ", ".join(f"{k}={v:g}" for k, v in e.changes().items())))
        elif e.kind == "token-purge":
            marks.append(EventMark(e.at, e.at, e.kind, f"token purge {e.fraction:.0%}", e.fraction))
        else:
            marks.append(EventMark(e.at, e.at, e.kind, f"failover x{e.factor:g}"))
    return marks


def mark_events(axes, s: Scenario, unit: float, shown_until: float, label_top: bool = True) -> None:
    """Markers for the events that start within the plotted time (a run cut short by --until
    plots less than the scenario's duration).

    Up to MAX_MARKS marks: a dashed line (and a band) each on every panel, labelled on the top one.
    Beyond, drawing time and file size stay bounded whatever the number of events: the bands merge,
    a strip along the foot of each panel counts events over time, only the first event and the
    largest of each kind keep a line and a label, and the x label says how many events there are.
    """
    marks = [m._replace(end=min(m.end, shown_until)) for m in sorted(event_marks(s)) if m.start < shown_until]
    # Labels closer than 2.5 % of the axis to one already placed would print over it: the line is
    # drawn, the label is left out (the scenario's event table has them all).
    min_gap = 0.025 * shown_until
    bands = len(marks) <= MAX_MARKS
    if not bands:
        _aggregate_marks(axes, marks, sum(e.at < shown_until for e in s.events), unit, shown_until)
        marks = key_marks(marks, min_gap)
    for k, ax in enumerate(axes):
        placed: list[float] = []
        for start, end, kind, label, _ in marks:
            color = SPANS.get(kind, GREY)
            if bands and end > start and kind in SPANS:
                ax.axvspan(start / unit, end / unit, color=color, alpha=0.12, lw=0)
            ax.axvline(start / unit, color=color, ls="--", lw=1, alpha=0.8, gid=f"event:{kind}")
            if k == 0 and label_top and all(abs(start - p) >= min_gap for p in placed):
                placed.append(start)
                ax.annotate(label, (start / unit, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                            textcoords="offset points", va="top", fontsize=8, color=color, rotation=90,
                            bbox=dict(facecolor="white", alpha=0.75, lw=0, pad=0.5))


def key_marks(marks: list[EventMark], min_gap: float = 0.0) -> list[EventMark]:
    """The few of many marks (in time order) that keep a line and a label, most important first: the
    first, then the largest of each kind (by share of clients hit, then length). Of equals, the
    earliest at least `min_gap` from those already chosen, so that its label has room.

        >>> [m.label for m in key_marks([EventMark(0, 0, "reboot", "reboot 1%", 0.01),
        ...                              EventMark(5, 5, "reboot", "reboot 30%", 0.3)])]
        ['reboot 1% (first)', 'reboot 30% (largest of 2)']
    """
    def size(m: EventMark) -> tuple[float, float]:  # lengths rounded: at + duration - at is not duration
        return m.share, round(m.end - m.start, 6)

    by_kind: dict[str, list[EventMark]] = {}
    for m in marks:
        by_kind.setdefault(m.kind, []).append(m)
    first = marks[0]
    chosen, notes = [first], {id(first): ["first"]}
    for group in sorted(by_kind.values(), key=lambda g: max(map(size, g)), reverse=True):
        top = max(map(size, group))
        equal = [m for m in group if size(m) == top]
        pick = first if any(m is first for m in equal) else next(
            (m for m in equal if all(abs(m.start - c.start) >= min_gap for c in chosen)), equal[0])
        if pick is not first:
            chosen.append(pick)
        notes.setdefault(id(pick), []).extend([f"largest of {len(group):,}"] if len(group) > 1 else [])
    return [m._replace(label=f"{m.label} ({', '.join(notes[id(m)])})" if notes[id(m)] else m.label) for m in chosen]


def merged_bands(marks: list[EventMark], gap: float) -> list[tuple[float, float, str]]:
    """(start, end, kind) of the banded marks (outages, partitions, surges), those of a kind that
    overlap or lie closer than `gap` merged into one: no more bands than fit on the axis."""
    bands: list[tuple[float, float, str]] = []
    for kind in SPANS:
        for start, end in sorted((m.start, m.end) for m in marks if m.kind == kind and m.end > m.start):
            if bands and bands[-1][2] == kind and start <= bands[-1][1] + gap:
                bands[-1] = (bands[-1][0], max(bands[-1][1], end), kind)
            else:
                bands.append((start, end, kind))
    return bands


def event_strip(marks: list[EventMark], shown_until: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Column edges (s) over the plotted time and the mark starts counted in each column, one row per
    colour (the marks drawn in that colour), with the colours."""
    edges = np.linspace(0.0, shown_until, STRIP_BINS + 1)
    colors = list(dict.fromkeys(SPANS.get(m.kind, GREY) for m in marks))
    counts = np.array([np.histogram([m.start for m in marks if SPANS.get(m.kind, GREY) == c], edges)[0]
                       for c in colors])
    return edges, counts, colors


def _aggregate_marks(axes, marks: list[EventMark], events: int, unit: float, shown_until: float) -> None:
    """Draw many marks with a fixed number of artists: one collection of merged bands and one stacked
    strip counting them per panel; say how many under the bottom panel."""
    bands = merged_bands(marks, shown_until / STRIP_BINS)
    rectangles = [[(a / unit, 0), (b / unit, 0), (b / unit, 1), (a / unit, 1)] for a, b, _ in bands]
    edges, counts, colors = event_strip(marks, shown_until)
    peak = int(counts.sum(axis=0).max())
    heights = counts * (STRIP_HEIGHT / peak)
    tops = np.cumsum(heights, axis=0)                                  # stacked: one colour on another
    x = np.repeat(edges / unit, 2)[1:-1]                               # the steps of each column
    strip = [np.column_stack([np.r_[x, x[::-1]], np.r_[np.repeat(top, 2), np.repeat(top - h, 2)[::-1]]])
             for top, h in zip(tops, heights)]
    for ax in axes:
        ax.add_collection(PolyCollection(rectangles, facecolors=[SPANS[kind] for *_, kind in bands], alpha=0.12,
                                         lw=0, transform=ax.get_xaxis_transform(), gid="events:bands"), autolim=False)
        ax.add_collection(PolyCollection(strip, facecolors=colors, alpha=0.35, lw=0,
                                         transform=ax.get_xaxis_transform(), gid="events:strip"), autolim=False)
    waves = f" ({len(marks):,} counting each wave)" if len(marks) != events else ""
    column = format_duration(shown_until / STRIP_BINS)
    note = (f"{events:,} events{waves}: dashed lines mark the first and the largest of each kind; the strip "
            f"along the foot of each panel counts them per {column} (up to {peak:,})")
    axes[-1].set_xlabel(f"{axes[-1].get_xlabel()}\n{note}")


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
