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
from sim.describe import client_text, policy_rows, scenario_line
from sim.limiters import KINDS as LIMITER_KINDS
from sim.limiters import Limiter
from sim.limits import check, describe, estimate
from sim.presets import PRESETS
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
    """The backoff policies (formulas, mean delays before retries 0..N-1), the SDK presets and the limiters."""
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
    console.print(preset_table())
    console.print(limiter_table())
    console.print('policy = "NAME" with a preset\'s name sets its formula, max_attempts, give_up_after and limiter '
                  "(a \\[client.limiter] table of the same kind is merged over it);\n"
                  "compare takes presets like formulas: --policies aws-sdk-standard,polly or --policies presets.",
                  highlight=False)


def preset_table() -> Table:
    """The SDK presets (docs/model.md section 4.8): what each sets, and where each value was read."""
    table = Table(title="SDK presets (docs/model.md section 4.8): policy = \"NAME\"")
    table.add_column("preset", style="bold", no_wrap=True)
    table.add_column("library")
    table.add_column("retry behaviour")
    table.add_column("read in (repository@commit path)")
    for name, preset in PRESETS.items():
        client = load_scenario("quickstart", sets=[f"client.policy={name}"]).client
        behaviour = client_text(client).split(" = ", 1)[1]
        if preset.give_up_after is not None:
            behaviour += f", gives up after {format_duration(preset.give_up_after)}"
        table.add_row(name, preset.library, behaviour, "\n".join(preset.sources))
    return table


def limiter_table() -> Table:
    """The limiter kinds of `[client.limiter]` with their defaults (docs/model.md section 4.7)."""
    table = Table(title="Limiters (docs/model.md section 4.7): \\[client.limiter] kind = \"KIND\", "
                        "scope = \"device\" or \"shared\" (groups = N or group_size = N)")
    table.add_column("kind", style="bold", no_wrap=True)
    table.add_column("after")
    table.add_column("defaults")
    table.add_column("when it stops")
    after = {"quota": "AWS SDK standard mode", "throttle": "gRPC retry throttling",
             "budget": "tower, Finagle", "adaptive": "Google SRE client-side throttling",
             "breaker": "resilience4j (Polly's: the polly preset)"}
    stops = {"quota": "a retry: the episode ends", "throttle": "a retry: the episode ends",
             "budget": "a retry: the episode ends", "adaptive": "any call, locally: the policy's delay follows",
             "breaker": "any call while open: the policy's delay follows"}
    for kind in LIMITER_KINDS:
        settings = Limiter(kind=kind).settings()
        defaults = ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("kind", "scope"))
        table.add_row(kind, after[kind], defaults, stops[kind])
    return table


def _short(seconds: float) -> str:
    if math.isinf(seconds):
        return "inf"
    if seconds < 60:
        return f"{seconds:.3g}s"
    return format_duration(round(seconds))  # 2m8s
