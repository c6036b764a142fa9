"""The Locust glue: our command-line options (declared in `loadtests.options`), the per-process
storm, and the shape that spawns devices.

Every process (local, master, each worker) holds one `StormContext` as `environment.loginstorm`.
The master or local runner checks everything when Locust starts (a bad scenario, target, host or
credentials file ends the run with exit code 2 before any request); workers build the same
storm from the options the master forwards at test start, but keep their own log paths. Each
progress line carries the exceptions raised inside the devices (`device_errors`): a run with any
makes `loginstorm loadtest` exit 1.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque

import gevent
from locust import LoadTestShape, events
from locust.runners import MasterRunner, WorkerRunner

from loadtests.attemptlog import (FIRST_ATTEMPTS, PROGRESS, STOPPED, AttemptLog, StateLog, misconfiguration,
                                  recent_rates, worker_path)
from loadtests.coordination import Rows, install
from loadtests.device import SHORT_NAME, SUPPRESSED_NAME
from loadtests.flows import Outcome
from loadtests.options import add_locust_options, storm_options
from loadtests.storm import Storm, StormError, check_host, load_storm

__all__ = ["StormContext", "StormShape", "device_errors"]

STATES = ("offline", "connecting", "online", "gave_up")

log = logging.getLogger("loginstorm")


class StormContext:
    """What the devices of one process share."""

    def __init__(self, environment, rows: Rows) -> None:
        self.environment = environment
        self.rows = rows
        self.storm: Storm | None = None
        self.log = AttemptLog(None)
        self.states = StateLog(None)
        self.counts = dict.fromkeys(STATES, 0)     # this process's devices by state
        self.peers: dict[str, dict] = {}             # master: the latest counts of each worker
        self.first: list[int] = []                   # the statuses of this process's first finished attempts
        self.peer_first: dict[str, list[int]] = {}   # master: those of each worker
        self.rps = 0.0                               # this process's share of --max-rps (0: no cap)
        self._slot = 0.0
        self.rates = (0.0, 0.0)                      # attempts/s and failures/s over the last 10 s
        # this machine's own log paths, read before a master's options (which arrive with its
        # first spawn message and replace a worker's) can overwrite them
        parsed = environment.parsed_options
        self.own_logs = (getattr(parsed, "attempt_log", ""), getattr(parsed, "state_log", ""))

    def build(self) -> Storm:
        self.storm = load_storm(storm_options(self.environment.parsed_options))
        return self.storm

    def open_log(self) -> None:
        """The attempt and state logs: a worker's own --attempt-log and --state-log, else the
        master's; the master runs no devices and writes neither."""
        parsed, runner = self.environment.parsed_options, self.environment.runner
        path, states = ("", "") if isinstance(runner, MasterRunner) else (
            self.own_logs[0] or getattr(parsed, "attempt_log", ""),
            self.own_logs[1] or getattr(parsed, "state_log", ""))
        index = runner.worker_index if isinstance(runner, WorkerRunner) else None
        self.log.close()
        self.log = AttemptLog(worker_path(path, index) if path else None)
        self.states.close()
        self.states = StateLog(worker_path(states, index) if states else None)
        self.counts = dict.fromkeys(STATES, 0)
        self.first, self.peer_first = [], {}
        self._slot = 0.0

    def state_changed(self, device: int, old: str | None, new: str) -> None:
        if old is not None:
            self.counts[old] -= 1
        self.counts[new] += 1
        self.states.write(time.time() - (self.rows.start or 0.0), device, old or "", new)

    @property
    def max_rps(self) -> float:
        """--max-rps, else the target's `max_rps`; 0 for no cap."""
        option = getattr(self.environment.parsed_options, "max_rps", 0.0) or 0.0
        return option or (self.storm.target.max_rps or 0.0 if self.storm is not None else 0.0)

    def pace(self) -> None:
        """Sleep until this process may send its next attempt under --max-rps (evenly spaced).

        A worker's share is the cap divided by the workers the master had at the first grant.
        """
        if self.rps <= 0:
            return
        now = time.monotonic()
        self._slot = max(self._slot + 1.0 / self.rps, now)
        if self._slot > now:
            gevent.sleep(self._slot - now)

    def all_counts(self) -> dict[str, int]:
        """Devices by state over the whole run (the master adds up its workers' reports)."""
        if isinstance(self.environment.runner, MasterRunner):
            return {k: sum(p.get(k, 0) for p in self.peers.values()) for k in STATES}
        return dict(self.counts)

    def first_statuses(self) -> list[int]:
        """The statuses (0: no answer) of the first finished attempts: this process's, or on a
        master its workers' (each worker's first ones, as last reported)."""
        if isinstance(self.environment.runner, MasterRunner):
            return [status for first in self.peer_first.values() for status in first]
        return list(self.first)

    def log_attempt(self, device: int, episode: int, attempt: int, start: float, seconds: float,
                    outcome: Outcome, wait: float | None, resume: bool = False) -> None:
        """A request's row; `resume`: it was sent as a session resumption (a refresh-token grant)."""
        if len(self.first) < FIRST_ATTEMPTS:
            self.first.append(outcome.status)
        self.log.write(device, episode, attempt, start - (self.rows.start or 0.0), seconds, outcome, wait, resume)

    def log_not_sent(self, device: int, episode: int, attempt: int, start: float, outcome: Outcome,
                     wait: float | None) -> None:
        """A row of the limiter's (`outcome.kind`: SHORT_CIRCUITED or SUPPRESSED): no request, no answer."""
        self.log.write(device, episode, attempt, start - (self.rows.start or 0.0), 0.0, outcome, wait)

    def story_time(self) -> float:
        """Seconds since the load test's start (the devices' limiters' clock, as the logs')."""
        return time.time() - (self.rows.start or 0.0)


def _fail(message: str) -> None:
    log.error("%s", message)
    sys.stderr.write(f"loginstorm: {message}\n")
    sys.exit(2)


@events.init_command_line_parser.add_listener
def _on_parser(parser, **_) -> None:
    add_locust_options(parser)


@events.init.add_listener
def _on_init(environment, **_) -> None:
    if environment.parsed_options is None or not hasattr(environment.parsed_options, "scenario"):
        return                               # not started by the locust command with our options
    context = StormContext(environment, install(environment))
    environment.loginstorm = context
    _on_report.environment = environment
    if isinstance(environment.runner, WorkerRunner):
        return                               # the master checked; options arrive at test start
    try:
        storm = context.build()
    except StormError as exc:
        _fail(str(exc))
    where = "--host" if environment.host else "target.host"
    try:
        environment.host = check_host(environment.host or storm.target.host, storm.target.allowed_hosts, where)
    except StormError as exc:
        _fail(str(exc))
    if storm.plan.server_side:
        log.warning("the server under test plays these events itself, the devices do not: %s",
                    ", ".join(storm.plan.server_side))


@events.test_start.add_listener
def _on_test_start(environment, **_) -> None:
    context = getattr(environment, "loginstorm", None)
    if context is None:
        return
    try:
        context.build()
    except StormError as exc:
        _fail(str(exc))
    context.rows.begin()
    context.open_log()
    context.rps = context.max_rps
    if isinstance(environment.runner, WorkerRunner):
        context.rps = 0.0                     # set at the first grant, when the master names the workers
        context.rows.on_grant = lambda workers: setattr(context, "rps", context.max_rps / max(1, workers))
    else:
        context.watcher = gevent.spawn(_watch, environment, context)


@events.test_stop.add_listener
def _on_test_stop(environment, **_) -> None:
    context = getattr(environment, "loginstorm", None)
    if context is not None:
        context.log.close()
        context.states.close()
        watcher = getattr(context, "watcher", None)
        if watcher is not None and gevent.getcurrent() is not watcher:
            watcher.kill(block=True)
            _progress(environment, context, final=True)


@events.report_to_master.add_listener
def _on_report(client_id, data, **_) -> None:
    environment = getattr(_on_report, "environment", None)
    context = getattr(environment, "loginstorm", None)
    if context is not None:
        data["loginstorm_states"] = dict(context.counts)
        data["loginstorm_first"] = list(context.first)


@events.worker_report.add_listener
def _on_worker_report(client_id, data, **_) -> None:
    environment = getattr(_on_report, "environment", None)
    context = getattr(environment, "loginstorm", None)
    if context is not None and "loginstorm_states" in data:
        context.peers[client_id] = data["loginstorm_states"]
        context.peer_first[client_id] = data.get("loginstorm_first", [])


# -- the watcher of the master (or local runner): progress lines and the stop rules -------------------

def _attempt_stats(environment):
    return environment.stats.get("login attempt", "LOGIN")


def _limiter_counts(environment) -> dict[str, int]:
    """Calls the devices' limiters refused locally and retries they denied (0 without a limiter;
    the entries are read, never created, so that a run without one has no such rows in its stats)."""
    entries = environment.stats.entries
    return {key: entry.num_requests if (entry := entries.get((name, "LOGIN"))) is not None else 0
            for key, name in (("short_circuited", SHORT_NAME), ("suppressed", SUPPRESSED_NAME))}


def _progress(environment, context, final: bool = False) -> None:
    if not getattr(environment.parsed_options, "progress", False):
        return
    entry = _attempt_stats(environment)
    start = context.rows.start or time.time()
    line = {"elapsed_s": round(time.time() - start, 2), **context.all_counts(),
            "attempts": entry.num_requests, "failures": entry.num_failures, **_limiter_counts(environment),
            "attempts_per_s": round(context.rates[0], 2), "failures_per_s": round(context.rates[1], 2),
            **device_errors(environment.runner), "final": final}
    print(PROGRESS + json.dumps(line), flush=True)


def device_errors(runner) -> dict:
    """The exceptions raised inside the devices (a bug, not an answer of the server), as Locust
    records a user's exceptions (`runner.exceptions`; a master's holds its workers'): how many, and
    the first one's message (secret-free: `DeviceUser` reports them)."""
    rows = list(getattr(runner, "exceptions", {}).values())
    return {"device_errors": sum(row["count"] for row in rows), "device_error": rows[0]["msg"] if rows else None}


def stop_reason(window: deque, now: float, p99_s: float | None, error_rate: float, after: float,
                p99_limit: float) -> str | None:
    """Why the stop rules end the run now, if they do; `window` holds (t, attempts, failures) samples."""
    while len(window) > 1 and window[1][0] <= now - after:
        window.popleft()
    if not window or now - window[0][0] < after - 1e-9:
        return None                           # not `after` seconds of history yet
    t0, n0, f0 = window[0]
    _, n1, f1 = window[-1]
    if error_rate > 0 and n1 > n0 and (f1 - f0) / (n1 - n0) >= error_rate:
        return (f"error rate {(f1 - f0) / (n1 - n0):.0%} of {n1 - n0} attempts over the last {after:g} s "
                f">= --stop-on-error-rate {error_rate:g}")
    if p99_limit > 0 and p99_s is not None and p99_s > p99_limit:
        return f"attempt p99 {p99_s:.2f} s over the last 10 s > --stop-on-p99 {p99_limit:g} s"
    return None


def _watch(environment, context) -> None:
    options, target = environment.parsed_options, context.storm.target
    rule = target.stop
    error_rate = getattr(options, "stop_on_error_rate", 0.0) or (rule.error_rate or 0.0)
    p99_limit = getattr(options, "stop_on_p99", 0.0) or (rule.p99 or 0.0)
    after = getattr(options, "stop_after", 0.0) or rule.after
    # the misconfiguration stop looks once, at the first N finished attempts (N: at most one per device)
    needed = None if getattr(options, "keep_going", False) else min(FIRST_ATTEMPTS, max(1, context.storm.plan.devices))
    window: deque = deque()
    recent: deque = deque([(time.monotonic(), 0, 0)])
    while True:
        gevent.sleep(1.0)
        entry, now = _attempt_stats(environment), time.monotonic()
        window.append((now, entry.num_requests, entry.num_failures))
        recent.append(window[-1])
        context.rates = recent_rates(recent)
        _progress(environment, context)
        reason = None
        first = context.first_statuses() if needed is not None else []
        if needed is not None and len(first) >= needed:
            reason, needed = misconfiguration(first[:needed], needed, target.path, target.flow), None
        p99 = entry.get_current_response_time_percentile(0.99)
        reason = reason or stop_reason(window, now, None if p99 is None else p99 / 1000.0, error_rate, after,
                                       p99_limit)
        if reason is not None:
            log.error("stopping the load test: %s", reason)
            print(STOPPED + json.dumps({"reason": reason}), flush=True)
            context.stopped = reason
            environment.runner.quit()
            return


class StormShape(LoadTestShape):
    """All devices at once (each sleeps until its own time), then stop at the story's end or `-t`."""

    def tick(self):
        context = self.runner.environment.loginstorm
        plan = context.storm.plan
        limit = plan.duration
        run_time = getattr(self.runner.environment.parsed_options, "run_time", None)
        if run_time:
            limit = min(limit, float(run_time))
        if self.get_run_time() >= limit:
            return None
        return plan.devices, float(max(1, plan.devices))
