"""Running a scenario as the CLI does: engine choice, replications, and the output folder.

    >>> from sim.config import load_scenario
    >>> outcome = simulate(load_scenario("quickstart"), replications=2, until=900.0)
    >>> write_outputs(outcome, Path("out/quickstart"))
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sim import des
from sim.record import COLUMNS, COUNTS
from sim.results import RunResult, UnsupportedScenario
from sim.scenario import Scenario

__all__ = ["Outcome", "simulate", "check_engine", "choose_engine", "run_engine", "warm_up", "write_outputs",
           "write_timeseries", "combine", "finite_json", "replication_seeds", "ENGINES", "AUTO_FAST_CLIENTS",
           "SHARE_FIELDS"]

ENGINES = ("auto", "des", "fast")
#: `auto` runs the `fast` engine for populations of at least this many clients (docs/model.md section 6)
AUTO_FAST_CLIENTS = 100_000
# Student t quantiles t(0.975, df) for df = 1..30; beyond that the normal 1.96 is close enough.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)
#: summary fields that are shares of a whole: their means and intervals lie in [0, 1]
SHARE_FIELDS = frozenset({"wasted_work_fraction", "lowest_online_share", "utilization", "p_wait", "blocking",
                          "abandonment"})


@dataclass
class Outcome:
    """A simulation as written out: the (combined) summary, the (mean) time series and the runs."""

    summary: dict[str, Any]
    timeseries: dict[str, np.ndarray]
    runs: list[RunResult]
    note: str | None = None          # why `auto` chose the engine it did
    warm_up_s: float | None = None   # fast: loading (or, the first time, compiling) the compiled loop


def simulate(scenario: Scenario, *, engine: str = "auto", until: float | None = None,
             replications: int = 1, progress: Callable[[int, float, int], None] | None = None) -> Outcome:
    """Run `replications` independent seeds (SeedSequence(seed).spawn) of one scenario.

    `progress(replication, sim_time, events)` is called as the runs advance.
    """
    engine, note = choose_engine(scenario, engine)
    if replications < 1:
        raise ValueError("replications must be >= 1")
    rngs = [np.random.default_rng(seed) for seed in replication_seeds(scenario.seed, replications)]
    runs = []
    warm = warm_up([engine])
    for k, rng in enumerate(rngs):
        report = None if progress is None else (lambda t, n, k=k: progress(k, t, n))
        runs.append(run_engine(engine, scenario, until=until, rng=rng, progress=report))
    if replications == 1:
        return Outcome(runs[0].summary, runs[0].timeseries, runs, note, warm)
    return Outcome(combine([r.summary for r in runs]), _mean_series([r.timeseries for r in runs]), runs, note, warm)


def replication_seeds(seed: int, replications: int) -> list[Any]:
    """The seeds of `replications` runs: the seed itself for one run, else SeedSequence(seed).spawn(R)."""
    return [seed] if replications == 1 else np.random.SeedSequence(seed).spawn(replications)


def run_engine(engine: str, scenario: Scenario, *, until: float | None = None,
               rng: np.random.Generator | None = None, progress=None) -> RunResult:
    """One run on a resolved engine (`des` or `fast`, see `choose_engine`)."""
    if engine == "fast":
        from sim import fast
        return fast.run(scenario, until=until, rng=rng, progress=progress)
    return des.run(scenario, until=until, progress=progress, rng=rng)


def warm_up(engines) -> float | None:
    """When any of the resolved `engines` is `fast`: load (or, the first time, compile) it once in
    this process, before runs or worker processes start; its seconds. None when none is."""
    if "fast" not in engines:
        return None
    from sim import fast
    return fast.warm_up()


def check_engine(engine: str) -> str:
    """`engine` if it is one of ENGINES, else a ValueError naming them."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    return engine


def choose_engine(scenario: Scenario, engine: str) -> tuple[str, str | None]:
    """The engine that runs (`auto` resolved), and a line saying why when `auto` chose."""
    if check_engine(engine) != "auto":
        return engine, None
    clients = scenario.population.clients
    if clients < AUTO_FAST_CLIENTS:
        return "des", None
    from sim import fast
    try:
        fast.check_supported(scenario)
    except UnsupportedScenario as exc:
        return "des", f"engine auto: des for {clients:,} clients, as the fast engine cannot run this yet ({exc})"
    return "fast", f"engine auto: fast for {clients:,} clients (des below {AUTO_FAST_CLIENTS:,})"


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each numeric field over replications, with a 95 % confidence interval beside it.

    The result keeps the summary's shape (means in place of values), adds `replications`,
    `ci95` (the same shape, [low, high] per numeric field: the Student t interval cut to the
    field's range, see `_ci`) and `runs` (every replication's summary). A field that is null in
    any replication (say, recovery that never came) is null in the mean; `metastable` becomes
    true when most replications are, and `metastable_share` says how many.
    """
    out = _combine_level(summaries)
    out["ci95"] = _ci_level(summaries)
    share = sum(bool(s["metastable"]) for s in summaries) / len(summaries)
    out["metastable"] = share > 0.5
    out["metastable_share"] = share
    out["replications"] = len(summaries)
    out["runs"] = summaries
    return out


def _combine_level(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, dict):
            out[key] = _combine_level(values)
        elif isinstance(first, bool) or isinstance(first, str):
            out[key] = first if all(v == first for v in values) else values
        elif any(v is None for v in values):
            out[key] = None
        elif all(v == first for v in values):
            out[key] = first  # the same in every run (seed, clients, ...): keep it as it is
        elif isinstance(first, (int, float)):
            out[key] = float(np.mean(values))
        else:
            out[key] = first
    return out


def _ci_level(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, dict):
            out[key] = _ci_level(values)
        elif isinstance(first, (int, float)) and not isinstance(first, bool) and key not in ("seed", "scale"):
            top = 1.0 if key in SHARE_FIELDS else math.inf
            out[key] = None if any(v is None for v in values) else _ci(values, top)
    return out


def _ci(values: list[float], top: float = math.inf) -> list[float]:
    """The 95 % Student t interval of the mean of `values`, cut to the range [0, top] of the quantity.

    Every number in a summary is non-negative (times, counts, rates, attempts per episode) and a
    share also lies below top = 1. So does the true mean, so cutting the t-interval to that range
    only drops impossible values: the coverage stays exactly the t-interval's, the mean (what
    compare ranks by) stays inside, and an interval that already lay inside is unchanged. With
    R = 2 (t = 12.7) the cut often gives [0, high]: the runs rule out only means above high.
    A t-interval on log(x) would never reach 0, but it is an interval for the geometric mean, not
    the mean, and misses the mean of skewed samples more often as R grows; a percentile bootstrap
    is [min, max] at R = 2 and covers the mean at most half the time. A sample with a value outside
    [0, top] is not of such a quantity: it keeps the plain t-interval. One value has no interval:
    (-inf, inf).

        >>> _ci([1.0, 100.0])  # plain t: 50.5 ± 12.706 * 49.5 (sd / sqrt(R)) = [-578.4, 679.4]
        [0.0, 679.44...]
    """
    n = len(values)
    mean = float(np.mean(values))
    half = _T975[min(n - 1, 30) - 1] * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    if n > 31:
        half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(n)
    if n == 1 or not 0 <= min(values) <= max(values) <= top:
        return [mean - half, mean + half]
    return [max(mean - half, 0.0), min(mean + half, top)]


def _mean_series(series: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.mean([s[k] for s in series], axis=0) for k in series[0]}


def write_outputs(outcome: Outcome, out_dir: Path, report: bool = True) -> list[Path]:
    """summary.json, timeseries.csv and (unless report=False) report.html with its figure in
    `out_dir` (created); returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(finite_json(outcome.summary), indent=2, default=_json_default) + "\n")
    series_path = write_timeseries(outcome.timeseries, out_dir / "timeseries.csv",
                                   whole_counts=len(outcome.runs) == 1)
    ts = outcome.timeseries
    written = [summary_path, series_path]
    if report:
        from sim.plots import figure_images, run_figure  # matplotlib only when a report is wanted
        from sim.report import write_run_report
        png, images = figure_images(run_figure(ts, outcome.runs[0].scenario), out_dir / "storm")
        written += write_run_report(outcome.summary, outcome.runs[0].scenario, out_dir, written, png=png, images=images)
    return written


def write_timeseries(ts: dict[str, np.ndarray], path: Path, whole_counts: bool = True) -> Path:
    """timeseries.csv (docs/model.md section 5): counts as whole numbers unless they are means."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for i in range(len(ts["t"])):
            writer.writerow([_cell(name, ts[name][i], whole_counts) for name in COLUMNS])
    return path


def _cell(name: str, value: float, whole_counts: bool) -> str:
    if name in COUNTS and whole_counts:
        return str(int(value))
    return f"{float(value):.6g}"


def finite_json(value: Any) -> Any:
    """The same structure with inf/nan floats as null: JSON has no infinity."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
