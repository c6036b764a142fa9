"""Parameter sweeps and tipping points: one scenario over a grid of overrides, crossed with policies.

    result = run_sweep("quickstart", ["server.workers=200,400,800", "events.0.fraction=0.05:0.5:10"],
                       ["none", "full-jitter"], replications=3, engine="des", out_dir=Path("out/sweep-quickstart"))

Grids are read by `sim.overrides.parse_grid`, runs made by `sim.batch`; the tipping-point search
over one key is `sim.threshold`.

Seeds. A point is its grid values and its policy; its seed is
`SeedSequence(entropy=scenario seed, spawn_key=hash of the point)` and replication k is the child
with spawn key `+ (k,)`. The hash is SHA-256 of the point's canonical text (`Point.canonical`),
never its position, so a run's numbers do not depend on the grid's order, on which other points
run, on `--jobs` or on the executor (serial, process pool, Dask).

Files in `out_dir` (the columns are `RUN_COLUMNS`, `POINT_COLUMNS`; see `run_sweep`):
`sweep.csv` (one row per run, appended and flushed as each run ends, so an interrupted sweep
keeps its finished runs and `resume=True` skips them), `points.csv` (per point: means and 95 %
CIs over the replications, regime shares) and `sweep.json` (what was swept).

Regimes of one run, first that applies: `metastable` (the summary's flag: the storm sustained
itself after its triggers ended); `undisturbed` (never degraded: `lowest_online_share` >= 0.99);
`recovered` (back to 99 % online by the end: `recovery_s.p99` not null); `unrecovered` (still
below 99 % at the end without being metastable: triggers too late for the flag, give-ups, `--until`).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from sim import batch
from sim.batch import Finished, Run
from sim.config import ScenarioError, ScenarioFile, read_scenario
from sim.metrics import STEADY_FIELDS, SUMMARY_FIELDS
from sim.limits import check_runs
from sim.overrides import MAX_GRID_VALUES, canonical, parse_grid_spec, policy_list, toml_text
from sim.runner import choose_engine, combine, finite_json, warm_up
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["Point", "SweepResult", "plan_points", "load_point", "run_sweep", "regime", "format_value",
           "RUN_COLUMNS", "SUMMARY_COLUMNS", "WALLCLOCK_COLUMNS", "POINT_FIELDS", "REGIMES", "UNDISTURBED"]

#: a run whose online share never fell below this is `undisturbed`
UNDISTURBED = 0.99
#: the regimes of a run, worst first (a tie in a point's majority goes to the worse)
REGIMES = ("metastable", "unrecovered", "recovered", "undisturbed")
_NESTED = {"login_time_s": ("p50", "p95", "p99"), "recovery_s": ("p90", "p99"), "steady": STEADY_FIELDS}
#: every summary field of docs/model.md section 5, flattened with dots: `recovery_s.p99`, `steady.utilization`
SUMMARY_COLUMNS = tuple(f"{name}.{sub}" if name in _NESTED else name
                        for name in SUMMARY_FIELDS for sub in _NESTED.get(name, ("",)))
#: columns that measure the machine, not the model: they differ between identical runs
WALLCLOCK_COLUMNS = ("wallclock_s",)
#: sweep.csv: these, then one column per grid key (between `policy` and `replication`), then the summary
RUN_COLUMNS = ("point", "policy", "replication", "spawn_key", "regime")
#: points.csv: each of these as a mean, with `.low` and `.high` (its 95 % CI) beside it
POINT_FIELDS = ("recovery_s.p90", "recovery_s.p99", "lowest_online_share", "amplification", "attempts",
                "peak_offered_rps", "wasted_work_fraction", "login_time_s.p50", "login_time_s.p99", "logins",
                "gave_up", "timeouts", "rejected", "suppressed", "short_circuited", "resumptions", "steady.utilization",
                "steady.throughput", "steady.mean_wait_s", "wallclock_s")
_STRINGS = ("scenario", "engine")


# --- points -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One grid point under one policy: `values` are (key, value) pairs in grid order.

        >>> p = Point((("server.workers", 400),), "full-jitter")
        >>> p.sets()
        ('server.workers=400', 'client.policy.name=full-jitter')
    """

    values: tuple[tuple[str, Any], ...]
    policy: str

    def canonical(self) -> str:
        """What the id and the seed hash: keys sorted, values as JSON, then the policy."""
        pairs = ";".join(f"{k}={canonical(v)}" for k, v in sorted(self.values, key=lambda kv: kv[0]))
        return f"{pairs}|policy={self.policy}"

    def _digest(self) -> bytes:
        return hashlib.sha256(self.canonical().encode()).digest()

    @property
    def id(self) -> str:
        """12 hex digits of the hash: the same point has the same id in every sweep."""
        return self._digest().hex()[:12]

    def spawn_key(self) -> tuple[int, ...]:
        """Four 32-bit words of the hash: the point's place in the seed tree."""
        digest = self._digest()
        return tuple(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))

    def seed_sequence(self, base_seed: int) -> np.random.SeedSequence:
        """The point's seed: replication k is `seed_sequence(s).spawn(R)[k]` (see `replication_seed`)."""
        return np.random.SeedSequence(base_seed, spawn_key=self.spawn_key())

    def replication_seed(self, base_seed: int, k: int) -> np.random.SeedSequence:
        """Child k of `seed_sequence`, made directly: the same whatever the number of replications."""
        return np.random.SeedSequence(base_seed, spawn_key=(*self.spawn_key(), k))

    def sets(self) -> tuple[str, ...]:
        """The `--set` overrides that make this point out of the scenario."""
        return (*(f"{k}={toml_text(v)}" for k, v in self.values), f"client.policy.name={self.policy}")

    def label(self) -> str:
        return " ".join([*(f"{k}={toml_text(v)}" for k, v in self.values), self.policy])


def plan_points(grids: Sequence[tuple[str, Sequence[Any]]] | Mapping[str, Sequence[Any]],
                policies: Sequence[str]) -> list[Point]:
    """Every combination of the grids' values (the first grid varies slowest), for each policy.

        >>> [p.label() for p in plan_points([("server.workers", [2, 4])], ["none", "constant"])]
        ['server.workers=2 none', 'server.workers=2 constant', 'server.workers=4 none', 'server.workers=4 constant']
    """
    pairs = list(grids.items()) if isinstance(grids, Mapping) else list(grids)
    keys = [k for k, _ in pairs]
    doubled = sorted({k for k in keys if keys.count(k) > 1})
    if doubled:
        raise ValueError(f"--grid: each key once; given twice: {', '.join(doubled)}")
    if not policies:
        raise ValueError("no policies to sweep")
    for key, values in pairs:
        if not values:
            raise ValueError(f"--grid {key}: no values")
    return [Point(tuple(zip(keys, combo)), policy)
            for combo in itertools.product(*(list(v) for _, v in pairs)) for policy in policies]


# --- one run ------------------------------------------------------------------------------

def regime(summary: Mapping[str, Any]) -> str:
    """metastable, undisturbed, recovered or unrecovered: the first that applies (module docstring)."""
    if summary["metastable"]:
        return "metastable"
    lowest = summary.get("lowest_online_share")
    if lowest is not None and lowest >= UNDISTURBED:
        return "undisturbed"
    return "recovered" if summary["recovery_s"]["p99"] is not None else "unrecovered"


# --- the sweep ----------------------------------------------------------------------------

@dataclass
class SweepResult:
    """What a sweep wrote, and the per-point table (points.csv as dicts of typed values)."""

    out_dir: Path
    files: list[Path]
    points: list[Point]
    replications: int
    runs_total: int
    runs_now: int        # computed by this call
    runs_resumed: int    # found in sweep.csv and skipped
    table: list[dict[str, Any]] = field(default_factory=list)


Progress = Callable[[int, int, Optional[float]], None]


def run_sweep(scenario_path: str | Path, grids: Sequence[str | tuple[str, Sequence[Any]]],
              policies: Sequence[str] = (), *, replications: int = 1, engine: str = "auto",
              sets: Sequence[str] = (), scale: float = 1.0, seed: int | None = None, until: float | None = None,
              out_dir: str | Path, executor: Any = "process", jobs: int | None = None, resume: bool = False,
              progress: Progress | None = None, max_runs: int | None = None,
              before_runs: Callable[[Scenario, list[Scenario]], None] | None = None) -> SweepResult:
    """Run every point (grid values x policies) `replications` times; write sweep.csv, points.csv, sweep.json.

    `grids` holds specs ("KEY=...", see `parse_grid`) or parsed (key, values) pairs; `policies`
    names, comma lists or "all" (none: the scenario's own policy). Every point's scenario is
    loaded first, so a bad value fails (ScenarioError naming the point) before anything runs.
    Without `resume`, sweep.csv starts afresh; with it, the (point, replication) pairs already
    in it are kept, not rerun (the scenario, seed, scale, sets, engine and until must match
    sweep.json). `progress(done, total, eta_s)` counts runs of the whole plan, resumed included;
    `eta_s` is None until a run of this call has ended. A plan of more than `max_runs` runs, or
    a grid key of more than MAX_GRID_VALUES values, is refused (ValueError) before any point is
    loaded (max_runs=None: no limits); `before_runs(base, scenarios)` is called once
    every point is loaded, before the output folder is touched (the CLI's resource check).
    """
    if replications < 1:
        raise ValueError("replications must be >= 1")
    out = Path(out_dir)
    grid_limit = MAX_GRID_VALUES if max_runs is not None else None
    parsed = [parse_grid_spec(g, limit=grid_limit) if isinstance(g, str) else (g[0], list(g[1]), False)
              for g in grids]
    file = read_scenario(scenario_path)
    base = file.scenario(sets=sets, scale=scale, seed=seed)
    names = policy_list(policies) or [base.client.policy.preset or base.client.policy.name]
    planned = math.prod(len(v) for _, v, _ in parsed) * len(names) * replications
    too_many = check_runs(planned, max_runs) if max_runs is not None else []
    if too_many:
        raise ValueError(too_many[0])
    points = plan_points([(k, v) for k, v, _ in parsed], names)
    scenarios = {p.id: load_point(file, p, sets, scale, seed) for p in points}
    if before_runs is not None:
        before_runs(base, list(scenarios.values()))
    meta = _metadata(base, parsed, names, points, replications, engine, sets, until, scenario_path)
    columns = _run_columns([k for k, _, _ in parsed])
    out.mkdir(parents=True, exist_ok=True)
    done = _resumable(out, meta, columns) if resume else set()
    _write_json(out / "sweep.json", {**meta, "complete": False})
    wanted = [(p, k) for p in points for k in range(replications) if (p.id, k) not in done]
    runs = [Run((p.id, k), scenarios[p.id], p.replication_seed(base.seed, k),
                choose_engine(scenarios[p.id], engine)[0], until) for p, k in wanted]
    total, resumed = len(points) * replications, len(points) * replications - len(wanted)
    by_id = {p.id: p for p in points}
    started, count = time.perf_counter(), [0]
    with _RunWriter(out / "sweep.csv", columns, append=resume) as writer:
        def record(finished: Finished) -> None:
            point_id, k = finished.key
            writer.write(_run_row(by_id[point_id], k, finished.summary, base.seed))
            count[0] += 1
            if progress is not None:
                rate = (time.perf_counter() - started) / count[0]
                progress(resumed + count[0], total, rate * (len(runs) - count[0]))

        if progress is not None:
            progress(resumed, total, None)
        warm_up([run.engine for run in runs])  # here, once, not in every worker at once
        if runs:
            with batch.executor(executor, jobs) as run_all:
                run_all(runs, record)
    table = _write_points(out, points, replications, [k for k, _, _ in parsed])
    _write_json(out / "sweep.json", {**meta, "complete": True})
    files = [out / "sweep.csv", out / "points.csv", out / "sweep.json"]
    return SweepResult(out, files, points, replications, total, len(runs), resumed, table)


def load_point(file: ScenarioFile, point: Point, sets: Sequence[str], scale: float, seed: int | None,
               what: str = "grid point") -> Scenario:
    """The point's scenario: the file with `sets`, then the point's values and policy (errors name the point)."""
    try:
        return file.scenario(sets=[*sets, *point.sets()], scale=scale, seed=seed)
    except ScenarioError as exc:
        raise ScenarioError(f"{exc.source} ({what} {point.label()})", exc.problems) from None


def _metadata(base: Scenario, parsed: list, policies: list[str], points: list[Point], replications: int,
              engine: str, sets: Sequence[str], until: float | None, path: str | Path) -> dict[str, Any]:
    return finite_json({
        "scenario": base.name, "source": str(path), "grid": {k: v for k, v, _ in parsed},
        "durations": [k for k, _, d in parsed if d], "policies": policies, "replications": replications,
        "engine": engine, "seed": base.seed, "scale": base.scale, "sets": list(sets), "until_s": until,
        "points": len(points), "runs": len(points) * replications, "undisturbed_at": UNDISTURBED,
    })


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _run_columns(keys: Sequence[str]) -> list[str]:
    clash = sorted(set(keys) & (set(RUN_COLUMNS) | set(SUMMARY_COLUMNS)))
    if clash:
        raise ValueError(f"--grid: {', '.join(clash)} would clash with a column of sweep.csv")
    return [*RUN_COLUMNS[:2], *keys, *RUN_COLUMNS[2:], *SUMMARY_COLUMNS]


def _run_row(point: Point, k: int, summary: dict[str, Any], base_seed: int) -> dict[str, Any]:
    flat = _flatten(summary)
    return {"point": point.id, "policy": point.policy, **dict(point.values), "replication": k,
            "spawn_key": " ".join(str(w) for w in (*point.spawn_key(), k)), "regime": regime(summary),
            **{c: flat.get(c) for c in SUMMARY_COLUMNS}}


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cell(value: Any) -> str:
    """Exact (repr) floats, true/false, empty for null: what `_typed` reads back."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (dict, list)):
        return toml_text(value)
    return str(value)


def _typed(column: str, text: str) -> Any:
    if text == "" or column in _STRINGS:
        return None if text == "" else text
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class _RunWriter:
    """sweep.csv, one flushed line per finished run: a killed sweep keeps what it finished."""

    def __init__(self, path: Path, columns: list[str], append: bool):
        fresh = not append or not path.exists() or path.stat().st_size == 0
        self.fh = path.open("w" if fresh else "a", newline="")
        self.writer = csv.DictWriter(self.fh, columns)
        if fresh:
            self.writer.writeheader()
            self.fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: _cell(v) for k, v in row.items()})
        self.fh.flush()

    def __enter__(self) -> "_RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def _resumable(out: Path, meta: dict[str, Any], columns: list[str]) -> set[tuple[str, int]]:
    """The (point id, replication) pairs already in sweep.csv, after checking it is the same sweep."""
    path, info = out / "sweep.csv", out / "sweep.json"
    if not path.exists() or path.stat().st_size == 0:
        return set()
    if info.exists():
        old = json.loads(info.read_text())
        for key in ("source", "seed", "scale", "sets", "engine", "until_s"):
            if old.get(key) != meta[key]:
                raise ValueError(f"--resume: {out} holds a sweep with another {key} ({old.get(key)!r}, now "
                                 f"{meta[key]!r}); use another --out or leave out --resume")
    _drop_partial_line(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != columns:
            raise ValueError(f"--resume: {path} has other columns (another grid?); use another --out")
        return {(row["point"], int(row["replication"])) for row in reader}


def _drop_partial_line(path: Path) -> None:
    """A sweep killed in the middle of a write leaves half a line: cut it off."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])


# --- points.csv ---------------------------------------------------------------------------

def _point_columns(keys: Sequence[str]) -> list[str]:
    shares = [f"regime.{r}" for r in REGIMES]
    stats = [c for f in POINT_FIELDS for c in (f, f"{f}.low", f"{f}.high")]
    return ["point", "policy", *keys, "replications", "metastable_share", "regime", *shares, "recovered_runs", *stats]


def _write_points(out: Path, points: list[Point], replications: int, keys: Sequence[str]) -> list[dict[str, Any]]:
    """points.csv from sweep.csv: the planned points' first `replications` runs, in plan order."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    with (out / "sweep.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            k = int(row["replication"])
            if k < replications:
                runs.setdefault(row["point"], {})[k] = _unflatten({c: _typed(c, row[c]) for c in SUMMARY_COLUMNS})
    table = [_point_row(p, [runs[p.id][k] for k in sorted(runs[p.id])]) for p in points if p.id in runs]
    columns = _point_columns(keys)
    with (out / "points.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for row in table:
            writer.writerow({c: _cell(finite_json(row.get(c))) for c in columns})
    return table


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _point_row(point: Point, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    combined = combine(summaries)
    kinds = Counter(regime(s) for s in summaries)
    row: dict[str, Any] = {"point": point.id, "policy": point.policy, **dict(point.values),
                           "replications": len(summaries), "metastable_share": combined["metastable_share"],
                           "regime": max(REGIMES, key=lambda r: (kinds[r], -REGIMES.index(r))),
                           **{f"regime.{r}": kinds[r] / len(summaries) for r in REGIMES},
                           "recovered_runs": sum(s["recovery_s"]["p99"] is not None for s in summaries)}
    for name in POINT_FIELDS:
        row[name] = _dig(combined, name)
        ci = _dig(combined["ci95"], name)
        row[f"{name}.low"], row[f"{name}.high"] = ci if isinstance(ci, list) else (None, None)
    return row


def _dig(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def format_value(key: str, value: float | None, duration: bool = False) -> str:
    """A swept value as a person reads it: shares as %, durations as 1m30s, the rest as numbers."""
    if value is None:
        return "n/a"
    leaf = key.rsplit(".", 1)[-1]
    if duration:
        return format_duration(float(value))
    if ("fraction" in leaf or "share" in leaf or leaf in ("online_at_start", "failure")) and 0 <= value <= 1:
        return f"{value * 100:.3g} %"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
