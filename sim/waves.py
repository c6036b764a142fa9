"""Who an event picks and when each picked client is hit: pure functions over numpy arrays.

Both the simulator and the Locust device users draw event times here, so a load test replays
the same story the simulation tells (MODEL.md section 3.1, "Fraction events").
"""

from __future__ import annotations

import numpy as np

from sim.distributions import Distribution

__all__ = ["pick", "wave_times"]


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
