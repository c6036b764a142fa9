"""Plain-language descriptions of scenarios and policies, for the CLI and (later) the reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from sim.policies import Policy, make_policy, policy_names
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["scenario_line", "summary_lines", "policy_text", "capacity_rps", "PolicyRow", "policy_rows"]


def capacity_rps(s: Scenario) -> float:
    """Logins per second the dedicated workers complete at the mean service time (t = 0)."""
    mean = s.server.service_time.mean
    return math.inf if mean == 0 else s.server.workers / mean


def policy_text(policy: Policy) -> str:
    """`exponential(base 1s, cap 5m)`: the name and the parameters its formula uses."""
    params = []
    used = {f.name for f in fields(policy)}
    for key in ("base", "cap", "multiplier"):
        value = getattr(policy, key, None)
        if value is not None and key in used:
            params.append(f"{key} {format_duration(value) if key != 'multiplier' else f'{value:g}'}")
    if policy.max_attempts:
        params.append(f"max {policy.max_attempts} attempts")
    return f"{policy.name}({', '.join(params)})" if params else policy.name


def scenario_line(s: Scenario) -> str:
    """One line that says what the scenario is: size, capacity, events, duration, policy."""
    events = ", ".join(f"{e.kind} at {format_duration(e.at)}" for e in s.events) or "no events"
    policy = s.client.build_policy()
    parts = [
        f"{s.population.clients:,} clients",
        f"{s.server.workers:,} workers (~{capacity_rps(s):,.0f} logins/s)",
        f"{len(s.events)} event{'s' if len(s.events) != 1 else ''} ({events})",
        f"{format_duration(s.duration)} simulated",
        f"policy {policy_text(policy)}",
    ]
    if s.server.p2p is not None:
        parts.insert(2, "p2p supernodes")
    if s.scale != 1.0:
        parts.append(f"scale {s.scale:g}")
    return f"{s.name}: " + ", ".join(parts)


@dataclass(frozen=True)
class PolicyRow:
    """One line of `loginstorm policies`: the formula and the mean delay of retries 0..n-1."""

    name: str
    formula: str
    means: tuple[float, ...]
    estimated: tuple[bool, ...]  # True where no closed form exists and the mean is simulated


def policy_rows(base: float, cap: float, multiplier: float | None = None, retries: int = 10,
                seed: int = 0, draws: int = 20_000) -> list[PolicyRow]:
    """Every registered policy with the given base/cap (grpc keeps its own multiplier unless given)."""
    rows = []
    for name in policy_names():
        params = {"base": base, "cap": cap}
        if multiplier is not None:
            params["multiplier"] = multiplier
        policy = make_policy(name, **params)
        means, estimated = [], []
        simulated = None
        for n in range(retries):
            exact = policy.mean_delay(n)
            if exact is None:
                simulated = simulated if simulated is not None else _simulated_means(policy, retries, seed, draws)
                exact = simulated[n]
            means.append(float(exact))
            estimated.append(policy.mean_delay(n) is None)
        rows.append(PolicyRow(name, policy.formula_text, tuple(means), tuple(estimated)))
    return rows


def _simulated_means(policy: Policy, retries: int, seed: int, draws: int) -> list[float]:
    """Mean delay per retry over `draws` independent episodes, feeding each draw back as `previous`."""
    rng = np.random.default_rng(seed)
    previous = None
    means = []
    for n in range(retries):
        delays = policy.delays(np.full(draws, n), rng, previous)
        means.append(float(delays.mean()))
        previous = delays
    return means


def _when(seconds: float | None) -> str:
    return "never (still below at the end)" if seconds is None else format_duration(round(seconds, 1))


def summary_lines(summary: dict) -> str:
    """A few plain-language lines about a run's summary, for the terminal."""
    rec = summary["recovery_s"]
    amp = summary["amplification"]
    reps = summary.get("replications")
    head = f"{summary['scenario']} ({summary['engine']} engine" + (f", mean of {reps} replications)" if reps else ")")
    lines = [
        head,
        f"  {summary['logins']:,.0f} logins in {summary['episodes']:,.0f} episodes; "
        f"{summary['attempts']:,.0f} attempts" + (f" ({amp:.2f} per episode)" if amp is not None else ""),
        f"  rejected {summary['rejected']:,.0f}, timed out {summary['timeouts']:,.0f}, "
        f"gave up {summary['gave_up']:,.0f}; wasted work "
        + ("n/a" if summary["wasted_work_fraction"] is None else f"{summary['wasted_work_fraction']:.1%}"),
        f"  peak offered load {summary['peak_offered_rps']:,.1f}/s against a capacity of "
        + ("unlimited" if summary["capacity_rps"] is None or math.isinf(summary["capacity_rps"])
           else f"{summary['capacity_rps']:,.1f}/s"),
        f"  back to 90 % online: {_when(rec['p90'])} after the first event; 99 %: {_when(rec['p99'])}",
    ]
    if summary["metastable"]:
        lines.append("  the storm sustained itself: METASTABLE (still down and saturated at the end)")
    return "\n".join(lines)
