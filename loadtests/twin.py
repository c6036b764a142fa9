"""A load test's simulated twin: the same story through the reference engine, at the load test's speed.

A load test replays a (scaled) scenario at `--speed K` against a real server; its twin is the
same scenario compressed by K (`sim.config.compress_scenario`), on the real server's `[server]`
table (`loadtests.capacity`), simulated by `des` a few times.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loadtests.capacity import merge, validated_capacity
from sim.config import compress_scenario
from sim.runner import Outcome, simulate
from sim.scenario import Scenario, Server

__all__ = ["simulated_twin"]


def simulated_twin(scenario: Scenario, *, speed: float, capacity: dict[str, Any] | Server | None = None,
                   replications: int = 5, seed: int | None = None, until: float | None = None) -> list[Outcome]:
    """The load test's twin: `scenario` (already `--scale`d) at `--speed`, on `capacity`, run by `des`.

    `capacity`: dotted [server] keys (from `parse_capacity`) that replace the scenario's, as they
    are (not scaled: they describe the real server), or a whole `Server` table. Replication i
    runs with seed i of SeedSequence(seed).spawn(n) (seed: the scenario's), written in its
    summary so that one run can be repeated alone. `until` (real seconds) ends the twin where
    the load test ended, so that totals and recovery are those of the same stretch of the story.
    """
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    twin = compress_scenario(scenario, speed)
    if isinstance(capacity, Server):
        twin = twin.model_copy(update={"server": capacity})
    elif capacity:
        twin = twin.model_copy(update={"server": merge(twin.server, validated_capacity(capacity))})
    children = np.random.SeedSequence(twin.seed if seed is None else seed).spawn(replications)
    until = None if until is None or until >= twin.duration else until
    return [simulate(twin.model_copy(update={"seed": int(child.generate_state(1)[0])}), engine="des", until=until)
            for child in children]
