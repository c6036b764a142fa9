"""The loop's event heap: a 4-ary min-heap of packed rows (layout: `sim.fast.layout`, "heap row").

Rows are (time, seq, a x 16 + kind, g), ordered by time then by seq (the order entries were
pushed, as SimPy breaks ties); a row is 32 bytes and a node's 4 children are adjacent, so a
step down touches two cache lines, not five arrays. It plays the part of SimPy's event queue.
"""

from __future__ import annotations


from sim.fast.jit import kernel
from sim.fast.layout import HP_CODE, HP_GEN, HP_SEQ, HP_TIME, PF_POP, PF_PUSH, S_HN, S_PF_HEAP, S_SEQ
from sim.fast.profile import PROFILE, enter, leave


@kernel(inline="always")
def push(hp, S, t, kind, a, g):
    """Add an entry acting at `t` after every entry already there for `t`."""
    mark = enter(S)
    i = S[S_HN]
    seq = float(S[S_SEQ])
    S[S_HN] = i + 1
    S[S_SEQ] += 1
    while i > 0:
        p = (i - 1) >> 2
        if hp[p, HP_TIME] < t or (hp[p, HP_TIME] == t and hp[p, HP_SEQ] < seq):
            break
        hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3] = hp[p, 0], hp[p, 1], hp[p, 2], hp[p, 3]
        i = p
    hp[i, HP_TIME], hp[i, HP_SEQ], hp[i, HP_CODE], hp[i, HP_GEN] = t, seq, float(a * 16 + kind), float(g)
    leave(S, PF_PUSH, mark)


@kernel(inline="always")
def top_kind(hp):
    """The kind of the earliest entry (the heap is not empty)."""
    return int(hp[0, HP_CODE]) & 15


@kernel(inline="always")
def pop(hp, S):
    """Removes the earliest entry; returns its (kind, a, g)."""
    mark = enter(S)
    if PROFILE:
        S[S_PF_HEAP] += S[S_HN]
    code, g = int(hp[0, HP_CODE]), int(hp[0, HP_GEN])
    n = S[S_HN] - 1
    S[S_HN] = n
    t, seq, lc, lg = hp[n, 0], hp[n, 1], hp[n, 2], hp[n, 3]
    i = 0
    while True:
        c = 4 * i + 1
        if c >= n:
            break
        best, bt, bs = c, hp[c, HP_TIME], hp[c, HP_SEQ]
        for j in range(c + 1, min(c + 4, n)):
            tj = hp[j, HP_TIME]
            if tj < bt or (tj == bt and hp[j, HP_SEQ] < bs):
                best, bt, bs = j, tj, hp[j, HP_SEQ]
        if t < bt or (t == bt and seq < bs):
            break
        hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3] = bt, bs, hp[best, 2], hp[best, 3]
        i = best
    if n > 0:
        hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3] = t, seq, lc, lg
    leave(S, PF_POP, mark)
    return code & 15, code >> 4, g


@kernel
def push_many(hp, S, times, kind, values, g):
    """One entry per time, in order (a capacity ramp's steps)."""
    for i in range(times.shape[0]):
        push(hp, S, times[i], kind, values[i], g)
