"""The load test's options, declared once: `OPTIONS`, from which every layer's form is generated.

An option travels from `loginstorm loadtest`'s command line (Typer: `loadtests.cli`) through
`StormOptions`/`LoadtestOptions` to the argv of the Locust subprocess (`locust_argv`), into
Locust's argparse (`add_locust_options`) and back into `StormOptions` in every Locust process
(`storm_options`):

    Option("speed", "--speed", float, 1.0, help="Divide the story's times by K > 0 ...",
           to="storm", locust="--speed", locust_help="divide the story's times by K (events only)")

Pure: no Typer, no Locust (the locustfile imports it under gevent; the CLI without Locust).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from loadtests.storm import StormOptions

__all__ = ["Option", "OPTIONS", "LOADTEST", "option", "add_locust_options", "locust_argv", "storm_options"]

REQUIRED = ...      # a default that means: no default, the option must be given


@dataclass(frozen=True)
class Option:
    """One option of the load test, as every layer sees it.

    `name` is the field of `StormOptions` (`to="storm"`) or `LoadtestOptions` (`to="run"`) and the
    parameter of the Typer command; `flag` its name on loginstorm's command line (None: the
    command's positional argument). `locust`, if set, is its name in Locust's argparse (an option
    of ours, added to Locust's parser) and `locust_help`/`dest` its help and attribute there.
    `shared` names an option of `sim.cli.options` that the Typer command uses as it is (same
    name, help and checks as the simulator's commands). A `duration` is typed as `30s` on
    loginstorm's command line and travels in seconds.
    """

    name: str
    flag: str | None
    kind: type
    default: Any = None
    help: str = ""
    to: Literal["storm", "run", None] = None
    metavar: str | None = None
    short: str | None = None
    min: float | None = None
    max: float | None = None
    show_default: bool = True
    duration: bool = False
    shared: str | None = None
    cli: bool = True
    locust: str | None = None
    locust_help: str = ""
    dest: str | None = None
    locust_default: Any = None

    @property
    def attribute(self) -> str:
        """Where Locust's argparse keeps it: `--storm-seed` -> `storm_seed`."""
        return self.dest or (self.locust or "").lstrip("-").replace("-", "_")

    @property
    def empty(self) -> Any:
        """Locust's value when the option is not given (None is not an argparse value of ours)."""
        if self.locust_default is not None:
            return self.locust_default
        if self.default not in (None, REQUIRED):
            return self.default
        return [] if self.kind is list else 0.0 if self.duration else -1 if self.kind is int else ""


#: `loginstorm loadtest`'s options in the order of its --help, then those only Locust takes
OPTIONS: tuple[Option, ...] = (
    Option("scenario", None, Path, REQUIRED, "Scenario file or shipped name.", to="storm",
           locust="--scenario", locust_default="quickstart",
           locust_help="scenario file or bundled name (default quickstart)"),
    Option("host", "--host", str, None, "The endpoint's base URL, e.g. http://127.0.0.1:8080 (default: the host "
                                        "of --target's or the scenario's \\[target]). Must be loopback or on "
                                        "target.allowed_hosts.", to="run"),
    Option("out", "--out", Path, None, "Output folder (default: out/loadtest-<name>).", to="run"),
    Option("sets", "--set", list, None, shared="SetOption", to="storm", locust="--set", dest="storm_set",
           metavar="KEY=VALUE", locust_help="override a scenario key, as for `loginstorm simulate` (repeatable)"),
    Option("scale", "--scale", float, 1.0, shared="ScaleOption", to="storm", locust="--scale",
           locust_help="population share to replay (`--scale` rule)"),
    Option("speed", "--speed", float, 1.0, "Divide the story's times by K > 0 (events, sessions, downtimes); not "
                                           "the client's timeout or policy.", to="storm", locust="--speed",
           locust_help="divide the story's times by K (events only)"),
    Option("policy", "--policy", str, None, "Retry policy instead of the scenario's.", to="storm", locust="--policy",
           locust_help="retry policy instead of the scenario's (`loginstorm policies`)"),
    Option("credentials", "--credentials", Path, None, "CSV of username,password rows, one per device.",
           to="storm", locust="--credentials", locust_help="CSV of username,password rows, one per device"),
    Option("target", "--target", Path, None, "TOML file with a \\[target] table.", to="storm", locust="--target",
           dest="target_file", locust_help="TOML file with a [target] table"),
    Option("run_time", "--run-time", str, None, "Stop after this long (e.g. 60s); default: the story.", to="run",
           duration=True),
    Option("processes", "--processes", int, 1, "Locust processes (one core each).", to="run", min=1),
    Option("max_rps", "--max-rps", float, 0.0, "Cap login attempts per second across all devices (default: "
                                               "target.max_rps, else none).", to="run", min=0.0, show_default=False,
           locust="--max-rps",
           locust_help="cap login attempts per second across all devices (default: target.max_rps, else none)"),
    Option("stop_on_error_rate", "--stop-on-error-rate", float, 0.0, "Stop when this share of the attempts of the "
                                                                     "last --stop-after failed.", to="run",
           min=0.0, max=1.0, locust="--stop-on-error-rate",
           locust_help="stop when this share of the attempts of the last --stop-after seconds failed"),
    Option("stop_after", "--stop-after", str, None, "Window of the stop rules, and no stop before it (default: "
                                                    "target.stop.after, 30s).", to="run", duration=True,
           locust="--stop-after",
           locust_help="seconds: the window of the stop rules, and no stop before it (default 30)"),
    Option("stop_on_p99", "--stop-on-p99", str, None, "Stop when the attempts' p99 over the last 10 s exceeds "
                                                      "this (e.g. 5s).", to="run", duration=True,
           locust="--stop-on-p99",
           locust_help="stop when the attempts' p99 response time of the last 10 s exceeds this (seconds)"),
    Option("keep_going", "--keep-going", bool, False, "Go on when the first attempts all fail with 401, 403 or "
                                                      "404 (else the run stops: a wrong path, credentials or flow).",
           to="run", locust="--keep-going",
           locust_help="do not stop when the first attempts all fail with 401, 403 or 404 (a misconfigured target)"),
    Option("capacity", "--capacity", str, "auto", "The twin's \\[server] table: auto (the lab's own table if "
                                                  "the host is a lab), lab, none, a FILE from `calibrate --out`, "
                                                  "or any \\[server] keys, nested ones dotted (workers=1,"
                                                  "service_time=20ms,rate_limit.rate=20); not scaled by --scale.",
           to="run"),
    Option("replications", "--replications", int, 3, "Simulated replications to compare with.", to="run", min=1),
    Option("from_logs", "--from-logs", Path, None, "Send nothing: measure the attempts*.csv and states*.csv of a "
                                                   "run made elsewhere, gathered in this folder.", to="run"),
    Option("seed", "--seed", int, None, shared="SeedOption", to="storm", locust="--storm-seed",
           locust_help="seed instead of the scenario's"),
    Option("quiet", "--quiet", bool, False, "No progress line and no closing lines (the files are the same).",
           short="-q"),
    # Locust's side only: `loginstorm loadtest` sets them from --out and to read the run's progress
    Option("attempt_log", None, str, None, cli=False, locust="--attempt-log",
           locust_help="write one CSV row per attempt to this file"),
    Option("state_log", None, str, None, cli=False, locust="--state-log",
           locust_help="write one CSV row per change of a device's state"),
    Option("progress", None, bool, False, cli=False, locust="--progress",
           locust_help="print a JSON progress line every second"),
)

#: the names of `loginstorm loadtest`'s parameters, in order
LOADTEST = tuple(o.name for o in OPTIONS if o.cli)
_BY_NAME = {o.name: o for o in OPTIONS}


def option(name: str) -> Option:
    """The declaration of one option, by its name: `option("speed").flag == "--speed"`."""
    return _BY_NAME[name]


def add_locust_options(parser: Any) -> None:
    """Our options in Locust's argparse (the locustfile's `init_command_line_parser` listener)."""
    group = parser.add_argument_group("loginstorm", "replay a scenario's login storm (docs/model.md section 7)")
    for o in OPTIONS:
        if o.locust is None:
            continue
        if o.kind is bool:
            group.add_argument(o.locust, dest=o.attribute, action="store_true", help=o.locust_help)
            continue
        kind = float if o.duration else str if o.kind is Path else o.kind
        extra = {"action": "append", "metavar": o.metavar} if o.kind is list else {"type": kind}
        group.add_argument(o.locust, dest=o.attribute, default=o.empty, help=o.locust_help, **extra)


def locust_argv(storm: StormOptions, run: Any = None, **only_locust: Any) -> list[str]:
    """Our options as Locust's argv: every one with a value, from `storm` (a `StormOptions`), `run`
    (a `LoadtestOptions`) and the Locust-only ones given by name (`attempt_log="out/attempts.csv"`).

        >>> locust_argv(StormOptions("quickstart", sets=("server.workers=2",)), None, progress=True)
        ['--scenario', 'quickstart', '--set', 'server.workers=2', '--scale', '1.0', '--speed', '1.0', '--progress']
    """
    argv: list[str] = []
    for o in OPTIONS:
        if o.locust is None:
            continue
        source = storm if o.to == "storm" else run if o.to == "run" else None
        value = getattr(source, o.name) if source is not None else only_locust.get(o.name)
        if value is None or value is False or value == "" or (o.to == "run" and value == o.empty):
            continue                              # not given: Locust's default means the same
        if o.kind is bool:
            argv.append(o.locust)
        elif o.kind is list:
            argv += [arg for item in value for arg in (o.locust, str(item))]
        else:
            argv += [o.locust, repr(float(value)) if o.kind is float or o.duration else str(value)]
    return argv


def storm_options(parsed: Any) -> StormOptions:
    """The `StormOptions` in Locust's parsed options (the inverse of `locust_argv`)."""
    values = {}
    for o in OPTIONS:
        if o.to != "storm":
            continue
        value = getattr(parsed, o.attribute)
        if o.kind is list:
            values[o.name] = tuple(value or ())
        elif not (o.default is None and value == o.empty):     # "" or -1: not given, None
            values[o.name] = value
    return StormOptions(**values)


def run_values(values: Mapping[str, Any],
               parse_duration: Callable[[str, str], float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Typer command's values as keyword arguments of `StormOptions` and `LoadtestOptions`:
    paths to text for the storm, durations through `parse_duration(value, flag)` (which raises the
    usage error naming the flag), absent values left out (each class's default applies)."""
    storm: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for o in OPTIONS:
        if o.to is None or values.get(o.name) is None:
            continue
        value = values[o.name]
        value = parse_duration(value, o.flag) if o.duration else value
        if o.to == "storm":
            storm[o.name] = tuple(value) if o.kind is list else str(value) if o.kind is Path else value
        else:
            run[o.name] = value
    return storm, run
