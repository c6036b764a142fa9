"""`loginstorm sweep` and `loginstorm threshold`: Typer skins over `sim.sweep.run_sweep` and
`sim.threshold.thresholds`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer
from rich.table import Table

from sim.cli.console import err, input_failure, say, sweep_progress, wide
from sim.cli.options import DaskOption, EngineOption, JobsOption, ScaleOption, SeedOption, SetOption, positive_duration
from sim.config import ScenarioError, load_scenario
from sim.results import UnsupportedScenario
from sim.sweep import format_value, run_sweep
from sim.threshold import ThresholdResult, threshold_line, thresholds

__all__ = ["sweep_command", "threshold_command"]

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no closing lines.")]
UntilOption = Annotated[Optional[str], typer.Option(help="Stop every run early at this simulated time.")]


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
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: out/sweep-<name>).")
                       ] = None,
    jobs: JobsOption = None,
    dask: DaskOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep the runs already in --out's sweep.csv; run the "
                                                          "rest.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Run a scenario over a grid of values (x policies x replications); write sweep.csv, points.csv, sweep.json.

    Seeds come from each point, not its position: a run's numbers do not depend on the grid's
    order, --jobs or --dask. sweep.csv grows as runs end; --resume continues a stopped sweep.
    """
    stop = positive_duration(until, "--until")
    try:
        base = load_scenario(scenario, sets=sets or (), scale=scale, seed=seed)
        target = out_dir if out_dir is not None else Path("out") / f"sweep-{base.name}"
        with sweep_progress(enabled=not quiet) as report:
            result = run_sweep(scenario, grid or [], [policies] if policies else [], replications=replications,
                               engine=engine, sets=sets or (), scale=scale, seed=seed, until=stop, out_dir=target,
                               executor=dask if dask else "process", jobs=jobs, resume=resume, progress=report)
    except (ScenarioError, ValueError, UnsupportedScenario) as exc:
        raise input_failure(exc, f"loginstorm sweep {scenario}") from None
    if quiet:
        return
    metastable = sum(row["regime"] == "metastable" for row in result.table)
    say(err, f"{len(result.points)} points x {replications} replications ({result.runs_now} runs made now, "
             f"{result.runs_resumed} kept from before); metastable at {metastable} of {len(result.table)} points")
    say(err, f"wrote {', '.join(str(p) for p in result.files + _sweep_report(result.out_dir))}")


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
        help="Tipped = mean recovery to 99 % online longer than this (e.g. 10m) instead of metastable.")] = None,
    tolerance: Annotated[str, typer.Option(help="Stop when the bracket is this narrow: 5% (of its upper end) or "
                                                "an absolute width (0.01, 30s).")] = "5%",
    engine: EngineOption = "auto",
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    until: UntilOption = None,
    jobs: JobsOption = None,
    dask: DaskOption = None,
    quiet: QuietOption = False,
) -> None:
    """Find the value of a key where the storm tips into metastability (or slow recovery), per policy."""
    limit = positive_duration(recovery_limit, "--recovery-limit")
    stop = positive_duration(until, "--until")
    try:
        results = thresholds(scenario, vary, lo, hi, policies=policies, tolerance=tolerance,
                             replications=replications,
                             criterion=("recovery_p99", limit) if limit is not None else "metastable",
                             engine=engine, sets=sets or (), scale=scale, seed=seed, until=stop,
                             executor=dask if dask else "process", jobs=jobs,
                             on_probe=None if quiet else (lambda line: say(err, line)))
    except (ScenarioError, ValueError, UnsupportedScenario) as exc:
        raise input_failure(exc, f"loginstorm threshold {scenario}") from None
    console = wide()
    console.print(_threshold_table(results))
    say(console, threshold_line(results))


def _threshold_table(results: Sequence[ThresholdResult]) -> Table:
    first = results[0]
    table = Table(title=f"{first.key}: where the storm tips ({first.criterion}; {first.replications} replications "
                        f"per probe{', log-scale bisection' if first.log_scale else ''})")
    for header in ("policy", "survived", "tipped", "estimate", "probes"):
        table.add_column(header, justify="left" if header == "policy" else "right")
    for r in results:
        def show(v, r=r):
            return format_value(r.key, v, r.duration)
        table.add_row(r.policy, show(r.survived), show(r.tipped), show(r.estimate), str(len(r.probes)))
    return table
