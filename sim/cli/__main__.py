"""`python -m sim.cli ARGS` = `loginstorm ARGS`."""

from sim.cli import app

if __name__ == "__main__":
    app()
