"""Supernodes (docs/model.md section 3.2), compiled: `sim.p2p.Supernodes` and `sim.des.Model`'s p2p part,
with `become` (`Model.set_state`: a state change and what it does to the supernodes).

The `pp` tuple (`sim.fast.layout`) holds per client its supernode slot, home and place in its
home's child list (a doubly linked list through two arrays), so a leaving supernode finds its
orphans in O(children), and per supernode slot its client, children and places in the lists of
slots with room and in use. Picks draw from numba's generator, seeded from the run's generator
(`Engine._start_p2p`), so a seed still fixes the run.
"""

from __future__ import annotations

import math

import numpy as np

from sim.fast.clients import set_state, wake
from sim.fast.heap import push
from numba.extending import register_jitable

from sim.fast.jit import kernel
from sim.fast.layout import (
    CL_GEN, CL_STATE, CONNECTING, G_REDISPATCH_AT, INF, K_WANT, L_SUPERNODES, L_WORKERS, ONLINE, PF_P2P, PP_ACTIVE,
    PP_APOS, PP_BUF, PP_HEAD, PP_HOME, PP_NEXT, PP_NKIDS, PP_ONPOS, PP_ONS, PP_PREV, PP_ROOM, PP_RPOS, PP_SCID,
    PP_SFREE, PP_SIDX, PP_SINCE, P_PROMO_DELAY, P_PROMO_RATE, P_RATIO, P_SHUTDOWN_AT, P_SHUTDOWN_RATE, P_WIDTH,
    Q_CHILDREN, Q_DEDICATED, Q_EXTRA, Q_NBINS, Q_P2P, Q_SLOTS, Q_WORKERS, REC_LV, S_N0, S_NONS, S_NROOM, S_NSN,
    S_REDISPATCH, S_SFREE)
from sim.fast.profile import enter, leave
from sim.fast.record import level_add
from sim.fast.server import waiting


@kernel
def seed(value):
    """Seed numba's generator, which the supernode picks draw from."""
    np.random.seed(value)


@kernel
def pick(n):
    """A uniform index in [0, n)."""
    return min(n - 1, int(np.random.random() * n))


@kernel
def stochastic_round(x):
    """`sim.p2p.stochastic_round`: floor(x) plus one with probability frac(x)."""
    whole = math.floor(x)
    return int(whole) + (1 if np.random.random() < x - whole else 0)


@register_jitable
def list_add(items, pos, S, count, x):
    """Append `x` to a list with positions (its length is S[count])."""
    pos[x] = S[count]
    items[S[count]] = x
    S[count] += 1


@register_jitable
def list_remove(items, pos, S, count, x):
    """Swap-remove `x` from a list with positions (a no-op when it is not in it)."""
    i = pos[x]
    if i < 0:
        return
    last = items[S[count] - 1]
    items[i] = last
    pos[last] = i
    pos[x] = -1
    S[count] -= 1


@kernel
def home(Q, S, pp, cid, slot):
    """`cid` becomes a child of supernode `slot` (first in its list); a full one leaves `room`."""
    homes, nxt, prv, head, nkids = pp[PP_HOME], pp[PP_NEXT], pp[PP_PREV], pp[PP_HEAD], pp[PP_NKIDS]
    homes[cid] = slot
    first = head[slot]
    nxt[cid] = first
    prv[cid] = -1
    if first >= 0:
        prv[first] = cid
    head[slot] = cid
    nkids[slot] += 1
    if nkids[slot] >= Q[Q_CHILDREN]:
        list_remove(pp[PP_ROOM], pp[PP_RPOS], S, S_NROOM, slot)


@kernel
def unhome(Q, S, pp, cid):
    """`cid` leaves its home (offline or promoted); a no-op when it has none."""
    homes, nxt, prv, head, nkids, rpos = pp[PP_HOME], pp[PP_NEXT], pp[PP_PREV], pp[PP_HEAD], pp[PP_NKIDS], pp[PP_RPOS]
    slot = homes[cid]
    if slot < 0:
        return
    homes[cid] = -1
    if prv[cid] >= 0:
        nxt[prv[cid]] = nxt[cid]
    else:
        head[slot] = nxt[cid]
    if nxt[cid] >= 0:
        prv[nxt[cid]] = prv[cid]
    nkids[slot] -= 1
    if nkids[slot] < Q[Q_CHILDREN] and rpos[slot] < 0:
        list_add(pp[PP_ROOM], rpos, S, S_NROOM, slot)


@kernel
def place(Q, S, pp, cid):
    """Home `cid` on a supernode chosen uniformly among those with room (none: it stays unhomed)."""
    if S[S_NROOM] > 0:
        home(Q, S, pp, cid, pp[PP_ROOM][pick(S[S_NROOM])])


@kernel
def promote(Q, S, pp, cid):
    """An ONLINE ordinary client becomes a supernode with no children, leaving its own home."""
    sidx, scid, head, nkids = pp[PP_SIDX], pp[PP_SCID], pp[PP_HEAD], pp[PP_NKIDS]
    unhome(Q, S, pp, cid)
    list_remove(pp[PP_ONS], pp[PP_ONPOS], S, S_NONS, cid)
    S[S_SFREE] -= 1
    slot = pp[PP_SFREE][S[S_SFREE]]
    sidx[cid], scid[slot], head[slot], nkids[slot] = slot, cid, -1, 0
    list_add(pp[PP_ACTIVE], pp[PP_APOS], S, S_NSN, slot)
    list_add(pp[PP_ROOM], pp[PP_RPOS], S, S_NROOM, slot)


@kernel
def demote(P, Q, S, G, cl, hp, pp, rec, cid, now):
    """`cid` stops being a supernode: its children lose their sessions and start episodes now."""
    st, gen = cl[CL_STATE], cl[CL_GEN]
    sidx, homes, nxt = pp[PP_SIDX], pp[PP_HOME], pp[PP_NEXT]
    slot = sidx[cid]
    child = pp[PP_HEAD][slot]
    while child >= 0:
        after = nxt[child]
        homes[child] = -1
        # homed clients are online: each is dropped (as `Model.drop`), by hand rather than by
        # `become`, which calls this function: numba compiles no recursion
        if st[child] == ONLINE:
            wake(P, Q, S, cl, rec, child, now)
            set_state(P, Q, S, G, st, rec, child, CONNECTING, now)
            list_remove(pp[PP_ONS], pp[PP_ONPOS], S, S_NONS, child)
            push(hp, S, P, now, K_WANT, child, gen[child])
        child = after
    pp[PP_HEAD][slot], pp[PP_NKIDS][slot] = -1, 0
    list_remove(pp[PP_ROOM], pp[PP_RPOS], S, S_NROOM, slot)
    list_remove(pp[PP_ACTIVE], pp[PP_APOS], S, S_NSN, slot)
    sidx[cid] = -1
    pp[PP_SFREE][S[S_SFREE]] = slot
    S[S_SFREE] += 1


@kernel
def supernodes_changed(P, Q, S, G, rec, now):
    """Supernode slots are workers (`LoginServer.set_extra`); more of them dispatch at once."""
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    LV = rec[REC_LV]
    level_add(rec, L_SUPERNODES, now, float(S[S_NSN]) - LV[L_SUPERNODES, 0], width, nbins)
    extra = Q[Q_SLOTS] * S[S_NSN]
    workers = Q[Q_DEDICATED] + extra
    if workers != Q[Q_WORKERS]:
        level_add(rec, L_WORKERS, now, float(workers - Q[Q_WORKERS]), width, nbins)
        if workers > Q[Q_WORKERS]:
            S[S_REDISPATCH] = 1  # the loop dispatches before anything else happens
            G[G_REDISPATCH_AT] = now
    Q[Q_EXTRA], Q[Q_WORKERS] = extra, workers


@kernel
def tick(P, Q, S, G, cl, hp, pp, pool, rec, now):
    """The minute's rules (`Model.p2p_ticks`): promote towards the wanted count, then shut down
    under overload."""
    mark = enter(S)
    wanted = P[P_RATIO] * S[S_N0 + ONLINE]
    have = S[S_NSN]
    if have < wanted:
        k = min(stochastic_round(P[P_PROMO_RATE] * wanted), math.ceil(wanted - have), S[S_SFREE])
        if k > 0:
            promote_ripe(P, Q, S, pp, k, now)
            supernodes_changed(P, Q, S, G, rec, now)
    have = S[S_NSN]
    if have > 0 and Q[Q_SLOTS] > 0 and P[P_SHUTDOWN_AT] < INF:
        if waiting(S, pool, now) / (Q[Q_SLOTS] * have) > P[P_SHUTDOWN_AT]:
            k = min(stochastic_round(P[P_SHUTDOWN_RATE] * have), have)
            if k > 0:
                shut_down(P, Q, S, G, cl, hp, pp, rec, k, now)
    leave(S, PF_P2P, mark)


@kernel
def promote_ripe(P, Q, S, pp, k, now):
    """Promote k clients uniformly among the ripe ONLINE ordinary ones, without replacement:
    draws from all of them kept when ripe, then (if that is slow) an exact pick in a full scan."""
    ons, since = pp[PP_ONS], pp[PP_SINCE]
    ripe = now - P[P_PROMO_DELAY]
    tries, budget = 0, 8 * k + 64
    while k > 0 and S[S_NONS] > 0 and tries < budget:
        tries += 1
        c = ons[pick(S[S_NONS])]
        if since[c] <= ripe:
            promote(Q, S, pp, c)
            k -= 1
    if k > 0 and S[S_NONS] > 0:
        ripe_ids = pp[PP_BUF]  # scratch as long as the clients (sim.fast.jit: kernels allocate nothing)
        n = 0
        for j in range(S[S_NONS]):
            if since[ons[j]] <= ripe:
                ripe_ids[n] = ons[j]
                n += 1
        for i in range(min(k, n)):
            j = i + pick(n - i)
            ripe_ids[i], ripe_ids[j] = ripe_ids[j], ripe_ids[i]
            promote(Q, S, pp, ripe_ids[i])


@kernel
def shut_down(P, Q, S, G, cl, hp, pp, rec, k, now):
    """k supernodes, uniformly chosen, shut down: their children reconnect, they stay online as
    ordinary clients whose promotion clock restarts."""
    active, scid, buf, since = pp[PP_ACTIVE], pp[PP_SCID], pp[PP_BUF], pp[PP_SINCE]
    have = S[S_NSN]
    for i in range(have):
        buf[i] = scid[active[i]]
    for i in range(k):
        j = i + pick(have - i)
        buf[i], buf[j] = buf[j], buf[i]
    for i in range(k):
        demote(P, Q, S, G, cl, hp, pp, rec, buf[i], now)
    supernodes_changed(P, Q, S, G, rec, now)
    for i in range(k):
        since[buf[i]] = now
        list_add(pp[PP_ONS], pp[PP_ONPOS], S, S_NONS, buf[i])
        place(Q, S, pp, buf[i])


@kernel
def start_p2p(Q, S, pp, chosen, others):
    """t = 0 (`Model._start_p2p`): the chosen supernodes, then every other online client homed in
    the given order."""
    for i in range(chosen.shape[0]):
        promote(Q, S, pp, chosen[i])
    for i in range(others.shape[0]):
        place(Q, S, pp, others[i])


@register_jitable  # typed with plain argument types: one copy, not one per state constant
def become(P, Q, S, G, cl, hp, pp, rec, cid, new, now):
    """`Model.set_state`: the state levels, and with p2p a login's home or a leaving client's."""
    st = cl[CL_STATE]
    old = st[cid]
    if old == new:
        return
    set_state(P, Q, S, G, st, rec, cid, new, now)
    if not Q[Q_P2P]:
        return
    mark = enter(S)
    if new == ONLINE:
        pp[PP_SINCE][cid] = now
        list_add(pp[PP_ONS], pp[PP_ONPOS], S, S_NONS, cid)
        place(Q, S, pp, cid)  # no room: online unhomed
    elif old == ONLINE:
        if pp[PP_SIDX][cid] >= 0:  # a supernode takes its children with it
            demote(P, Q, S, G, cl, hp, pp, rec, cid, now)
            supernodes_changed(P, Q, S, G, rec, now)
        else:
            list_remove(pp[PP_ONS], pp[PP_ONPOS], S, S_NONS, cid)
            unhome(Q, S, pp, cid)
    leave(S, PF_P2P, mark)
