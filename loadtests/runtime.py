"""The Locust glue: command-line options, the per-process storm, and the shape that spawns devices.

Every process (local, master, each worker) holds one `StormContext` as `environment.loginstorm`.
The master or local runner checks everything when Locust starts (a bad scenario, target, host or
credentials file ends the run with exit code 2 before any request); workers build the same
storm from the options the master forwards at test start.
"""

from __future__ import annotations

import logging
import sys

from locust import LoadTestShape, events
from locust.runners import MasterRunner, WorkerRunner

from loadtests.attemptlog import AttemptLog, worker_path
from loadtests.coordination import Rows, install
from loadtests.flows import Outcome
from loadtests.storm import Storm, StormError, StormOptions, host_allowed, load_storm

__all__ = ["StormContext", "StormShape", "add_options"]

log = logging.getLogger("loginstorm")


def add_options(parser) -> None:
    group = parser.add_argument_group("loginstorm", "replay a scenario's login storm (MODEL.md section 7)")
    group.add_argument("--scenario", default="quickstart", help="scenario file or bundled name (default quickstart)")
    group.add_argument("--set", dest="storm_set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scenario key, as for `loginstorm simulate` (repeatable)")
    group.add_argument("--policy", default="", help="retry policy instead of the scenario's (`loginstorm policies`)")
    group.add_argument("--scale", type=float, default=1.0, help="population share to replay (`--scale` rule)")
    group.add_argument("--speed", type=float, default=1.0, help="divide the story's times by K (events only)")
    group.add_argument("--credentials", default="", help="CSV of username,password rows, one per device")
    group.add_argument("--target", dest="target_file", default="", help="TOML file with a [target] table")
    group.add_argument("--storm-seed", type=int, default=-1, help="seed instead of the scenario's")
    group.add_argument("--attempt-log", default="", help="write one CSV row per attempt to this file")


def options_of(parsed) -> StormOptions:
    return StormOptions(
        scenario=parsed.scenario, sets=tuple(parsed.storm_set or ()), scale=parsed.scale, speed=parsed.speed,
        policy=parsed.policy or None, credentials=parsed.credentials or None,
        target=parsed.target_file or None, seed=None if parsed.storm_seed < 0 else parsed.storm_seed)


class StormContext:
    """What the devices of one process share."""

    def __init__(self, environment, rows: Rows) -> None:
        self.environment = environment
        self.rows = rows
        self.storm: Storm | None = None
        self.log = AttemptLog(None)

    def build(self) -> Storm:
        self.storm = load_storm(options_of(self.environment.parsed_options))
        return self.storm

    def open_log(self) -> None:
        path = getattr(self.environment.parsed_options, "attempt_log", "")
        if isinstance(self.environment.runner, MasterRunner):
            path = ""                        # the master runs no devices
        index = self.environment.runner.worker_index if isinstance(self.environment.runner, WorkerRunner) else None
        self.log.close()
        self.log = AttemptLog(worker_path(path, index) if path else None)

    def log_attempt(self, device: int, episode: int, attempt: int, start: float, seconds: float,
                    outcome: Outcome, wait: float | None) -> None:
        self.log.write(device, episode, attempt, start - (self.rows.start or 0.0), seconds, outcome, wait)


def _fail(message: str) -> None:
    log.error("%s", message)
    sys.stderr.write(f"loginstorm: {message}\n")
    sys.exit(2)


@events.init_command_line_parser.add_listener
def _on_parser(parser, **_) -> None:
    add_options(parser)


@events.init.add_listener
def _on_init(environment, **_) -> None:
    if environment.parsed_options is None or not hasattr(environment.parsed_options, "scenario"):
        return                               # not started by the locust command with our options
    context = StormContext(environment, install(environment))
    environment.loginstorm = context
    if isinstance(environment.runner, WorkerRunner):
        return                               # the master checked; options arrive at test start
    try:
        storm = context.build()
    except StormError as exc:
        _fail(str(exc))
    if not environment.host:
        environment.host = storm.target.host
    if not host_allowed(environment.host, storm.target.allowed_hosts):
        _fail(f"{environment.host} is not on the scenario's target.allowed_hosts (loopback is always allowed); "
              "add its host name there to load-test it")
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


@events.test_stop.add_listener
def _on_test_stop(environment, **_) -> None:
    context = getattr(environment, "loginstorm", None)
    if context is not None:
        context.log.close()


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
