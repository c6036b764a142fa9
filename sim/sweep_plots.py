"""Figures and sweep.html for a parameter sweep: the phase diagram and heatmaps over two grid keys.

    paths = write_sweep_report(Path("out/storm-sweep"))  # reads sweep.json and points.csv there

Reads what `sim/sweep.py` writes into its output directory:

- `sweep.json`: `{"scenario", "grid": {key: [values]} (1 to 3 keys, in order), "policies",
  "replications", "engine", "seed", "points"}`;
- `points.csv`: one row per (point, policy): `point`, `policy`, one column per grid key, `replications`,
  then for each main field F the mean `F` and its 95 % CI `F.ci_low`, `F.ci_high` (empty where undefined),
  `recovery_s.p99.never` (share of replications never back to 99 % online), and the regime shares
  `metastable_share`, `recover_share`, `never_degrade_share` (summing to 1). sim/sweep.py's own
  spelling is read too: `F.low` / `F.high`, `regime.metastable|unrecovered|recovered|undisturbed`
  (a fourth regime, drawn purple) and `recovered_runs`. A figure whose columns are missing is left
  out of sweep.html with a note.

Layout: the first grid key is the x axis, the second the y axis, one panel per policy on a shared
colour scale; a third key gives one row of panels per value. Cells sit at equal spacing whatever the
values (the axis label says whether the steps are equal, geometric or uneven); ticks show the real values.
With one grid key the figures are line plots against it.
"""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim.plots import save_figure  # sets the Agg backend before pyplot loads
from sim.units import format_duration

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

__all__ = ["read_sweep", "read_points", "heatmap_figure", "phase_figure", "phase_boundary", "phase_crossings",
           "share_crossings", "is_geometric", "colour_norm", "points_table", "write_sweep_report", "MAIN_FIELDS",
           "REGIMES", "HEATMAP_FIELDS", "TIPPING"]

Point = dict[str, Any]
Segment = tuple[tuple[float, float], tuple[float, float]]

MAIN_FIELDS = ("recovery_s.p90", "recovery_s.p99", "amplification", "peak_offered_rps", "wasted_work_fraction",
               "lowest_online_share", "attempts", "logins", "gave_up")
#: (column, legend text, colour) of the ends a replication can come to, worst first; the
#: phase diagram needs all but `unrecovered_share` (sim/sweep.py's fourth regime, 0 where absent)
REGIMES = (("metastable_share", "metastable: the storm sustains itself", "#d62828"),
           ("unrecovered_share", "below 99 % online at the end, not metastable", "#6a4c93"),
           ("recover_share", "degrades, then recovers", "#f4a261"),
           ("never_degrade_share", "never degrades (stays at 99 % online)", "#2a9d8f"))
_OPTIONAL_REGIMES = {"unrecovered_share"}
#: sim/sweep.py's names for the regime shares
_REGIME_ALIASES = {"regime.metastable": "metastable_share", "regime.unrecovered": "unrecovered_share",
                   "regime.recovered": "recover_share", "regime.undisturbed": "never_degrade_share"}
HEATMAP_FIELDS = ("recovery_s.p99", "amplification", "peak_offered_rps")
#: a replication "tips" at or above this share of metastable replications
TIPPING = 0.5

#: parts of a scenario key that make its values durations in seconds (`client.timeout`, `server.service_time.mean`)
_DURATIONS = {"at", "spread", "downtime", "duration", "ramp", "propagation", "isolate_at", "resolution", "warmup",
              "session", "offline", "timeout", "connect_delay", "give_up_after", "base", "cap", "service_time",
              "retry_after", "offset"}
_SHARES = {"fraction", "online_at_start", "supernode_fraction"}


@dataclass(frozen=True)
class _Field:
    title: str
    kind: str  # duration | share | rate | ratio | count
    cmap: str


_FIELDS = {
    "recovery_s.p99": _Field("time back to 99 % online", "duration", "YlOrRd"),
    "recovery_s.p90": _Field("time back to 90 % online", "duration", "YlOrRd"),
    "amplification": _Field("amplification: attempts per episode", "ratio", "YlOrRd"),
    "peak_offered_rps": _Field("peak offered load", "rate", "YlOrRd"),
    "wasted_work_fraction": _Field("wasted work (share of busy time)", "share", "YlOrRd"),
    "lowest_online_share": _Field("lowest online share", "share", "YlGn"),
    "attempts": _Field("login attempts", "count", "YlOrRd"),
    "logins": _Field("successful logins", "count", "YlGn"),
    "gave_up": _Field("clients that gave up", "count", "YlOrRd"),
}


# --- reading ------------------------------------------------------------------------------

def read_sweep(out_dir: Path) -> tuple[dict[str, Any], list[Point]]:
    """sweep.json and points.csv of a sweep's output directory; a ValueError says what is missing."""
    meta_path, points_path = out_dir / "sweep.json", out_dir / "points.csv"
    for path in (meta_path, points_path):
        if not path.is_file():
            raise ValueError(f"{path}: not found; is {out_dir} the output of a sweep?")
    meta = json.loads(meta_path.read_text())
    grid = meta.get("grid") or {}
    if not grid:
        raise ValueError(f"{meta_path}: no grid keys")
    points = read_points(points_path)
    if not points:
        raise ValueError(f"{points_path}: no points")
    missing = [k for k in ("point", "policy", *grid) if k not in points[0]]
    if missing:
        raise ValueError(f"{points_path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return meta, points


def read_points(path: Path) -> list[Point]:
    """The rows of points.csv: numbers as floats, empty or non-finite cells as None, the rest as text."""
    with path.open(newline="") as fh:
        return [_normalise({key: _value(text, key) for key, text in row.items()}) for row in csv.DictReader(fh)]


def _normalise(row: Point) -> Point:
    """Also accept sim/sweep.py's spelling: `F.low` / `F.high` for the CI, `regime.NAME` shares and
    `recovered_runs` (from which `recovery_s.p99.never` follows)."""
    for key in [k for k in row if k.endswith((".low", ".high"))]:
        row.setdefault(f"{key.rsplit('.', 1)[0]}.ci_{key.rsplit('.', 1)[1]}", row[key])
    for alias, name in _REGIME_ALIASES.items():
        if alias in row:
            row.setdefault(name, row[alias])
    recovered, reps = row.get("recovered_runs"), row.get("replications")
    if isinstance(recovered, float) and isinstance(reps, float) and reps > 0:
        row.setdefault("recovery_s.p99.never", 1 - recovered / reps)
    return row


def _value(text: str | None, key: str) -> Any:
    if key in ("point", "policy"):
        return text
    if text is None or not text.strip():
        return None
    try:
        number = float(text)
    except ValueError:
        return text.strip()
    return number if math.isfinite(number) else None


# --- grids --------------------------------------------------------------------------------

def _values(points: Sequence[Point], key: str) -> list[Any]:
    """The distinct values of a grid key: numbers ascending, text in first-seen order."""
    seen = list(dict.fromkeys(p[key] for p in points if p.get(key) is not None))
    return sorted(seen) if all(isinstance(v, float) for v in seen) else seen


def _select(points: Sequence[Point], policy: str, where: dict[str, Any] | None) -> list[Point]:
    where = where or {}
    return [p for p in points if p["policy"] == policy and all(p.get(k) == v for k, v in where.items())]


def _cells(points: Sequence[Point], x_key: str, y_key: str | None, policy: str,
           where: dict[str, Any] | None = None) -> tuple[list, list, dict[tuple[int, int], Point]]:
    """x values, y values and the point of each (x index, y index) cell of one policy's panel."""
    xs, ys = _values(points, x_key), _values(points, y_key) if y_key else [None]
    cells: dict[tuple[int, int], Point] = {}
    for p in _select(points, policy, where):
        cell = (xs.index(p[x_key]), ys.index(p[y_key]) if y_key else 0)
        if cell in cells:
            raise ValueError(f"policy {policy}: several points at {x_key}={p[x_key]}"
                             + (f", {y_key}={p[y_key]}" if y_key else "")
                             + "; another grid key varies: pass it as facet= or fix it with where=")
        cells[cell] = p
    return xs, ys, cells


def is_geometric(values: Sequence[float]) -> bool:
    """Three or more positive values growing by about the same factor (200, 400, 800): a log axis."""
    v = [x for x in values if isinstance(x, float)]
    if len(v) < 3 or len(v) != len(values) or min(v) <= 0:
        return False
    ratios = np.diff(np.log(v))
    steps = np.diff(v)
    if ratios.min() <= 0:
        return False
    arithmetic = steps.max() / steps.min() < 1.05
    return not arithmetic and ratios.max() / ratios.min() < 1.3


def _steps(key: str, values: Sequence[Any], log: bool | None) -> str:
    """How the equally spaced cells map to the values: the axis label's note."""
    v = [x for x in values if isinstance(x, float)]
    if len(v) < 2 or len(v) != len(values):
        return ""
    if log if log is not None else is_geometric(v):
        return f", ×{v[1] / v[0]:.3g} per step" if v[0] > 0 else ""
    steps = np.diff(v)
    if steps.max() / max(steps.min(), 1e-300) < 1.05:
        step = float(steps[0])
        shown = format_duration(step) if _is_duration(key) else f"{step:,.4g}"
        if _last(key) in _SHARES and v[-1] <= 1:
            shown = f"{100 * step:.3g} %"
        return f", +{shown} per step"
    return ", uneven steps"


def _last(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _is_duration(key: str) -> bool:
    """`events.0.spread`, `client.timeout`, `server.service_time.mean`: a duration in seconds."""
    return any(part in _DURATIONS for part in key.split("."))


def _key_value(key: str, value: Any) -> str:
    """A grid value as a tick label: durations as 5m / 30s, shares as %, numbers compact."""
    if not isinstance(value, float):
        return str(value)
    if _is_duration(key):
        return format_duration(value)
    if _last(key) in _SHARES and 0 <= value <= 1:
        return f"{100 * value:.3g} %"
    return f"{value:,.0f}" if value == round(value) and abs(value) >= 1 else f"{value:.4g}"


def _axis_label(key: str, values: Sequence[Any], log: bool | None) -> str:
    kind = " (duration)" if _is_duration(key) else " (share)" if _last(key) in _SHARES else ""
    return f"{key}{kind}{_steps(key, values, log)}"


def _facets(points: Sequence[Point], facet: str | None,
            where: dict[str, Any] | None) -> list[tuple[str | None, dict[str, Any]]]:
    """(row title, selection) per row of panels: one row per value of the facet key."""
    where = dict(where or {})
    if facet is None:
        return [(None, where)]
    return [(f"{facet} = {_key_value(facet, v)}", {**where, facet: v}) for v in _values(points, facet)]


# --- colour scales and numbers ------------------------------------------------------------

def _unit(field: str, values: np.ndarray) -> tuple[float, str]:
    """Divisor and unit name of a field's numbers in the figure."""
    kind = _FIELDS[field].kind if field in _FIELDS else "count"
    if kind == "duration":
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
        return (1.0, "s") if top < 180 else (60.0, "min") if top < 3 * 3600 else (3600.0, "h")
    return {"share": (0.01, "%"), "rate": (1.0, "attempts/s"), "ratio": (1.0, "attempts per episode")}.get(
        kind, (1.0, ""))


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


def _grid_values(cells: dict, field: str, nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """The field's mean per cell (NaN where undefined) and the share never back to 99 % (0 where unknown)."""
    values, never = np.full((ny, nx), np.nan), np.zeros((ny, nx))
    for (i, j), p in cells.items():
        v = p.get(field)
        values[j, i] = v if isinstance(v, float) else np.nan
        n = p.get(f"{field}.never")
        never[j, i] = n if isinstance(n, float) else (1.0 if field.startswith("recovery_s") and v is None else 0.0)
    return values, never


# --- heatmaps -----------------------------------------------------------------------------

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
    rows = _facets(points, facet, where)
    panels = [[_cells(points, x_key, y_key, pol, sel) for pol in policies] for _, sel in rows]
    xs, ys = panels[0][0][0], panels[0][0][1]
    grids = [[_grid_values(c, field, len(xs), len(ys)) for _, _, c in row] for row in panels]
    everything = np.concatenate([v.ravel() for row in grids for v, _ in row])
    scale, unit = _unit(field, everything)
    norm = colour_norm(everything / scale)
    cmap = plt.get_cmap(_FIELDS[field].cmap if field in _FIELDS else "viridis")
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
    ax.set_xticks(range(len(xs)), [_key_value(x_key, v) for v in xs],
                  rotation=45 if len(xs) > 6 else 0, ha="right" if len(xs) > 6 else "center")
    ax.set_yticks(range(len(ys)), [_key_value(y_key, v) for v in ys])
    if last_row:
        ax.set_xlabel(_axis_label(x_key, xs, log_x), fontsize=9)
    if first_col:
        ax.set_ylabel(_axis_label(y_key, ys, log_y), fontsize=9)
    ax.tick_params(labelsize=8.5)


def _bar_label(field: str, unit: str) -> str:
    title = _FIELDS[field].title if field in _FIELDS else field
    unit = {"s": "seconds", "min": "minutes", "h": "hours"}.get(unit, unit)
    return f"{title} ({unit})" if unit and unit not in title else title


def _heat_title(field: str, replications: int | None) -> str:
    title = _FIELDS[field].title if field in _FIELDS else field
    mean = f"mean of {replications} replications" if replications else "mean over the replications"
    return f"{title[0].upper()}{title[1:]} [{field}], {mean}; one colour scale for all panels"


def _field_lines(points: Sequence[Point], x_key: str, field: str, policies: Sequence[str], log_x: bool | None,
                 where: dict[str, Any] | None, replications: int | None) -> Figure:
    """One grid key: the field against it, a line per policy with its 95 % CI; x where never recovered."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8), layout="constrained")
    marked = False
    every = np.array([p.get(field) if isinstance(p.get(field), float) else np.nan for p in points])
    scale, unit = _unit(field, every)
    cmap = plt.get_cmap("tab10")
    for k, policy in enumerate(policies):
        xs, _, cells = _cells(points, x_key, None, policy, where)
        x = np.array([xs[i] for i, _ in sorted(cells)])
        rows = [cells[c] for c in sorted(cells)]
        mean = np.array([_num(p, field) for p in rows]) / scale
        low, high = (np.array([_num(p, f"{field}.{e}") for p in rows]) / scale for e in ("ci_low", "ci_high"))
        ax.plot(x, mean, "o-", color=cmap(k % 10), label=policy)
        ax.fill_between(x, low, high, color=cmap(k % 10), alpha=0.15, lw=0)
        never = np.array([_never(p, field) for p in rows])
        if never.any():  # a row of crosses per policy above the data
            top = np.nanmax(every / scale) if np.isfinite(every).any() else 1.0
            ax.plot(x[never > 0], np.full((never > 0).sum(), top * (1.06 + 0.05 * k)), "x", color=cmap(k % 10),
                    ms=9, mew=2, gid=f"never:{policy}")
            marked = True
    if log_x if log_x is not None else _wide(x_key, points):
        ax.set_xscale("log")
    xs = _values(points, x_key)
    ax.set_xticks(xs, [_key_value(x_key, v) for v in xs])
    if isinstance(colour_norm(every / scale), LogNorm):  # as the heatmaps: log beyond two decades
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}" if v >= 10 and v == round(v) else f"{v:.3g}")
    ax.minorticks_off()
    ax.set_xlabel(_axis_label(x_key, xs, log_x))
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


def _num(p: Point, key: str) -> float:
    v = p.get(key)
    return v if isinstance(v, float) else np.nan


def _never(p: Point, field: str) -> float:
    n = p.get(f"{field}.never")
    return n if isinstance(n, float) else (1.0 if field.startswith("recovery_s") and p.get(field) is None else 0.0)


def _wide(key: str, points: Sequence[Point]) -> bool:
    """A log x axis for the line plots: geometric values, or positive ones spanning two decades."""
    v = _values(points, key)
    if not v or not all(isinstance(x, float) for x in v) or min(v) <= 0:
        return False
    return is_geometric(v) or max(v) / min(v) >= 100


# --- phase diagram ------------------------------------------------------------------------

def phase_boundary(points: Sequence[Point], x_key: str, y_key: str, policy: str,
                   where: dict[str, Any] | None = None) -> list[Segment]:
    """The cell edges between tipped cells (at least half the replications metastable) and the rest.

    Coordinates are cell indices: cell (i, j) is the i-th x value and j-th y value, spanning i ± 0.5,
    j ± 0.5; a segment ((0.5, -0.5), (0.5, 0.5)) is the edge between cells (0, 0) and (1, 0). Cells
    without data are not on either side.
    """
    xs, ys, cells = _cells(points, x_key, y_key, policy, where)
    tipped = {c: p.get("metastable_share") >= TIPPING for c, p in cells.items()
              if isinstance(p.get("metastable_share"), float)}
    segments: list[Segment] = []
    for (i, j), state in sorted(tipped.items()):
        right, above = tipped.get((i + 1, j)), tipped.get((i, j + 1))
        if right is not None and right != state:
            segments.append(((i + 0.5, j - 0.5), (i + 0.5, j + 0.5)))
        if above is not None and above != state:
            segments.append(((i - 0.5, j + 0.5), (i + 0.5, j + 0.5)))
    return segments


def share_crossings(xs: Sequence[float], shares: Sequence[float], log: bool = False) -> list[float]:
    """Where a share crosses 0.5 between neighbouring values, linearly interpolated (in log x if `log`).

        >>> share_crossings([1.0, 2.0, 3.0], [0.0, 0.25, 1.0])
        [2.3333333333333335]
    """
    out = []
    t = np.log(xs) if log else np.asarray(xs, dtype=float)
    for k in range(len(xs) - 1):
        a, b = shares[k], shares[k + 1]
        if (a >= TIPPING) == (b >= TIPPING):
            continue
        where = t[k] + (TIPPING - a) / (b - a) * (t[k + 1] - t[k])
        out.append(float(np.exp(where)) if log else float(where))
    return out


def phase_crossings(points: Sequence[Point], x_key: str, policy: str, where: dict[str, Any] | None = None,
                    log: bool | None = None) -> list[float]:
    """One grid key: the values of `x_key` where the metastable share crosses one half."""
    xs, _, cells = _cells(points, x_key, None, policy, where)
    known = [(xs[i], p["metastable_share"]) for (i, _), p in sorted(cells.items())
             if isinstance(p.get("metastable_share"), float)]
    log = _wide(x_key, points) if log is None else log
    return share_crossings([x for x, _ in known], [s for _, s in known], log=log)


def phase_figure(points: Sequence[Point], x_key: str, y_key: str | None, policies: Sequence[str], *,
                 facet: str | None = None, where: dict[str, Any] | None = None, log_x: bool | None = None,
                 log_y: bool | None = None, replications: int | None = None) -> Figure:
    """Per policy, each point's mix of endings as a bar split red | amber | green by share, the
    number its metastable share, and the tipping boundary as a black line between cells.

    With `y_key` None: the three shares against `x_key`, one panel per policy, the crossing marked.
    """
    if y_key is None:
        return _phase_lines(points, x_key, policies, where, log_x, replications)
    rows = _facets(points, facet, where)
    xs, ys = _values(points, x_key), _values(points, y_key)
    fig, axes = _panel_grid(len(rows), len(policies), len(xs), len(ys))
    for r, (title, sel) in enumerate(rows):
        for c, policy in enumerate(policies):
            ax, first_col, last_row = axes[r][c]
            _, _, cells = _cells(points, x_key, y_key, policy, sel)
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
            shares = [_share_of(p, col) for col, _, _ in REGIMES]
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


def _share_of(p: Point | None, column: str) -> float | None:
    value = p.get(column) if p else None
    return 0.0 if value is None and p and column in _OPTIONAL_REGIMES else value


def _phase_title(replications: int | None) -> str:
    reps = f"{replications} replications" if replications else "the replications"
    return f"Phase diagram: how {reps} per point end; number = share metastable"


def _regimes(points: Sequence[Point]) -> list[tuple[str, str, str]]:
    """The regimes the points tell: all but an optional one no point has a share for."""
    return [r for r in REGIMES if r[0] not in _OPTIONAL_REGIMES or any(p.get(r[0]) is not None for p in points)]


def _phase_handles(points: Sequence[Point], boundary: bool) -> list:
    handles = [Patch(facecolor=colour, label=label) for _, label, colour in _regimes(points)]
    if boundary:
        handles.append(Line2D([], [], color="black", lw=3,
                              label=f"tipping boundary: at least {TIPPING:.0%} of the replications metastable"))
    return handles


def _tips_text(key: str, xs: list, cross: float) -> str:
    """`tips between 400 and 800 (≈ 566)`: the grid values either side and the interpolated crossing."""
    below = max((x for x in xs if x <= cross), default=cross)
    above = min((x for x in xs if x >= cross), default=cross)
    rounded = float(f"{cross:.3g}")
    return (f"tips between {_key_value(key, below)}\nand {_key_value(key, above)} "
            f"(≈ {_key_value(key, rounded)})")


def _phase_lines(points: Sequence[Point], x_key: str, policies: Sequence[str], where: dict[str, Any] | None,
                 log_x: bool | None, replications: int | None) -> Figure:
    ncols = min(len(policies), 3)
    nrows = math.ceil(len(policies) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 0.6, 3.6 * nrows + 0.9), squeeze=False,
                             sharey=True, layout="constrained")
    log = _wide(x_key, points) if log_x is None else log_x
    xs_all = _values(points, x_key)
    for k, policy in enumerate(policies):
        ax = axes[k // ncols][k % ncols]
        xs, _, cells = _cells(points, x_key, None, policy, where)
        order = sorted(cells)
        x = [xs[i] for i, _ in order]
        # Stacked bands, worst at the bottom: shares that coincide cannot hide each other, and the
        # red band's top edge is the metastable share that the tipping line reads.
        floor = np.zeros(len(order))
        for col, label, colour in _regimes(points):
            share = 100 * np.nan_to_num([_num(cells[c], col) for c in order])
            ax.fill_between(x, floor, floor + share, color=colour, alpha=0.85, lw=0, gid=col)
            floor = floor + share
        ax.plot(x, [100 * _num(cells[c], "metastable_share") for c in order], "o-", color="#7a1010", ms=4, lw=1.2,
                gid="metastable")
        ax.axhline(100 * TIPPING, color="black", ls=":", lw=1.2, zorder=3)
        for cross in phase_crossings(points, x_key, policy, where, log):
            ax.axvline(cross, color="black", lw=2, gid="crossing")
            ax.annotate(_tips_text(x_key, xs, cross), (cross, 0.97),
                        xycoords=("data", "axes fraction"), xytext=(4, 0), textcoords="offset points",
                        va="top", fontsize=8.5, bbox=dict(facecolor="white", alpha=0.85, lw=0, pad=1))
        if log:
            ax.set_xscale("log")
        ax.set_xticks(xs_all, [_key_value(x_key, v) for v in xs_all], fontsize=8.5)
        ax.minorticks_off()
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(policy, fontsize=10)
        ax.set_xlabel(_axis_label(x_key, xs_all, log_x), fontsize=9)
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


# --- sweep.html ---------------------------------------------------------------------------

def write_sweep_report(out_dir: Path) -> list[Path]:
    """phase.png/.svg, heatmap-FIELD.png/.svg for recovery_s.p99, amplification and peak_offered_rps,
    and sweep.html (figures embedded, readable offline) in `out_dir`, from its sweep.json and
    points.csv; returns the paths written. A figure whose columns are missing is left out with a note.
    """
    from sim.report import html_page, table_html, write_html

    meta, points = read_sweep(out_dir)
    keys = list(meta["grid"])
    policies = list(meta.get("policies") or dict.fromkeys(p["policy"] for p in points))
    x_key, y_key = keys[0], keys[1] if len(keys) > 1 else None
    facet = keys[2] if len(keys) > 2 else None
    # A fourth key and beyond (not written by sweep.py today): held at their first value.
    where = {k: _values(points, k)[0] for k in keys[3:]}
    reps = meta.get("replications")
    written: list[Path] = []
    sections, notes = [], []
    columns = set(points[0]) if points else set()

    if {col for col, _, _ in REGIMES} - _OPTIONAL_REGIMES <= columns:
        fig = phase_figure(points, x_key, y_key, policies, facet=facet, where=where, replications=reps)
        figure = _embed_and_save(fig, _phase_caption(x_key, y_key, facet), out_dir / "phase", written)
        reading = _phase_reading(y_key is None, len(_regimes(points)) > 3)
        sections.append(("Phase diagram", f"<p>{html.escape(reading)}</p>{figure}"))
    else:
        notes.append("No phase diagram: points.csv has no metastable_share / recover_share / never_degrade_share.")
    heat = []
    for field in HEATMAP_FIELDS:
        if field not in columns:
            notes.append(f"No figure of {field}: points.csv has no such column.")
            continue
        fig = heatmap_figure(points, x_key, y_key, field, policies, facet=facet, where=where, replications=reps)
        # save_figure swaps the suffix: give it one, or ".p99" of the field name would be taken for it.
        heat.append(_embed_and_save(fig, _heat_caption(field, y_key is None), out_dir / f"heatmap-{field}.png",
                                    written))
    if heat:
        sections.append(("Recovery, amplification and peak load", "".join(heat)))
    body = _body(meta, points, keys, policies, where, sections, notes, table_html, written)
    page = write_html(out_dir / "sweep.html", html_page(f"{meta.get('scenario', 'sweep')}: sweep", body))
    return written + [page]


def _embed_and_save(fig: Figure, caption: str, stem: Path, written: list[Path]) -> str:
    """The figure as HTML, then as PNG and SVG files (appended to `written`); closes it."""
    from sim.report import figure_html

    embedded = figure_html(fig, caption)
    fig.set_layout_engine("none")  # keep the layout just computed: the two saves need not redo it
    written += save_figure(fig, stem)
    return embedded


def _phase_reading(one_key: bool, unrecovered: bool) -> str:
    return _phase_words(one_key) + (" Purple: below 99 % online at the end without being metastable (a trigger "
                                     "too late in the run, clients that gave up, a run stopped early)."
                                     if unrecovered else "")


def _phase_words(one_key: bool) -> str:
    if one_key:
        return ("Each panel is one retry policy; the coloured bands stack the shares of replications that ended "
                "metastable (red, at the bottom: the storm kept itself going after its trigger was over), that "
                "degraded and then recovered (amber), and that never fell below 99 % online (green, at the top). "
                "The vertical black line marks where the red band crosses one half: the value at which this login "
                "tier tips into self-sustaining failure.")
    return ("Each panel is one retry policy; each cell one point of the grid. The bar in a cell is split by how "
            "its replications ended: red = metastable (the storm kept itself going after its trigger was over), "
            "amber = degraded, then recovered, green = never fell below 99 % online; the number is the red share. "
            "The thick black line is the tipping boundary: on one side at least half of the replications end "
            "metastable, on the other fewer. It is where this login tier tips into self-sustaining failure.")


def _phase_caption(x_key: str, y_key: str | None, facet: str | None) -> str:
    over = x_key if y_key is None else f"{x_key} (across) and {y_key} (up)"
    rows = f"; one row of panels per value of {facet}" if facet else ""
    return f"How the replications end over {over}, one panel per retry policy{rows}."


def _named(field: str) -> str:
    """`Time back to 99 % online (recovery_s.p99)`: the field's title with its column name."""
    title = _FIELDS[field].title if field in _FIELDS else field
    named = title if title.startswith(field) else f"{title} ({field})"
    return named[0].upper() + named[1:]


def _heat_caption(field: str, one_key: bool) -> str:
    if one_key:
        return (f"{_named(field)} against the swept key: mean and 95 % CI over the replications, one line per "
                "policy; lines that coincide hide each other (the table has every number).")
    never = (" Hatched cells: some replications were never back to 99 % online; the cell gives the share and "
             "the mean of the replications that did recover.") if field.startswith("recovery_s") else ""
    return f"{_named(field)}, mean over the replications; every panel shares one colour scale.{never}"


def _body(meta: dict, points: list[Point], keys: list[str], policies: list[str], where: dict[str, Any],
          sections: list[tuple[str, str]], notes: list[str], table_html, written: list[Path]) -> str:
    name = html.escape(str(meta.get("scenario", "sweep")))
    grid = meta["grid"]
    n = meta.get("points") or math.prod(len(v) for v in grid.values())
    reps = meta.get("replications")
    runs = f" = {n * len(policies) * reps:,} runs" if reps else ""
    lead = (f"{n} grid points × {len(policies)} retry polic{'y' if len(policies) == 1 else 'ies'} × "
            f"{reps if reps else '?'} replications{runs}; engine {meta.get('engine', '?')}, "
            f"seed {meta.get('seed', '?')}.")
    swept = [[k, ", ".join(_key_value(k, float(v) if isinstance(v, (int, float)) else v) for v in grid[k]),
              role] for k, role in zip(keys, ["across (x axis)", "up (y axis)", "one row of panels per value"]
                                       + ["held at its first value"] * len(keys))]
    swept.append(["retry policy", ", ".join(policies), "one panel each"])
    held = "".join(f'<p class="note">{html.escape(k)} is held at {html.escape(_key_value(k, v))} in the figures; '
                   "the table has every point.</p>" for k, v in where.items())
    parts = [f"<h1>{name}: sweep over {html.escape(', '.join(keys))}</h1>", f'<p class="lead">{html.escape(lead)}</p>',
             _verdict(points, policies), "<h2>What was swept</h2>",
             table_html(["key", "values", "in the figures"], swept), held]
    parts += [f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    headers, rows = points_table(points, keys)
    parts += ["<h2>Every point</h2>", table_html(headers, rows),
              '<p class="note">Means over the replications ± the half-width of their 95 % CI. <b>recovery 99 %</b>: '
              "time from the first event until 99 % of the clients that want to be online are; <b>never</b> where "
              "some replications did not get there by the end. <b>attempts / episode</b>: login attempts per client "
              "that had to log in. <b>metastable</b> to <b>never degrades</b>: the shares of the replications "
              "that ended so (see the phase diagram).</p>"]
    links = [Path("sweep.json"), Path("points.csv")] + written
    parts.append("<h2>Data</h2><p>" + " · ".join(f'<a href="{html.escape(p.name)}">{html.escape(p.name)}</a>'
                                                 for p in links) + "</p>")
    return "\n".join(parts)


def _verdict(points: list[Point], policies: list[str]) -> str:
    """One line per policy: at how many points at least half the replications ended metastable."""
    lines, bad = [], False
    for policy in policies:
        mine = [p for p in points if p["policy"] == policy and isinstance(p.get("metastable_share"), float)]
        if not mine:
            continue
        tipped = sum(p["metastable_share"] >= TIPPING for p in mine)
        bad = bad or tipped > 0
        lines.append(f"{policy}: metastable in at least half of the replications at {tipped} of {len(mine)} points")
    if not lines:
        return ""
    return f'<div class="verdict{" bad" if bad else ""}">' + "<br>".join(html.escape(x) for x in lines) + "</div>"


def points_table(points: list[Point], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of points.csv's main fields as text (no NaN: undefined is "n/a" or "never")."""
    regimes = _regimes(points)
    names = {"metastable_share": "metastable", "unrecovered_share": "below at end", "recover_share": "recovers",
             "never_degrade_share": "never degrades"}
    headers = ["point", "policy", *keys, "recovery 99 %", "attempts / episode", "peak offered /s", "wasted work",
               "lowest online", *(names[col] for col, _, _ in regimes)]
    rows = []
    for p in points:
        rows.append([str(p.get("point") or ""), str(p.get("policy") or ""),
                     *(_key_value(k, p.get(k)) if p.get(k) is not None else "n/a" for k in keys),
                     _recovery_text(p), _mean_ci(p, "amplification", "{:.3g}"),
                     _mean_ci(p, "peak_offered_rps", "{:,.0f}"), _share(p.get("wasted_work_fraction")),
                     _share(p.get("lowest_online_share")),
                     *(_share(p.get(col)) for col, _, _ in regimes)])
    return headers, rows


def _recovery_text(p: Point) -> str:
    never = _never(p, "recovery_s.p99")
    value = p.get("recovery_s.p99")
    if not isinstance(value, float):
        return "never" if never >= 1 else f"never in {never:.0%}" if never > 0 else "n/a"
    text = _mean_ci(p, "recovery_s.p99", None)
    return f"{text} (never in {never:.0%})" if never > 0 else text


def _mean_ci(p: Point, field: str, fmt: str | None) -> str:
    value = p.get(field)
    if not isinstance(value, float):
        return "n/a"
    show = (lambda s: format_duration(round(s)) if s >= 60 else f"{s:.3g}s") if fmt is None else fmt.format
    low, high = p.get(f"{field}.ci_low"), p.get(f"{field}.ci_high")
    if isinstance(low, float) and isinstance(high, float):
        return f"{show(value)} ± {show((high - low) / 2)}"
    return show(value)


def _share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, float) else "n/a"
