"""A client's state and wake-ups, compiled: `sim.des.Model.set_state`'s records and `Model.wake`.

The steps of a client's life (episode, attempt, retry timer, ...) are in the loop
(`sim.fast.loop`); these are the kernels below them that the supernodes also use.
"""

from __future__ import annotations

from sim.fast.jit import kernel
from sim.fast.layout import (CL_GEN, CL_ORBITING, CONNECTING, GAVE_UP, L_ORBIT, OFFLINE, ONLINE, P_WIDTH,
                             PF_RECORDS, Q_NBINS, S_N0)
from sim.fast.profile import enter, leave
from sim.fast.record import level_add, watch


@kernel(inline="always")
def state_level(state):
    """The level (row of `sim.record.LEVELS`) that counts the clients in `state`."""
    # LEVELS = online, connecting, offline, gave_up, ...; states are offline, connecting, online, gave_up
    if state == OFFLINE:
        return 2
    if state == ONLINE:
        return 0
    return state  # connecting 1, gave_up 3


@kernel(inline="always")
def set_state(P, Q, S, G, st, rec, cid, new, t):
    """The state counts, their levels and the share watch (with supernodes: `p2p.become`)."""
    old = st[cid]
    if old == new:
        return
    st[cid] = new
    S[S_N0 + old] -= 1
    S[S_N0 + new] += 1
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    level_add(rec, state_level(old), t, -1.0, width, nbins)
    level_add(rec, state_level(new), t, 1.0, width, nbins)
    mark = enter(S)
    watch(P, G, t, S[S_N0 + ONLINE], S[S_N0 + CONNECTING], S[S_N0 + GAVE_UP])
    leave(S, PF_RECORDS, mark)


@kernel(inline="always")
def wake(P, Q, S, cl, rec, cid, now):
    """An event interrupts the client: whatever it waited for no longer concerns it."""
    gen, orbiting = cl[CL_GEN], cl[CL_ORBITING]
    gen[cid] += 1
    if orbiting[cid]:
        orbiting[cid] = 0
        level_add(rec, L_ORBIT, now, -1.0, P[P_WIDTH], Q[Q_NBINS])
