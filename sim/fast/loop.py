"""The compiled event loop: the next event of three sorted sources, and the client's steps.

The sources are the heap (timers, replies, service ends, ramp steps, the supernode tick), the
fraction events' hits and the `login_rate` arrivals; at equal times a hit acts first, then an
arrival, then the heap. An event hands a client its first step (A_*: an episode, an attempt, a
failure to retry after, ...) and the loop takes the steps that follow at the same instant, as
`sim.des.Model.life` does, until the client waits for something: a heap entry hands it its next
step later. The loop stops before `until`, or early when Python must grow an array or refill
the draws (`Engine` does, then calls again: the state is all in the arrays).

The loop is one function on purpose: handing each event kind and each step to its own compiled
function (tried: `hit`, `timer`, `done`, `reject_done`, `life`, `episode`, `attempt`, `retry`,
`submit`) ran the Skype storm 2 to 3 times slower and compiled 10 to 40 % longer. The kernels
it calls are in the modules named after the reference engine's parts.
"""

from __future__ import annotations

import math

from sim import protections
from sim.fast.clients import state_level, wake
from sim.fast.heap import pop, push, settle, top_kind
from sim.fast.jit import kernel
from sim.fast.layout import (
    A_ATTEMPT, A_EPISODE, A_ERROR, A_FAIL, A_GIVE_UP, A_NONE, A_OFFLINE, A_ONLINE, A_REBOOT, A_REFUSAL, A_SUCCESS,
    A_TIMEOUT, CONNECTING, C_ATTEMPTS, C_ERRORS, C_REJECTED, C_RESUMED, C_RESUMPTIONS, C_SHORT, C_SUCCESSES,
    C_SUPPRESSED, C_TIMEOUTS, C_WASTED, DONE, D_CONNECT, D_OFFLINE, D_RELAUNCH, D_SESSION, D_TIMEOUT, D_U01,
    D_UNIFORM, GAVE_UP, GROW_HEAP, GROW_LOGINS, GROW_POOL, G_BUSY_TIME, G_REDISPATCH_AT, G_WASTED_TIME, HANG_FAULT,
    HANG_PARTITION, HANG_RESUME, HQ_NEAR, HQ_OVER, H_DISCONNECT, H_LOGIN, H_REBOOT, INF, K_ATTEMPT, K_DONE, K_FAULT,
    K_REBOOT_END, K_REFUSED, K_REJECT_DONE, K_RETRY, K_SESSION_END, K_TICK, K_TIMEOUT, K_WANT, K_WORKERS, LM_HELD,
    L_ORBIT, L_QUEUE, L_REJECTING, L_SERVING, N_STREAMS, OFFLINE, ONLINE, OUT_BLACKHOLE, OUT_REFUSE, P2P_TICK,
    PF_CHECKS, PF_EVENT, PF_POP, PF_STALE, PF_STEPS, PR_CPRM, PR_CROW, PR_LPRM, PR_LROW, PR_TOK, P_ADMIT,
    P_ADMIT_RA, P_BASE, P_CAP, P_FAULT, P_GIVE_UP, P_MULT, P_QLIMIT, P_REJECT_COST, P_RESUME_WINDOW, P_RL_RA, P_RTT,
    P_TOP, P_WIDTH, Q_ABASE, Q_CLIMIT, Q_CODEL, Q_FAULT_FAST, Q_HONOR, Q_LIMITER, Q_L_DEVICE, Q_L_DRAWS, Q_L_STOPS,
    Q_MARGIN, Q_MAX_ATT, Q_NBINS, Q_P2P, Q_POLICY, Q_RANDOM, Q_RESUME, Q_RL, Q_WORKERS, REC_LOGINS, REFILL, R_DEAD,
    R_QUEUED, R_REJECT, SC_REFUSALS, SC_TIMEOUTS, SPARE, S_ARR, S_BUSY, S_EPISODES, S_EVENTS, S_FFREEN, S_FN,
    S_FREE, S_GAVE_UP, S_HIT, S_HN, S_LOGINS, S_N0, S_NPART, S_ON, S_OUTAGE, S_POS, S_QH, S_QN, S_RAMP,
    S_REDISPATCH, S_RJH, S_RJN, S_SERVING)
from sim.fast.limiter import limiter_reset, limiter_result, limiter_retry, limiter_send
from sim.fast.p2p import become, tick
from sim.fast.profile import enter, leave
from sim.fast.protections import busy_retry_after
from sim.fast.record import count, count_start, level_add, watch
from sim.fast.server import (dispatch, free, home_full, partition_hang, reply_after_rtt, set_workers, start,
                             take_token)
from sim.fast.streams import draw, policy_delay
from sim.limiters import FAILED, OK, SHORT, TIMED_OUT


@kernel
def advance(until, P, Q, S, G, cl, hp, pool, draws, PT, hits, arrivals, rec, pp, lm, pr):
    """Process every event before `until`; returns DONE, or what Python must do before calling again."""
    st, gen, rebooting, orbiting, begun, first, sent, prev, natt, cra, keys, learned = cl
    rc, rg, rsent, rdl, rstart, free_slots, queue, rstate, rhang, rejects = pool
    tok = pr[PR_TOK]
    hit_t, hit_c, hit_k, hit_d = hits
    logins = rec[REC_LOGINS]
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    n_hits, n_arr = hit_t.shape[0], arrivals.shape[0]
    block = draws.shape[1]
    near = hp[HQ_NEAR]
    while True:
        if S[S_FN] + S[S_ON] > 0:  # the near heap's first entry becomes the earliest of all
            mark = enter(S)
            settled = settle(hp, S, P)
            leave(S, PF_POP, mark)
            if not settled:
                return GROW_HEAP
        mark = enter(S)
        # room for the pushes of one event in the near heap even if the ring and the overflow
        # heap were full (the margin: a supernode's orphans), and rows left in those
        if S[S_HN] + Q[Q_MARGIN] > near.shape[0]:
            return GROW_HEAP
        if S[S_HN] > 0 and top_kind(hp) == K_TICK and S[S_HN] + S[S_N0 + ONLINE] + 16 > near.shape[0]:
            return GROW_HEAP
        if S[S_FFREEN] < Q[Q_MARGIN] or S[S_ON] + Q[Q_MARGIN] > hp[HQ_OVER].shape[0]:
            return GROW_HEAP
        if S[S_FREE] < 4:
            return GROW_POOL
        if S[S_LOGINS] + 4 > logins.shape[0]:
            return GROW_LOGINS
        for k in range(N_STREAMS):
            if S[S_POS + k] + SPARE > block:
                return REFILL
        leave(S, PF_CHECKS, mark)
        mark = enter(S)
        if S[S_REDISPATCH]:  # a dispatch that ran short of draws or heap resumes at its instant
            S[S_REDISPATCH] = 0
            dispatch(P, Q, S, G, cl, pool, draws, PT, hp, rec, pr, G[G_REDISPATCH_AT])
            leave(S, PF_EVENT, mark)
            continue
        t_heap = near[0, 0] if S[S_HN] > 0 else INF
        t_hit = hit_t[S[S_HIT]] if S[S_HIT] < n_hits else INF
        t_arr = arrivals[S[S_ARR]] if S[S_ARR] < n_arr else INF
        now = min(t_heap, t_hit, t_arr)
        if now >= until:
            return DONE
        action, cid, ra, arg, timed_out, resumed = A_NONE, -1, 0.0, 0.0, False, False
        if t_hit == now:  # a fraction event hits one client (docs/model.md section 3.1)
            i = S[S_HIT]
            S[S_HIT] = i + 1
            cid, kind = hit_c[i], hit_k[i]
            cur = st[cid]
            if kind == H_REBOOT and cur != OFFLINE:
                wake(P, Q, S, cl, rec, cid, now)
                become(P, Q, S, G, cl, hp, pp, rec, cid, OFFLINE, now)
                rebooting[cid] = 1
                if Q[Q_L_DEVICE]:  # the app restarts with a fresh limiter (Model.reboot)
                    limiter_reset(lm, cid)
                if Q[Q_RESUME]:  # the device forgets its session: the next login is a full one
                    tok[cid] = -INF
                action, arg = A_REBOOT, hit_d[i]
            elif kind == H_DISCONNECT and cur == ONLINE:
                wake(P, Q, S, cl, rec, cid, now)
                become(P, Q, S, G, cl, hp, pp, rec, cid, CONNECTING, now)
                action = A_EPISODE
            elif kind == H_LOGIN and cur == OFFLINE and rebooting[cid] == 0:
                wake(P, Q, S, cl, rec, cid, now)
                become(P, Q, S, G, cl, hp, pp, rec, cid, CONNECTING, now)
                action = A_EPISODE
        elif t_arr == now:  # a new client from login_rate: connecting at once
            cid = Q[Q_ABASE] + S[S_ARR]
            S[S_ARR] += 1
            st[cid] = CONNECTING
            S[S_N0 + CONNECTING] += 1
            level_add(rec, state_level(CONNECTING), now, 1.0, width, nbins)
            watch(P, G, now, S[S_N0 + ONLINE], S[S_N0 + CONNECTING], S[S_N0 + GAVE_UP])
            action = A_EPISODE
        else:
            kind, a, g = pop(hp, S)
            if kind == K_WORKERS:  # a capacity ramp's step, unless a newer capacity event replaced it
                if g == S[S_RAMP]:
                    set_workers(a, now, P, Q, S, G, cl, hp, pool, draws, PT, rec, pr)
            elif kind == K_TICK:  # the supernode rules' minute
                tick(P, Q, S, G, cl, hp, pp, pool, rec, now)
                push(hp, S, P, now + P2P_TICK, K_TICK, 0, 0)
            elif kind == K_REJECT_DONE:  # a refusal's work is done: it goes back to the client
                r = a
                cid = rc[r]
                G[G_BUSY_TIME] += P[P_REJECT_COST]
                S[S_BUSY] -= 1
                level_add(rec, L_REJECTING, now, -1.0, width, nbins)
                deliver = rg[r] == gen[cid]
                late = now + P[P_RTT] >= rdl[r]  # then the client's own deadline answers it
                free(S, pool, r)
                if deliver and not late and P[P_RTT] > 0:
                    push(hp, S, P, now + P[P_RTT], K_REFUSED, cid, gen[cid])
                    deliver = False
                dispatch(P, Q, S, G, cl, pool, draws, PT, hp, rec, pr, now)
                if deliver and not late:
                    gen[cid] += 1
                    action = A_REFUSAL
                    ra = cra[cid]
            elif kind == K_DONE and rstate[a] == R_DEAD:  # lost to an outage or failover: accounted
                free(S, pool, a)
            elif kind == K_DONE:  # a request leaves its worker
                r = a
                cid = rc[r]
                wasted = now >= rdl[r]
                if Q[Q_CLIMIT]:  # the limit learns from the request's time at the tier (before it leaves)
                    protections.limit_sample(pr[PR_LPRM], pr[PR_LROW], now - rsent[r], S[S_QN] + S[S_SERVING],
                                             wasted)
                G[G_BUSY_TIME] += now - rstart[r]
                if wasted:
                    G[G_WASTED_TIME] += now - rstart[r]
                    count(rec, C_WASTED, now, width, nbins)
                S[S_SERVING] -= 1
                S[S_BUSY] -= 1
                level_add(rec, L_SERVING, now, -1.0, width, nbins)
                deliver = not wasted and rg[r] == gen[cid]  # an orphan's reply reaches nobody
                hung = (rhang[r] & (HANG_PARTITION | HANG_FAULT)) != 0
                resumed = Q[Q_RESUME] != 0 and (rhang[r] & HANG_RESUME) != 0
                free(S, pool, r)
                dispatch(P, Q, S, G, cl, pool, draws, PT, hp, rec, pr, now)
                if deliver:
                    gen[cid] += 1  # its deadline no longer concerns it
                    action = A_ERROR if hung else A_SUCCESS
            else:
                cid = a
                if g != gen[cid]:
                    leave(S, PF_STALE, mark)
                    continue  # stale: the client was interrupted or already answered
                if kind == K_SESSION_END:
                    action = A_OFFLINE
                elif kind == K_WANT:
                    action = A_EPISODE
                elif kind == K_REBOOT_END:
                    rebooting[cid] = 0
                    action = A_EPISODE
                elif kind == K_ATTEMPT:
                    action = A_ATTEMPT
                elif kind == K_RETRY:
                    orbiting[cid] = 0
                    level_add(rec, L_ORBIT, now, -1.0, width, nbins)
                    action = A_ATTEMPT
                elif kind == K_TIMEOUT:
                    gen[cid] += 1
                    action = A_TIMEOUT
                elif kind == K_FAULT:  # an injected fault's error, one round trip after it was sent
                    gen[cid] += 1
                    action = A_ERROR
                else:  # a refusal arrives one round trip after it was sent
                    gen[cid] += 1
                    action = A_REFUSAL
                    ra = cra[cid]
        S[S_EVENTS] += 1
        leave(S, PF_EVENT, mark)
        mark = enter(S)
        while action != A_NONE:  # the client's next steps at this instant (sim.des Model.life)
            if action == A_EPISODE:
                become(P, Q, S, G, cl, hp, pp, rec, cid, CONNECTING, now)
                S[S_EPISODES] += 1
                begun[cid] = now
                natt[cid] = 0
                prev[cid] = math.nan
                if Q[Q_LIMITER]:
                    lm[LM_HELD][cid] = 0.0
                delay = draw(draws, S, D_CONNECT)
                if delay > 0:
                    push(hp, S, P, now + delay, K_ATTEMPT, cid, gen[cid])
                    action = A_NONE
                else:
                    action = A_ATTEMPT
            elif action == A_ATTEMPT:
                if natt[cid] == 0:
                    first[cid] = now
                natt[cid] += 1
                resume = False  # docs/model.md section 3.4: a valid token makes it a resumption
                if Q[Q_RESUME]:
                    resume = now - tok[cid] < P[P_RESUME_WINDOW]
                if Q[Q_LIMITER]:  # docs/model.md section 4.7: the limiter may refuse the call locally
                    u = draw(draws, S, D_U01) if Q[Q_L_DRAWS] else 0.0
                    if limiter_send(Q, lm, cid, now, natt[cid] == 1, u) == SHORT:
                        count(rec, C_SHORT, now, width, nbins)  # not sent: a failure with no Retry-After
                        ra = 0.0
                        action = A_FAIL
                        continue
                count(rec, C_ATTEMPTS, now, width, nbins)
                if resume:
                    count(rec, C_RESUMPTIONS, now, width, nbins)
                sent[cid] = now
                timeout = draw(draws, S, D_TIMEOUT)
                # the checks in the contract's order (LoginServer.submit); -1: no refusal
                ra, costly, hang = -1.0, False, 0
                if now < learned[cid] or S[S_OUTAGE] == OUT_REFUSE:
                    ra = 0.0
                elif S[S_OUTAGE] == OUT_BLACKHOLE:  # no answer: the attempt times out
                    if timeout < INF:
                        push(hp, S, P, now + timeout, K_TIMEOUT, cid, gen[cid])
                    action = A_NONE
                    continue
                elif P[P_ADMIT] < 1.0 and keys[cid] >= P[P_ADMIT]:
                    ra, costly = P[P_ADMIT_RA], True
                elif Q[Q_RL] and not take_token(P, G, now):
                    ra, costly = P[P_RL_RA], True
                else:
                    # a client's key only with partitions: at millions of clients, a cache miss
                    hang = partition_hang(S, PT, draws, keys[cid], now) if S[S_NPART] > 0 else 0
                    if hang < 0:  # fail fast after isolate_at
                        ra = 0.0
                    elif Q[Q_P2P] and home_full(P, Q, S):  # p2p: no supernode can home it
                        ra, costly = busy_retry_after(P, Q, S), True
                    else:
                        if P[P_FAULT] > 0.0 and draw(draws, S, D_U01) < P[P_FAULT]:  # fails whatever the load
                            if Q[Q_FAULT_FAST]:  # an error at once, no worker: one round trip later
                                action = reply_after_rtt(P, S, hp, now, timeout, cid, gen[cid], K_FAULT, A_ERROR)
                                continue
                            hang |= HANG_FAULT  # served, then answered with an error
                        if Q[Q_CLIMIT] and not protections.admits(pr[PR_LROW], S[S_QN] + S[S_SERVING]):
                            ra, costly = busy_retry_after(P, Q, S), True  # beyond the concurrency limit
                        elif not (S[S_BUSY] < Q[Q_WORKERS] and S[S_RJN] == 0) and S[S_QN] >= P[P_QLIMIT]:
                            ra, costly = busy_retry_after(P, Q, S), True
                if ra < 0 or (costly and P[P_REJECT_COST] > 0):  # the request stays at the server
                    S[S_FREE] -= 1
                    r = free_slots[S[S_FREE]]
                    if resume:
                        hang |= HANG_RESUME
                    rc[r], rg[r], rsent[r], rdl[r], rhang[r] = cid, gen[cid], now, now + timeout, hang
                    if ra >= 0:  # refused with work: the reply waits for a worker
                        count(rec, C_REJECTED, now, width, nbins)
                        count_start(rec, SC_REFUSALS, now, width, nbins)
                        cra[cid] = ra
                        rstate[r] = R_REJECT
                        rejects[(S[S_RJH] + S[S_RJN]) % rejects.shape[0]] = r
                        S[S_RJN] += 1
                        dispatch(P, Q, S, G, cl, pool, draws, PT, hp, rec, pr, now)
                    elif S[S_BUSY] < Q[Q_WORKERS] and S[S_RJN] == 0:
                        if Q[Q_CODEL]:  # no wait: it starts the interval's minimum at 0 (never shed)
                            protections.codel_shed(pr[PR_CPRM], pr[PR_CROW], now, 0.0)
                        start(P, Q, S, G, keys, pool, draws, PT, hp, rec, r, now)
                    else:  # the ring is as long as the pool: it never overflows
                        rstate[r] = R_QUEUED
                        queue[(S[S_QH] + S[S_QN]) % queue.shape[0]] = r
                        S[S_QN] += 1
                        level_add(rec, L_QUEUE, now, 1.0, width, nbins)
                    if timeout < INF:
                        push(hp, S, P, now + timeout, K_TIMEOUT, cid, gen[cid])
                    action = A_NONE
                else:  # refused at once: the answer comes back one round trip later
                    count(rec, C_REJECTED, now, width, nbins)
                    count_start(rec, SC_REFUSALS, now, width, nbins)
                    cra[cid] = ra
                    action = reply_after_rtt(P, S, hp, now, timeout, cid, gen[cid], K_REFUSED, A_REFUSAL)
            elif action == A_TIMEOUT:
                count(rec, C_TIMEOUTS, now, width, nbins)
                count_start(rec, SC_TIMEOUTS, sent[cid], width, nbins)
                if Q[Q_LIMITER]:
                    limiter_result(Q, lm, cid, now, TIMED_OUT)
                ra = 0.0
                timed_out = True
                action = A_FAIL
            elif action == A_FAIL:
                if Q[Q_MAX_ATT] != 0 and natt[cid] >= Q[Q_MAX_ATT]:
                    action = A_GIVE_UP
                    continue
                if Q[Q_L_STOPS] and limiter_retry(Q, lm, cid, now, timed_out) < 0:
                    count(rec, C_SUPPRESSED, now, width, nbins)  # denied: the last failure goes to the app
                    action = A_GIVE_UP
                    continue
                u = draw(draws, S, D_UNIFORM) if Q[Q_RANDOM] else 0.0
                p = P[P_BASE] if math.isnan(prev[cid]) else prev[cid]
                d = policy_delay(Q[Q_POLICY], float(natt[cid] - 1), u, p, P[P_BASE], P[P_CAP], P[P_MULT], P[P_TOP])
                prev[cid] = d
                wait = max(d, ra) if Q[Q_HONOR] else d
                if now + wait > first[cid] + P[P_GIVE_UP]:
                    action = A_GIVE_UP
                elif wait > 0:  # on a retry timer: the orbit of the retrial queue
                    orbiting[cid] = 1
                    level_add(rec, L_ORBIT, now, 1.0, width, nbins)
                    push(hp, S, P, now + wait, K_RETRY, cid, gen[cid])
                    action = A_NONE
                else:  # at once, as a new entry at this instant (bounds the work of one event)
                    push(hp, S, P, now, K_ATTEMPT, cid, gen[cid])
                    action = A_NONE
            elif action == A_REFUSAL:  # a refusal reached the client (ra: its Retry-After)
                if Q[Q_LIMITER]:
                    limiter_result(Q, lm, cid, now, FAILED)
                action = A_FAIL
            elif action == A_ERROR:  # a partition hang or an injected fault: an error before the deadline
                count(rec, C_ERRORS, now, width, nbins)
                if Q[Q_LIMITER]:
                    limiter_result(Q, lm, cid, now, FAILED)
                ra = 0.0
                action = A_FAIL
            elif action == A_SUCCESS:
                if Q[Q_LIMITER]:
                    limiter_result(Q, lm, cid, now, OK)
                logins[S[S_LOGINS]] = now - begun[cid]
                S[S_LOGINS] += 1
                count(rec, C_SUCCESSES, now, width, nbins)
                if Q[Q_RESUME]:  # a fresh token (a resumption's own request says it was one)
                    if resumed:
                        count(rec, C_RESUMED, now, width, nbins)
                    tok[cid] = now
                action = A_ONLINE
            elif action == A_ONLINE:
                become(P, Q, S, G, cl, hp, pp, rec, cid, ONLINE, now)
                session = draw(draws, S, D_SESSION)
                if session < INF:
                    push(hp, S, P, now + session, K_SESSION_END, cid, gen[cid])
                action = A_NONE
            elif action == A_OFFLINE:
                become(P, Q, S, G, cl, hp, pp, rec, cid, OFFLINE, now)
                wait = draw(draws, S, D_OFFLINE)
                if wait < INF:
                    push(hp, S, P, now + wait, K_WANT, cid, gen[cid])
                action = A_NONE
            elif action == A_REBOOT:
                if arg > 0:
                    push(hp, S, P, now + arg, K_REBOOT_END, cid, gen[cid])
                    action = A_NONE
                else:
                    rebooting[cid] = 0
                    action = A_EPISODE
            else:  # A_GIVE_UP: the episode ends; the user relaunches later (or never)
                S[S_GAVE_UP] += 1
                become(P, Q, S, G, cl, hp, pp, rec, cid, GAVE_UP, now)
                wait = draw(draws, S, D_RELAUNCH)
                if wait < INF:
                    push(hp, S, P, now + wait, K_WANT, cid, gen[cid])
                action = A_NONE
        leave(S, PF_STEPS, mark)
