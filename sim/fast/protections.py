"""The server's adaptive protections, compiled: `sim.protections`' own kernels on the rows of `pr`.

`sim.protections` writes `admits`, `limit_sample`, `codel_shed`, `serve_newest` and
`queue_retry_after` with scalar arithmetic only, so they compile unchanged (registered here as
`sim.limiters`' are in `sim.fast.limiter`). The loop and the server kernels call them only when
their flag in Q is set (Q_CLIMIT, Q_CODEL, Q_ALIFO, Q_QUEUE_RA), as `sim.server.LoginServer`
does when the scenario sets `[server.concurrency]`, `[server.codel]` or retry_after_from.
"""

from __future__ import annotations

from numba.extending import register_jitable

from sim import protections
from sim.fast.jit import kernel
from sim.fast.layout import P_MEAN_SERVICE, P_RA_MAX, P_RETRY_AFTER, Q_QUEUE_RA, Q_WORKERS, S_QN

for _kernel in protections.KERNELS:  # the same functions the reference engine calls
    register_jitable(_kernel)


@kernel(inline="always")
def busy_retry_after(P, Q, S):
    """`LoginServer._busy`: the Retry-After of a busy tier's 503 (queue full, concurrency limit,
    CoDel, no home): P_RETRY_AFTER, or computed from the queue now with Q_QUEUE_RA."""
    if Q[Q_QUEUE_RA]:
        return protections.queue_retry_after(S[S_QN], Q[Q_WORKERS], P[P_MEAN_SERVICE], P[P_RA_MAX])
    return P[P_RETRY_AFTER]
