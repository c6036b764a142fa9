"""The figure of a load test beside its simulated twin: four panels on the load test's clock.

It takes the curves already computed (`loadtests.versus.versus_curves`: one value per bin of each
panel's quantity) and the divergence that judged them; the analysis stays with the load test.

    fig = versus_figure(versus_curves(measured_ts, div), [versus_curves(ts, div) for ts in runs], twin, div, title)
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from sim.plots import mark_events, time_unit
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["versus_figure", "axis_unit", "CURVES", "MEASURED", "SIMULATED"]

MEASURED, SIMULATED = "#1d3557", "#e76f51"
#: the curves a panel each, top to bottom: online share (%), attempts/s, logins/s, failed attempts/s
CURVES = ("online_share", "attempts", "logins", "failed")


def axis_unit(duration: float) -> tuple[float, str]:
    """Seconds for a run of up to 10 minutes (load tests often are), else `time_unit`."""
    return (1.0, "seconds") if duration <= 600 else time_unit(duration)


def versus_figure(measured: dict[str, np.ndarray], simulated: list[dict[str, np.ndarray]], twin: Scenario,
                  div: dict[str, Any], title: str) -> Figure:
    """Four panels on the load test's clock: online share, attempts/s, logins/s, failed attempts/s.

    `measured` and each of `simulated` map "t" (bin starts) and each of CURVES to one value per bin
    compared. `simulated` may be empty: then `div` needs only `bins_compared`, `bin_s` and
    `online_share` with `definition` and `smooth_bins`.

    Measured solid, the simulated mean dashed over the min-max band of the replications; the
    scenario's events (of the compressed `twin`) marked as in the run figure.
    """
    n, width = div["bins_compared"], div["bin_s"]
    unit, unit_name = axis_unit(n * width)
    x = np.asarray(measured["t"][:n], dtype=float) / unit
    bins = div["online_share"]["smooth_bins"]
    panels = [
        ("online share (%)", f"Online share: {div['online_share']['definition']}, {bins}-bin centred moving average"
                             + (" (what the verdict compares)" if simulated else ""), "online_share"),
        ("attempts per second", "Offered load: login attempts per second", "attempts"),
        ("logins per second", "Goodput: successful logins per second", "logins"),
        ("failed attempts per second", "Failed attempts per second: refused (503, 429, connection errors) + timed out",
         "failed"),
    ]
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True, layout="constrained")
    fig.suptitle(title, fontsize=13)
    runs = len(simulated)
    for ax, (ylabel, heading, curve) in zip(axes, panels):
        if runs:                       # without a simulation (no capacity known): the measured storm alone
            sims = np.array([ts[curve] for ts in simulated])
            ax.fill_between(x, np.nanmin(sims, axis=0), np.nanmax(sims, axis=0), step="post", color=SIMULATED,
                            alpha=0.2, lw=0, label=f"simulated: range of {runs} runs (min to max)")
            ax.step(x, np.nanmean(sims, axis=0), where="post", color=SIMULATED, ls="--", lw=1.6,
                    label=f"simulated: mean of {runs} runs")
        ax.step(x, measured[curve], where="post", color=MEASURED, lw=1.6, label="measured: load test")
        ax.set_ylabel(ylabel)
        ax.set_title(heading, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, x[-1] + width / unit)
    _mark_gap(axes[0], div["online_share"], width, unit)
    # Zoom on the dip (to the next 10 points below it), as the compare figure does.
    lowest = min(np.nanmin(line.get_ydata()) for line in axes[0].lines if len(line.get_ydata()))
    bottom = 0.0 if lowest < 30 else 10.0 * np.floor((lowest - 2) / 10)
    axes[0].set_ylim(bottom, max(102.0, axes[0].get_ylim()[1]))
    if bottom > 0:
        axes[0].set_ylabel(f"online share (%), axis from {bottom:.0f}")
    axes[-1].set_xlabel(f"time since the start of the load test ({unit_name} of real time; "
                        f"bins of {format_duration(width)})")
    axes[0].legend(loc="lower right", fontsize=8, framealpha=0.9)
    mark_events(axes, twin, unit, n * width)
    return fig


def _mark_gap(ax, share: dict[str, Any], width: float, unit: float) -> None:
    """An arrow across the largest gap of the online share, with its size against the tolerance."""
    if share.get("max_gap_at_s") is None:
        return
    at = (share["max_gap_at_s"] + width / 2) / unit
    ax.annotate("", (at, 100 * share["measured_at_gap"]), (at, 100 * share["simulated_at_gap"]),
                arrowprops=dict(arrowstyle="<->", color="black", lw=1))
    ax.annotate(f"largest gap {100 * share['max_gap']:.1f} points\n(tolerance {100 * share['tolerance']:.0f})",
                (at, 100 * (share["measured_at_gap"] + share["simulated_at_gap"]) / 2), xytext=(8, 0),
                textcoords="offset points", va="center", fontsize=8,
                bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=1))
