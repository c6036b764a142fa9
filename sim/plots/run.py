"""The figure of one run (four panels over time) and the gallery's view of it (docs/gallery.md).

    fig = run_figure(result.timeseries, result.scenario)
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from sim.plots import COLORS, capacity_series, log_scale_if_wide, mark_events, time_unit
from sim.plots.compare import compare_figure
from sim.describe import plural
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["run_figure", "gallery_figure"]


def run_figure(ts: dict[str, np.ndarray], s: Scenario, title: str | None = None) -> Figure:
    """Four stacked panels over time: clients; offered load vs capacity; goodput vs waste; queue."""
    unit, unit_name = time_unit(float(ts["t"][-1] + s.bin_width))
    x = ts["t"] / unit
    width = s.bin_width
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True, layout="constrained")
    tier = plural(s.server.workers, "worker")
    if s.server.p2p is not None:
        tier = (f"{s.server.workers:,} dedicated worker{'' if s.server.workers == 1 else 's'} "
                f"+ {s.server.p2p.slots} per supernode")
    fig.suptitle(title or f"{s.name}: {plural(s.population.clients, 'client')}, {tier}", fontsize=13)

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
    ax.step(x, capacity, where="post", color=COLORS["capacity"], ls="--",
            label="capacity: logins/s the workers can serve", gid="capacity")
    shown = [offered, capacity]
    if s.client.limiter is not None:  # what the client's limiter kept from the tier (docs/model.md section 4.7)
        for name, label in (("suppressed", "retries the limiter denied/s (episode ended)"),
                            ("short_circuited", "calls the limiter refused locally/s (not sent)")):
            if name in ts:
                rate = ts[name] / width
                ax.step(x, rate, where="post", color=COLORS[name], ls="-.", label=label, gid=name)
                shown.append(rate)
    if s.client.resume_window > 0 and "resumptions" in ts:  # docs/model.md section 3.4: the cheap class
        rate = ts["resumptions"] / width
        ax.step(x, rate, where="post", color=COLORS["resumptions"], ls="--",
                label="of which resumptions/s (a valid token: cheaper)", gid="resumptions")
        shown.append(rate)
    log_scale_if_wide(ax, *shown)
    ax.set_ylabel("per second")
    ax.set_title("Offered load against capacity", loc="left", fontsize=10)

    ax = axes[2]
    goodput, wasted = ts["successes"] / width, ts["wasted"] / width
    ax.step(x, goodput, where="post", color=COLORS["successes"], label="goodput: logins/s", gid="goodput")
    ax.step(x, wasted, where="post", color=COLORS["wasted"],
            label="wasted: requests/s served after their client timed out", gid="wasted")
    log_scale_if_wide(ax, goodput, wasted)
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
    log_scale_if_wide(ax, *shown)
    ax.set_ylabel("requests / workers")
    ax.set_title(("Queue, workers and supernodes" if s.server.p2p is not None else "Queue and workers")
                 + " (time averages per bin)", loc="left", fontsize=10)
    ax.set_xlabel(f"time since start ({unit_name}; bins of {format_duration(width)})")

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, x[-1] + width / unit)
    mark_events(axes, s, unit, float(ts["t"][-1] + width))
    return fig


def gallery_figure(ts: dict[str, np.ndarray], s: Scenario) -> Figure:
    """The gallery's view of one run: online share and offered load against capacity."""
    scale = f" at --scale {s.scale:g}" if s.scale != 1 else ""
    fig = compare_figure({"this run": ts}, s, title=f"{s.name}{scale}: {plural(s.population.clients, 'client')}")
    fig.legends[0].set_title(None)
    return fig
