"""`loginstorm`: a thin Typer skin over the library. Library errors become exit codes here only.

Exit status: 0 on success, 2 on bad input (a scenario, an option), 1 on a bug.

The simulator's commands live in this package, one module per group; other packages add theirs
through the entry point group `loginstorm.commands`: a callable `register(app)` each, e.g. in
pyproject.toml `[project.entry-points."loginstorm.commands"] mine = "mypackage.cli:register"`.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.main import get_group

from sim import __version__
from sim.cli import compare, scenarios, simulate, sweep
from sim.cli.console import out

__all__ = ["app", "ENTRY_POINTS"]

#: the entry point group through which other packages add commands
ENTRY_POINTS = "loginstorm.commands"


class _Commands(TyperGroup):
    """`loginstorm`'s commands: this package's, then the plugins' (in entry point name order).

    The plugins are added when Typer builds the group, not when `sim.cli` is imported: a plugin
    imports `sim.cli` (its console and options) and may be imported first.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        plugins = typer.Typer()
        for plugin in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
            plugin.load()(plugins)
        for name, command in get_group(plugins).commands.items():
            self.add_command(command, name)


app = typer.Typer(
    name="loginstorm",
    help="Simulate and load-test login storms: reboot waves, retry storms, backoff policies.",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


app.command()(scenarios.validate)
app.command()(scenarios.scenarios)
app.command()(scenarios.policies)
app.command()(simulate.simulate)
app.command()(compare.compare)
app.command("sweep")(sweep.sweep_command)
app.command("threshold")(sweep.threshold_command)
