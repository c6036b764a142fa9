"""`loginstorm`: a thin Typer skin over the library. Library errors become exit codes here only.

Exit status: 0 on success, 2 on bad input (a scenario, an option), 1 on a bug.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sim import __version__
from sim.compare import build_variants, closing_line, table_rows
from sim.compare import compare as run_comparison
from sim.compare import to_json as comparison_json
from sim.compare import write_outputs as write_comparison
from sim.config import ScenarioError, load_scenario, shipped_scenarios
from sim.results import UnsupportedScenario
from sim.describe import policy_rows, recovery_line, scenario_line, summary_lines
from sim.options import EngineOption, ScaleOption, SeedOption, SetOption
from sim.runner import finite_json, write_outputs
from sim.runner import simulate as run_simulation
from sim.units import format_duration, parse_duration

app = typer.Typer(
    name="loginstorm",
    help="Simulate and load-test login storms: reboot waves, retry storms, backoff policies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"loginstorm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Simulate and load-test login storms: reboot waves, retry storms, backoff policies."""


def _fail(exc: ScenarioError) -> typer.Exit:
    for problem in exc.problems:
        err.print(problem.line(exc.source), markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Scenario files (or names of shipped scenarios).")],
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    show: Annotated[bool, typer.Option("--show", help="Also print the fully resolved scenario as JSON.")] = False,
) -> None:
    """Check scenario files; print a one-line summary of each valid one, the problems otherwise."""
    failed = False
    for file in files:
        try:
            scenario = load_scenario(file, sets=sets or (), scale=scale, seed=seed)
        except ScenarioError as exc:
            _fail(exc)
            failed = True
            continue
        out.print(f"{file}: ok  {scenario_line(scenario)}", markup=False, highlight=False, soft_wrap=True)
        if show:
            out.print_json(scenario.model_dump_json())
    if failed:
        raise typer.Exit(code=2)


@app.command()
def scenarios() -> None:
    """List the shipped scenarios with their descriptions."""
    table = Table(title="Shipped scenarios (run one by name, e.g. `loginstorm validate quickstart`)")
    table.add_column("name", style="bold")
    table.add_column("clients", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("description")
    for path in shipped_scenarios():
        try:
            s = load_scenario(path)
        except ScenarioError as exc:
            table.add_row(path.stem, "", "", f"[red]invalid:[/red] {exc.problems[0].message}")
            continue
        table.add_row(s.name, f"{s.population.clients:,}", format_duration(s.duration), s.description)
    out.print(table)


@app.command()
def policies(
    base: Annotated[str, typer.Option(help="Base delay b (e.g. 1s, 250ms).")] = "1s",
    cap: Annotated[str, typer.Option(help="Cap c (e.g. 5m, inf).")] = "5m",
    multiplier: Annotated[Optional[float], typer.Option(min=1.0, help="Multiplier m (default 2; grpc 1.6).")] = None,
    retries: Annotated[int, typer.Option(min=1, max=30, help="How many retries to show.")] = 10,
) -> None:
    """The backoff policies with their formulas and the mean delay before retries 0..N-1."""
    b, c = _duration(base), _duration(cap)
    try:
        rows = policy_rows(b, c, multiplier, retries)
    except ValueError as exc:
        err.print(f"loginstorm policies: {exc}", markup=False)
        raise typer.Exit(code=2) from None
    formulas = Table(title="Backoff policies (MODEL.md section 4)")
    formulas.add_column("policy", style="bold", no_wrap=True)
    formulas.add_column("delay before retry n", no_wrap=True)
    means = Table(title=f"Mean delay before retry n with b = {format_duration(b)}, c = {format_duration(c)}"
                        f"{'' if multiplier is None else f', m = {multiplier:g}'} (~ = simulated: no closed form)")
    means.add_column("policy", style="bold", no_wrap=True)
    for n in range(retries):
        means.add_column(f"n={n}", justify="right", no_wrap=True)
    for row in rows:
        formulas.add_row(row.name, row.formula)
        means.add_row(row.name, *[("~" if est else "") + _short(m) for m, est in zip(row.means, row.estimated)])
    console = out if out.is_terminal else Console(width=200)  # piped output is not cut to 80 columns
    console.print(formulas)
    console.print(means)
    console.print("b = base, c = cap, m = multiplier (2; grpc 1.6), n = retry number from 0, U(x, y) uniform;\n"
                  "with honor_retry_after the delay is max(policy delay, Retry-After).", highlight=False)


def _short(seconds: float) -> str:
    if math.isinf(seconds):
        return "inf"
    if seconds < 60:
        return f"{seconds:.3g}s"
    return format_duration(round(seconds))  # 2m8s


@app.command()
def simulate(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: out/<scenario name>).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    engine: EngineOption = "auto",
    until: Annotated[Optional[str], typer.Option(help="Stop the run early at this simulated time (e.g. 30m).")] = None,
    replications: Annotated[int, typer.Option(min=1, help="Independent seeds; the summary gives means and 95 % CIs.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no closing lines.")] = False,
) -> None:
    """Run a scenario through the simulator; write summary.json and timeseries.csv."""
    try:
        s = load_scenario(scenario, sets=sets or (), scale=scale, seed=seed)
    except ScenarioError as exc:
        raise _fail(exc) from None
    stop = _duration(until) if until is not None else None
    if stop is not None and not (0 < stop):
        err.print("loginstorm simulate: --until must be > 0")
        raise typer.Exit(code=2)
    if stop is not None and stop > s.duration:
        err.print(f"--until {until} is past the scenario's duration: the run ends at {format_duration(s.duration)} "
                  f"(set duration with --set duration=...)", markup=False, highlight=False, soft_wrap=True)
    target = out_dir if out_dir is not None else Path("out") / s.name
    try:
        with _progress(s, stop, replications, enabled=not quiet and err.is_terminal) as report:
            outcome = run_simulation(s, engine=engine, until=stop, replications=replications, progress=report)
    except (UnsupportedScenario, ValueError) as exc:
        err.print(f"{s.source}: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    paths = write_outputs(outcome, target)
    if outcome.note and not quiet:
        err.print(outcome.note, highlight=False, markup=False, soft_wrap=True)
    if outcome.warm_up_s is not None and not quiet:
        from sim.fast import warm_up_source
        err.print(f"fast engine ready in {outcome.warm_up_s:.1f} s ({warm_up_source()}; not part of wallclock_s)",
                  highlight=False, markup=False, soft_wrap=True)
    if json_out:
        out.print_json(data=finite_json(outcome.summary))
    if not quiet:
        err.print(summary_lines(outcome.summary), highlight=False, markup=False, soft_wrap=True)
        err.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False, markup=False, soft_wrap=True)


@contextmanager
def _progress(s, stop: float | None, replications: int, enabled: bool):
    """A progress bar over simulated time (all replications), with events/s; silent when not a TTY."""
    if not enabled:
        yield None
        return
    end = min(stop, s.duration) if stop is not None else s.duration
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[sim]}"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"simulating {s.name}", total=end * replications, sim="", rate="")
        starts: dict[int, float] = {}

        def report(k: int, t: float, events: int) -> None:
            elapsed = time.perf_counter() - starts.setdefault(k, time.perf_counter())
            run = f" (run {k + 1}/{replications})" if replications > 1 else ""
            bar.update(task, completed=k * end + t, sim=f"{format_duration(round(t))} of {format_duration(end)}{run}",
                       rate=f"{events / elapsed:,.0f} events/s" if elapsed > 0 else "")

        yield report


@app.command()
def compare(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    policy: Annotated[Optional[list[str]], typer.Option(
        "--policy", metavar="NAME", help="A policy to compare (repeatable), e.g. --policy full-jitter.")] = None,
    policies: Annotated[Optional[str], typer.Option(
        metavar="all|A,B", help="Several policies at once: all, or a comma-separated list.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base delay b set on every variant's policy (e.g. 1s).")] = None,
    cap: Annotated[Optional[str], typer.Option(help="Cap c set on every variant's policy (e.g. 5m).")] = None,
    variant: Annotated[Optional[list[str]], typer.Option(
        "--variant", metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
        help="A variant made of overrides, e.g. lifo=server.discipline=lifo (repeatable; NAME= is the "
             "scenario as written). With policies too, every policy runs under every variant.")] = None,
    replications: Annotated[int, typer.Option(min=1, help="Seeds per variant (the same for every variant); "
                                                           "means and 95 % CIs.")] = 3,
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    until: Annotated[Optional[str], typer.Option(help="Stop every run early at this simulated time (e.g. 30m).")
                     ] = None,
    engine: EngineOption = "auto",
    jobs: Annotated[Optional[int], typer.Option(min=1, help="Runs in parallel (default: one per core; 1 = "
                                                             "in this process).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Output folder (default: out/<scenario name>-compare).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print compare.json on stdout (the table goes to "
                                                          "stderr).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no 'wrote' lines.")] = False,
) -> None:
    """Run a scenario once per variant (policies, overrides) and rank them side by side.

    Writes compare.json, compare.csv, compare.png/.svg and compare.html.
    """
    for value in (base, cap):
        if value is not None:
            _duration(value)
    stop = _duration(until) if until is not None else None
    if stop is not None and not (0 < stop):
        err.print("loginstorm compare: --until must be > 0")
        raise typer.Exit(code=2)
    try:
        variants = build_variants([*(policy or ()), *([policies] if policies else [])], variant or (), base, cap)
    except ValueError as exc:
        err.print(f"loginstorm compare: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    try:
        with _runs_progress(f"comparing {len(variants)} variants", len(variants) * replications,
                            enabled=not quiet and err.is_terminal) as report:
            comparison = run_comparison(scenario, variants, sets=sets or (), scale=scale, seed=seed, until=stop,
                                        replications=replications, jobs=jobs, progress=report, engine=engine)
    except ScenarioError as exc:
        raise _fail(exc) from None
    except (UnsupportedScenario, ValueError) as exc:
        err.print(f"{scenario}: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    target = out_dir if out_dir is not None else Path("out") / f"{comparison.scenario.name}-compare"
    paths = write_comparison(comparison, target)
    console = err if json_out else (out if out.is_terminal else Console(width=200))
    console.print(_ranking_table(comparison))
    console.print(closing_line(comparison.results), markup=False, highlight=False, soft_wrap=True)
    if json_out:
        out.print_json(data=comparison_json(comparison))
    if not quiet:
        err.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False, markup=False, soft_wrap=True)


def _ranking_table(comparison) -> Table:
    headers, rows = table_rows(comparison.results)
    reps = comparison.replications
    table = Table(title=f"{comparison.scenario.name}: {len(rows)} variants, {reps} replication"
                        f"{'s' if reps > 1 else ''} each (mean ± 95 % CI half-width), best first")
    for header in headers:
        table.add_column(header, justify="left" if header in ("variant", "tied with") else "right",
                         style="bold" if header == "variant" else None)
    for row in rows:
        table.add_row(*row)
    return table


@contextmanager
def _runs_progress(description: str, total: int, enabled: bool):
    """A progress bar over finished runs (variants x replications); silent when not a TTY."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report


@app.command()
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
    queue_limit, discipline, retry_after, rate_limit, cancel_on_timeout.
    Not modelled: reject_cost, overload, drop_expired, \[server.p2p], events.
    """
    from loadtests.lab import (LabError, LabOptions, UsersFileError, generate_users, read_credentials,
                               run_lab)
    from loadtests.lab import write_credentials as write_users

    try:
        s = load_scenario(scenario if scenario is not None else "quickstart", sets=sets or (), scale=scale,
                          seed=seed)
    except ScenarioError as exc:
        raise _fail(exc) from None
    problem = ("--mode must be sleep or cpu" if mode not in ("sleep", "cpu") else
               "--credentials and --write-credentials exclude each other" if credentials and write_credentials
               else "--serve goes with --write-credentials" if serve and not write_credentials else None)
    if problem:
        err.print(f"loginstorm lab: {problem}", markup=False, highlight=False)
        raise typer.Exit(code=2)
    try:
        if write_credentials is not None:
            accounts = generate_users(users)
            written = write_users(write_credentials, accounts)
            (err if serve else out).print(f"wrote {written} users to {write_credentials}", markup=False,
                                          highlight=False, soft_wrap=True)
            if not serve:
                return
        else:
            accounts = read_credentials(credentials) if credentials is not None else generate_users(users)
        options = LabOptions(host=host, port=port, mode=mode, hash_iterations=hash_iterations, seed=s.seed,
                             access_log=access_log)
        run_lab(s.server, accounts, options, announce=lambda line: print(line, flush=True),
                note=lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
    except (LabError, UsersFileError) as exc:
        err.print(f"loginstorm lab: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except OSError as exc:  # writing the credentials file
        err.print(f"loginstorm lab: {exc.filename}: {exc.strerror}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


@app.command()
def loadtest(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    host: Annotated[str, typer.Option(help="The endpoint's base URL, e.g. http://127.0.0.1:8080. Must be "
                                           "loopback or on the scenario's target.allowed_hosts.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: out/loadtest-<name>).")
                       ] = None,
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    speed: Annotated[float, typer.Option(help="Divide the story's times by K > 0 (events, sessions, "
                                                       "downtimes); not the client's timeout or policy.")] = 1.0,
    policy: Annotated[Optional[str], typer.Option(help="Retry policy instead of the scenario's.")] = None,
    credentials: Annotated[Optional[Path], typer.Option(help="CSV of username,password rows, one per device.")
                           ] = None,
    target_file: Annotated[Optional[Path], typer.Option("--target", help="TOML file with a \\[target] table.")
                           ] = None,
    run_time: Annotated[Optional[str], typer.Option(help="Stop after this long (e.g. 60s); default: the story.")
                        ] = None,
    processes: Annotated[int, typer.Option(min=1, help="Locust processes (one core each).")] = 1,
    max_rps: Annotated[float, typer.Option(min=0.0, show_default=False, help="Cap login attempts per second "
                                                         "across all devices (default: target.max_rps, else "
                                                         "none).")] = 0.0,
    stop_on_error_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Stop when this share of the "
                                                      "attempts of the last --stop-after failed.")] = 0.0,
    stop_after: Annotated[Optional[str], typer.Option(help="Window of the stop rules, and no stop before it "
                                                           "(default: target.stop.after, 30s).")] = None,
    stop_on_p99: Annotated[Optional[str], typer.Option(help="Stop when the attempts' p99 over the last 10 s "
                                                            "exceeds this (e.g. 5s).")] = None,
    capacity: Annotated[str, typer.Option(help="What the simulation takes as the target's capacity: auto (the "
                                          "lab's own table if the host is a lab), lab, none, or "
                                          "workers=N,service_time=T[,queue_limit=..] (see calibrate).")
                        ] = "auto",
    replications: Annotated[int, typer.Option(min=1, help="Simulated replications to compare with.")] = 3,
    from_logs: Annotated[Optional[Path], typer.Option(help="Send nothing: measure the attempts*.csv and "
                                                           "states*.csv of a run made elsewhere, gathered in "
                                                           "this folder.")] = None,
    seed: SeedOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line.")] = False,
) -> None:
    """Replay a scenario's storm against a real endpoint with Locust, and set it beside the simulation.

    Writes timeseries.csv and summary.json (the simulator's columns and fields that a client can
    measure), Locust's CSV statistics and HTML, and report.html with the measured and simulated
    storms overlaid. Ctrl-C stops the run gracefully and still writes everything.
    """
    from loadtests.command import Interrupted, LoadtestError, LoadtestOptions, run_loadtest
    from loadtests.storm import StormError, StormOptions

    storm = StormOptions(scenario=str(scenario), sets=tuple(sets or ()), scale=scale, speed=speed, policy=policy,
                         credentials=str(credentials) if credentials else None,
                         target=str(target_file) if target_file else None, seed=seed)
    name = Path(str(scenario)).stem
    options = LoadtestOptions(
        storm=storm, host=host.rstrip("/"), out=out_dir if out_dir is not None else Path("out") / f"loadtest-{name}",
        run_time=_duration(run_time) if run_time else None, processes=processes, max_rps=max_rps,
        stop_on_error_rate=stop_on_error_rate, stop_after=_duration(stop_after) if stop_after else 0.0,
        stop_on_p99=_duration(stop_on_p99) if stop_on_p99 else 0.0, capacity=capacity, replications=replications,
        from_logs=from_logs)
    live = _live_line(enabled=not quiet)
    try:
        result = run_loadtest(options, show=live)
    except StormError as exc:
        err.print(f"loginstorm loadtest: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except Interrupted as exc:
        live(None)
        err.print(f"loginstorm loadtest: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=130) from None
    except LoadtestError as exc:
        err.print(f"loginstorm loadtest: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    live(None)
    if result.stopped:
        err.print(f"stopped early: {result.stopped}", markup=False, highlight=False, soft_wrap=True)
    if result.interrupted:
        err.print("interrupted: the report covers the run up to then", markup=False, highlight=False)
    if not quiet:
        m = result.summary
        rec, amp = m["recovery_s"], m["amplification"]
        err.print(f"{m['scenario']} (load test against {m['target']}, {m['devices']:,} devices, speed {m['speed']:g})\n"
                  f"  {m['logins']:,} logins in {m['episodes']:,} episodes; {m['attempts']:,} attempts"
                  + (f" ({amp:.2f} per episode)" if amp is not None else "") + "\n"
                  f"  rejected {m['rejected']:,}, timed out {m['timeouts']:,}, errors {m['errors']:,}, "
                  f"gave up {m['gave_up']:,}\n"
                  + recovery_line(rec, lambda seconds: f"{seconds:.1f} s"), highlight=False, markup=False,
                  soft_wrap=True)
        err.print(f"wrote {', '.join(str(p) for p in result.files)}", highlight=False, markup=False, soft_wrap=True)


def _live_line(enabled: bool):
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
                f"({p['attempts_per_s']:.1f}/s)  failures {p['failures_per_s']:.1f}/s")
        if err.is_terminal:
            sys.stderr.write("\r" + line[:err.width - 1].ljust(err.width - 1))
            sys.stderr.flush()
        elif (p["elapsed_s"] - last[0] >= 10 or p.get("final")) and line != last[1]:
            last[:] = p["elapsed_s"], line
            sys.stderr.write(line + "\n")

    return show



def _register() -> None:
    """Commands that live with their modules: calibrate (loadtests/calibrate.py), sweep and threshold
    (sim/sweep.py)."""
    from loadtests.calibrate import calibrate_command
    from sim.sweep import sweep_command, threshold_command
    app.command("sweep")(sweep_command)
    app.command("threshold")(threshold_command)
    app.command("calibrate")(calibrate_command)


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
