"""`loginstorm compare`: a Typer skin over `sim.compare.compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sim.cli.console import err, fail, input_errors, out, runs_progress, say, wide
from sim.cli.guard import check_resources
from sim.cli.options import EngineOption, NoLimitsOption, ScaleOption, SeedOption, SetOption, UntilOption, duration, \
    positive_duration
from sim.cli.outputs import out_option, output_folder, write_safely
from sim.compare import Comparison, build_variants, closing_line, table_rows
from sim.compare import compare as run_comparison
from sim.compare import to_json as comparison_json
from sim.compare import write_outputs as write_comparison
from sim.describe import plural
from sim.batch import cores
from sim.scenario import Scenario

__all__ = ["compare"]


def compare(
    scenario: Annotated[Path, typer.Argument(help="Scenario file or shipped name.")],
    policy: Annotated[Optional[list[str]], typer.Option(
        "--policy", metavar="NAME", help="A policy to compare (repeatable), e.g. --policy full-jitter.")] = None,
    policies: Annotated[Optional[str], typer.Option(
        metavar="all|A,B", help="Several policies at once: all, or a comma-separated list.")] = None,
    base: Annotated[Optional[str], typer.Option(metavar="DURATION", help="Base delay b set on every variant's "
                                                                         "policy (e.g. 1s).")] = None,
    cap: Annotated[Optional[str], typer.Option(metavar="DURATION", help="Cap c set on every variant's policy "
                                                                        "(e.g. 5m).")] = None,
    variant: Annotated[Optional[list[str]], typer.Option(
        "--variant", metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
        help="A variant made of overrides, e.g. lifo=server.discipline=lifo (repeatable; NAME= is the "
             "scenario as written). With policies too, every policy runs under every variant.")] = None,
    replications: Annotated[int, typer.Option(min=1, help="Seeds per variant (the same for every variant); "
                                                           "means and 95 % CIs.")] = 3,
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    until: UntilOption = None,
    engine: EngineOption = "auto",
    jobs: Annotated[Optional[int], typer.Option(min=1, help="Runs in parallel (default: one per core; 1 = "
                                                             "in this process).")] = None,
    out_dir: Annotated[Optional[str], out_option("out/<scenario name>-compare")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print compare.json on stdout (the table goes to "
                                                          "stderr).")] = False,
    no_limits: NoLimitsOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no 'wrote' line (the table and the "
                                                              "files are the same).")] = False,
) -> None:
    """Run a scenario once per variant (policies, overrides) and rank them side by side.

    Writes compare.json, compare.csv, compare.png/.svg and compare.html.
    """
    for value, name in ((base, "--base"), (cap, "--cap")):
        if value is not None:
            duration(value, name)
    stop = positive_duration(until, "--until")
    try:
        variants = build_variants([*(policy or ()), *([policies] if policies else [])], variant or (), base, cap)
    except ValueError as exc:
        raise fail(f"loginstorm compare: {exc}") from None
    target: list[Path] = []
    with input_errors(str(scenario)) as runs_begin:
        def before_runs(base: Scenario, scenarios: list[Scenario]) -> None:
            """Checks that need the variants loaded, made before any run starts."""
            check_resources("compare", scenarios, engine, replications=replications, until=stop,
                            parallel=min(jobs or cores(), len(scenarios) * replications), no_limits=no_limits)
            target.append(output_folder(out_dir, Path("out") / f"{base.name}-compare"))
            runs_begin()

        with runs_progress(f"comparing {plural(len(variants), 'variant')}", len(variants) * replications,
                           enabled=not quiet) as report:
            comparison = run_comparison(scenario, variants, sets=sets or (), scale=scale, seed=seed, until=stop,
                                        replications=replications, jobs=jobs, progress=report, engine=engine,
                                        before_runs=before_runs)
    paths = write_safely(lambda folder: write_comparison(comparison, folder), target[0], comparison.scenario.name)
    console = err if json_out else wide()
    console.print(_ranking_table(comparison))
    say(console, closing_line(comparison.results))
    if json_out:
        out.print_json(data=comparison_json(comparison))
    if not quiet:
        say(console, f"wrote {', '.join(str(p) for p in paths)}")


def _ranking_table(comparison: Comparison) -> Table:
    headers, rows = table_rows(comparison.results)
    reps = comparison.replications
    table = Table(title=f"{comparison.scenario.name}: {plural(len(rows), 'variant')}, {plural(reps, 'replication')}"
                        f" each (mean ± 95 % CI half-width, or \\[low, high] where cut at 0), best first")
    for header in headers:
        table.add_column(header, justify="left" if header in ("variant", "tied with") else "right",
                         style="bold" if header == "variant" else None)
    for row in rows:
        table.add_row(*row)
    return table
