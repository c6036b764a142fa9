"""Who an event picks and when each picked client is hit: pure functions over numpy arrays.

Both the simulator and the Locust device users draw event times here, so a load test replays
the same story the simulation tells (docs/model.md section 3.1, "Fraction events").
"""

from __future__ import annotations

import math

import numpy as np

from sim.distributions import Distribution

__all__ = ["pick", "wave_times", "rate_schedule", "next_arrival"]


def pick(rng: np.random.Generator, eligible: np.ndarray, fraction: float) -> np.ndarray:
    """Exactly round(fraction x len(eligible)) ids, chosen uniformly without replacement.

        >>> pick(np.random.default_rng(0), np.arange(10), 0.3).size
        3
    """
    k = int(round(fraction * len(eligible)))
    if k >= len(eligible):
        return np.array(eligible, copy=True)
    return rng.choice(eligible, size=k, replace=False)


def wave_times(rng: np.random.Generator, at: float, count: int, spread: Distribution,
               waves: tuple[tuple[float, float], ...] = ((0.0, 1.0),)) -> np.ndarray:
    """When each of `count` picked clients is hit: at + its wave's offset + a spread draw.

    `waves` holds (offset, probability) pairs; each client draws its wave by probability.
    """
    if count == 0:
        return np.empty(0)
    offsets = np.array([w[0] for w in waves])
    if len(waves) == 1:
        base = np.full(count, offsets[0])
    else:
        probs = np.array([w[1] for w in waves])
        base = offsets[rng.choice(len(waves), size=count, p=probs / probs.sum())]
    jitter = np.zeros(count) if spread.is_zero else np.asarray(spread.sample(rng, count), dtype=float)
    return at + base + jitter


def rate_schedule(base: float, surges: list[tuple[float, float, float]]) -> list[tuple[float, float]]:
    """Piecewise-constant arrival rate as (from, rate) steps: `base` times every active surge factor.

        >>> rate_schedule(2.0, [(10.0, 5.0, 3.0)])
        [(0.0, 2.0), (10.0, 6.0), (15.0, 2.0)]
    """
    cuts = sorted({0.0} | {a for a, _, _ in surges} | {a + d for a, d, _ in surges})
    steps = []
    for t in cuts:
        rate = base
        for a, d, factor in surges:
            if a <= t < a + d:
                rate *= factor
        steps.append((t, rate))
    return steps


def next_arrival(t: float, need: float, schedule: list[tuple[float, float]]) -> float:
    """The time after `t` at which the integrated rate has grown by `need` (an Exp(1) draw): inf if never.

    Inverting the integrated rate makes a Poisson process with any piecewise-constant rate exact.
    """
    k = len(schedule) - 1
    while k > 0 and schedule[k][0] > t:
        k -= 1
    while True:
        rate = schedule[k][1]
        end = schedule[k + 1][0] if k + 1 < len(schedule) else math.inf
        if rate > 0 and t + need / rate <= end:
            return t + need / rate
        if end == math.inf:
            return math.inf
        need -= rate * (end - t)
        t, k = end, k + 1
