"""`sim.record` over arrays: levels, counters, start counters and the share watch, compiled.

The arrays are the `rec` tuple (`sim.fast.layout`); `Engine` copies `RunRecords` into them at the
start and back at the end, so the summaries are `sim.metrics`' own.
"""

from __future__ import annotations

import math

from sim.fast.jit import kernel
from sim.fast.layout import (G_BELOW0, G_EVER0, G_LAST_UP0, G_LOWEST, G_LOWEST_AT, G_SHARE, G_SINCE, G_TAIL_MAX,
                             P_TAIL0, P_THR0, P_W_START, PF_RECORDS, REC_CB, REC_CS, REC_CT, REC_LB, REC_LS, REC_LV,
                             REC_S, REC_SCB, REC_SCS, REC_SCT, REC_WS)
from sim.fast.profile import enter, leave


@kernel(inline="always")
def level_add(rec, k, t, delta, width, nbins):
    """`sim.record.Level.add` over arrays: integrate the old value into bins and windows."""
    mark = enter(rec[REC_S])
    LV, LB, LS, WS = rec[REC_LV], rec[REC_LB], rec[REC_LS], rec[REC_WS]
    t0 = LV[k, 1]
    v = LV[k, 0]
    LV[k, 1] = t
    LV[k, 0] = v + delta
    if t <= t0:
        leave(rec[REC_S], PF_RECORDS, mark)
        return
    for w in range(WS.shape[0]):
        if math.isnan(LS[k, w]) and WS[w] < t:
            LS[k, w] = LV[k, 2] + v * (WS[w] - t0)
    if v == 0:
        leave(rec[REC_S], PF_RECORDS, mark)
        return
    LV[k, 2] += v * (t - t0)
    i = int(t0 / width)
    if t <= (i + 1) * width or i >= nbins - 1:
        LB[k, i if i < nbins else nbins - 1] += v * (t - t0)
    else:
        j = min(int(t / width), nbins - 1)
        LB[k, i] += v * ((i + 1) * width - t0)
        for b in range(i + 1, j):
            LB[k, b] += v * width
        LB[k, j] += v * (t - j * width)
    leave(rec[REC_S], PF_RECORDS, mark)


@kernel(inline="always")
def count(rec, k, t, width, nbins):
    """`sim.record.Counter.add(t)`: an event at a window's start is in it."""
    mark = enter(rec[REC_S])
    WS, CT, CB, CS = rec[REC_WS], rec[REC_CT], rec[REC_CB], rec[REC_CS]
    for w in range(WS.shape[0]):
        if CS[k, w] < 0 and WS[w] <= t:
            CS[k, w] = CT[k]
    CT[k] += 1
    i = int(t / width)
    CB[k, i if i < nbins else nbins - 1] += 1
    leave(rec[REC_S], PF_RECORDS, mark)


@kernel(inline="always")
def count_start(rec, k, t, width, nbins):
    """`sim.record.StartCounter.add(t)` with the steady window only."""
    mark = enter(rec[REC_S])
    WS, SCB, SCT, SCS = rec[REC_WS], rec[REC_SCB], rec[REC_SCT], rec[REC_SCS]
    SCT[k] += 1
    i = int(t / width)
    SCB[k, i if i < nbins else nbins - 1] += 1
    if t >= WS[0]:
        SCS[k] += 1
    leave(rec[REC_S], PF_RECORDS, mark)


@kernel(inline="always")
def watch(P, G, t, online, connecting, gave_up):
    """`sim.record.ShareWatch.update` over the float state."""
    wanting = online + connecting + gave_up
    share = online / wanting if wanting else 1.0
    if t > P[P_TAIL0]:
        G[G_TAIL_MAX] = max(G[G_TAIL_MAX], G[G_SHARE])
    for k in range(2):
        if share < P[P_THR0 + k]:
            if t >= P[P_W_START]:
                G[G_EVER0 + k] = 1.0
            G[G_BELOW0 + k] = 1.0
        elif G[G_BELOW0 + k] != 0.0:
            G[G_BELOW0 + k] = 0.0
            if t > P[P_W_START]:
                G[G_EVER0 + k] = 1.0
                G[G_LAST_UP0 + k] = t
    if share < G[G_LOWEST]:
        G[G_LOWEST] = share
        G[G_LOWEST_AT] = t
    G[G_SHARE] = share
    G[G_SINCE] = t
