"""The login server, compiled: `sim.server.LoginServer` over the request pool (`sim.fast.layout`).

A request is a pool slot (client, its generation, send time, deadline, service start, state,
hang, fault and resumption bits); the queue and the reject work waiting for a worker are rings of
slots. A service's or a refusal's end is a heap entry by slot; a slot whose client moved on is
freed there. CoDel (`[server.codel]`) acts in `dispatch`, on the rows of `pr` (`sim.fast.protections`).
"""

from __future__ import annotations

from sim import protections
from sim.fast.heap import push
from numba.extending import register_jitable

from sim.fast.jit import kernel
from sim.fast.layout import (
    A_NONE, A_TIMEOUT, CL_CRA, CL_GEN, CL_KEYS, CT_LOSE, CT_WORKERS, C_REJECTED, C_WASTED, D_RESUME, D_SERVICE,
    D_U01, G_BUSY_TIME, G_REDISPATCH_AT, G_TOKENS, G_TOKENS_AT, G_WAITS_SUM, G_WASTED_TIME, HANG_FAULT,
    HANG_PARTITION, HANG_RESUME, HQ_NEAR, K_DONE, K_REFUSED, K_REJECT_DONE, K_TIMEOUT, L_QUEUE, L_REJECTING,
    L_SERVING, L_WORKERS, ONLINE, PF_SERVER, PL_CLIENT, PL_DEADLINE, PL_FREE, PL_GEN, PL_HANG, PL_QUEUE, PL_REJECTS,
    PL_SENT, PL_START, PL_STATE, PR_CPRM, PR_CROW, PT_FAILURE, PT_FRACTION, PT_HANG, PT_ISOLATE_AT, PT_OFFSET,
    P_KNEE, P_PER_REQ, P_PER_WORKER, P_REJECT_COST, P_RL_BURST, P_RL_RATE, P_RTT, P_STEADY0, P_STEADY1, P_WIDTH,
    Q_ALIFO, Q_CANCEL, Q_CHILDREN, Q_CODEL, Q_DEDICATED, Q_DROP, Q_EXTRA, Q_LIFO, Q_NBINS, Q_OVERLOAD, Q_RESUME_SVC,
    Q_WORKERS, R_DEAD, R_FREE, R_SERVING, SC_REFUSALS, S_BUSY, S_FREE, S_HN, S_N0, S_NPART, S_NSN, S_POS, S_QH,
    S_QN, S_REDISPATCH, S_RJH, S_RJN, S_SERVING, S_WAITS_POS, S_WAITS_STARTED)
from sim.fast.profile import enter, leave
from sim.fast.protections import busy_retry_after
from sim.fast.record import count, count_start, level_add
from sim.fast.streams import draw


@kernel
def partition_of(S, PT, key):
    """The active partition this client depends on (membership by its fixed key), or -1."""
    for i in range(S[S_NPART]):
        if (key + PT[i, PT_OFFSET]) % 1.0 < PT[i, PT_FRACTION]:
            return i
    return -1


@kernel
def partition_hang(S, PT, draws, key, now):
    """0: no hang; 1: this attempt will hang if it is served; -1: fail fast (after isolate_at)."""
    i = partition_of(S, PT, key)
    if i < 0:
        return 0
    if now >= PT[i, PT_ISOLATE_AT]:
        return -1 if draw(draws, S, D_U01) < PT[i, PT_FAILURE] else 0
    return 1


@kernel(inline="always")
def reply_after_rtt(P, S, hp, now, timeout, cid, g, kind, at_once):
    """An answer given at once by the server reaches the client one round trip later (a heap entry
    of `kind`), unless its deadline comes first (a timeout); with no round trip it acts now:
    returns the client's next action (A_NONE while it waits)."""
    rtt = P[P_RTT]
    if rtt >= timeout:  # the deadline comes first: a timeout
        if timeout > 0:
            push(hp, S, P, now + timeout, K_TIMEOUT, cid, g)
            return A_NONE
        return A_TIMEOUT
    if rtt > 0:
        push(hp, S, P, now + rtt, kind, cid, g)
        return A_NONE
    return at_once


@kernel(inline="always")
def take_token(P, G, now):
    """`sim.bucket.TokenBucket.take`: every attempt that gets this far takes a token."""
    tokens = min(P[P_RL_BURST], G[G_TOKENS] + (now - G[G_TOKENS_AT]) * P[P_RL_RATE])
    G[G_TOKENS_AT] = now
    if tokens >= 1.0:
        G[G_TOKENS] = tokens - 1.0
        return True
    G[G_TOKENS] = tokens
    return False


@kernel(inline="always")
def home_full(P, Q, S):
    """No supernode (nor the dedicated workers' share of homes) can home another client."""
    homes = S[S_NSN] * Q[Q_CHILDREN] + Q[Q_DEDICATED] * P[P_PER_WORKER]
    return S[S_N0 + ONLINE] >= homes


@kernel
def start(P, Q, S, G, keys, pool, draws, PT, hp, rec, r, now):
    """A request takes a worker: a partition hang (decided now), else the service draw times the
    overload factor; cut at the deadline with cancel_on_timeout; its end goes on the heap. An
    injected fault's bit (HANG_FAULT) stays: K_DONE answers it with an error. A resumption
    (HANG_RESUME, which stays too) draws from `[server.resume]` when it is set (Q_RESUME_SVC)."""
    mark = enter(S)
    rc, rsent, rdl, rhang = pool[PL_CLIENT], pool[PL_SENT], pool[PL_DEADLINE], pool[PL_HANG]
    S[S_BUSY] += 1
    S[S_SERVING] += 1
    level_add(rec, L_SERVING, now, 1.0, P[P_WIDTH], Q[Q_NBINS])
    if P[P_STEADY0] <= now < P[P_STEADY1]:
        wait = now - rsent[r]
        S[S_WAITS_STARTED] += 1
        G[G_WAITS_SUM] += wait
        if wait > 0:
            S[S_WAITS_POS] += 1
    pool[PL_START][r] = now
    pool[PL_STATE][r] = R_SERVING
    i = partition_of(S, PT, keys[rc[r]]) if rhang[r] & HANG_PARTITION else -1
    if i >= 0 and draw(draws, S, D_U01) < PT[i, PT_FAILURE]:
        work = PT[i, PT_HANG]
    else:
        rhang[r] &= HANG_FAULT | HANG_RESUME
        if Q[Q_RESUME_SVC] and rhang[r] & HANG_RESUME:
            work = draw(draws, S, D_RESUME)
        else:
            work = draw(draws, S, D_SERVICE)
        if Q[Q_OVERLOAD]:
            work *= 1.0 + P[P_PER_REQ] * max(0.0, S[S_QN] + S[S_SERVING] - P[P_KNEE])
    if Q[Q_CANCEL] and now + work > rdl[r]:
        work = max(0.0, rdl[r] - now)
    push(hp, S, P, now + work, K_DONE, r, 0)
    leave(S, PF_SERVER, mark)


@kernel
def low(S, hp, draws):
    """Too few draws or heap slots left to start another request in this event."""
    block = draws.shape[1]
    return (S[S_POS + D_SERVICE] + 4 > block or S[S_POS + D_U01] + 4 > block
            or S[S_POS + D_RESUME] + 4 > block or S[S_HN] + 8 > hp[HQ_NEAR].shape[0])


@kernel
def dispatch(P, Q, S, G, cl, pool, draws, PT, hp, rec, pr, now):
    """Free workers take reject work first, then queued requests by the discipline (with CoDel's
    adaptive LIFO: newest first while it is overloaded); expired ones are dropped at the head,
    and CoDel sheds those that waited too long (`shed`). Short of draws or heap, it stops and
    the loop resumes it at once."""
    mark = enter(S)
    keys = cl[CL_KEYS]
    rsent, rdl, queue, rejects = pool[PL_SENT], pool[PL_DEADLINE], pool[PL_QUEUE], pool[PL_REJECTS]
    cap = queue.shape[0]
    while S[S_BUSY] < Q[Q_WORKERS] and (S[S_RJN] > 0 or S[S_QN] > 0):
        if low(S, hp, draws):
            S[S_REDISPATCH] = 1
            G[G_REDISPATCH_AT] = now
            leave(S, PF_SERVER, mark)
            return
        if S[S_RJN] > 0:
            r = rejects[S[S_RJH]]
            S[S_RJH] = (S[S_RJH] + 1) % cap
            S[S_RJN] -= 1
            S[S_BUSY] += 1
            level_add(rec, L_REJECTING, now, 1.0, P[P_WIDTH], Q[Q_NBINS])
            push(hp, S, P, now + P[P_REJECT_COST], K_REJECT_DONE, r, 0)
            continue
        if Q[Q_LIFO] or (Q[Q_ALIFO] and protections.serve_newest(pr[PR_CROW])):
            r = queue[(S[S_QH] + S[S_QN] - 1) % cap]
        else:
            r = queue[S[S_QH]]
            S[S_QH] = (S[S_QH] + 1) % cap
        S[S_QN] -= 1
        level_add(rec, L_QUEUE, now, -1.0, P[P_WIDTH], Q[Q_NBINS])
        if Q[Q_DROP] and now >= rdl[r]:
            free(S, pool, r)
            continue
        if Q[Q_CODEL] and protections.codel_shed(pr[PR_CPRM], pr[PR_CROW], now, now - rsent[r]):
            shed(P, Q, S, cl, hp, pool, rec, r, now)
            continue
        start(P, Q, S, G, keys, pool, draws, PT, hp, rec, r, now)
    leave(S, PF_SERVER, mark)


@kernel
def shed(P, Q, S, cl, hp, pool, rec, r, now):
    """CoDel sheds queued request `r` (`LoginServer.dispatch`): rejected now (its refusal counted
    at its send time), a 503 without a worker that reaches the client one round trip later
    unless its deadline comes first (`LoginServer._send_refusal`; the client's K_TIMEOUT then
    answers). With no round trip it is pushed for now: dispatch cannot take the client's steps."""
    gen, cra = cl[CL_GEN], cl[CL_CRA]
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    count(rec, C_REJECTED, now, width, nbins)
    count_start(rec, SC_REFUSALS, pool[PL_SENT][r], width, nbins)
    cid = pool[PL_CLIENT][r]
    if pool[PL_GEN][r] == gen[cid] and now + P[P_RTT] < pool[PL_DEADLINE][r]:
        cra[cid] = busy_retry_after(P, Q, S)
        push(hp, S, P, now + P[P_RTT], K_REFUSED, cid, gen[cid])
    free(S, pool, r)


@kernel(inline="always")
def free(S, pool, r):
    """Request slot `r` goes back on the free stack."""
    pool[PL_STATE][r] = R_FREE
    pool[PL_FREE][S[S_FREE]] = r
    S[S_FREE] += 1


@kernel
def answer_refused(P, S, cl, hp, pool, r, now):
    """An immediate connection error to the client still waiting for request `r` (ra 0)."""
    gen, cra = cl[CL_GEN], cl[CL_CRA]
    cid = pool[PL_CLIENT][r]
    if pool[PL_GEN][r] == gen[cid]:
        cra[cid] = 0.0
        push(hp, S, P, now, K_REFUSED, cid, gen[cid])


@kernel
def lose(P, Q, S, G, cl, hp, pool, rec, answer, now):
    """`LoginServer.lose_everything`: queued, waiting reject work and in-service requests are lost
    (rejected; killed work is wasted); answer=1: their clients learn at once, else they time out."""
    rsent, rstart, rstate, queue, rejects = pool[PL_SENT], pool[PL_START], pool[PL_STATE], pool[PL_QUEUE], \
        pool[PL_REJECTS]
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    cap = queue.shape[0]
    for j in range(S[S_RJN]):  # already counted as rejected when refused
        r = rejects[(S[S_RJH] + j) % cap]
        if answer:
            answer_refused(P, S, cl, hp, pool, r, now)
        free(S, pool, r)
    S[S_RJN] = 0
    for j in range(S[S_QN]):
        r = queue[(S[S_QH] + j) % cap]
        count(rec, C_REJECTED, now, width, nbins)
        count_start(rec, SC_REFUSALS, rsent[r], width, nbins)
        if answer:
            answer_refused(P, S, cl, hp, pool, r, now)
        free(S, pool, r)
    level_add(rec, L_QUEUE, now, -float(S[S_QN]), width, nbins)
    S[S_QN] = 0
    killed = 0
    for r in range(rstate.shape[0]):
        if rstate[r] != R_SERVING:
            continue
        rstate[r] = R_DEAD  # its end is still on the heap: the slot is freed there
        killed += 1
        G[G_BUSY_TIME] += now - rstart[r]
        G[G_WASTED_TIME] += now - rstart[r]
        count(rec, C_WASTED, now, width, nbins)
        count(rec, C_REJECTED, now, width, nbins)
        count_start(rec, SC_REFUSALS, rsent[r], width, nbins)
        if answer:
            answer_refused(P, S, cl, hp, pool, r, now)
    S[S_SERVING] -= killed
    S[S_BUSY] -= killed
    level_add(rec, L_SERVING, now, -float(killed), width, nbins)


@register_jitable
def set_workers(x, now, P, Q, S, G, cl, hp, pool, draws, PT, rec, pr):
    """x dedicated workers (supernode slots stay), then dispatch: a capacity event or a ramp's step."""
    x = max(0, x) + Q[Q_EXTRA]
    level_add(rec, L_WORKERS, now, float(x - Q[Q_WORKERS]), P[P_WIDTH], Q[Q_NBINS])
    Q[Q_DEDICATED] = x - Q[Q_EXTRA]
    Q[Q_WORKERS] = x
    if S[S_REDISPATCH] == 0:
        dispatch(P, Q, S, G, cl, pool, draws, PT, hp, rec, pr, now)


@kernel
def control(code, x, now, P, Q, S, G, cl, hp, pool, draws, PT, rec, pr):
    """A server action between two stretches: set the workers, lose everything, or dispatch."""
    if code == CT_WORKERS:
        set_workers(x, now, P, Q, S, G, cl, hp, pool, draws, PT, rec, pr)
    elif code == CT_LOSE:
        lose(P, Q, S, G, cl, hp, pool, rec, x, now)
    elif S[S_REDISPATCH] == 0:
        dispatch(P, Q, S, G, cl, pool, draws, PT, hp, rec, pr, now)


@kernel
def waiting(S, pool, now):
    """Queued requests whose client still waits for them (`LoginServer.waiting`)."""
    rdl, queue = pool[PL_DEADLINE], pool[PL_QUEUE]
    cap = queue.shape[0]
    n = 0
    for j in range(S[S_QN]):
        if rdl[queue[(S[S_QH] + j) % cap]] > now:
            n += 1
    return n
