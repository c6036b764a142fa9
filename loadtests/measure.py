"""What a load test measured, in the simulator's terms: the same records, summary and time series.

The devices' attempt and state logs (`loadtests/attemptlog.py`) are replayed in time order into
the very record types the engines fill (`sim.record`), and `sim.metrics` turns them into
`summary.json` and `timeseries.csv`. So `recovery_s`, `login_time_s`, `amplification`, the
online share and every other field a client can measure have one definition for the simulation
and the load test. What only the server knows (queue, busy workers, wasted work, the steady
queue-wait measures) stays empty: 0 in the time series' server columns, null in the summary.

    >>> from sim.config import load_scenario
    >>> s = load_scenario("quickstart", scale=0.001)
    >>> states = [(0.0, 0, "", "online"), (0.0, 1, "", "online"), (10.0, 1, "online", "connecting"),
    ...           (12.5, 1, "connecting", "online")]
    >>> attempts = [(1, 1, 1, 11.0, 0.5, "rejected"), (1, 1, 2, 12.0, 0.5, "ok")]
    >>> run = measured_run(s, 20.0, attempts, states)
    >>> run.summary["attempts"], run.summary["logins"], run.summary["login_time_s"]["p50"]
    (2, 1, 2.5)

Besides the simulator's fields the measured summary counts the attempts still unanswered at the
end (`in_flight`: started before it, answered after it or never), so that attempts = successes
+ rejected + timeouts + errors + in_flight exactly; the devices the storm touched (`touched`:
distinct devices that left `online` or started an episode from the first event on); and the
most attempts in flight at once (`peak_in_flight`).

Rows of the client's limiter are not attempts: a `short_circuited` row (a call refused locally,
never sent) and a `suppressed` row (a retry denied, the episode ended) fill the simulator's
`short_circuited` and `suppressed` counters, at the row's start:

    >>> run = measured_run(s, 20.0, attempts + [(1, 2, 1, 15.0, 0.0, "short_circuited"),
    ...                                         (1, 2, 2, 15.5, 0.0, "suppressed")], states)
    >>> run.summary["attempts"], run.summary["short_circuited"], run.summary["suppressed"]
    (2, 1, 1)

An attempt row may carry a seventh item, True when it was sent as a session resumption (the
attempt log's `resume` column): it counts in `resumptions` at its start, and if it succeeded in
`resumed` at its end, as the simulator counts them (docs/model.md section 3.4):

    >>> run = measured_run(s, 20.0, [(1, 1, 1, 11.0, 0.5, "rejected", True), (1, 1, 2, 12.0, 0.5, "ok", True)],
    ...                    states)
    >>> run.summary["resumptions"], run.summary["resumed"], run.summary["logins"]
    (2, 1, 1)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from loadtests.attemptlog import NOT_SENT, worker_files
from loadtests.flows import ERROR, FAILED, OK, REJECTED, TIMEOUT
from sim.metrics import summarize, timeseries
from sim.record import RunRecords
from sim.scenario import Scenario

__all__ = ["MeasuredRun", "measured_run", "read_logs", "CLIENT_FIELDS"]

#: summary fields a client can measure (the rest are the server's, or the engine's)
CLIENT_FIELDS = ("scenario", "engine", "seed", "scale", "clients", "duration_s", "episodes", "logins", "gave_up",
                 "attempts", "amplification", "timeouts", "rejected", "errors", "peak_offered_rps",
                 "login_time_s", "recovery_s", "lowest_online_share", "lowest_online_at_s",
                 "successes", "in_flight", "touched", "peak_in_flight", "suppressed", "short_circuited",
                 "resumptions", "resumed")
#: the attempt outcomes in the simulator's counters (a wrong password or a bad body is an error)
_COUNTER = {OK: "successes", REJECTED: "rejected", TIMEOUT: "timeouts", ERROR: "errors", FAILED: "errors"}

#: device, episode, attempt, start_s, seconds, outcome[, resume (a session resumption; False if absent)]
Attempt = tuple[int, int, int, float, float, str] | tuple[int, int, int, float, float, str, bool]
StateChange = tuple[float, int, str, str]               # t_s, device, from ("" for a newcomer), to


@dataclass
class MeasuredRun:
    summary: dict[str, Any]
    timeseries: dict[str, np.ndarray]


def measured_run(s: Scenario, end: float, attempts: Iterable[Attempt], states: Iterable[StateChange]) -> MeasuredRun:
    """Summary and time series of a load test of `s` (its times as the load test ran them) lasting `end` s."""
    r = RunRecords(s, end)             # the engines' records; the capacity stays unknown (null)
    events: list[tuple[float, int, tuple]] = []       # (time, order, what): state changes first at a tie
    for t, device, old, new in states:
        if t <= end:
            events.append((max(0.0, t), 0, ("state", device, old, new)))
    in_flight = 0
    for device, _episode, _attempt, start, seconds, outcome, *rest in attempts:
        if outcome in NOT_SENT:         # the limiter's: no request, counted apart from the attempts
            if start <= end:
                events.append((max(0.0, start), 1, ("limiter", outcome)))
            continue
        resume = bool(rest and rest[0])
        if start <= end:
            events.append((max(0.0, start), 1, ("start", outcome, resume)))
            if start + seconds <= end:
                events.append((max(0.0, start + seconds), 2, ("end", device, outcome, resume)))
            else:
                in_flight += 1          # answered after the end: in flight when the run ended
    events.sort(key=lambda e: (e[0], e[1]))
    n = dict.fromkeys(("online", "connecting", "offline", "gave_up"), 0)
    connecting_since: dict[int, float] = {}
    storm = min((e.at for e in s.events), default=0.0)
    touched: set[int] = set()
    flying = peak = 0
    for t, _, what in events:
        if what[0] == "state":
            _, device, old, new = what
            if t >= storm and (old == "online" or new == "connecting"):
                touched.add(device)
            if old:
                n[old] -= 1
                r.levels[old].add(t, -1)
            n[new] += 1
            r.levels[new].add(t, 1)
            if new == "connecting":
                r.tallies.episodes += 1
                connecting_since[device] = t
            elif new == "gave_up":
                r.tallies.gave_up += 1
            r.watch.update(t, n["online"], n["connecting"], n["gave_up"])
        elif what[0] == "limiter":
            r.counts[what[1]].add(t)
        elif what[0] == "start":
            flying += 1
            peak = max(peak, flying)
            r.counts["attempts"].add(t)
            if what[2]:
                r.counts["resumptions"].add(t)
            if what[1] == REJECTED:
                r.steady_refusals.add(t)
            elif what[1] == TIMEOUT:
                r.steady_timeouts.add(t)
        else:
            _, device, outcome, resume = what
            flying -= 1
            r.counts[_COUNTER[outcome]].add(t)
            if outcome == OK and resume:
                r.counts["resumed"].add(t)
            if outcome == OK and device in connecting_since:
                r.tallies.login(t - connecting_since.pop(device))
    for level in r.levels.values():
        level.close(end)
    r.watch.close(end)
    summary = summarize(r, events=len(events), wallclock=0.0, engine="loadtest")
    summary.update(successes=r.counts["successes"].total, in_flight=in_flight, touched=len(touched),
                   peak_in_flight=peak)
    return MeasuredRun(summary, timeseries(r))


def read_logs(attempt_log: Path, state_log: Path) -> tuple[list[Attempt], list[StateChange]]:
    """The rows of a run's attempt and state logs (every worker's files); a ValueError naming the
    file and line when a row is not one the devices write (a file from elsewhere, cut or edited)."""
    attempts: list[Attempt] = []
    for path in worker_files(attempt_log):
        attempts += _rows(path, lambda r: (int(r["device"]), int(r["episode"]), int(r["attempt"]),
                                           float(r["start_s"]), float(r["seconds"]), str(r["outcome"]),
                                           r.get("resume") == "1"))
    states: list[StateChange] = []
    for path in worker_files(state_log):
        states += _rows(path, lambda r: (float(r["t_s"]), int(r["device"]), str(r["from"]), str(r["to"])))
    return attempts, states


def _rows(path: Path, row: Callable[[dict], tuple]) -> list:
    with path.open(newline="", encoding="utf-8", errors="strict") as handle:
        reader = csv.DictReader(handle)
        try:
            return [row(r) for r in reader]
        except (KeyError, ValueError, TypeError, csv.Error) as exc:  # UnicodeDecodeError is a ValueError
            what = f"no column {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{path}: line {reader.line_num}: not a row of a loginstorm device log ({what})") from None
