"""The resource check every command makes before it runs anything (`--no-limits` lifts it)."""

from __future__ import annotations

from typing import Sequence

from sim.cli.console import err, fail, say
from sim.limits import MAX_RUNS, check, estimate
from sim.scenario import Scenario

__all__ = ["check_resources", "MAX_RUNS"]


def check_resources(command: str, scenarios: Sequence[Scenario], engine: str, *, replications: int = 1,
                    until: float | None = None, parallel: int = 1, no_limits: bool = False) -> None:
    """Exit with status 2 when a run of any of `scenarios` would need more memory or time than this
    machine has (`sim.limits`), naming the keys that drive it; with `no_limits`, say so and go on."""
    problems: list[str] = []
    for s in scenarios:
        for line in check(estimate(s, engine, replications=replications, parallel=parallel, until=until)):
            if line not in problems:
                problems.append(line)
    if not problems:
        return
    if no_limits:
        for line in problems:
            say(err, f"loginstorm {command}: --no-limits: going on although {line}")
        return
    for line in problems[:-1]:
        say(err, f"loginstorm {command}: {line}")
    raise fail(f"loginstorm {command}: {problems[-1]}")
