"""`loginstorm simulate`: a Typer skin over `sim.runner.simulate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sim.cli.console import err, fail, out, say, scenario_failure, simulation_progress
from sim.cli.guard import check_resources
from sim.cli.options import EngineOption, NoLimitsOption, ScaleOption, SeedOption, SetOption, UntilOption, \
    positive_duration
from sim.cli.outputs import out_option, output_folder, write_safely
from sim.config import ScenarioError, load_scenario
from sim.describe import summary_lines
from sim.results import UnsupportedScenario
from sim.runner import finite_json, write_outputs
from sim.runner import simulate as run_simulation
from sim.units import format_duration

__all__ = ["simulate"]


def simulate(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    out_dir: Annotated[Optional[str], out_option("out/<scenario name>")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout (the closing "
                                                          "lines go to stderr).")] = False,
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    engine: EngineOption = "auto",
    until: UntilOption = None,
    replications: Annotated[
        int, typer.Option(min=1, help="Independent seeds; the summary gives means and 95 % CIs.")
    ] = 1,
    no_limits: NoLimitsOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no closing lines (the files are "
                                                              "the same).")] = False,
) -> None:
    """Run a scenario through the simulator; write summary.json, timeseries.csv and report.html.

    The closing lines (the result) go to stdout, progress and notes to stderr.
    """
    try:
        s = load_scenario(scenario, sets=sets or (), scale=scale, seed=seed)
    except ScenarioError as exc:
        raise scenario_failure(exc) from None
    stop = positive_duration(until, "--until")
    if stop is not None and stop > s.duration:
        say(err, f"--until {until} is past the scenario's duration: the run ends at {format_duration(s.duration)} "
                 f"(set duration with --set duration=...)")
    check_resources("simulate", [s], engine, replications=replications, until=stop, no_limits=no_limits)
    target = output_folder(out_dir, Path("out") / s.name)
    end = min(stop, s.duration) if stop is not None else s.duration
    try:
        with simulation_progress(s.name, end, replications, enabled=not quiet) as report:
            outcome = run_simulation(s, engine=engine, until=stop, replications=replications, progress=report)
    except UnsupportedScenario as exc:
        raise fail(f"{s.source}: {exc}") from None
    paths = write_safely(lambda folder: write_outputs(outcome, folder), target, s.name)
    if outcome.note and not quiet:
        say(err, outcome.note)
    if outcome.warm_up_s is not None and not quiet:
        from sim.fast import warm_up_source
        say(err, f"fast engine ready in {outcome.warm_up_s:.1f} s ({warm_up_source()}; not part of wallclock_s)")
    if json_out:
        out.print_json(data=finite_json(outcome.summary))
    if not quiet:
        result = err if json_out else out
        say(result, summary_lines(outcome.summary, min((e.at for e in s.events), default=None)))
        say(result, f"wrote {', '.join(str(p) for p in paths)}")
