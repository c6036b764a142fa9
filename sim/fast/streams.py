"""Draws, compiled: `sim.streams`' DrawStream (blocks of a distribution's own samples, refilled by
`Engine`) and DelayStream (the policy's delay formula, `sim.policies`' own function)."""

from __future__ import annotations

from numba.extending import register_jitable

from sim import policies
from sim.fast.jit import kernel
from sim.fast.layout import S_POS

for _kernel in policies.KERNELS:  # the formulas become callable from compiled code, unchanged for Python
    register_jitable(_kernel)

POLICY_CODES = {k: i for i, k in enumerate(policies.KERNELS[1:])}  # none_delay -> 0, ... grpc_delay -> 7


@kernel(inline="always")
def draw(draws, S, k):
    """The next sample of stream k (the loop returns REFILL before a block runs out)."""
    i = S[S_POS + k]
    S[S_POS + k] = i + 1
    return draws[k, i]


@kernel
def policy_delay(code, n, u, previous, base, cap, multiplier, top):
    """The policy's delay before retry n: the `sim.policies` formula function for `code`."""
    if code == 0:
        return policies.none_delay(n, u, previous, base, cap, multiplier, top)
    if code == 1:
        return policies.constant_delay(n, u, previous, base, cap, multiplier, top)
    if code == 2:
        return policies.random_delay(n, u, previous, base, cap, multiplier, top)
    if code == 3:
        return policies.exponential_delay(n, u, previous, base, cap, multiplier, top)
    if code == 4:
        return policies.full_jitter_delay(n, u, previous, base, cap, multiplier, top)
    if code == 5:
        return policies.equal_jitter_delay(n, u, previous, base, cap, multiplier, top)
    if code == 6:
        return policies.decorrelated_delay(n, u, previous, base, cap, multiplier, top)
    return policies.grpc_delay(n, u, previous, base, cap, multiplier, top)
