"""Tipping points: where a storm tips into metastability (or slow recovery) as one key varies.

    tip = threshold("quickstart", "events.0.fraction", 0.01, 1.0, policy="none", replications=3)
    print(threshold_line([tip]))   # survivable events.0.fraction: up to ... with none

A bisection over one key, per policy: both ends are probed first, then the bracket is halved.
Each probe is a sweep point (`sim.sweep.Point`: key = value, policy), so its seeds follow the
point and the result is the same on any executor (`sim.batch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sim import batch
from sim.batch import Finished, Run, RunAll
from sim.config import ScenarioFile, read_scenario
from sim.overrides import duration_or_none, policy_list, toml_value
from sim.runner import choose_engine
from sim.scenario import Scenario
from sim.sweep import Point, format_value, load_point
from sim.units import format_duration

__all__ = ["Probe", "ThresholdResult", "threshold", "thresholds", "threshold_line", "parse_tolerance"]


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
              on_probe: Callable[[Probe], None] | None = None,
              before_runs: Callable[[list[Scenario]], None] | None = None) -> ThresholdResult:
    """Bisect `vary_key` over [lo, hi] for the value where the storm tips, for one policy.

    Tipped: metastable in more than half of the replications (criterion "metastable"), or, with
    ("recovery_p99", limit_s), a mean `recovery_s.p99` over the replications above the limit, a
    replication that never recovered counting as infinite. Both ends are probed first; then the
    bracket is halved until it is at most `tolerance` wide (relative: of its upper end) or
    `max_probes` is reached. Bisection is geometric when lo > 0 and hi/lo >= 10 (`log_scale`).
    Whole-number ends give whole-number probes. Every probe's seeds come from its point (key =
    value, policy), so the result is the same on any executor. `before_runs(scenarios)` sees the
    scenarios at both ends before anything runs (the CLI's resource check).
    """
    low, high, duration = _bound(vary_key, lo), _bound(vary_key, hi), _is_duration(lo) or _is_duration(hi)
    if not low < high:
        raise ValueError(f"threshold {vary_key}: needs lo < hi, got {lo!r} and {hi!r}")
    file = read_scenario(scenario_path)
    spec = file.scenario(sets=sets, scale=scale, seed=seed).client.policy
    name = policy or spec.preset or spec.name  # a preset stays a preset (its limiter and attempts too)
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
    log_scale = low > 0 and high / low >= 10
    label = _criterion_label(criterion)
    if before_runs is not None:
        before_runs([load_point(file, Point(((vary_key, int(round(v)) if whole else v),), name), sets, scale, seed,
                                what="probe") for v in (low, high)])
    probes: list[Probe] = []
    with batch.executor(executor, jobs) as run_all:
        def probe(value: float) -> bool:
            value = int(round(value)) if whole else float(f"{value:.12g}")
            summaries = _probe_runs(file, vary_key, value, name, replications, engine, sets, scale, seed,
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
    number = duration_or_none(value) if isinstance(value, str) else value
    if number is None or isinstance(number, bool) or not math.isfinite(float(number)):
        raise ValueError(f"threshold {key}: bounds must be finite numbers or durations like 30s, got {value!r}")
    return float(number)


def _is_duration(value: Any) -> bool:
    """A string with a unit ("90s", "5m"), not a plain number."""
    if not isinstance(value, str) or duration_or_none(value) is None:
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


def _probe_runs(file: ScenarioFile, key: str, value: float, policy: str, replications: int, engine: str,
                sets: Sequence[str], scale: float, seed: int | None, until: float | None,
                run_all: RunAll) -> list[dict[str, Any]]:
    point = Point(((key, value),), policy)
    scenario = load_point(file, point, sets, scale, seed, what="probe")
    chosen = choose_engine(scenario, engine)[0]
    runs = [Run(k, scenario, point.replication_seed(scenario.seed, k), chosen, until) for k in range(replications)]
    found: dict[int, dict[str, Any]] = {}

    def record(finished: Finished) -> None:
        found[finished.key] = finished.summary

    run_all(runs, record)
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


# --- thresholds as typed on a command line -------------------------------------------------

def parse_tolerance(text: str) -> tuple[float, bool]:
    """`5%` -> (0.05, relative) or an absolute width, `0.01` or `30s` -> (0.01, absolute)."""
    text = text.strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100, True
    value = duration_or_none(text)
    if value is None or not value > 0:
        raise ValueError(f"--tolerance: expected a share like 5% or a width like 0.01 or 30s, got {text!r}")
    return value, False


def thresholds(scenario_path: str | Path, vary_key: str, lo: str, hi: str, *, policies: str | None = None,
               tolerance: str = "5%", replications: int = 3, criterion: str | tuple[str, float] = "metastable",
               engine: str = "auto", sets: Sequence[str] = (), scale: float = 1.0, seed: int | None = None,
               until: float | None = None, executor: Any = "process", jobs: int | None = None,
               on_probe: Callable[[str], None] | None = None,
               before_runs: Callable[[list[Scenario]], None] | None = None) -> list[ThresholdResult]:
    """`threshold` once per policy, with bounds, policies and tolerance written as on the command line.

        thresholds("quickstart", "events.0.fraction", "0.01", "1", policies="none,full-jitter", tolerance="5%")

    `lo`/`hi` are numbers or durations (`90s`); `policies` is `all` or `A,B` (default: the
    scenario's own); `on_probe` gets one line per value tried.
    """
    tol, relative = parse_tolerance(tolerance)
    base = read_scenario(scenario_path).scenario(sets=sets, scale=scale, seed=seed)
    names = policy_list([policies] if policies else []) or [base.client.policy.name]
    bounds = [toml_value(lo) if not _is_duration(lo) else lo, toml_value(hi) if not _is_duration(hi) else hi]
    results = []
    for name in names:
        shown = (lambda p, n=name: on_probe(f"{n}: {vary_key}={format_value(vary_key, p.value, _is_duration(lo))} "
                                            f"-> {'tipped' if p.tipped else 'survived'} (metastable "
                                            f"{p.metastable_share:.0%})")) if on_probe is not None else None
        results.append(threshold(scenario_path, vary_key, bounds[0], bounds[1], policy=name,
                                 replications=replications, criterion=criterion, tolerance=tol, relative=relative,
                                 engine=engine, sets=sets, scale=scale, seed=seed, until=until, executor=executor,
                                 jobs=jobs, on_probe=shown, before_runs=before_runs))
    return results


def threshold_line(results: Sequence[ThresholdResult]) -> str:
    """`survivable events.0.fraction: up to 18 % with none, up to 63 % with full-jitter`."""
    parts = []
    for r in results:
        def show(v, r=r):
            return format_value(r.key, v, r.duration)
        if r.direction is None:
            parts.append(f"{'none in range' if r.tipped is not None else 'all of the range'} "
                         f"({show(r.lo)}-{show(r.hi)}) with {r.policy}")
        else:
            parts.append(f"{'up to' if r.direction == 'up' else 'from'} {show(r.survived)} with {r.policy}")
    return f"survivable {results[0].key}: " + ", ".join(parts) if results else ""
