"""`loginstorm simulate`: a Typer skin over `sim.runner.simulate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sim.cli.console import err, fail, out, say, scenario_failure, simulation_progress
from sim.cli.options import EngineOption, ScaleOption, SeedOption, SetOption, duration
from sim.config import ScenarioError, load_scenario
from sim.describe import summary_lines
from sim.results import UnsupportedScenario
from sim.runner import finite_json, write_outputs
from sim.runner import simulate as run_simulation
from sim.units import format_duration

__all__ = ["simulate"]


def simulate(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Output folder (default: out/<scenario name>).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    engine: EngineOption = "auto",
    until: Annotated[Optional[str], typer.Option(help="Stop the run early at this simulated time (e.g. 30m).")] = None,
    replications: Annotated[
        int, typer.Option(min=1, help="Independent seeds; the summary gives means and 95 % CIs.")
    ] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no closing lines.")] = False,
) -> None:
    """Run a scenario through the simulator; write summary.json and timeseries.csv."""
    try:
        s = load_scenario(scenario, sets=sets or (), scale=scale, seed=seed)
    except ScenarioError as exc:
        raise scenario_failure(exc) from None
    stop = duration(until) if until is not None else None
    if stop is not None and not (0 < stop):
        raise fail("loginstorm simulate: --until must be > 0")
    if stop is not None and stop > s.duration:
        say(err, f"--until {until} is past the scenario's duration: the run ends at {format_duration(s.duration)} "
                 f"(set duration with --set duration=...)")
    target = out_dir if out_dir is not None else Path("out") / s.name
    end = min(stop, s.duration) if stop is not None else s.duration
    try:
        with simulation_progress(s.name, end, replications, enabled=not quiet and err.is_terminal) as report:
            outcome = run_simulation(s, engine=engine, until=stop, replications=replications, progress=report)
    except (UnsupportedScenario, ValueError) as exc:
        raise fail(f"{s.source}: {exc}") from None
    paths = write_outputs(outcome, target)
    if outcome.note and not quiet:
        say(err, outcome.note)
    if outcome.warm_up_s is not None and not quiet:
        from sim.fast import warm_up_source
        say(err, f"fast engine ready in {outcome.warm_up_s:.1f} s ({warm_up_source()}; not part of wallclock_s)")
    if json_out:
        out.print_json(data=finite_json(outcome.summary))
    if not quiet:
        say(err, summary_lines(outcome.summary))
        say(err, f"wrote {', '.join(str(p) for p in paths)}")
