"""Figures of runs and comparisons: the only module that imports matplotlib (Agg backend).

Functions take time series (the columns of timeseries.csv) and the scenario, and return
matplotlib Figures; `save_figure` writes them as PNG and SVG.

    >>> fig = run_figure(result.timeseries, result.scenario)
    >>> save_figure(fig, Path("out/quickstart/storm"))
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sim.scenario import Scenario  # noqa: E402
from sim.units import format_duration  # noqa: E402

__all__ = ["run_figure", "compare_figure", "gallery_figure", "save_figure", "time_unit", "capacity_series", "event_marks"]

COLORS = {"online": "#2a9d8f", "connecting": "#e9c46a", "gave_up": "#e76f51", "offline": "#8d99ae",
          "attempts": "#264653", "capacity": "#d62828", "successes": "#2a9d8f", "wasted": "#e76f51",
          "queue": "#6a4c93", "busy": "#f4a261", "workers": "#d62828", "supernodes": "#457b9d"}
SPANS = {"outage": "#d62828", "partition": "#f4a261", "surge": "#6a4c93", "failover": "#d62828"}


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


def _mark_events(axes, s: Scenario, unit: float, shown_until: float, label_top: bool = True) -> None:
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


def _maybe_log(ax, *series: np.ndarray) -> None:
    """A log scale where the plotted range spans more than two decades."""
    values = np.concatenate([np.asarray(x, dtype=float) for x in series])
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive) and positive.max() / max(positive.min(), 1e-12) > 300:
        ax.set_yscale("symlog", linthresh=max(1e-3, float(np.percentile(positive, 5))))


def run_figure(ts: dict[str, np.ndarray], s: Scenario, title: str | None = None) -> Figure:
    """Four stacked panels over time: clients; offered load vs capacity; goodput vs waste; queue."""
    unit, unit_name = time_unit(float(ts["t"][-1] + s.bin_width))
    x = ts["t"] / unit
    width = s.bin_width
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True, layout="constrained")
    tier = f"{s.server.workers:,} workers"
    if s.server.p2p is not None:
        tier = f"{s.server.workers:,} dedicated worker{'' if s.server.workers == 1 else 's'} + {s.server.p2p.slots} per supernode"
    fig.suptitle(title or f"{s.name}: {s.population.clients:,} clients, {tier}", fontsize=13)

    ax = axes[0]
    for name, label in (("online", "online"), ("connecting", "connecting (logging in or waiting to retry)"),
                        ("gave_up", "gave up")):
        ax.step(x, ts[name], where="post", color=COLORS[name], label=label, gid=name)
    ax.set_ylabel("clients")
    ax.set_title("Clients by state", loc="left", fontsize=10)

    ax = axes[1]
    offered = ts["attempts"] / width
    capacity = capacity_series(ts, s)
    ax.step(x, offered, where="post", color=COLORS["attempts"], label="offered: attempts/s", gid="offered")
    ax.step(x, capacity, where="post", color=COLORS["capacity"], ls="--", label="capacity: logins/s the workers can serve",
            gid="capacity")
    _maybe_log(ax, offered, capacity)
    ax.set_ylabel("per second")
    ax.set_title("Offered load against capacity", loc="left", fontsize=10)

    ax = axes[2]
    goodput, wasted = ts["successes"] / width, ts["wasted"] / width
    ax.step(x, goodput, where="post", color=COLORS["successes"], label="goodput: logins/s", gid="goodput")
    ax.step(x, wasted, where="post", color=COLORS["wasted"], label="wasted: requests/s served after their client timed out",
            gid="wasted")
    _maybe_log(ax, goodput, wasted)
    ax.set_ylabel("per second")
    ax.set_title("Goodput against wasted work", loc="left", fontsize=10)

    ax = axes[3]
    ax.step(x, ts["queue"], where="post", color=COLORS["queue"], label="queue (waiting requests)", gid="queue")
    ax.step(x, ts["busy"], where="post", color=COLORS["busy"], label="busy workers", gid="busy")
    ax.step(x, ts["workers"], where="post", color=COLORS["workers"], ls=":", label="workers", gid="workers")
    shown = [ts["queue"], ts["busy"], ts["workers"]]
    if s.server.p2p is not None:
        ax.step(x, ts["supernodes"], where="post", color=COLORS["supernodes"], ls="--", label="supernodes",
                gid="supernodes")
        shown.append(ts["supernodes"])
    _maybe_log(ax, *shown)
    ax.set_ylabel("requests / workers")
    ax.set_title(("Queue, workers and supernodes" if s.server.p2p is not None else "Queue and workers")
                 + " (time averages per bin)", loc="left", fontsize=10)
    ax.set_xlabel(f"time since start ({unit_name}; bins of {format_duration(width)})")

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, x[-1] + width / unit)
    _mark_events(axes, s, unit, float(ts["t"][-1] + width))
    return fig


def compare_figure(series: dict[str, dict[str, np.ndarray]], s: Scenario, title: str | None = None,
                   scenarios: dict[str, Scenario] | None = None) -> Figure:
    """Online share and offered load of every variant on shared axes.

    `scenarios` maps a variant to its own scenario where overrides change the capacity: then each
    variant gets its own capacity line in its colour; where all capacities agree there is one line.
    Event markers follow `s`, the scenario as given.
    """
    first = next(iter(series.values()))
    unit, unit_name = time_unit(float(first["t"][-1] + s.bin_width))
    width = s.bin_width
    fig, axes = plt.subplots(2, 1, figsize=(12, 8), sharex=True, layout="constrained")
    fig.suptitle(title or f"{s.name}: variants side by side", fontsize=13)
    cmap = plt.get_cmap("tab10")
    scenarios = scenarios or {}
    capacities = {name: capacity_series(ts, scenarios.get(name, s)) for name, ts in series.items()}
    offered_all, lowest = [], 100.0
    for k, (name, ts) in enumerate(series.items()):
        x = ts["t"] / unit
        wanting = ts["online"] + ts["connecting"] + ts["gave_up"]
        share = np.divide(ts["online"], wanting, out=np.ones_like(wanting, dtype=float), where=wanting > 0)
        lowest = min(lowest, 100 * float(share.min()))
        axes[0].step(x, 100 * share, where="post", color=cmap(k % 10), label=name, gid=f"share:{name}")
        offered = ts["attempts"] / width
        offered_all.append(offered)
        axes[1].step(x, offered, where="post", color=cmap(k % 10), gid=f"offered:{name}")
    # One black dashed line per distinct capacity, named by the variants it belongs to.
    groups: list[tuple[np.ndarray, list[str]]] = []
    for name, capacity in capacities.items():
        match = next((g for g in groups if np.array_equal(g[0], capacity)), None)
        if match is None:
            groups.append((capacity, [name]))
        else:
            match[1].append(name)
    styles = ["--", ":", "-.", (0, (5, 2, 1, 2))]
    for j, (capacity, names) in enumerate(groups):
        label = "capacity (logins/s)" if len(groups) == 1 else _wrap(f"capacity of {', '.join(names)}")
        axes[1].step(first["t"] / unit, capacity, where="post", color="black", ls=styles[j % len(styles)], lw=1.5,
                     label=label, gid="capacity" if len(groups) == 1 else f"capacity:{names[0]}")
    _maybe_log(axes[1], *offered_all, *capacities.values())
    # Zoom on the dip (to the next 10 % below it) unless it goes most of the way down anyway.
    bottom = 0.0 if lowest < 30 else 10.0 * np.floor((lowest - 2) / 10)
    axes[0].set_ylim(bottom, 101)
    axes[0].set_ylabel("online share (%)" + (f", axis from {bottom:.0f}" if bottom > 0 else ""))
    axes[0].set_title("Share of clients that want to be online and are", loc="left", fontsize=10)
    axes[1].set_ylabel("attempts per second")
    axes[1].set_title("Offered load (attempts/s) against capacity", loc="left", fontsize=10)
    axes[1].set_ylim(bottom=0)
    axes[1].set_xlabel(f"time since start ({unit_name}; bins of {format_duration(width)})")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlim(0, first["t"][-1] / unit + width / unit)
    handles = axes[0].get_legend_handles_labels()[0] + axes[1].get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9, title="variant (best first)",
               title_fontsize=9, frameon=False)
    _mark_events(axes, s, unit, float(first["t"][-1] + width))
    return fig


def gallery_figure(ts: dict[str, np.ndarray], s: Scenario) -> Figure:
    """The README's view of one run: online share and offered load against capacity."""
    scale = f" at --scale {s.scale:g}" if s.scale != 1 else ""
    fig = compare_figure({"this run": ts}, s, title=f"{s.name}{scale}: {s.population.clients:,} clients")
    fig.legends[0].set_title(None)
    return fig


def _wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def save_figure(fig: Figure, stem: Path, svg: bool = True) -> list[Path]:
    """Write `stem`.png (readable on a laptop screen) and `stem`.svg; closes the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png")] + ([stem.with_suffix(".svg")] if svg else [])
    fig.savefig(paths[0], dpi=110)
    if svg:
        fig.savefig(paths[1])
    plt.close(fig)
    return paths
