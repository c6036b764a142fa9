"""The summary of docs/model.md section 5 as pure functions over a run's records.

Everything here reads counters, time-weighted levels and tallies; nothing runs the model, so
both engines share these definitions.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from sim.record import COLUMNS, COUNTS, DERIVED, Counter, Level, ShareWatch, Tallies, Window

__all__ = ["summarize", "timeseries", "quantiles", "ratio", "SUMMARY_FIELDS", "STEADY_FIELDS"]

SUMMARY_FIELDS = (
    "scenario", "engine", "seed", "scale", "clients", "duration_s", "wallclock_s", "events_processed",
    "episodes", "logins", "gave_up", "attempts", "amplification", "timeouts", "rejected", "errors",
    "wasted", "suppressed", "short_circuited", "resumptions", "resumed", "wasted_work_fraction",
    "peak_offered_rps", "capacity_rps",
    "login_time_s", "recovery_s",
    "metastable", "steady", "lowest_online_share", "lowest_online_at_s",
)
STEADY_FIELDS = ("arrival_rate", "throughput", "utilization", "mean_wait_s", "p_wait", "blocking",
                 "abandonment", "mean_in_system", "mean_orbit", "attempts_per_login")
STEADY, TAIL = 0, 1  # window numbers in the levels and counters
#: the tail's share of wasted completions above which a tier has collapsed (metastable): goodput near zero
WASTED_COLLAPSE = 0.9


class Records(Protocol):
    """What an engine hands over: its records and a few facts about the run."""

    s: Any
    end: float
    levels: dict[str, Level]
    counts: dict[str, Counter]
    steady_refusals: Counter
    steady_timeouts: Counter
    tallies: Tallies
    watch: ShareWatch
    steady: Window
    tail: Window
    last_event_end: float
    capacity_at_start: float


def ratio(num: float, den: float) -> float | None:
    """num / den, or None (JSON null) where the denominator is 0."""
    return num / den if den else None


def quantiles(values: np.ndarray, qs: tuple[float, ...] = (0.50, 0.95, 0.99)) -> dict[str, float | None]:
    """`{"p50": ..., "p95": ..., "p99": ...}` of the values (nulls when there are none)."""
    names = [f"p{round(q * 100)}" for q in qs]
    if len(values) == 0:
        return dict.fromkeys(names)
    return {n: float(v) for n, v in zip(names, np.quantile(values, qs))}


def summarize(r: Records, *, events: int, wallclock: float, engine: str = "des") -> dict[str, Any]:
    """Every field of docs/model.md section 5 (nulls where undefined)."""
    s, t = r.s, r.tallies
    attempts = r.counts["attempts"].total
    width = s.bin_width
    bins = np.array(r.counts["attempts"].bins, dtype=float)
    lengths = np.minimum(width, r.end - np.arange(len(bins)) * width)
    p90, p99 = r.watch.recovery()
    return {
        "scenario": s.name,
        "engine": engine,
        "seed": s.seed,
        "scale": s.scale,
        "clients": s.population.clients,
        "duration_s": r.end,
        "wallclock_s": round(wallclock, 3),
        "events_processed": events,
        "episodes": t.episodes,
        "logins": t.logins,
        "gave_up": t.gave_up,
        "attempts": attempts,
        "amplification": ratio(attempts, t.episodes),
        "timeouts": r.counts["timeouts"].total,
        "rejected": r.counts["rejected"].total,
        "errors": r.counts["errors"].total,
        "wasted": r.counts["wasted"].total,
        # the client's limiter (docs/model.md section 4.7): retries it denied, calls it refused locally
        "suppressed": r.counts["suppressed"].total,
        "short_circuited": r.counts["short_circuited"].total,
        # docs/model.md section 3.4: attempts that were session resumptions, and the logins they made
        "resumptions": r.counts["resumptions"].total,
        "resumed": r.counts["resumed"].total,
        "wasted_work_fraction": ratio(t.wasted_time, t.busy_time),
        "peak_offered_rps": float((bins / lengths).max()) if len(bins) else 0.0,
        "capacity_rps": r.capacity_at_start,
        "login_time_s": quantiles(t.login_times),
        "recovery_s": {"p90": p90, "p99": p99},
        "metastable": metastable(r),
        "steady": steady(r),
        # an extension (docs/model.md section 5): the deepest point of the storm, exact (not a bin average)
        "lowest_online_share": r.watch.lowest,
        "lowest_online_at_s": r.watch.lowest_at,
    }


def level_mean(r: Records, name: str, window: int) -> float | None:
    """Time average of a level, or of a sum of levels (`busy`, `in_system`), over a window."""
    parts = DERIVED.get(name, (name,))
    means = [r.levels[p].mean(window) for p in parts]
    return None if any(m is None for m in means) else sum(means)


def metastable(r: Records) -> bool:
    """The storm sustains itself (docs/model.md section 5): the triggers have been over for at least
    10 % of the run, yet in the tail the online share stays below 99 % and the tier is stuck,
    either busy (workers >= 95 % busy: a backlog-driven storm) or wasted (at least 90 % of the
    requests it completes reach nobody, goodput near zero: a latency-driven collapse, where a tier
    without a concurrency bound slows down until its answers come after the clients' deadlines)."""
    if r.last_event_end > r.end - 0.1 * r.end:
        return False
    if r.watch.tail_max >= 0.99:
        return False
    busy, workers = level_mean(r, "busy", TAIL), r.levels["workers"].mean(TAIL)
    if busy is not None and workers and busy / workers >= 0.95:
        return True
    return wasted_share(r) >= WASTED_COLLAPSE


def wasted_share(r: Records) -> float:
    """Of the requests the tier completed in the tail, the share that reached nobody (0: none completed)."""
    wasted, useful = r.counts["wasted"].sums[TAIL], r.counts["successes"].sums[TAIL]
    return wasted / (wasted + useful) if wasted + useful else 0.0


def steady(r: Records) -> dict[str, float | None]:
    """Queueing measures over [warmup, end] (docs/model.md section 5 `steady`)."""
    length = r.steady.length
    if length <= 0:
        return dict.fromkeys(STEADY_FIELDS)
    attempts = r.counts["attempts"].sums[STEADY]
    logins = r.counts["successes"].sums[STEADY]
    t = r.tallies
    workers = r.levels["workers"].mean(STEADY)
    return {
        "arrival_rate": attempts / length,
        "throughput": logins / length,
        "utilization": ratio(level_mean(r, "busy", STEADY), workers),
        "mean_wait_s": ratio(t.waits_sum, t.waits_started),
        "p_wait": ratio(t.waits_positive, t.waits_started),
        "blocking": ratio(r.steady_refusals.sums[0], attempts),
        "abandonment": ratio(r.steady_timeouts.sums[0], attempts),
        "mean_in_system": level_mean(r, "in_system", STEADY),
        "mean_orbit": r.levels["orbit"].mean(STEADY),
        "attempts_per_login": ratio(attempts, logins),
    }


def timeseries(r: Records) -> dict[str, np.ndarray]:
    """The columns of timeseries.csv: levels as time averages over each bin, the rest counts."""
    width = r.s.bin_width
    nbins = len(r.counts["attempts"].bins)
    starts = np.arange(nbins) * width
    lengths = np.minimum(width, r.end - starts)
    out: dict[str, np.ndarray] = {"t": starts}
    for name in COLUMNS[1:]:
        if name in COUNTS:
            out[name] = np.array(r.counts[name].bins, dtype=np.int64)
        else:
            out[name] = sum(np.array(r.levels[p].bins) for p in DERIVED.get(name, (name,))) / lengths
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
