"""Parameter sweeps and tipping points: one scenario over a grid of overrides, crossed with policies.

    grids = [parse_grid("server.workers=200,400,800"), parse_grid("events.0.fraction=0.05:0.5:10")]
    result = run_sweep("quickstart", grids, ["none", "full-jitter"], replications=3, engine="des",
                       out_dir=Path("out/sweep-quickstart"))
    tip = threshold("quickstart", "events.0.fraction", 0.01, 1.0, policy="none", replications=3)

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
import multiprocessing
import re
import sys
import time
import tomllib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import typer

from sim.compare import _cores, _policy_list, split_outside_brackets
from sim.config import ScenarioError, load_scenario
from sim.metrics import STEADY_FIELDS, SUMMARY_FIELDS
from sim.options import EngineOption, ScaleOption, SeedOption, SetOption
from sim.runner import choose_engine, combine, finite_json, run_engine, warm_up
from sim.results import UnsupportedScenario
from sim.scenario import Scenario
from sim.units import format_duration, parse_duration

__all__ = ["Point", "SweepResult", "Probe", "ThresholdResult", "parse_grid", "plan_points", "run_sweep",
           "threshold", "regime", "format_value", "sweep_command", "threshold_command",
           "RUN_COLUMNS", "SUMMARY_COLUMNS", "WALLCLOCK_COLUMNS", "POINT_FIELDS", "REGIMES", "UNDISTURBED"]

#: a run whose online share never fell below this is `undisturbed`
UNDISTURBED = 0.99
#: the regimes of a run, worst first (a tie in a point's majority goes to the worse)
REGIMES = ("metastable", "unrecovered", "recovered", "undisturbed")
_NESTED = {"login_time_s": ("p50", "p95", "p99"), "recovery_s": ("p90", "p99"), "steady": STEADY_FIELDS}
#: every summary field of MODEL.md 5, flattened with dots: `recovery_s.p99`, `steady.utilization`
SUMMARY_COLUMNS = tuple(f"{name}.{sub}" if name in _NESTED else name
                        for name in SUMMARY_FIELDS for sub in _NESTED.get(name, ("",)))
#: columns that measure the machine, not the model: they differ between identical runs
WALLCLOCK_COLUMNS = ("wallclock_s",)
#: sweep.csv: these, then one column per grid key (between `policy` and `replication`), then the summary
RUN_COLUMNS = ("point", "policy", "replication", "spawn_key", "regime")
#: points.csv: each of these as a mean, with `.low` and `.high` (its 95 % CI) beside it
POINT_FIELDS = ("recovery_s.p90", "recovery_s.p99", "lowest_online_share", "amplification", "attempts",
                "peak_offered_rps", "wasted_work_fraction", "login_time_s.p50", "login_time_s.p99", "logins",
                "gave_up", "timeouts", "rejected", "steady.utilization", "steady.throughput",
                "steady.mean_wait_s", "wallclock_s")
_STRINGS = ("scenario", "engine")
_RESERVED = {"seed", "client.policy", "client.policy.name"}  # swept by other means


# --- grids --------------------------------------------------------------------------------

def parse_grid(spec: str) -> tuple[str, list]:
    """`KEY=V1,V2,...` (TOML values, as `--set` reads them), `KEY=LO:HI:N` (N values, linear,
    both ends included) or `KEY=LO:HI:N:log` (geometric). Durations become seconds.

        >>> parse_grid("server.workers=200,400,800")
        ('server.workers', [200, 400, 800])
        >>> parse_grid("events.0.fraction=0.01:1:3:log")
        ('events.0.fraction', [0.01, 0.1, 1.0])
        >>> parse_grid("events.0.duration=1m:3m:3")
        ('events.0.duration', [60.0, 120.0, 180.0])

    Integer ends give whole numbers (`workers=100:1000:4:log` -> 100, 215, 464, 1000).
    """
    key, values, _ = _parse_grid(spec)
    return key, values


def _parse_grid(spec: str) -> tuple[str, list, bool]:
    """As `parse_grid`, and whether the values are durations (seconds)."""
    key, sep, text = spec.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text or " " in key:
        raise ValueError(f"--grid: expected KEY=V1,V2,... or KEY=LO:HI:N[:log], such as server.workers=200,400 "
                         f"or events.0.fraction=0.05:0.5:10, got {spec!r}")
    if key in _RESERVED or key.startswith("client.policy.name"):
        raise ValueError(f"--grid {key}: not a grid key: use --policies for the policy and --replications "
                         f"(or --seed) for seeds")
    parts = text.split(":")
    if len(parts) in (3, 4) and re.fullmatch(r"\s*[+-]?\d+\s*", parts[2]) and "," not in text:
        return (key, *_parse_range(key, parts))
    if len(parts) == 2 and "," not in text and all(part.strip() for part in parts):
        raise ValueError(f"--grid {key}: a range needs its number of values, LO:HI:N[:log], such as "
                         f"{text}:5; got {text!r}")
    items = [item.strip() for item in split_outside_brackets(text)]
    if any(not item for item in items):
        raise ValueError(f"--grid {key}: empty value in {text!r} (values are separated by commas)")
    values = [_toml_value(item) for item in items]
    if all(isinstance(v, str) and _duration_or_none(v) is not None for v in values):
        return key, [_duration_or_none(v) for v in values], True
    if len({_canonical(v) for v in values}) != len(values):
        raise ValueError(f"--grid {key}: a value is given twice in {text!r}")
    return key, values, False


def _parse_range(key: str, parts: list[str]) -> tuple[list, bool]:
    scale = parts[3].strip().lower() if len(parts) == 4 else "lin"
    if scale not in ("lin", "linear", "log"):
        raise ValueError(f"--grid {key}: the 4th part of LO:HI:N:SCALE must be log or lin, got {parts[3]!r}")
    n = int(parts[2])
    if n < 2:
        raise ValueError(f"--grid {key}: a range needs N >= 2 values, got {n} (a single value: KEY=VALUE)")
    ends = [_toml_value(p.strip()) for p in parts[:2]]
    whole = all(isinstance(e, int) and not isinstance(e, bool) for e in ends)
    durations = any(isinstance(e, str) for e in ends)
    lo, hi = (_range_end(key, e) for e in ends)
    if scale == "log" and not (lo > 0 and hi > 0):
        raise ValueError(f"--grid {key}: a log range needs LO and HI > 0, got {parts[0]}:{parts[1]}")
    raw = np.geomspace(lo, hi, n) if scale == "log" else np.linspace(lo, hi, n)
    if whole:
        return list(dict.fromkeys(int(round(v)) for v in raw)), False
    return [float(f"{v:.12g}") for v in raw], durations


def _range_end(key: str, end: Any) -> float:
    if isinstance(end, bool) or not isinstance(end, (int, float, str)):
        raise ValueError(f"--grid {key}: range ends must be numbers or durations, got {end!r}")
    value = _duration_or_none(end) if isinstance(end, str) else float(end)
    if value is None or not math.isfinite(value):
        raise ValueError(f"--grid {key}: range ends must be finite numbers or durations like 30s, 5m; "
                         f"got {end!r}")
    return value


def _duration_or_none(text: str) -> float | None:
    try:
        return parse_duration(text)
    except (TypeError, ValueError):
        return None


def _toml_value(text: str) -> Any:
    """A value as `--set` reads it: TOML, else the bare word as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _toml_text(value: Any) -> str:
    """TOML for a value (the inverse of `_toml_value`): what goes after `--set KEY=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not isinstance(value, float) or math.isfinite(value) else \
            ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = (k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k) for k in value)
        return "{" + ", ".join(f"{k} = {_toml_text(v)}" for k, v in zip(keys, value.values())) + "}"
    raise ValueError(f"cannot write {value!r} as a TOML value")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


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
        pairs = ";".join(f"{k}={_canonical(v)}" for k, v in sorted(self.values, key=lambda kv: kv[0]))
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
        return (*(f"{k}={_toml_text(v)}" for k, v in self.values), f"client.policy.name={self.policy}")

    def label(self) -> str:
        return " ".join([*(f"{k}={_toml_text(v)}" for k, v in self.values), self.policy])


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

def _run_task(task: tuple) -> tuple[str, int, dict[str, Any]]:
    """One replication of one point; module-level so that a worker process or Dask can unpickle it."""
    point_id, k, scenario, until, seed, engine = task
    result = run_engine(engine, scenario, until=until, rng=np.random.default_rng(seed))
    return point_id, k, result.summary


def regime(summary: Mapping[str, Any]) -> str:
    """metastable, undisturbed, recovered or unrecovered: the first that applies (module docstring)."""
    if summary["metastable"]:
        return "metastable"
    lowest = summary.get("lowest_online_share")
    if lowest is not None and lowest >= UNDISTURBED:
        return "undisturbed"
    return "recovered" if summary["recovery_s"]["p99"] is not None else "unrecovered"


# --- executors ----------------------------------------------------------------------------

Runner = Callable[[list[tuple], Callable[[tuple], None]], None]


@contextmanager
def _executor(executor: Any, jobs: int | None) -> Iterator[Runner]:
    """A function that runs tasks and hands each result over as it ends; owns the pool or cluster.

    executor: "serial"; "process" (a process pool of `jobs`, default one per core; jobs=1 is
    serial); "local" (a Dask LocalCluster of `jobs` single-threaded workers); another string is
    a Dask scheduler address; anything else is taken as a `dask.distributed.Client`.
    """
    if executor == "serial" or (executor == "process" and jobs == 1):
        yield _serial_map
    elif executor == "process":
        with ProcessPoolExecutor(max_workers=jobs or _cores(), mp_context=_context()) as pool:
            yield lambda tasks, record: _pool_map(pool, tasks, record)
    else:
        with _dask_client(executor, jobs) as client:
            yield lambda tasks, record: _dask_map(client, tasks, record)


def _serial_map(tasks: list[tuple], record: Callable[[tuple], None]) -> None:
    for task in tasks:
        record(_run_task(task))


def _pool_map(pool: ProcessPoolExecutor, tasks: list[tuple], record: Callable[[tuple], None]) -> None:
    futures = [pool.submit(_run_task, t) for t in tasks]
    try:
        for future in as_completed(futures):
            record(future.result())
    except BaseException:  # a failed run or Ctrl-C: drop the runs not started yet
        for future in futures:
            future.cancel()
        raise


@contextmanager
def _dask_client(executor: Any, jobs: int | None) -> Iterator[Any]:
    if not isinstance(executor, str):
        yield executor  # a Client the caller owns
        return
    if executor != "local" and ":" not in executor:
        raise ValueError(f"executor must be serial, process, local, a Dask scheduler address such as "
                         f"tcp://10.0.0.5:8786, or a dask.distributed Client; got {executor!r}")
    from dask.distributed import Client, LocalCluster  # only when asked for: an optional weight
    if executor == "local":
        with LocalCluster(n_workers=jobs or _cores(), threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
    else:
        with Client(executor) as client:
            yield client


def _dask_map(client: Any, tasks: list[tuple], record: Callable[[tuple], None]) -> None:
    from dask.distributed import as_completed as dask_completed
    futures = [client.submit(_run_task, t, pure=False) for t in tasks]
    try:
        for future in dask_completed(futures):
            record(future.result())
    except BaseException:
        client.cancel(futures)
        raise


def _context() -> multiprocessing.context.BaseContext:
    """forkserver (workers fork from a clean process that has imported this module), else spawn;
    as in `sim.compare`, a script that sweeps with a process pool needs the __main__ guard."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


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
              progress: Progress | None = None) -> SweepResult:
    """Run every point (grid values x policies) `replications` times; write sweep.csv, points.csv, sweep.json.

    `grids` holds specs ("KEY=...", see `parse_grid`) or parsed (key, values) pairs; `policies`
    names, comma lists or "all" (none: the scenario's own policy). Every point's scenario is
    loaded first, so a bad value fails (ScenarioError naming the point) before anything runs.
    Without `resume`, sweep.csv starts afresh; with it, the (point, replication) pairs already
    in it are kept, not rerun (the scenario, seed, scale, sets, engine and until must match
    sweep.json). `progress(done, total, eta_s)` counts runs of the whole plan, resumed included;
    `eta_s` is None until a run of this call has ended.
    """
    if replications < 1:
        raise ValueError("replications must be >= 1")
    out = Path(out_dir)
    parsed = [_parse_grid(g) if isinstance(g, str) else (g[0], list(g[1]), False) for g in grids]
    base = load_scenario(scenario_path, sets=sets, scale=scale, seed=seed)
    names = _policy_list(policies) or [base.client.policy.name]
    points = plan_points([(k, v) for k, v, _ in parsed], names)
    scenarios = {p.id: _load_point(scenario_path, p, sets, scale, seed) for p in points}
    meta = _metadata(base, parsed, names, points, replications, engine, sets, until, scenario_path)
    columns = _run_columns([k for k, _, _ in parsed])
    out.mkdir(parents=True, exist_ok=True)
    done = _resumable(out, meta, columns) if resume else set()
    _write_json(out / "sweep.json", {**meta, "complete": False})
    wanted = [(p, k) for p in points for k in range(replications) if (p.id, k) not in done]
    tasks = [(p.id, k, scenarios[p.id], until, p.replication_seed(base.seed, k),
              choose_engine(scenarios[p.id], engine)[0]) for p, k in wanted]
    total, resumed = len(points) * replications, len(points) * replications - len(wanted)
    by_id = {p.id: p for p in points}
    started, count = time.perf_counter(), [0]
    with _RunWriter(out / "sweep.csv", columns, append=resume) as writer:
        def record(result: tuple) -> None:
            point_id, k, summary = result
            writer.write(_run_row(by_id[point_id], k, summary, base.seed))
            count[0] += 1
            if progress is not None:
                rate = (time.perf_counter() - started) / count[0]
                progress(resumed + count[0], total, rate * (len(tasks) - count[0]))

        if progress is not None:
            progress(resumed, total, None)
        warm_up([task[-1] for task in tasks])  # here, once, not in every worker at once
        if tasks:
            with _executor(executor, jobs) as run_all:
                run_all(tasks, record)
    table = _write_points(out, points, replications, [k for k, _, _ in parsed])
    _write_json(out / "sweep.json", {**meta, "complete": True})
    files = [out / "sweep.csv", out / "points.csv", out / "sweep.json"]
    return SweepResult(out, files, points, replications, total, len(tasks), resumed, table)


def _load_point(path: str | Path, point: Point, sets: Sequence[str], scale: float, seed: int | None,
                what: str = "grid point") -> Scenario:
    try:
        return load_scenario(path, sets=[*sets, *point.sets()], scale=scale, seed=seed)
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
        return _toml_text(value)
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


# --- tipping points -----------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """One value tried: the share of replications metastable, the mean recovery p99 (inf when a
    replication never recovered) and whether the criterion called it tipped."""

    value: float
    metastable_share: float
    recovery_p99_s: float
    tipped: bool


@dataclass
class ThresholdResult:
    """Where the storm tips for one policy.

    `direction` "up": values >= the tipping point tip (a bigger wave); "down": values below it tip
    (fewer workers). `survived` and `tipped` bracket the tipping point (the closest values probed on
    each side; None when every probe fell on one side) and `estimate` is the bracket's midpoint
    (geometric when `log_scale`), None when no value in [lo, hi] tipped or every value did.
    """

    key: str
    policy: str
    criterion: str
    lo: float
    hi: float
    log_scale: bool
    duration: bool
    direction: str | None
    survived: float | None
    tipped: float | None
    estimate: float | None
    probes: list[Probe]
    replications: int


def threshold(scenario_path: str | Path, vary_key: str, lo: float | str, hi: float | str, *,
              policy: str | None = None, replications: int = 3, criterion: str | tuple[str, float] = "metastable",
              tolerance: float = 0.05, relative: bool = True, engine: str = "auto", sets: Sequence[str] = (),
              scale: float = 1.0, seed: int | None = None, until: float | None = None, executor: Any = "process",
              jobs: int | None = None, max_probes: int = 24,
              on_probe: Callable[[Probe], None] | None = None) -> ThresholdResult:
    """Bisect `vary_key` over [lo, hi] for the value where the storm tips, for one policy.

    Tipped: metastable in more than half of the replications (criterion "metastable"), or, with
    ("recovery_p99", limit_s), a mean `recovery_s.p99` over the replications above the limit, a
    replication that never recovered counting as infinite. Both ends are probed first; then the
    bracket is halved until it is at most `tolerance` wide (relative: of its upper end) or
    `max_probes` is reached. Bisection is geometric when lo > 0 and hi/lo >= 10 (`log_scale`).
    Whole-number ends give whole-number probes. Every probe's seeds come from its point (key =
    value, policy), so the result is the same on any executor.
    """
    low, high, duration = _bound(vary_key, lo), _bound(vary_key, hi), _is_duration(lo) or _is_duration(hi)
    if not low < high:
        raise ValueError(f"threshold {vary_key}: needs lo < hi, got {lo!r} and {hi!r}")
    name = policy or load_scenario(scenario_path, sets=sets, scale=scale, seed=seed).client.policy.name
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
    log_scale = low > 0 and high / low >= 10
    label = _criterion_label(criterion)
    probes: list[Probe] = []
    with _executor(executor, jobs) as run_all:
        def probe(value: float) -> bool:
            value = int(round(value)) if whole else float(f"{value:.12g}")
            summaries = _probe_runs(scenario_path, vary_key, value, name, replications, engine, sets, scale, seed,
                                    until, run_all)
            made = _judge(value, summaries, criterion)
            probes.append(made)
            if on_probe is not None:
                on_probe(made)
            return made.tipped

        at_low, at_high = probe(low), probe(high)
        result = ThresholdResult(vary_key, name, label, low, high, log_scale, duration, None, None, None, None,
                                 probes, replications)
        if at_low == at_high:
            result.survived, result.tipped = (None, low) if at_low else (high, None)
            return result
        result.direction = "up" if at_high else "down"
        safe, bad = (low, high) if at_high else (high, low)
        while not _narrow(safe, bad, tolerance, relative, whole) and len(probes) < max_probes:
            mid = math.sqrt(safe * bad) if log_scale else (safe + bad) / 2
            mid = int(round(mid)) if whole else mid
            if mid in (safe, bad):
                break
            if probe(mid):
                bad = probes[-1].value
            else:
                safe = probes[-1].value
        result.survived, result.tipped = safe, bad
        result.estimate = math.sqrt(safe * bad) if log_scale else (safe + bad) / 2
        return result


def _bound(key: str, value: float | str) -> float:
    number = _duration_or_none(value) if isinstance(value, str) else value
    if number is None or isinstance(number, bool) or not math.isfinite(float(number)):
        raise ValueError(f"threshold {key}: bounds must be finite numbers or durations like 30s, got {value!r}")
    return float(number)


def _is_duration(value: Any) -> bool:
    """A string with a unit ("90s", "5m"), not a plain number."""
    if not isinstance(value, str) or _duration_or_none(value) is None:
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False


def _criterion_label(criterion: str | tuple[str, float]) -> str:
    if criterion == "metastable":
        return "metastable in most replications"
    if isinstance(criterion, tuple) and len(criterion) == 2 and criterion[0] == "recovery_p99":
        return f"mean recovery to 99 % online over {format_duration(float(criterion[1]))}"
    raise ValueError(f"criterion must be 'metastable' or ('recovery_p99', limit_s), got {criterion!r}")


def _probe_runs(path: str | Path, key: str, value: float, policy: str, replications: int, engine: str,
                sets: Sequence[str], scale: float, seed: int | None, until: float | None,
                run_all: Runner) -> list[dict[str, Any]]:
    point = Point(((key, value),), policy)
    scenario = _load_point(path, point, sets, scale, seed, what="probe")
    chosen = choose_engine(scenario, engine)[0]
    tasks = [(point.id, k, scenario, until, point.replication_seed(scenario.seed, k), chosen)
             for k in range(replications)]
    found: dict[int, dict[str, Any]] = {}
    run_all(tasks, lambda result: found.__setitem__(result[1], result[2]))
    return [found[k] for k in range(replications)]


def _judge(value: float, summaries: list[dict[str, Any]], criterion: str | tuple[str, float]) -> Probe:
    share = sum(bool(s["metastable"]) for s in summaries) / len(summaries)
    p99 = [s["recovery_s"]["p99"] for s in summaries]
    mean_p99 = math.inf if any(v is None for v in p99) else float(np.mean(p99))
    tipped = share > 0.5 if criterion == "metastable" else mean_p99 > float(criterion[1])
    return Probe(value, share, mean_p99, tipped)


def _narrow(a: float, b: float, tolerance: float, relative: bool, whole: bool) -> bool:
    width = abs(a - b)
    if whole and width <= 1:
        return True
    return width <= (tolerance * max(abs(a), abs(b)) if relative else tolerance)


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


# --- the commands (registered by sim.cli) -------------------------------------------------

JobsOption = Annotated[Optional[int], typer.Option(min=1, help="Runs in parallel (default: one per core; 1 = here).")]
DaskOption = Annotated[Optional[str], typer.Option(
    "--dask", metavar="ADDRESS|local", help="Run on a Dask cluster: a scheduler address, or local to start a "
                                            "LocalCluster of --jobs workers.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no closing lines.")]


def _consoles() -> tuple[Any, Any]:
    from rich.console import Console
    return Console(), Console(stderr=True)


def _say(console: Any, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _fail(err: Any, exc: Exception, where: str) -> typer.Exit:
    if isinstance(exc, ScenarioError):
        for problem in exc.problems:
            _say(err, problem.line(exc.source))
    else:
        _say(err, f"{where}: {exc}")
    return typer.Exit(code=2)


def _seconds(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None
    if not seconds > 0:
        raise typer.BadParameter("must be > 0", param_hint=name)
    return seconds


def sweep_command(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", metavar="KEY=V1,V2|LO:HI:N[:log]",
        help="Values of one key (repeatable; grids cross): server.workers=200,400,800, "
             "events.0.fraction=0.05:0.5:10 (linear, ends included), 0.01:1:9:log, events.0.duration=1m:30m:8.")
    ] = None,
    policies: Annotated[Optional[str], typer.Option(
        metavar="all|A,B", help="Policies crossed with the grid (default: the scenario's own).")] = None,
    replications: Annotated[int, typer.Option(min=1, help="Seeds per point; means and 95 % CIs.")] = 3,
    engine: EngineOption = "auto",
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    until: Annotated[Optional[str], typer.Option(help="Stop every run early at this simulated time.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: out/sweep-<name>).")
                       ] = None,
    jobs: JobsOption = None,
    dask: DaskOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep the runs already in --out's sweep.csv; run the "
                                                          "rest.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Run a scenario over a grid of values (x policies x replications); write sweep.csv, points.csv, sweep.json.

    Seeds come from each point, not its position: a run's numbers do not depend on the grid's
    order, --jobs or --dask. sweep.csv grows as runs end; --resume continues a stopped sweep.
    """
    out, err = _consoles()
    stop = _seconds(until, "--until")
    name = Path(str(scenario)).stem
    try:
        base = load_scenario(scenario, sets=sets or (), scale=scale, seed=seed)
        name = base.name
        target = out_dir if out_dir is not None else Path("out") / f"sweep-{name}"
        with _sweep_progress(err, enabled=not quiet) as report:
            result = run_sweep(scenario, grid or [], [policies] if policies else [], replications=replications,
                               engine=engine, sets=sets or (), scale=scale, seed=seed, until=stop, out_dir=target,
                               executor=dask if dask else "process", jobs=jobs, resume=resume, progress=report)
    except (ScenarioError, ValueError, UnsupportedScenario) as exc:
        raise _fail(err, exc, f"loginstorm sweep {scenario}") from None
    if quiet:
        return
    metastable = sum(row["regime"] == "metastable" for row in result.table)
    _say(err, f"{len(result.points)} points x {replications} replications ({result.runs_now} runs made now, "
              f"{result.runs_resumed} kept from before); metastable at {metastable} of {len(result.table)} points")
    _say(err, f"wrote {', '.join(str(p) for p in result.files + _sweep_report(err, result.out_dir))}")


def _sweep_report(err: Any, out_dir: Path) -> list[Path]:
    """The figures and sweep.html, when sim.sweep_plots is there (it is optional here)."""
    try:
        from sim.sweep_plots import write_sweep_report
    except ImportError:
        return []
    try:
        return list(write_sweep_report(out_dir))
    except Exception as exc:  # the data is written; a figure that fails must not lose it
        _say(err, f"loginstorm sweep: no report ({type(exc).__name__}: {exc})")
        return []


@contextmanager
def _sweep_progress(err: Any, enabled: bool) -> Iterator[Progress | None]:
    """A progress bar with ETA on a terminal, a line every ~10 s otherwise, nothing when quiet."""
    if not enabled:
        yield None
        return
    if not err.is_terminal:
        last = [0.0]

        def line(done: int, total: int, eta: float | None) -> None:
            now = time.monotonic()
            if now - last[0] >= 10 or done == total:
                last[0] = now
                left = "" if eta is None else f", about {format_duration(round(eta))} left"
                sys.stderr.write(f"sweep: {done}/{total} runs{left}\n")
                sys.stderr.flush()

        yield line
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    columns = (TextColumn("sweep"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn(), TextColumn("{task.fields[eta]}"))
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("sweep", total=None, eta="")

        def update(done: int, total: int, eta: float | None) -> None:
            left = "" if eta is None else f"about {format_duration(round(eta))} left"
            bar.update(task, completed=done, total=total, eta=left)

        yield update


def threshold_command(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    vary: Annotated[str, typer.Option("--vary", metavar="KEY", help="The key to vary, e.g. events.0.fraction.")],
    lo: Annotated[str, typer.Option("--lo", help="Lower end of the search (a number or a duration).")],
    hi: Annotated[str, typer.Option("--hi", help="Upper end of the search.")],
    policies: Annotated[Optional[str], typer.Option(
        metavar="all|A,B", help="One search per policy (default: the scenario's own).")] = None,
    replications: Annotated[int, typer.Option(min=1, help="Seeds per probe; tipped = most of them.")] = 3,
    recovery_limit: Annotated[Optional[str], typer.Option(
        help="Tipped = mean recovery to 99 % online longer than this (e.g. 10m) instead of metastable.")] = None,
    tolerance: Annotated[str, typer.Option(help="Stop when the bracket is this narrow: 5% (of its upper end) or "
                                                "an absolute width (0.01, 30s).")] = "5%",
    engine: EngineOption = "auto",
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    until: Annotated[Optional[str], typer.Option(help="Stop every run early at this simulated time.")] = None,
    jobs: JobsOption = None,
    dask: DaskOption = None,
    quiet: QuietOption = False,
) -> None:
    """Find the value of a key where the storm tips into metastability (or slow recovery), per policy."""
    out, err = _consoles()
    criterion: Any = ("recovery_p99", _seconds(recovery_limit, "--recovery-limit")) if recovery_limit else "metastable"
    try:
        tol, relative = _tolerance(tolerance)
        base = load_scenario(scenario, sets=sets or (), scale=scale, seed=seed)
        names = _policy_list([policies] if policies else []) or [base.client.policy.name]
        bounds = [_toml_value(lo) if not _is_duration(lo) else lo, _toml_value(hi) if not _is_duration(hi) else hi]
        results = []
        for name in names:
            shown = (lambda p, n=name: _say(err, f"{n}: {vary}={format_value(vary, p.value, _is_duration(lo))} -> "
                                                 f"{'tipped' if p.tipped else 'survived'} (metastable "
                                                 f"{p.metastable_share:.0%})")) if not quiet else None
            results.append(threshold(scenario, vary, bounds[0], bounds[1], policy=name, replications=replications,
                                     criterion=criterion, tolerance=tol, relative=relative, engine=engine,
                                     sets=sets or (), scale=scale, seed=seed, until=_seconds(until, "--until"),
                                     executor=dask if dask else "process", jobs=jobs, on_probe=shown))
    except (ScenarioError, ValueError, UnsupportedScenario) as exc:
        raise _fail(err, exc, f"loginstorm threshold {scenario}") from None
    from rich.console import Console
    console = out if out.is_terminal else Console(width=200)  # piped output is not cut to 80 columns
    console.print(_threshold_table(results))
    _say(console, threshold_line(results))


def _tolerance(text: str) -> tuple[float, bool]:
    text = text.strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100, True
    value = _duration_or_none(text)
    if value is None or not value > 0:
        raise ValueError(f"--tolerance: expected a share like 5% or a width like 0.01 or 30s, got {text!r}")
    return value, False


def threshold_line(results: Sequence[ThresholdResult]) -> str:
    """`survivable events.0.fraction: up to 18 % with none, up to 63 % with full-jitter`."""
    parts = []
    for r in results:
        show = lambda v: format_value(r.key, v, r.duration)  # noqa: E731
        if r.direction is None:
            parts.append(f"{'none in range' if r.tipped is not None else 'all of the range'} "
                         f"({show(r.lo)}-{show(r.hi)}) with {r.policy}")
        else:
            parts.append(f"{'up to' if r.direction == 'up' else 'from'} {show(r.survived)} with {r.policy}")
    return f"survivable {results[0].key}: " + ", ".join(parts) if results else ""


def _threshold_table(results: Sequence[ThresholdResult]) -> Any:
    from rich.table import Table
    first = results[0]
    table = Table(title=f"{first.key}: where the storm tips ({first.criterion}; {first.replications} replications "
                        f"per probe{', log-scale bisection' if first.log_scale else ''})")
    for header in ("policy", "survived", "tipped", "estimate", "probes"):
        table.add_column(header, justify="left" if header == "policy" else "right")
    for r in results:
        show = lambda v: format_value(r.key, v, r.duration)  # noqa: E731
        table.add_row(r.policy, show(r.survived), show(r.tipped), show(r.estimate), str(len(r.probes)))
    return table
