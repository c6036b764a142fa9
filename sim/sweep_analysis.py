"""What a parameter sweep's outputs say, without drawing them: reading sweep.json and points.csv,
the grid of cells per policy, and the phase boundary and crossings where the storm tips.

    meta, points = read_sweep(Path("out/storm-sweep"))
    segments = phase_boundary(points, "server.workers", "events.0.fraction", "none")

Reads what `sim/sweep.py` writes into its output directory:

- `sweep.json`: `{"scenario", "grid": {key: [values]} (1 to 3 keys, in order), "policies",
  "replications", "engine", "seed", "points"}`;
- `points.csv`: one row per (point, policy): `point`, `policy`, one column per grid key, `replications`,
  then for each main field F the mean `F` and its 95 % CI `F.ci_low`, `F.ci_high` (empty where undefined),
  `recovery_s.p99.never` (share of replications never back to 99 % online), and the regime shares
  `metastable_share`, `recover_share`, `never_degrade_share` (summing to 1). sim/sweep.py's own
  spelling is read too: `F.low` / `F.high`, `regime.metastable|unrecovered|recovered|undisturbed`
  (a fourth regime) and `recovered_runs`.

The figures (`sim.plots.sweep`) and sweep.html (`sim.sweep_report`) are drawn from these.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim.units import format_duration

__all__ = ["read_sweep", "read_points", "key_values", "panel_cells", "is_geometric", "value_text", "axis_label",
           "facet_rows", "field_unit", "cell_grid", "number_of", "never_share", "wants_log_x", "regimes_present",
           "regime_share", "phase_boundary", "phase_crossings", "share_crossings", "Point", "Segment", "Field",
           "FIELDS", "MAIN_FIELDS", "REGIMES", "OPTIONAL_REGIMES", "HEATMAP_FIELDS", "TIPPING"]

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
OPTIONAL_REGIMES = {"unrecovered_share"}
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
class Field:
    """How a field of points.csv is named and coloured in the figures."""

    title: str
    kind: str  # duration | share | rate | ratio | count
    cmap: str


FIELDS = {
    "recovery_s.p99": Field("time back to 99 % online", "duration", "YlOrRd"),
    "recovery_s.p90": Field("time back to 90 % online", "duration", "YlOrRd"),
    "amplification": Field("amplification: attempts per episode", "ratio", "YlOrRd"),
    "peak_offered_rps": Field("peak offered load", "rate", "YlOrRd"),
    "wasted_work_fraction": Field("wasted work (share of busy time)", "share", "YlOrRd"),
    "lowest_online_share": Field("lowest online share", "share", "YlGn"),
    "attempts": Field("login attempts", "count", "YlOrRd"),
    "logins": Field("successful logins", "count", "YlGn"),
    "gave_up": Field("clients that gave up", "count", "YlOrRd"),
}


# --- reading --------------------------------------------------------------------------

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


# --- grids ----------------------------------------------------------------------------

def key_values(points: Sequence[Point], key: str) -> list[Any]:
    """The distinct values of a grid key: numbers ascending, text in first-seen order."""
    seen = list(dict.fromkeys(p[key] for p in points if p.get(key) is not None))
    return sorted(seen) if all(isinstance(v, float) for v in seen) else seen


def _select(points: Sequence[Point], policy: str, where: dict[str, Any] | None) -> list[Point]:
    where = where or {}
    return [p for p in points if p["policy"] == policy and all(p.get(k) == v for k, v in where.items())]


def panel_cells(points: Sequence[Point], x_key: str, y_key: str | None, policy: str,
                where: dict[str, Any] | None = None) -> tuple[list, list, dict[tuple[int, int], Point]]:
    """x values, y values and the point of each (x index, y index) cell of one policy's panel."""
    xs, ys = key_values(points, x_key), key_values(points, y_key) if y_key else [None]
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


def value_text(key: str, value: Any) -> str:
    """A grid value as a tick label: durations as 5m / 30s, shares as %, numbers compact."""
    if not isinstance(value, float):
        return str(value)
    if _is_duration(key):
        return format_duration(value)
    if _last(key) in _SHARES and 0 <= value <= 1:
        return f"{100 * value:.3g} %"
    return f"{value:,.0f}" if value == round(value) and abs(value) >= 1 else f"{value:.4g}"


def axis_label(key: str, values: Sequence[Any], log: bool | None) -> str:
    """`server.workers, +200 per step`: the key, what kind of value it is, and how the cells step."""
    kind = " (duration)" if _is_duration(key) else " (share)" if _last(key) in _SHARES else ""
    return f"{key}{kind}{_steps(key, values, log)}"


def facet_rows(points: Sequence[Point], facet: str | None,
               where: dict[str, Any] | None) -> list[tuple[str | None, dict[str, Any]]]:
    """(row title, selection) per row of panels: one row per value of the facet key."""
    where = dict(where or {})
    if facet is None:
        return [(None, where)]
    return [(f"{facet} = {value_text(facet, v)}", {**where, facet: v}) for v in key_values(points, facet)]


# --- numbers per cell -----------------------------------------------------------------

def field_unit(field: str, values: np.ndarray) -> tuple[float, str]:
    """Divisor and unit name of a field's numbers in the figure."""
    kind = FIELDS[field].kind if field in FIELDS else "count"
    if kind == "duration":
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
        return (1.0, "s") if top < 180 else (60.0, "min") if top < 3 * 3600 else (3600.0, "h")
    return {"share": (0.01, "%"), "rate": (1.0, "attempts/s"), "ratio": (1.0, "attempts per episode")}.get(
        kind, (1.0, ""))


def cell_grid(cells: dict, field: str, nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """The field's mean per cell (NaN where undefined) and the share never back to 99 % (0 where unknown)."""
    values, never = np.full((ny, nx), np.nan), np.zeros((ny, nx))
    for (i, j), p in cells.items():
        v = p.get(field)
        values[j, i] = v if isinstance(v, float) else np.nan
        n = p.get(f"{field}.never")
        never[j, i] = n if isinstance(n, float) else (1.0 if field.startswith("recovery_s") and v is None else 0.0)
    return values, never


def number_of(p: Point, key: str) -> float:
    """The point's number under `key`, NaN where it has none."""
    v = p.get(key)
    return v if isinstance(v, float) else np.nan


def never_share(p: Point, field: str) -> float:
    """The share of the point's replications that never reached `field` (a recovery time); 0 for other fields."""
    n = p.get(f"{field}.never")
    return n if isinstance(n, float) else (1.0 if field.startswith("recovery_s") and p.get(field) is None else 0.0)


def wants_log_x(key: str, points: Sequence[Point]) -> bool:
    """A log x axis for the line plots: geometric values, or positive ones spanning two decades."""
    v = key_values(points, key)
    if not v or not all(isinstance(x, float) for x in v) or min(v) <= 0:
        return False
    return is_geometric(v) or max(v) / min(v) >= 100


# --- regimes and the phase boundary ---------------------------------------------------

def regimes_present(points: Sequence[Point]) -> list[tuple[str, str, str]]:
    """The regimes the points tell: all but an optional one no point has a share for."""
    return [r for r in REGIMES if r[0] not in OPTIONAL_REGIMES or any(p.get(r[0]) is not None for p in points)]


def regime_share(p: Point | None, column: str) -> float | None:
    """The point's share of a regime; an optional regime the point does not report counts as 0."""
    value = p.get(column) if p else None
    return 0.0 if value is None and p and column in OPTIONAL_REGIMES else value


def phase_boundary(points: Sequence[Point], x_key: str, y_key: str, policy: str,
                   where: dict[str, Any] | None = None) -> list[Segment]:
    """The cell edges between tipped cells (at least half the replications metastable) and the rest.

    Coordinates are cell indices: cell (i, j) is the i-th x value and j-th y value, spanning i ± 0.5,
    j ± 0.5; a segment ((0.5, -0.5), (0.5, 0.5)) is the edge between cells (0, 0) and (1, 0). Cells
    without data are not on either side.
    """
    xs, ys, cells = panel_cells(points, x_key, y_key, policy, where)
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
    xs, _, cells = panel_cells(points, x_key, None, policy, where)
    known = [(xs[i], p["metastable_share"]) for (i, _), p in sorted(cells.items())
             if isinstance(p.get("metastable_share"), float)]
    log = wants_log_x(x_key, points) if log is None else log
    return share_crossings([x for x, _ in known], [s for _, s in known], log=log)
