"""`loginstorm lab`, `loadtest` and `calibrate`: the load-test commands, added to `loginstorm` by
`register` (the entry point `loginstorm.commands`: `sim` never imports `loadtests`).

The load test's options are declared once, in `loadtests.options`; `with_options` turns them
into these commands' Typer parameters. Locust, Starlette and uvicorn are imported when a command
needs them, so that `loginstorm` runs without the `loadtest` extra and says what is missing.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from copy import copy
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping, Optional, get_args

import typer
from rich.table import Table

from loadtests.calibrate import Calibration, CalibrationError, calibrate, closing_lines, milliseconds, progress_line
from loadtests.options import LOADTEST, REQUIRED, Option, option, run_values
from loadtests.storm import StormError, StormOptions, check_host, load_storm
from sim.cli import options as shared
from sim.cli.console import err, fail, out, say, scenario_failure, wide
from sim.cli.options import ScaleOption, SeedOption, SetOption, positive_duration
from sim.config import ScenarioError, load_scenario
from sim.describe import plural, recovery_line
from sim.docs import docs_path

__all__ = ["register", "lab", "loadtest", "calibrate_command", "with_options", "Declared"]

EXTRA = "pip install 'loginstorm[loadtest]'"


def register(app: typer.Typer) -> None:
    """Add the load-test commands to `app` (`loginstorm`'s entry point group `loginstorm.commands`)."""
    read = f"Documentation: {docs_path('loadtests.md')}"
    app.command(epilog=read)(lab)
    app.command(epilog=read)(loadtest)
    app.command("calibrate", epilog=read)(calibrate_command)


# --- Typer parameters from the declarations of loadtests.options ------------------------------

class Declared:
    """The annotation of a parameter whose option is declared in `loadtests.options` (by its name)."""


def with_options(*names: str, help: Mapping[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Give a command the Typer parameters of its declared options: those named (in place of its
    `**values`) and those annotated `Declared`; `help` replaces an option's help for this command.

        @with_options(*LOADTEST)
        def loadtest(**values): ...
    """
    def decorate(func: Callable) -> Callable:
        params: list[inspect.Parameter] = []
        for p in inspect.signature(func, eval_str=True).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                params += [_parameter(option(name), (help or {}).get(name)) for name in names]
            elif p.annotation is Declared:
                params.append(_parameter(option(p.name), (help or {}).get(p.name)))
            else:
                params.append(p.replace(kind=p.KEYWORD_ONLY))
        func.__signature__ = inspect.Signature(params)
        func.__annotations__ = {p.name: p.annotation for p in params}
        return func
    return decorate


def _parameter(o: Option, help: str | None) -> inspect.Parameter:
    if o.shared:                                  # the simulator's own option, as its commands have it
        kind, info = get_args(getattr(shared, o.shared))[:2]
        info = copy(info)
        info.help = help or info.help
    else:
        kind = list[str] if o.kind is list else o.kind
        kind = Optional[kind] if o.default is None else kind
        info = (typer.Argument(help=help or o.help) if o.flag is None else
                typer.Option(o.flag, *([o.short] if o.short else []), help=help or o.help, metavar=o.metavar,
                             min=o.min, max=o.max, show_default=o.show_default))
    default = inspect.Parameter.empty if o.default is REQUIRED else o.default
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info])


def _require(command: str, *modules: str) -> None:
    """Exit 2 naming the extra to install when a module the command needs is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise fail(f"loginstorm {command}: {' and '.join(missing)} not installed: {EXTRA}")


# --- lab ------------------------------------------------------------------------------------

def lab(
    scenario: Annotated[Optional[Path], typer.Argument(
        help="Scenario file or shipped name whose \\[server] table is served (default: quickstart).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Loopback by default; any other address "
                                           "makes the lab reachable from the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 = any free port (the first line of "
                                                            "output names it).")] = 8080,
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    mode: Annotated[str, typer.Option(metavar="sleep|cpu", help="sleep: a login sleeps a service_time draw; "
                                      "cpu: a login is the PBKDF2 hash itself, on `workers` threads.")] = "sleep",
    hash_iterations: Annotated[int, typer.Option(min=1, help="PBKDF2 iterations of one login in cpu mode.")
                               ] = 100_000,
    credentials: Annotated[Optional[Path], typer.Option(help="Serve the users of this CSV (header "
                                                             "username,password).")] = None,
    write_credentials: Annotated[Optional[Path], typer.Option(
        help="Write --users random users to this CSV (mode 0600) and exit (or go on with --serve).")] = None,
    users: Annotated[int, typer.Option(min=1, help="Users to generate: in memory (passwords never shown) or "
                                                   "for --write-credentials.")] = 100,
    serve: Annotated[bool, typer.Option("--serve", help="With --write-credentials: then serve those users.")
                     ] = False,
    seed: SeedOption = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request line (off by default).")
                          ] = False,
) -> None:
    r"""Run the lab auth server: a real login endpoint to aim load tests at.

    Logins: POST /oauth/token (client_credentials, password), GET+POST /login
    (form, CSRF), POST /api/login (JSON), GET /basic. Also GET /me (heartbeat),
    /healthz, /metrics, /metrics.json. OAuth clients: LOGINSTORM_CLIENT_ID and
    LOGINSTORM_CLIENT_SECRET if both are set, else any user's own credentials.

    The lab serves the scenario's \[server] table only: workers, service_time,
    queue_limit, discipline, retry_after, rate_limit, cancel_on_timeout,
    fault_rate and fault_when (500 at once, or after the service), the
    adaptive protections \[server.concurrency], \[server.codel] and
    retry_after_from, and \[server.resume]: a refresh-token grant on
    /oauth/token is a resumption, its token valid for client.resume_window.
    POST /admin/purge (loopback only) revokes refresh tokens.
    Not modelled: reject_cost, overload, drop_expired, \[server.p2p], events.
    """
    _require("lab", "starlette", "uvicorn")
    from loadtests.lab import (LabError, LabOptions, UsersFileError, generate_users, read_credentials,
                               run_lab)
    from loadtests.lab import write_credentials as write_users

    try:
        s = load_scenario(scenario if scenario is not None else "quickstart", sets=sets or (), scale=scale,
                          seed=seed)
    except ScenarioError as exc:
        raise scenario_failure(exc) from None
    problem = ("--mode must be sleep or cpu" if mode not in ("sleep", "cpu") else
               "--credentials and --write-credentials exclude each other" if credentials and write_credentials
               else "--serve goes with --write-credentials" if serve and not write_credentials else None)
    if problem:
        raise fail(f"loginstorm lab: {problem}")
    try:
        if write_credentials is not None:
            accounts = generate_users(users)
            written = write_users(write_credentials, accounts)
            say(err if serve else out, f"wrote {written} users to {write_credentials}")
            if not serve:
                return
        else:
            accounts = read_credentials(credentials) if credentials is not None else generate_users(users)
    except UsersFileError as exc:
        raise fail(f"loginstorm lab: --credentials {exc}") from None
    except OSError as exc:  # writing the credentials file
        raise fail(f"loginstorm lab: --write-credentials {exc.filename}: {exc.strerror}") from None
    window = s.client.resume_window          # a refresh token lives as long as the client keeps it
    options = LabOptions(host=host, port=port, mode=mode, hash_iterations=hash_iterations, seed=s.seed,
                         access_log=access_log, refresh_ttl=window if window > 0 else LabOptions.refresh_ttl)
    try:
        run_lab(s.server, accounts, options, announce=lambda line: print(line, flush=True),
                note=lambda line: say(err, line))
    except LabError as exc:
        where = "--host/--port: " if str(exc).startswith("cannot listen") else ""
        raise fail(f"loginstorm lab: {where}{exc}") from None


# --- loadtest -------------------------------------------------------------------------------

@with_options(*LOADTEST)
def loadtest(**values: Any) -> None:
    """Replay a scenario's storm against a real endpoint with Locust, and set it beside the simulation.

    Writes timeseries.csv and summary.json (the simulator's columns and fields that a client can
    measure), Locust's CSV statistics and HTML, and report.html with the measured and simulated
    storms overlaid. Ctrl-C stops the run gracefully and still writes everything. If the first
    attempts all fail with 401, 403 or 404 the run stops at once with a hint (--keep-going: not).

    Exit status: 0 done; 3 no login succeeded (or the misconfiguration stop), the outputs written
    all the same; 2 bad input, nothing sent; 130 stopped before the first attempt; 1 Locust failed,
    or the devices raised exceptions (a bug: the outputs are written, the first error is shown).
    """
    from loadtests.attemptlog import MISCONFIGURED
    from loadtests.command import (DEVICE_ERROR_EXIT, NO_LOGIN_EXIT, Interrupted, LoadtestError, LoadtestOptions,
                                   run_loadtest)

    storm, run = run_values(values, positive_duration)
    run.setdefault("host", None)                  # None: the target's host (run_loadtest checks it)
    run.setdefault("out", Path("out") / f"loadtest-{Path(storm['scenario']).stem}")
    options = LoadtestOptions(storm=StormOptions(**storm), **run)
    if options.from_logs is None:
        _require("loadtest", "locust")
    quiet = values["quiet"]
    live = _live_line(enabled=not quiet)
    try:
        result = run_loadtest(options, show=live)
    except StormError as exc:
        raise fail(f"loginstorm loadtest: {exc}") from None
    except Interrupted as exc:
        live(None)
        say(err, f"loginstorm loadtest: {exc}")
        raise typer.Exit(code=130) from None
    except LoadtestError as exc:
        say(err, f"loginstorm loadtest: {exc}")
        raise typer.Exit(code=1) from None
    live(None)
    if result.stopped:
        say(err, f"stopped early: {result.stopped}")
    if result.interrupted:
        say(err, "interrupted: the report covers the run up to then")
    if not quiet:
        m = result.summary
        rec, amp = m["recovery_s"], m["amplification"]
        say(out, f"{m['scenario']} (load test against {m['target']}, {m['devices']:,} devices, speed {m['speed']:g})\n"
                 f"  {m['logins']:,} logins in {m['episodes']:,} episodes; {m['attempts']:,} attempts"
                 + (f" ({amp:.2f} per episode)" if amp is not None else "") + "\n"
                 f"  rejected {m['rejected']:,}, timed out {m['timeouts']:,}, errors {m['errors']:,}, "
                 f"gave up {m['gave_up']:,}\n"
                 + (f"  limiter ({m['limiter']}): {plural(m['short_circuited'], 'call')} short-circuited (not "
                    f"sent), {plural(m['suppressed'], 'retry').replace('retrys', 'retries')} suppressed (each ended "
                    "its episode); neither is an attempt\n" if m.get("limiter") else "")
                 + (f"  resumptions {m['resumptions']:,} (refresh-token grants), {m['resumed']:,} of them resumed "
                    "a session\n" if m.get("resumptions") else "")
                 + recovery_line(rec, lambda seconds: f"{seconds:.1f} s"))
        say(out, f"wrote {', '.join(str(p) for p in result.files)}")
    if result.device_errors:
        say(err, f"loginstorm loadtest: {plural(result.device_errors, 'exception')} inside the devices (a loginstorm "
                 f"bug, not the target's answers); the first: {result.device_error} (tracebacks in locust.log)")
        raise typer.Exit(code=DEVICE_ERROR_EXIT)
    misconfigured = (result.stopped or "").startswith(MISCONFIGURED)
    if misconfigured or (result.summary["attempts"] and not result.summary["logins"]):
        if not misconfigured:
            say(err, f"loginstorm loadtest: no login succeeded in {result.summary['attempts']:,} attempts: is the "
                     "target right (path, flow, credentials)? Each attempt's status is in attempts.csv")
        raise typer.Exit(code=NO_LOGIN_EXIT)


def _live_line(enabled: bool) -> Callable[[dict | None], None]:
    """One progress line on stderr: rewritten in place on a terminal, every 10 s otherwise."""
    last = [0.0, ""]          # when the last line was written, and what it said

    def show(p: dict | None) -> None:
        if not enabled:
            return
        if p is None:
            if err.is_terminal:
                sys.stderr.write("\n")
            return
        booted = p["online"] + p["connecting"] + p["gave_up"] + p["offline"]
        line = (f"{p['elapsed_s']:7.1f} s  devices {booted:,}  online {p['online']:,}  connecting "
                f"{p['connecting']:,}  gave up {p['gave_up']:,}  attempts {p['attempts']:,} "
                f"({p['attempts_per_s']:.1f}/s)  failures {p['failures_per_s']:.1f}/s"
                + (f"  short-circuited {p['short_circuited']:,}" if p.get("short_circuited") else "")
                + (f"  suppressed {p['suppressed']:,}" if p.get("suppressed") else "")
                + (f"  device errors {p['device_errors']:,}" if p.get("device_errors") else ""))
        if err.is_terminal:
            sys.stderr.write("\r" + line[:err.width - 1].ljust(err.width - 1))
            sys.stderr.flush()
        elif (p["elapsed_s"] - last[0] >= 10 or p.get("final")) and line != last[1]:
            last[:] = p["elapsed_s"], line
            sys.stderr.write(line + "\n")

    return show


# --- calibrate ------------------------------------------------------------------------------

@with_options(help={
    "scenario": "Scenario file or shipped name (its \\[target]: flow, path, allowed_hosts).",
    "credentials": "username,password CSV; each client takes its own row.",
    "target": "A TOML file holding a \\[target] table.",
    "sets": "Override any key by its dotted path, e.g. target.path=/api/login (repeatable).",
})
def calibrate_command(
    *,
    scenario: Declared,
    host: Annotated[Optional[str], typer.Option(help="The endpoint, e.g. http://127.0.0.1:8080 (default: the "
                                                     "target's host). Must be on allowed_hosts or loopback.")
                    ] = None,
    credentials: Declared,
    target: Declared,
    sets: Declared,
    max_concurrency: Annotated[int, typer.Option(min=1, max=1024, help="The last step's concurrent clients.")
                               ] = 64,
    step_seconds: Annotated[float, typer.Option(min=0.1, help="Measured seconds per step.")] = 3.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="Unmeasured seconds at the start of each step.")] = 1.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request may take before it is an error.")
                       ] = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the calibration as JSON on stdout (the table "
                                                          "goes to stderr).")] = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="The calibration file to write (default: "
                                                     "out/calibrate-SCENARIO/server.toml), for `loadtest --capacity "
                                                     "FILE`.")] = None,
    probes: Annotated[bool, typer.Option("--probes/--no-probes", help="After the steps, probe at open-loop rates "
                                         "for a rate limit and what happens beyond the capacity.")] = True,
) -> None:
    """Identify the target's behaviour: workers, service time, rate limit, refuses or queues.

    Clients log in back to back at concurrency 1, 2, 4, ... until the throughput saturates
    (fit: workers, service time); then open-loop probes offer 0.5, 1, 2, ... times that
    throughput until refusals start or the latency grows (rate limit, queue limit), and a burst
    after an idle pause sizes a rate limit's bucket. Writes a calibration file (every [server]
    key measured or assumed, with a confidence) for `loginstorm loadtest --capacity FILE`.
    About 30-60 s against a small server.
    """
    storm, _ = run_values(dict(scenario=scenario, credentials=credentials, target=target, sets=sets),
                          positive_duration)
    try:
        loaded = load_storm(StormOptions(**storm), plan=False)   # the target and accounts only
        calibration = calibrate(loaded, host, max_concurrency, step_seconds, warmup, timeout,
                                progress=lambda item: say(err, progress_line(item)), probes=probes)
    except (StormError, CalibrationError) as exc:
        raise fail(f"loginstorm calibrate: {exc}") from None
    used = check_host(host or loaded.target.host, loaded.target.allowed_hosts)     # checked: the URL as sent
    path = out_file or Path("out") / f"calibrate-{Path(str(scenario)).stem}" / "server.toml"
    written = _write_calibration(calibration, path, str(scenario), used)
    console = err if json_out else wide()
    console.print(_steps_table(calibration))
    say(console, closing_lines(calibration, written, f"loginstorm loadtest {scenario} --host {used} "
                                                     f"--capacity {written}"))
    if json_out:
        out.print_json(data={**calibration.to_dict(), "file": written})


def _write_calibration(calibration: Calibration, path: Path, scenario: str, host: str) -> str:
    """Write the calibration file (exit 2 naming --out if it cannot be written); returns its path."""
    from datetime import datetime, timezone

    from loadtests.identify import server_toml

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = server_toml(calibration.identification, host, f"loginstorm calibrate {scenario} --host {host}", when)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"loginstorm calibrate: --out {path}: {exc.strerror}") from None
    return str(path)


def _steps_table(calibration: Calibration) -> Table:
    table = Table(title="Step load: clients logging in back to back")
    for header in ("clients", "attempts", "logins/s", "mean", "p50", "p95", "refused", "failed", "errors"):
        table.add_column(header, justify="right")
    for s in calibration.steps:
        table.add_row(str(s.concurrency), str(s.attempts), f"{s.throughput_rps:.1f}",
                      *(milliseconds(t) for t in (s.mean_latency_s, s.p50_latency_s, s.p95_latency_s)),
                      str(s.rejected), str(s.failed), str(s.errors))
    return table
