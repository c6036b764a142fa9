"""`loginstorm`: a thin Typer skin over the library. Library errors become exit codes here only.

Exit status: 0 on success, 2 on bad input (a scenario, an option, a run too large for the machine),
1 on a bug: one line and a hint; `--debug` (or LOGINSTORM_DEBUG=1) shows the Python traceback.

The simulator's commands live in this package, one module per group; other packages add theirs
through the entry point group `loginstorm.commands`: a callable `register(app)` each, e.g. in
pyproject.toml `[project.entry-points."loginstorm.commands"] mine = "mypackage.cli:register"`.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Annotated, Any, Callable

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.main import get_group

from sim import __version__
from sim.cli import compare, scenarios, simulate, sweep
from sim.cli.console import DEBUG_ENV, bug, fail, out
from sim.docs import docs_hint, docs_path

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
        for param in [*self.params, *(p for command in self.commands.values() for p in command.params)]:
            _plain_help(param)
        for command in self.commands.values():
            command.get_help_option = _plain_help_option(command.get_help_option)

    def get_help_option(self, ctx: typer.Context) -> Any:
        return _plain_help_option(super().get_help_option)(ctx)

    def invoke(self, ctx: typer.Context) -> Any:
        """Run the command; an exception that is not an exit or a usage error is a bug (exit 1)."""
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `loginstorm scenarios | head`: the reader has gone; end quietly as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            raise typer.Exit(code=141) from None
        except MemoryError:
            raise fail(f"loginstorm {ctx.invoked_subcommand}: the machine ran out of memory; make the run "
                       "smaller (population.clients, --scale, duration / resolution, fewer --jobs)") from None
        except Exception as exc:
            if _debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            raise bug(exc, ctx.invoked_subcommand or "") from None


class _Option(TyperOption):
    """An option whose help shows a metavar (N, NUMBER, TEXT, PATH), or nothing for a flag, instead
    of Python type names such as <bool> or <list[Path]>."""

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag:
            return None
        if self.type_descriptor.is_path:
            return "PATH"
        return _METAVARS.get(self.type_descriptor.annotation, "VALUE")


class _Argument(TyperArgument):
    """An argument shown by its name in capitals (SCENARIO, FILES...), with no Python type name."""

    def _usage_display_name(self) -> str:
        return self.display_name_raw.upper() + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return None


def _plain_help_option(get_help_option: Callable[[typer.Context], Any]) -> Callable[[typer.Context], Any]:
    """`--help` (made when first asked for) shown as the other flags are."""
    def plain(ctx: typer.Context) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            _plain_help(option)
        return option
    return plain


_METAVARS: dict[Any, str] = {int: "N", float: "NUMBER", str: "TEXT"}


def _plain_help(param: Any) -> None:
    """Swap Typer's parameter classes for the two above (they only change how help is shown)."""
    if type(param) is TyperOption:
        param.__class__ = _Option
    elif type(param) is TyperArgument:
        param.__class__ = _Argument


app = typer.Typer(
    name="loginstorm",
    help="Simulate and load-test login storms: reboot waves, retry storms, backoff policies.",
    epilog=f"Documentation: {docs_path('README.md')}; the model, key by key: {docs_path('model.md')}",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_debug = False


def _version(value: bool) -> None:
    if value:
        out.print(f"loginstorm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help=f"On an internal error, show the Python traceback (as "
                                                        f"{DEBUG_ENV}=1 does).")] = False,
) -> None:
    """Simulate and load-test login storms: reboot waves, retry storms, backoff policies."""
    global _debug
    _debug = debug


_SIMULATE = f"Documentation: {docs_path('simulate.md')}; every scenario key: {docs_hint('model.md', '2')}"
_COMPARE = f"Documentation: {docs_path('compare-and-sweep.md')}"
app.command(epilog=_SIMULATE)(scenarios.validate)
app.command(epilog=f"The incidents behind them, with sources: {docs_path('gallery.md')}")(scenarios.scenarios)
app.command(epilog=f"Formulas and parameters: {docs_hint('model.md', '4')}")(scenarios.policies)
app.command(epilog=_SIMULATE)(simulate.simulate)
app.command(epilog=_COMPARE)(compare.compare)
app.command("sweep", epilog=_COMPARE)(sweep.sweep_command)
app.command("threshold", epilog=_COMPARE)(sweep.threshold_command)
