"""Command-line options that several commands share, declared once, and the duration parsers.

    def simulate(scenario: Path, sets: SetOption = None, scale: ScaleOption = 1.0) -> None: ...
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sim.runner import check_engine
from sim.units import parse_duration

__all__ = ["SetOption", "ScaleOption", "SeedOption", "EngineOption", "JobsOption", "DaskOption", "UntilOption",
           "NoLimitsOption", "duration", "positive_duration"]


def duration(value: str, name: str) -> float:
    """`90s`, `5m`, `inf` in seconds; a bad value is a usage error (exit status 2) naming the option."""
    try:
        return parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None


def positive_duration(value: str | None, name: str) -> float | None:
    """As `duration`, > 0, None for None; errors name the option (`--until`)."""
    if value is None:
        return None
    seconds = duration(value, name)
    if not seconds > 0:
        raise typer.BadParameter("must be > 0", param_hint=name)
    return seconds


def _engine(value: str) -> str:
    try:
        return check_engine(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY=VALUE", help="Override any key by its dotted path, e.g. server.workers=800 "
                                       "or events.0.fraction=0.3 (repeatable).")]
ScaleOption = Annotated[float, typer.Option(
    "--scale", help="Run a population S (> 0) times the size: clients, login_rate, workers, "
                    "queue_limit and rate-limit rate/burst are multiplied by S.")]
SeedOption = Annotated[Optional[int], typer.Option("--seed", min=0, help="Override the scenario's seed.")]
EngineOption = Annotated[str, typer.Option(
    callback=_engine, help="des (the SimPy reference), fast (compiled, population scale) or auto (fast from "
                           "100,000 clients).")]
UntilOption = Annotated[Optional[str], typer.Option(
    metavar="DURATION", help="Stop the run early at this simulated time (e.g. 30m).")]
NoLimitsOption = Annotated[bool, typer.Option(
    "--no-limits", help="Run even when the resource estimate says the run needs more memory or time than this "
                        "machine has (see `loginstorm validate`).")]
JobsOption = Annotated[Optional[int], typer.Option(min=1, help="Runs in parallel (default: one per core; 1 = here).")]
def _dask(value: str | None) -> str | None:
    if value is not None and value != "local" and ":" not in value:
        raise typer.BadParameter(f"expected local or a scheduler address such as tcp://10.0.0.5:8786, got {value!r}",
                                 param_hint="--dask")
    return value


DaskOption = Annotated[Optional[str], typer.Option(
    "--dask", callback=_dask, metavar="ADDRESS|local",
    help="Run on a Dask cluster: a scheduler address, or local to start a LocalCluster of --jobs workers.")]
