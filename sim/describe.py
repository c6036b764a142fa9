"""Plain-language descriptions of scenarios and policies, for the CLI and (later) the reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from sim.policies import Policy, make_policy, policy_names
from sim.scenario import Scenario
from sim.units import format_duration

__all__ = ["scenario_line", "server_protections", "summary_lines", "plain_lines", "dist_text", "policy_text",
           "client_text", "capacity_rps",
           "PolicyRow",
           "policy_rows", "recovery_line", "plural"]


def capacity_rps(s: Scenario) -> float:
    """Logins per second the workers complete at the mean service time at t = 0: the dedicated
    ones plus, with [server.p2p], the slots of the supernodes in place at the start."""
    mean = s.server.service_time.mean
    return math.inf if mean == 0 else (s.server.workers + supernode_slots(s)) / mean


def supernode_slots(s: Scenario) -> int:
    """The workers the supernodes add at t = 0 (docs/model.md section 3.2: the wanted number is in place)."""
    p2p = s.server.p2p
    if p2p is None:
        return 0
    online = round(s.population.online_at_start * s.population.clients)
    return p2p.slots * min(online, round(p2p.supernode_ratio * online))


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


def client_text(client) -> str:
    """The retry behaviour of a `[client]` table: preset, formula, limiter.

        >>> from sim.config import load_scenario
        >>> for part in client_text(load_scenario("quickstart", sets=["client.policy=aws-sdk-standard"]).client
        ...                         ).split(" + "):
        ...     print(part)
        aws-sdk-standard = full-jitter(base 1s, cap 20s, multiplier 2, max 3 attempts)
        quota 500 tokens, retry costs 5 (10 after a timeout), per device
    """
    text = policy_text(client.build_policy())
    if client.policy.preset is not None:
        text = f"{client.policy.preset} = {text}"
    limiter = client.build_limiter()
    return text if limiter is None else f"{text} + {limiter.describe()}"


def scenario_line(s: Scenario) -> str:
    """One line that says what the scenario is: size, capacity, events, duration, policy."""
    events = ", ".join(f"{e.kind} at {format_duration(e.at)}" for e in s.events) or "no events"
    parts = [
        plural(s.population.clients, "client"),
        plural(s.server.workers, "worker") + (f" + {plural(supernode_slots(s), 'supernode slot')}" if s.server.p2p
                                              else "")
        + f" (~{capacity_rps(s):,.0f} logins/s)",
        f"{plural(len(s.events), 'event')} ({events})",
        f"{format_duration(s.duration)} simulated",
        f"policy {client_text(s.client)}",
    ]
    if s.server.p2p is not None:
        parts.insert(2, "p2p supernodes")
    protections = server_protections(s)
    if protections:
        parts.insert(2, protections)
    if s.scale != 1.0:
        parts.append(f"scale {s.scale:g}")
    return f"{s.name}: " + ", ".join(parts)


def server_protections(s: Scenario) -> str:
    """The adaptive protections and the resumption class (docs/model.md sections 3.3, 3.4), or "".

        >>> from sim.config import load_scenario
        >>> server_protections(load_scenario("quickstart", sets=["server.concurrency.kind=aimd",
        ...     "server.codel.target=5ms", "server.retry_after_from=queue"]))
        'aimd limit 20..200, CoDel 5ms/100ms + adaptive LIFO, Retry-After from the queue (1s..32s)'
    """
    srv, parts = s.server, []
    if srv.concurrency is not None:
        c = srv.concurrency
        parts.append(f"{c.kind} limit {c.min:g}..{c.max:g}")
    if srv.codel is not None:
        parts.append(f"CoDel {format_duration(srv.codel.target)}/{format_duration(srv.codel.interval)}"
                     + (" + adaptive LIFO" if srv.codel.adaptive_lifo else ""))
    if srv.retry_after_from == "queue":
        parts.append(f"Retry-After from the queue (1s..{format_duration(srv.retry_after_max)})")
    if s.client.resume_window > 0:
        cost = f" at {dist_text(srv.resume.service_time)}" if srv.resume is not None else ""
        window = s.client.resume_window
        parts.append(("resumption (tokens never expire)" if math.isinf(window)
                      else f"resumption within {format_duration(window)}") + cost)
    return ", ".join(parts)


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


def recovery_line(recovery: dict, when=lambda seconds: format_duration(round(seconds, 1))) -> str:
    """The closing line on recovery; `recovery` holds p90 and p99 in seconds, None if not reached,
    0 if the share never fell below.

        >>> recovery_line({"p90": 322.4, "p99": None})
        '  back to 90 % online: 5m22.4s after the first event; 99 %: not by the end of the run'
        >>> recovery_line({"p90": None, "p99": None})
        '  back to 90 % online: not by the end of the run (nor 99 %)'
        >>> recovery_line({"p90": 0.0, "p99": 0.0})
        '  the online share never fell below 99 %'
    """
    p90, p99 = recovery["p90"], recovery["p99"]
    if p90 is None:
        return "  back to 90 % online: not by the end of the run (nor 99 %)"
    if p90 == 0 and p99 == 0:
        return "  the online share never fell below 99 %"
    if p90 == 0:
        head = "  the online share never fell below 90 %"
    else:
        head = f"  back to 90 % online: {when(p90)} after the first event"
    return f"{head}; 99 %: {'not by the end of the run' if p99 is None else when(p99) + ' after the first event'}"


def summary_lines(summary: dict, first_event_at: float | None = None) -> str:
    """A few plain-language lines about a run's summary, for the terminal. `first_event_at` (the
    scenario's first event, None when it has none) lets them say when no event fired at all.

    Times are written one way, as scenario files write them (5m22.4s), and say what they count from.
    """
    rec = summary["recovery_s"]
    amp = summary["amplification"]
    reps = summary.get("replications")
    head = f"{summary['scenario']} ({summary['engine']} engine" + (f", mean of {reps} replications)" if reps else ")")
    end = summary["duration_s"]
    if summary["clients"] == 0 and summary["episodes"] == 0:
        return f"{head}\n  no clients (population.clients = 0, no arrivals): nothing to log in"
    lines = [
        head,
        f"  {summary['logins']:,.0f} logins in {plural(summary['episodes'], 'episode')}; "
        f"{plural(summary['attempts'], 'attempt')}" + (f" ({amp:.2f} per episode)" if amp is not None else ""),
        f"  rejected {summary['rejected']:,.0f}, timed out {summary['timeouts']:,.0f}, "
        f"gave up {summary['gave_up']:,.0f}; wasted work "
        + ("n/a" if summary["wasted_work_fraction"] is None else f"{summary['wasted_work_fraction']:.1%}"),
        f"  peak offered load {summary['peak_offered_rps']:,.1f}/s against a capacity of "
        + ("unlimited" if summary["capacity_rps"] is None or math.isinf(summary["capacity_rps"])
           else f"{summary['capacity_rps']:,.1f}/s"),
    ]
    limited = limiter_line(summary)
    if limited:
        lines.append(limited)
    if summary.get("resumptions"):
        lines.append(f"  {plural(summary['resumptions'], 'attempt')} sent as session resumptions (a valid "
                     f"token); {summary.get('resumed') or 0:,.0f} of the {summary['logins']:,.0f} logins resumed")
    if first_event_at is None or first_event_at >= end:
        why = "the scenario has no events" if first_event_at is None else (
            f"the first is at {format_duration(first_event_at)}, the run ended at {format_duration(end)}")
        lines.append(f"  no event fired before the end of the run ({why}): no recovery to measure")
    else:
        lines.append(recovery_line(rec))
    lowest = summary.get("lowest_online_share")
    if lowest is not None and lowest < 0.99:
        lines.append(f"  lowest online share (of the clients that want to be online): {_share(lowest)}, "
                     f"at {format_duration(round(summary['lowest_online_at_s'], 1))} into the run")
    if summary["metastable"]:
        lines.append("  the storm sustained itself: METASTABLE (still down at the end, the tier saturated "
                     "or its work wasted)")
    return "\n".join(lines)


def limiter_line(summary: dict) -> str | None:
    """What the client's limiter did, when it bound (docs/model.md section 4.7); None when it did not."""
    did = _limiter_did(summary)
    return None if did is None else "  the client's limiter bound: it " + did


def _limiter_did(summary: dict) -> str | None:
    """`denied 3 retries (each ended its episode) and refused ...`, or None when it did neither."""
    suppressed, short = summary.get("suppressed") or 0, summary.get("short_circuited") or 0
    parts = []
    if suppressed:
        parts.append(f"denied {plural(suppressed, 'retry', 'retries')} (each ended its episode)")
    if short:
        parts.append(f"refused {plural(short, 'call')} locally (not sent; the policy's delay followed)")
    return " and ".join(parts) or None


def plural(n: float, noun: str, many: str | None = None) -> str:
    """`1 episode`, `2,500 episodes`: a count and its noun, agreed (means are rounded to whole numbers);
    `many` for a noun whose plural is not noun + s.

        >>> plural(1, "variant"), plural(2, "variant"), plural(1234.4, "attempt"), plural(2, "retry", "retries")
        ('1 variant', '2 variants', '1,234 attempts', '2 retries')
    """
    return f"{n:,.0f} {noun}" if n == 1 else f"{n:,.0f} {many or noun + 's'}"


def _human(seconds: float) -> str:
    """`3 h 12 min`, `5 min 22 s`, `40 s`: a duration as a person says it."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h} h {m} min" if m else f"{h} h"
    return f"{m} min {sec} s" if sec else f"{m} min"


def plain_lines(summary: dict, s: Scenario) -> list[str]:
    """The summary in sentences a person reads first (the report's verdict box)."""
    first = min(s.events, key=lambda e: e.at, default=None)
    origin = f"the first {first.kind} (at {format_duration(first.at)})" if first else "the start"
    reps = summary.get("replications")
    lines = [f"Means over {reps} replications." if reps else f"One run, seed {summary['seed']}."]
    for level, key in (("90 %", "p90"), ("99 %", "p99")):
        value = summary["recovery_s"][key]
        if value is None:
            lines.append(f"{level} of the clients that want to be online were NOT back online by the end of the run.")
        elif value == 0:
            lines.append(f"The online share never fell below {level}.")
        else:
            lines.append(f"{level} of clients were back online {_human(value)} after {origin}.")
    lowest = summary.get("lowest_online_share")
    if lowest is not None and lowest < 0.99:
        lines.append(f"At its lowest, {_share(lowest)} of the clients that want to be online were online, "
                     f"{_human(summary['lowest_online_at_s'])} after the start of the run.")
    if summary["metastable"]:
        lines.append("The storm sustained itself: metastable. Long after the trigger ended, the tier was still "
                     "saturated and clients were still out.")
    if summary["amplification"] is not None:
        lines.append(f"{summary['logins']:,.0f} logins took {summary['attempts']:,.0f} attempts: "
                     f"{summary['amplification']:.1f} attempts per episode.")
    cap = summary["capacity_rps"]
    if cap and math.isfinite(cap) and summary["peak_offered_rps"]:
        lines.append(f"Peak offered load was {summary['peak_offered_rps']:,.0f} attempts/s, "
                     f"{summary['peak_offered_rps'] / cap:.1f} x the capacity of {cap:,.1f} logins/s.")
    if summary["wasted_work_fraction"]:
        lines.append(f"{summary['wasted_work_fraction']:.0%} of the workers' time went to requests whose "
                     "clients had already timed out (wasted work).")
    limiter = s.client.build_limiter()
    if limiter is not None:
        did = _limiter_did(summary)
        lines.append(f"The client's limiter ({limiter.describe()}) "
                     + ("did not bind: it denied no retry and refused no call." if did is None else did + "."))
    if s.server.fault_rate > 0:
        lines.append(f"The server failed {s.server.fault_rate:.0%} of the requests that reached it whatever the load "
                     f"({'at once' if s.server.fault_when == 'fast' else 'after their service'}): "
                     f"{summary['errors']:,.0f} errors.")
    return lines


def _share(x: float) -> str:
    """94 %, 2.9 %, 0.04 %: enough digits to tell a collapse from zero."""
    pct = 100 * x
    return f"{pct:.0f} %" if pct >= 10 else f"{pct:.2g} %"


def dist_text(d) -> str:
    """`lognormal, median 40ms, p99 300ms` or `5s`: a distribution as its scenario table reads."""
    table = d.to_toml()
    if not isinstance(table, dict):
        return table if isinstance(table, str) else format_duration(table)
    parts = []
    for key, value in table.items():
        if key == "dist":
            continue
        if isinstance(value, (list, tuple)):
            parts.append(f"{key} " + ", ".join(format_duration(float(v)) for v in value))
        else:
            parts.append(f"{key} {format_duration(float(value))}")
    return f"{table['dist']}, " + ", ".join(parts)
