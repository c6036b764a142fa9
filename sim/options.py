"""Command-line options that several commands share (`sim.cli`, `sim.sweep`), declared once.

A module of its own so that commands living in other modules can use them without importing
`sim.cli` (which registers those commands: a circular import).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sim.runner import check_engine

__all__ = ["SetOption", "ScaleOption", "SeedOption", "EngineOption"]


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
