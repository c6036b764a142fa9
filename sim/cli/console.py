"""Where every command writes: the two consoles, the error printers and the progress displays.

Library errors become exit status 2 here (bad input), through `fail`, `scenario_failure` and
`input_failure`; a command raises what they return: `raise fail("--until must be > 0")`.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sim.config import ScenarioError
from sim.docs import docs_hint
from sim.results import UnsupportedScenario
from sim.units import format_duration

__all__ = ["out", "err", "say", "wide", "fail", "scenario_failure", "input_failure", "input_errors", "bug",
           "runs_progress", "simulation_progress", "sweep_progress", "Ticker", "DEBUG_ENV", "FORMAT_HINT"]

#: set to 1 (or pass --debug) to see a bug's Python traceback instead of its one-line report
DEBUG_ENV = "LOGINSTORM_DEBUG"

out = Console()
err = Console(stderr=True)


def say(console: Console, text: str) -> None:
    """Print plain text: no markup, no highlighting, long lines not wrapped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def wide() -> Console:
    """`out`, or when piped a console 200 columns wide, so that tables are not cut to 80 columns."""
    return out if out.is_terminal else Console(width=200)


def fail(message: str) -> typer.Exit:
    """Print `message` on stderr; the exit (status 2) to raise."""
    say(err, message)
    return typer.Exit(code=2)


def scenario_failure(exc: ScenarioError, hint: bool = True) -> typer.Exit:
    """Print a scenario's problems, one located line each, then, when one is about a key (and
    `hint`), where the format is written down; the exit (status 2) to raise."""
    for problem in exc.problems:
        say(err, problem.line(exc.source))
    if hint and any(problem.path for problem in exc.problems):
        say(err, FORMAT_HINT)
    return typer.Exit(code=2)


#: the last line under a scenario's problems
FORMAT_HINT = f"(every key of a scenario, its unit and default: {docs_hint('model.md', '2')})"


@contextmanager
def input_errors(where: str) -> Iterator[Callable[[], None]]:
    """Library errors as bad input (exit 2, via `input_failure`) until the runs begin.

    The block calls the function it is given once the runs begin (from a `before_runs` hook);
    from then on a ValueError is a bug, left to the command group (exit 1). A scenario's problems
    and an unsupported scenario stay the input's at any time (threshold loads each probe as it
    goes).
    """
    started = False

    def runs_begin() -> None:
        nonlocal started
        started = True

    try:
        yield runs_begin
    except ValueError as exc:
        if started and not isinstance(exc, (ScenarioError, UnsupportedScenario)):
            raise
        raise input_failure(exc, where) from None


def input_failure(exc: Exception, where: str) -> typer.Exit:
    """A scenario's problems, or `where: exc` for any other bad input; the exit (status 2) to raise."""
    if isinstance(exc, ScenarioError):
        return scenario_failure(exc)
    return fail(f"{where}: {exc}")


def bug(exc: BaseException, command: str) -> typer.Exit:
    """A failure that is not the input's: one line on stderr and a hint; the exit (status 1) to raise."""
    text = str(exc).strip().splitlines()
    say(err, f"loginstorm {command}: internal error, {type(exc).__name__}: {text[0] if text else '(no message)'}")
    say(err, f"This is a bug in loginstorm, not in your input. Run again with --debug (or {DEBUG_ENV}=1) for the "
             "Python traceback, and please report it with the command line.")
    return typer.Exit(code=1)


class Ticker:
    """Progress as plain lines on stderr every `every` seconds, for when stderr is not a terminal
    (CI, nohup, a pipe): a long run must not look hung. `tick(text)` prints
    `what: text (1m10s elapsed)` when `every` seconds have passed since the last line, or when final.
    """

    def __init__(self, what: str, every: float = 10.0):
        self.what = what
        self.every = every
        self.start = time.monotonic()
        self.last = self.start

    def __call__(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if now - self.last < self.every and not final:
            return
        self.last = now
        sys.stderr.write(f"{self.what}: {text} ({format_duration(round(now - self.start))} elapsed)\n")
        sys.stderr.flush()


def _eta(done: float, total: float, elapsed: float) -> str:
    """`, about 3m left` from the share done so far, or "" while it cannot be told."""
    if not (0 < done < total) or elapsed < 1:
        return ""
    return f", about {format_duration(max(1, round(elapsed * (total - done) / done)))} left"


@contextmanager
def runs_progress(description: str, total: int, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar over finished runs (variants x replications); a line every ~10 s when stderr
    is not a terminal; nothing when not `enabled` (--quiet)."""
    if not enabled:
        yield None
        return
    if not err.is_terminal:
        tick = Ticker(description)

        def line(done: int, total: int) -> None:
            tick(f"{done}/{total} runs{_eta(done, total, time.monotonic() - tick.start)}", final=done == total)

        yield line
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report


@contextmanager
def simulation_progress(name: str, end: float, replications: int,
                        enabled: bool) -> Iterator[Callable[[int, float, int], None] | None]:
    """A progress bar over simulated time up to `end` (all replications), with events/s; a line every
    ~10 s when stderr is not a terminal; nothing when not `enabled` (--quiet)."""
    if not enabled:
        yield None
        return
    if not err.is_terminal:
        tick = Ticker(f"simulating {name}")
        begun: dict[int, float] = {}

        def line(k: int, t: float, events: int) -> None:
            now = time.monotonic()
            elapsed = now - begun.setdefault(k, now)
            run = f" (run {k + 1}/{replications})" if replications > 1 else ""
            rate = f", {events / elapsed:,.0f} events/s" if elapsed > 0 else ""
            tick(f"{format_duration(round(t))} of {format_duration(end)} simulated{run}{rate}"
                 f"{_eta(k * end + t, end * replications, now - tick.start)}")

        yield line
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[sim]}"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"simulating {name}", total=end * replications, sim="", rate="")
        starts: dict[int, float] = {}

        def report(k: int, t: float, events: int) -> None:
            elapsed = time.perf_counter() - starts.setdefault(k, time.perf_counter())
            run = f" (run {k + 1}/{replications})" if replications > 1 else ""
            bar.update(task, completed=k * end + t, sim=f"{format_duration(round(t))} of {format_duration(end)}{run}",
                       rate=f"{events / elapsed:,.0f} events/s" if elapsed > 0 else "")

        yield report


@contextmanager
def sweep_progress(enabled: bool) -> Iterator[Callable[[int, int, float | None], None] | None]:
    """A progress bar with ETA on a terminal, a line every ~10 s otherwise, nothing when quiet."""
    if not enabled:
        yield None
        return
    if not err.is_terminal:
        tick = Ticker("sweep")

        def line(done: int, total: int, eta: float | None) -> None:
            left = "" if eta is None else f", about {format_duration(round(eta))} left"
            tick(f"{done}/{total} runs{left}", final=done == total)

        yield line
        return
    columns = (TextColumn("sweep"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
               TimeElapsedColumn(), TextColumn("{task.fields[eta]}"))
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("sweep", total=None, eta="")

        def update(done: int, total: int, eta: float | None) -> None:
            left = "" if eta is None else f"about {format_duration(round(eta))} left"
            bar.update(task, completed=done, total=total, eta=left)

        yield update
