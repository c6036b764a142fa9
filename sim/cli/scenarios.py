"""`loginstorm validate`, `scenarios` and `policies`: scenario files and backoff policies, looked at."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sim.cli.console import FORMAT_HINT, err, fail, out, say, scenario_failure, wide
from sim.cli.options import NoLimitsOption, ScaleOption, SeedOption, SetOption, duration
from sim.config import ScenarioError, load_scenario, read_scenario, shipped_scenarios, target_file
from sim.describe import policy_rows, scenario_line
from sim.limits import check, describe, estimate
from sim.units import format_duration

__all__ = ["validate", "scenarios", "policies"]


def validate(
    files: Annotated[list[Path], typer.Argument(help="Scenario files (or names of shipped scenarios), or target "
                                                     "files (a lone \\[target] table, as --target takes).")],
    sets: SetOption = None,
    scale: ScaleOption = 1.0,
    seed: SeedOption = None,
    show: Annotated[bool, typer.Option("--show", help="Also print the fully resolved scenario as JSON.")] = False,
    no_limits: NoLimitsOption = False,
) -> None:
    """Check scenario files; print a one-line summary of each valid one, the problems otherwise.

    A file whose only table is \\[target] is a target file (`loadtest --target`): it is checked
    as a target (--set, --scale and --seed apply to scenarios only). Each scenario's second line
    is the resource estimate `simulate` checks (memory, attempts, time on the engine auto picks);
    one too large for this machine fails here as it would there, unless --no-limits.
    """
    failed = keyed = False
    for file in files:
        try:
            target = target_file(read_scenario(file))
            if target is not None:
                say(out, f"{file}: ok  {_target_line(target)}")
                if show:
                    out.print_json(target.model_dump_json(exclude={"password", "client_secret"}))
                continue
            scenario = load_scenario(file, sets=sets or (), scale=scale, seed=seed)
        except ScenarioError as exc:
            scenario_failure(exc, hint=False)
            failed = True
            keyed = keyed or any(problem.path for problem in exc.problems)
            continue
        say(out, f"{file}: ok  {scenario_line(scenario)}")
        needs = estimate(scenario, "auto")
        say(out, f"  {describe(needs)}")
        for problem in check(needs):
            say(err, f"{file}: {'--no-limits: going on although ' if no_limits else ''}{problem}")
            failed = failed or not no_limits
        if show:
            out.print_json(scenario.model_dump_json())
    if keyed:
        say(err, FORMAT_HINT)
    if failed:
        raise typer.Exit(code=2)


def _target_line(target) -> str:
    """A target file in one line (no secret: no password, client secret or user name)."""
    success = "/".join(str(s) for s in target.success.status)
    field = f" with {target.success.json_field}" if target.success.json_field else ""
    return f"target: {target.flow} flow at {target.host}{target.path}, success: HTTP {success}{field}"


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


def policies(
    base: Annotated[str, typer.Option(metavar="DURATION", help="Base delay b (e.g. 1s, 250ms).")] = "1s",
    cap: Annotated[str, typer.Option(metavar="DURATION", help="Cap c (e.g. 5m, inf).")] = "5m",
    multiplier: Annotated[Optional[float], typer.Option(min=1.0, help="Multiplier m (default 2; grpc 1.6).")] = None,
    retries: Annotated[int, typer.Option(min=1, max=30, help="How many retries to show.")] = 10,
) -> None:
    """The backoff policies with their formulas and the mean delay before retries 0..N-1."""
    b, c = duration(base, "--base"), duration(cap, "--cap")
    try:
        rows = policy_rows(b, c, multiplier, retries)
    except ValueError as exc:  # base and cap as policies check them: "base: must be > 0 ..."
        raise fail(f"loginstorm policies: --{exc}") from None
    formulas = Table(title="Backoff policies (docs/model.md section 4)")
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
    console = wide()
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
