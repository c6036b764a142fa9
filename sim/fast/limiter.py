"""The client's retry limiter, compiled: `sim.limiters`' own kernels on the rows of `lm` (`sim.fast.layout`).

`sim.limiters` writes `on_send`, `on_retry` and `on_result` with scalar arithmetic only, so they
compile unchanged (registered here as `sim.policies`' formulas are in `sim.fast.streams`). The
loop calls the wrappers below only when Q_LIMITER is set; they pick the client's row (its own,
or its group's: `sim.limiters.group_of`) as `sim.des.Model._limiter_row` does.
"""

from __future__ import annotations

from numba.extending import register_jitable

from sim import limiters
from sim.fast.jit import kernel
from sim.fast.layout import LM_HELD, LM_INITIAL, LM_PRM, LM_STATE, Q_L_DEVICE, Q_L_GROUPS, Q_LIMITER

for _kernel in limiters.KERNELS:  # helpers first: each compiles against those before it
    register_jitable(_kernel)


@kernel(inline="always")
def limiter_row(Q, lm, cid):
    """The state row client `cid` uses (a view into LM_STATE)."""
    return lm[LM_STATE][limiters.group_of(cid, Q[Q_L_GROUPS], Q[Q_L_DEVICE] != 0)]


@register_jitable  # not a kernel of its own: one compiled copy per constant argument otherwise
def limiter_send(Q, lm, cid, now, first, u):
    """`on_send` before an attempt: SEND, or SHORT (refused locally, not sent)."""
    return limiters.on_send(Q[Q_LIMITER], lm[LM_PRM], limiter_row(Q, lm, cid), now, first, u)


@register_jitable
def limiter_retry(Q, lm, cid, now, timed_out):
    """`on_retry` after a failure: the quota cost taken (kept in LM_HELD), or DENIED (< 0)."""
    cost = limiters.on_retry(Q[Q_LIMITER], lm[LM_PRM], limiter_row(Q, lm, cid), now, timed_out)
    if cost >= 0:
        lm[LM_HELD][cid] = cost
    return cost


@register_jitable
def limiter_result(Q, lm, cid, now, outcome):
    """`on_result` when a sent call's answer (or its timeout) reaches the client."""
    limiters.on_result(Q[Q_LIMITER], lm[LM_PRM], limiter_row(Q, lm, cid), now, outcome, lm[LM_HELD][cid])


@kernel
def limiter_reset(lm, cid):
    """A rebooted device's app starts with a fresh limiter (per-device scope only)."""
    row, initial = lm[LM_STATE][cid], lm[LM_INITIAL]
    for j in range(initial.shape[0]):
        row[j] = initial[j]
