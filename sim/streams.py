"""Draws in blocks: the engines ask for one random time at a time, millions of times.

A numpy call costs microseconds whether it draws one number or a thousand, so these wrappers
draw a block with the distribution's (or policy's) own vectorised method and hand the values
out one by one. The numbers still come from the one seeded generator, in a fixed order, so a
run stays reproducible; only the order in which they are taken from it differs from drawing
one at a time.
"""

from __future__ import annotations

import math

import numpy as np

from sim.distributions import Distribution
from sim.policies import Policy

__all__ = ["DrawStream", "DelayStream"]

BLOCK = 2048


class DrawStream:
    """`next()` gives one draw of a distribution; constants cost nothing.

        >>> from sim.distributions import Exponential
        >>> s = DrawStream(Exponential(2.0), np.random.default_rng(0))
        >>> s.next() > 0
        True
    """

    __slots__ = ("dist", "rng", "buf", "i", "constant", "next")

    def __init__(self, dist: Distribution, rng: np.random.Generator):
        self.dist, self.rng = dist, rng
        self.buf: list[float] = []
        self.i = 0
        self.constant = dist.mean if dist.variance == 0 else None
        self.next = self._constant if self.constant is not None else self._draw

    def _constant(self) -> float:
        return self.constant

    def _draw(self) -> float:
        if self.i == len(self.buf):
            self.buf = self.dist.sample(self.rng, BLOCK).tolist()
            self.i = 0
        self.i += 1
        return self.buf[self.i - 1]


class DelayStream:
    """`next(retry, previous)` gives one policy delay, drawn in blocks per retry number.

    Delays before the same retry number are independent and identically distributed for every
    policy but decorrelated jitter (which depends on the previous draw and is computed one by
    one); beyond the retry number where the envelope reaches its cap all retries share a block.
    """

    __slots__ = ("policy", "rng", "saturation", "buffers")

    def __init__(self, policy: Policy, rng: np.random.Generator):
        self.policy, self.rng = policy, rng
        self.saturation = _saturation(policy)
        self.buffers: dict[int, list] = {}

    def next(self, retry: int, previous: float | None) -> float:
        if self.policy.uses_previous:
            return self.policy.delay(retry, self.rng, previous)
        key = retry if retry < self.saturation else self.saturation
        slot = self.buffers.get(key)
        if slot is None or slot[1] == len(slot[0]):
            draws = self.policy.delays(np.full(BLOCK if self.policy.random else 1, key), self.rng).tolist()
            slot = self.buffers[key] = [draws, 0]
        if not self.policy.random:
            return slot[0][0]
        slot[1] += 1
        return slot[0][slot[1] - 1]


def _saturation(policy: Policy, limit: int = 4096) -> int:
    """The retry number from which the policy's delays no longer change with n."""
    envelope = getattr(policy, "envelope", None)
    if envelope is None:
        return 0
    previous = None
    for n in range(limit):
        value = float(np.asarray(envelope(np.array([float(n)])))[0])
        if previous is not None and value == previous:
            return n - 1
        if math.isinf(value):
            return n
        previous = value
    return limit
