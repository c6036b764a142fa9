"""`python -m loadtests.lab ARGS` = `loginstorm lab ARGS` (one definition of the options, in sim/cli.py)."""

import sys

from sim.cli import app

app(args=["lab", *sys.argv[1:]], prog_name="loginstorm")
