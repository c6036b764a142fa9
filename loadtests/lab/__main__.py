"""`python -m loadtests.lab ARGS` = `loginstorm lab ARGS` (one definition of the options, in loadtests/cli.py)."""

import sys

import typer

from loadtests.cli import lab

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(lab)
app(args=sys.argv[1:], prog_name="loginstorm lab")
