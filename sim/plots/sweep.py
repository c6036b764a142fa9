"""The figures of a parameter sweep: the phase diagram and heatmaps over two grid keys.

    meta, points = read_sweep(Path("out/storm-sweep"))          # sim.sweep_analysis
    fig = phase_figure(points, "server.workers", "events.0.fraction", meta["policies"])

Layout: the first grid key is the x axis, the second the y axis, one panel per policy on a shared
colour scale; a third key gives one row of panels per value. Cells sit at equal spacing whatever the
values (the axis label says whether the steps are equal, geometric or uneven); ticks show the real values.
With one grid key the figures are line plots against it. What the figures draw (cells, boundary,
crossings) is computed in `sim.sweep_analysis`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from sim.sweep_analysis import (FIELDS, REGIMES, TIPPING, Point, axis_label, cell_grid, facet_rows, field_unit,
                                key_values, never_share, number_of, panel_cells, phase_boundary, phase_crossings,
                                regime_share, regimes_present, value_text, wants_log_x)

__all__ = ["heatmap_figure", "phase_figure", "colour_norm"]


# --- colour scales and cell text ------------------------------------------------------

def colour_norm(values: np.ndarray) -> Normalize:
    """One scale for every panel: logarithmic when the positive values span more than two decades."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if len(positive) and positive.max() / positive.min() > 100:
        return LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
    if not len(finite):
        return Normalize(0.0, 1.0)
    low, high = float(finite.min()), float(finite.max())
    return Normalize(low, high if high > low else low + (abs(low) or 1.0))


def _compact(value: float, unit: str) -> str:
    """A cell's number in three characters or so: 4.5, 38, 12k, 1.2M, 45%."""
    if unit == "%":
        return f"{value:.0f}%"
    suffix = {"s": " s", "min": " min", "h": " h"}.get(unit, "")
    for size, letter in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.2g}{letter}" if abs(value) < 10 * size else f"{value / size:.0f}{letter}"
    return (f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}") + suffix


def _ink(rgba: tuple) -> str:
    """Black or white text, whichever reads on this cell colour."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


# --- heatmaps -------------------------------------------------------------------------

def heatmap_figure(points: Sequence[Point], x_key: str, y_key: str | None, field: str, policies: Sequence[str], *,
                   log_x: bool | None = None, log_y: bool | None = None, facet: str | None = None,
                   where: dict[str, Any] | None = None, replications: int | None = None) -> Figure:
    """One panel per policy (a row per value of `facet`), cells coloured by the mean of `field` on one
    shared colour scale and annotated with it; hatched where recovery never happened.

    With `y_key` None it is a line plot of the field against `x_key`, one line per policy.
    `where` fixes other grid keys ({"events.0.at": 300.0}).

        meta, points = read_sweep(Path("out/storm-sweep"))
        fig = heatmap_figure(points, "server.workers", "events.0.fraction", "amplification", meta["policies"])
    """
    if y_key is None:
        return _field_lines(points, x_key, field, policies, log_x, where, replications)
    rows = facet_rows(points, facet, where)
    panels = [[panel_cells(points, x_key, y_key, pol, sel) for pol in policies] for _, sel in rows]
    xs, ys = panels[0][0][0], panels[0][0][1]
    grids = [[cell_grid(c, field, len(xs), len(ys)) for _, _, c in row] for row in panels]
    everything = np.concatenate([v.ravel() for row in grids for v, _ in row])
    scale, unit = field_unit(field, everything)
    norm = colour_norm(everything / scale)
    cmap = plt.get_cmap(FIELDS[field].cmap if field in FIELDS else "viridis")
    fig, axes = _panel_grid(len(rows), len(policies), len(xs), len(ys))
    for r, (title, _) in enumerate(rows):
        for c, policy in enumerate(policies):
            ax, first_col, last_row = axes[r][c]
            values, never = grids[r][c]
            _draw_heat(ax, values / scale, never, panels[r][c][2], norm, cmap, unit, field)
            _label_axes(ax, xs, ys, x_key, y_key, log_x, log_y, first_col, last_row)
            ax.set_title(policy if title is None else f"{policy} — {title}", fontsize=10)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    bar = fig.colorbar(mappable, ax=[a for row in axes for a, _, _ in row], shrink=0.85, pad=0.02)
    bar.set_label(_bar_label(field, unit))
    fig.suptitle(_heat_title(field, replications), fontsize=12)
    if field.startswith("recovery_s") and any(g[1].any() for row in grids for g in row):
        level = field.rsplit("p", 1)[-1]
        fig.legend(handles=[Patch(facecolor="#d9d9d9", hatch="///", edgecolor="#555555",
                                  label=f"hatched: some replications never back to {level} % online; the cell "
                                        "gives their share, and the mean time of the others where known")],
                   loc="outside lower center", fontsize=8.5, frameon=False)
    return fig


def _panel_grid(nfacets: int, npolicies: int, nx: int, ny: int) -> tuple[Figure, list[list[tuple]]]:
    """The figure and, per facet row and policy, (axes, first in its row, lowest in its column).

    Without facets the policies wrap onto more rows where one row would be wider than a screen."""
    width, height = max(3.4, 0.75 * nx + 1.4), max(2.9, 0.5 * ny + 1.5)
    ncols = npolicies if nfacets > 1 else max(1, min(npolicies, int(18 // width)))
    nrows = nfacets if nfacets > 1 else math.ceil(npolicies / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(min(ncols * width + 1.4, 20), min(nrows * height + 1.0, 24)),
                             squeeze=False, layout="constrained")
    if nfacets > 1:
        return fig, [[(axes[r][c], c == 0, r == nrows - 1) for c in range(ncols)] for r in range(nrows)]
    for k in range(npolicies, nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    return fig, [[(axes[k // ncols][k % ncols], k % ncols == 0, k + ncols >= npolicies) for k in range(npolicies)]]


def _draw_heat(ax, values: np.ndarray, never: np.ndarray, cells: dict, norm: Normalize, cmap, unit: str,
               field: str) -> None:
    shown = np.where(values <= 0, norm.vmin, values) if isinstance(norm, LogNorm) else values
    ax.imshow(np.ma.masked_invalid(shown), origin="lower", aspect="auto", norm=norm, cmap=cmap,
              interpolation="nearest")
    ny, nx = values.shape
    size = 9 if nx <= 6 else 7.5 if nx <= 10 else 6
    for j in range(ny):
        for i in range(nx):
            _annotate(ax, i, j, values[j, i], never[j, i], (i, j) in cells, norm, cmap, unit, size)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)


def _annotate(ax, i: int, j: int, value: float, never: float, present: bool, norm, cmap, unit: str,
              size: float) -> None:
    if not present:
        ax.text(i, j, "no data", ha="center", va="center", fontsize=size - 1, color="#777777")
        return
    if never > 0:
        face = "#d9d9d9" if not np.isfinite(value) else "none"
        ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=face, hatch="///", edgecolor="#555555", lw=0))
    if np.isfinite(value):
        text = _compact(value, unit) + (f"\n{never:.0%} never" if never > 0 else "")
        colour = _ink(cmap(norm(max(value, norm.vmin) if isinstance(norm, LogNorm) else value)))
    else:
        text, colour = (f"{never:.0%} never,\nno mean" if 0 < never < 1 else "never") if never > 0 else "n/a", "black"
    box = dict(facecolor="white", alpha=0.8, lw=0, pad=1) if never > 0 else None
    ax.text(i, j, text, ha="center", va="center", fontsize=size, color="black" if box else colour, bbox=box,
            linespacing=1.0)


def _label_axes(ax, xs: list, ys: list, x_key: str, y_key: str, log_x: bool | None, log_y: bool | None,
                first_col: bool, last_row: bool) -> None:
    ax.set_xticks(range(len(xs)), [value_text(x_key, v) for v in xs],
                  rotation=45 if len(xs) > 6 else 0, ha="right" if len(xs) > 6 else "center")
    ax.set_yticks(range(len(ys)), [value_text(y_key, v) for v in ys])
    if last_row:
        ax.set_xlabel(axis_label(x_key, xs, log_x), fontsize=9)
    if first_col:
        ax.set_ylabel(axis_label(y_key, ys, log_y), fontsize=9)
    ax.tick_params(labelsize=8.5)


def _bar_label(field: str, unit: str) -> str:
    title = FIELDS[field].title if field in FIELDS else field
    unit = {"s": "seconds", "min": "minutes", "h": "hours"}.get(unit, unit)
    return f"{title} ({unit})" if unit and unit not in title else title


def _heat_title(field: str, replications: int | None) -> str:
    title = FIELDS[field].title if field in FIELDS else field
    mean = f"mean of {replications} replications" if replications else "mean over the replications"
    return f"{title[0].upper()}{title[1:]} [{field}], {mean}; one colour scale for all panels"


def _field_lines(points: Sequence[Point], x_key: str, field: str, policies: Sequence[str], log_x: bool | None,
                 where: dict[str, Any] | None, replications: int | None) -> Figure:
    """One grid key: the field against it, a line per policy with its 95 % CI; x where never recovered."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8), layout="constrained")
    marked = False
    every = np.array([p.get(field) if isinstance(p.get(field), float) else np.nan for p in points])
    scale, unit = field_unit(field, every)
    cmap = plt.get_cmap("tab10")
    for k, policy in enumerate(policies):
        xs, _, cells = panel_cells(points, x_key, None, policy, where)
        x = np.array([xs[i] for i, _ in sorted(cells)])
        rows = [cells[c] for c in sorted(cells)]
        mean = np.array([number_of(p, field) for p in rows]) / scale
        low, high = (np.array([number_of(p, f"{field}.{e}") for p in rows]) / scale for e in ("ci_low", "ci_high"))
        ax.plot(x, mean, "o-", color=cmap(k % 10), label=policy)
        ax.fill_between(x, low, high, color=cmap(k % 10), alpha=0.15, lw=0)
        never = np.array([never_share(p, field) for p in rows])
        if never.any():  # a row of crosses per policy above the data
            top = np.nanmax(every / scale) if np.isfinite(every).any() else 1.0
            ax.plot(x[never > 0], np.full((never > 0).sum(), top * (1.06 + 0.05 * k)), "x", color=cmap(k % 10),
                    ms=9, mew=2, gid=f"never:{policy}")
            marked = True
    if log_x if log_x is not None else wants_log_x(x_key, points):
        ax.set_xscale("log")
    xs = key_values(points, x_key)
    ax.set_xticks(xs, [value_text(x_key, v) for v in xs])
    if isinstance(colour_norm(every / scale), LogNorm):  # as the heatmaps: log beyond two decades
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}" if v >= 10 and v == round(v) else f"{v:.3g}")
    ax.minorticks_off()
    ax.set_xlabel(axis_label(x_key, xs, log_x))
    ax.set_ylabel(_bar_label(field, unit))
    ax.grid(alpha=0.3)
    fig.suptitle(_heat_title(field, replications).split(";")[0] + "; band: 95 % CI", fontsize=11)
    handles = ax.get_legend_handles_labels()[0]
    if marked:
        level = field.rsplit("p", 1)[-1]
        handles.append(Line2D([], [], color="#555555", marker="x", ls="", ms=8, mew=2,
                              label=f"never back to {level} % online\nin some replications"))
    ax.legend(handles=handles, title="policy", fontsize=8.5, loc="best")
    return fig


# --- phase diagram --------------------------------------------------------------------

def phase_figure(points: Sequence[Point], x_key: str, y_key: str | None, policies: Sequence[str], *,
                 facet: str | None = None, where: dict[str, Any] | None = None, log_x: bool | None = None,
                 log_y: bool | None = None, replications: int | None = None) -> Figure:
    """Per policy, each point's mix of endings as a bar split red | amber | green by share, the
    number its metastable share, and the tipping boundary as a black line between cells.

    With `y_key` None: the three shares against `x_key`, one panel per policy, the crossing marked.
    """
    if y_key is None:
        return _phase_lines(points, x_key, policies, where, log_x, replications)
    rows = facet_rows(points, facet, where)
    xs, ys = key_values(points, x_key), key_values(points, y_key)
    fig, axes = _panel_grid(len(rows), len(policies), len(xs), len(ys))
    for r, (title, sel) in enumerate(rows):
        for c, policy in enumerate(policies):
            ax, first_col, last_row = axes[r][c]
            _, _, cells = panel_cells(points, x_key, y_key, policy, sel)
            _draw_mix(ax, cells, len(xs), len(ys))
            for (x0, y0), (x1, y1) in phase_boundary(points, x_key, y_key, policy, sel):
                ax.plot([x0, x1], [y0, y1], color="black", lw=3, solid_capstyle="round", gid="boundary")
            ax.set_xlim(-0.5, len(xs) - 0.5)
            ax.set_ylim(-0.5, len(ys) - 0.5)
            _label_axes(ax, xs, ys, x_key, y_key, log_x, log_y, first_col, last_row)
            ax.set_title(policy if title is None else f"{policy} — {title}", fontsize=10)
    fig.suptitle(_phase_title(replications), fontsize=12)
    fig.legend(handles=_phase_handles(points, boundary=True), loc="outside lower center", ncols=2, fontsize=8.5,
               frameon=False)
    return fig


def _draw_mix(ax, cells: dict, nx: int, ny: int) -> None:
    size = 9 if nx <= 6 else 7.5 if nx <= 10 else 6
    for j in range(ny):
        for i in range(nx):
            p = cells.get((i, j))
            shares = [regime_share(p, col) for col, _, _ in REGIMES]
            if p is None or not all(isinstance(s, float) for s in shares):
                ax.add_patch(Rectangle((i - 0.45, j - 0.45), 0.9, 0.9, facecolor="#eeeeee", hatch="..",
                                       edgecolor="#bbbbbb", lw=0))
                ax.text(i, j, "no data", ha="center", va="center", fontsize=size - 1, color="#777777")
                continue
            left = i - 0.45
            for share, (_, _, colour) in zip(shares, REGIMES):
                ax.add_patch(Rectangle((left, j - 0.45), 0.9 * share, 0.9, facecolor=colour, lw=0))
                left += 0.9 * share
            ax.text(i, j, f"{shares[0]:.0%}", ha="center", va="center", fontsize=size,
                    bbox=dict(facecolor="white", alpha=0.85, lw=0, pad=1.2, boxstyle="round"))
    ax.set_facecolor("white")


def _phase_title(replications: int | None) -> str:
    reps = f"{replications} replications" if replications else "the replications"
    return f"Phase diagram: how {reps} per point end; number = share metastable"


def _phase_handles(points: Sequence[Point], boundary: bool) -> list:
    handles = [Patch(facecolor=colour, label=label) for _, label, colour in regimes_present(points)]
    if boundary:
        handles.append(Line2D([], [], color="black", lw=3,
                              label=f"tipping boundary: at least {TIPPING:.0%} of the replications metastable"))
    return handles


def _tips_text(key: str, xs: list, cross: float) -> str:
    """`tips between 400 and 800 (≈ 566)`: the grid values either side and the interpolated crossing."""
    below = max((x for x in xs if x <= cross), default=cross)
    above = min((x for x in xs if x >= cross), default=cross)
    rounded = float(f"{cross:.3g}")
    return (f"tips between {value_text(key, below)}\nand {value_text(key, above)} "
            f"(≈ {value_text(key, rounded)})")


def _phase_lines(points: Sequence[Point], x_key: str, policies: Sequence[str], where: dict[str, Any] | None,
                 log_x: bool | None, replications: int | None) -> Figure:
    ncols = min(len(policies), 3)
    nrows = math.ceil(len(policies) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 0.6, 3.6 * nrows + 0.9), squeeze=False,
                             sharey=True, layout="constrained")
    log = wants_log_x(x_key, points) if log_x is None else log_x
    xs_all = key_values(points, x_key)
    for k, policy in enumerate(policies):
        ax = axes[k // ncols][k % ncols]
        xs, _, cells = panel_cells(points, x_key, None, policy, where)
        order = sorted(cells)
        x = [xs[i] for i, _ in order]
        # Stacked bands, worst at the bottom: shares that coincide cannot hide each other, and the
        # red band's top edge is the metastable share that the tipping line reads.
        floor = np.zeros(len(order))
        for col, _label, colour in regimes_present(points):
            share = 100 * np.nan_to_num([number_of(cells[c], col) for c in order])
            ax.fill_between(x, floor, floor + share, color=colour, alpha=0.85, lw=0, gid=col)
            floor = floor + share
        ax.plot(x, [100 * number_of(cells[c], "metastable_share") for c in order], "o-", color="#7a1010", ms=4,
                lw=1.2, gid="metastable")
        ax.axhline(100 * TIPPING, color="black", ls=":", lw=1.2, zorder=3)
        for cross in phase_crossings(points, x_key, policy, where, log):
            ax.axvline(cross, color="black", lw=2, gid="crossing")
            ax.annotate(_tips_text(x_key, xs, cross), (cross, 0.97),
                        xycoords=("data", "axes fraction"), xytext=(4, 0), textcoords="offset points",
                        va="top", fontsize=8.5, bbox=dict(facecolor="white", alpha=0.85, lw=0, pad=1))
        if log:
            ax.set_xscale("log")
        ax.set_xticks(xs_all, [value_text(x_key, v) for v in xs_all], fontsize=8.5)
        ax.minorticks_off()
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(policy, fontsize=10)
        ax.set_xlabel(axis_label(x_key, xs_all, log_x), fontsize=9)
        if k % ncols == 0:
            ax.set_ylabel("share of replications (%)")
    for k in range(len(policies), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    reps = f"{replications} replications" if replications else "the replications"
    fig.suptitle(f"Phase diagram: how {reps} per value end (stacked shares)", fontsize=12)
    handles = _phase_handles(points, boundary=False) + [
        Line2D([], [], color="black", lw=2, label=f"metastable share crosses {TIPPING:.0%} (interpolated)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8.5, frameon=False)
    return fig
