"""The figure of a comparison: every variant's online share and offered load on shared axes.

    fig = compare_figure({r.name: r.timeseries for r in results}, scenario)
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from sim.plots import capacity_series, log_scale_if_wide, mark_events, time_unit
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["compare_figure"]


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
    log_scale_if_wide(axes[1], *offered_all, *capacities.values())
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
    mark_events(axes, s, unit, float(first["t"][-1] + width))
    return fig


def _wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text
