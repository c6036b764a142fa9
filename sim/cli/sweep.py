"""`loginstorm sweep` and `loginstorm threshold`: Typer skins over `sim.sweep.run_sweep` and
`sim.threshold.thresholds`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer
from rich.table import Table

from sim.batch import cores
from sim.cli.console import err, fail, input_errors, out, say, sweep_progress, wide
from sim.cli.guard import MAX_RUNS, check_resources
from sim.cli.options import DaskOption, EngineOption, JobsOption, NoLimitsOption, ScaleOption, SeedOption, SetOption, \
    UntilOption, positive_duration
from sim.cli.outputs import out_option, output_folder
from sim.config import load_scenario
from sim.describe import plural
from sim.scenario import Scenario
from sim.sweep import format_value, run_sweep
from sim.threshold import ThresholdResult, threshold_line, thresholds

__all__ = ["sweep_command", "threshold_command"]

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no closing lines (the files are "
                                                                   "the same).")]


def sweep_command(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", metavar="KEY=V1,V2|LO:HI:N[:log]",
        help="Values of one key (repeatable; grids cross): server.workers=200,400,800, "
             "events.0.fraction=0.05:0.5:10 (linear, ends included), 0.01:1:9:log, events.0.duration=1m:30m:8.")
    ] = None,
    policies: Annotated[Optional[str], typer.Option(
        metavar="all|A,B", help="Policies crossed with the grid (default: the scenario's own).")] = None,
    replications: Annotated[int, typer.Option(min=1, help="Seeds per point; means and 95 % CIs.")] = 3,
    engine: EngineOption = "auto",
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    until: UntilOption = None,
    out_dir: Annotated[Optional[str], out_option("out/sweep-<name>")] = None,
    jobs: JobsOption = None,
    dask: DaskOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep the runs already in --out's sweep.csv; run the "
                                                          "rest.")] = False,
    no_limits: NoLimitsOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run a scenario over a grid of values (x policies x replications); write sweep.csv, points.csv, sweep.json.

    Seeds come from each point, not its position: a run's numbers do not depend on the grid's
    order, --jobs or --dask. sweep.csv grows as runs end; --resume continues a stopped sweep.
    """
    stop = positive_duration(until, "--until")
    try:
        with input_errors(f"loginstorm sweep {scenario}") as runs_begin:
            def before_runs(base: Scenario, scenarios: list[Scenario]) -> None:
                check_resources("sweep", scenarios, engine, replications=replications, until=stop,
                                parallel=jobs or cores(), no_limits=no_limits)
                output_folder(out_dir, target)
                runs_begin()

            base = load_scenario(scenario, sets=sets or (), scale=scale, seed=seed)
            target = Path(out_dir) if out_dir else Path("out") / f"sweep-{base.name}"
            with sweep_progress(enabled=not quiet) as report:
                result = run_sweep(scenario, grid or [], [policies] if policies else [],
                                   replications=replications, engine=engine, sets=sets or (), scale=scale, seed=seed,
                                   until=stop, out_dir=target, executor=dask if dask else "process", jobs=jobs,
                                   resume=resume, progress=report, max_runs=None if no_limits else MAX_RUNS,
                                   before_runs=before_runs)
    except OSError as exc:
        if not dask:
            raise
        raise fail(f"loginstorm sweep: --dask {dask}: {exc}") from None
    files = result.files + _sweep_report(result.out_dir)
    if quiet:
        return
    metastable = sum(row["regime"] == "metastable" for row in result.table)
    say(out, f"{plural(len(result.points), 'point')} x {plural(replications, 'replication')} "
             f"({plural(result.runs_now, 'run')} made now, {result.runs_resumed:,} kept from before); "
             f"metastable at {metastable} of {len(result.table)} points")
    say(out, f"wrote {', '.join(str(p) for p in files)}")


def _sweep_report(out_dir: Path) -> list[Path]:
    """The figures and sweep.html (matplotlib is loaded only now: the runs did not need it)."""
    from sim.sweep_report import write_sweep_report
    try:
        return list(write_sweep_report(out_dir))
    except Exception as exc:  # the data is written; a figure that fails must not lose it
        say(err, f"loginstorm sweep: no report ({type(exc).__name__}: {exc})")
        return []


def threshold_command(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    vary: Annotated[str, typer.Option("--vary", metavar="KEY", help="The key to vary, e.g. events.0.fraction.")],
    lo: Annotated[str, typer.Option("--lo", help="Lower end of the search (a number or a duration).")],
    hi: Annotated[str, typer.Option("--hi", help="Upper end of the search.")],
    policies: Annotated[Optional[str], typer.Option(
        metavar="all|A,B", help="One search per policy (default: the scenario's own).")] = None,
    replications: Annotated[int, typer.Option(min=1, help="Seeds per probe; tipped = most of them.")] = 3,
    recovery_limit: Annotated[Optional[str], typer.Option(
        metavar="DURATION", help="Tipped = mean recovery to 99 % online longer than this (e.g. 10m) instead of "
                                 "metastable.")] = None,
    tolerance: Annotated[str, typer.Option(help="Stop when the bracket is this narrow: 5% (of its upper end) or "
                                                "an absolute width (0.01, 30s).")] = "5%",
    engine: EngineOption = "auto",
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    until: UntilOption = None,
    jobs: JobsOption = None,
    dask: DaskOption = None,
    no_limits: NoLimitsOption = False,
    quiet: QuietOption = False,
) -> None:
    """Find the value of a key where the storm tips into metastability (or slow recovery), per policy."""
    limit = positive_duration(recovery_limit, "--recovery-limit")
    stop = positive_duration(until, "--until")
    try:
        with input_errors(f"loginstorm threshold {scenario}") as runs_begin:
            def before_runs(scenarios: list[Scenario]) -> None:
                check_resources("threshold", scenarios, engine, replications=replications, until=stop,
                                parallel=jobs or cores(), no_limits=no_limits)
                runs_begin()

            results = thresholds(scenario, vary, lo, hi, policies=policies, tolerance=tolerance,
                                 replications=replications,
                                 criterion=("recovery_p99", limit) if limit is not None else "metastable",
                                 engine=engine, sets=sets or (), scale=scale, seed=seed, until=stop,
                                 executor=dask if dask else "process", jobs=jobs,
                                 on_probe=None if quiet else (lambda line: say(err, line)), before_runs=before_runs)
    except OSError as exc:
        if not dask:
            raise
        raise fail(f"loginstorm threshold: --dask {dask}: {exc}") from None
    console = wide()
    console.print(_threshold_table(results))
    say(console, threshold_line(results))


def _threshold_table(results: Sequence[ThresholdResult]) -> Table:
    first = results[0]
    reps = plural(first.replications, "replication")
    table = Table(title=f"{first.key}: where the storm tips ({first.criterion}; {reps} "
                        f"per probe{', log-scale bisection' if first.log_scale else ''})")
    for header in ("policy", "survived", "tipped", "estimate", "probes"):
        table.add_column(header, justify="left" if header == "policy" else "right")
    for r in results:
        def show(v, r=r):
            return format_value(r.key, v, r.duration)
        table.add_row(r.policy, show(r.survived), show(r.tipped), show(r.estimate), str(len(r.probes)))
    return table
