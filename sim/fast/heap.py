"""The loop's event queue: a small 4-ary min-heap of the entries due soon, in front of a ring of
time buckets for the later ones, and a heap for those beyond the ring (layout: `sim.fast.layout`,
"heap row" and `hp`).

Rows are (time, seq, a x 16 + kind, g), ordered by time then by seq (the order entries were
pushed, as SimPy breaks ties). A heap row is 32 bytes and a node's 4 children are adjacent, so a
step down touches two cache lines. The order of the entries taken out is that of one heap
holding them all: the first entry of the near heap is the earliest of all once `settle` has
poured into it every bucket before it.

Why the buckets: with millions of clients waiting (every one on a retry timer), one heap of
them all costs a pop ~10 levels of cache misses (the largest part of the fast engine's profile,
benchmarks/README.md). An entry due later than the current bucket costs instead one append to
its bucket's list (a bucket is FAR_WIDTH seconds, the ring spans FAR_BUCKETS of them) and, when
its bucket comes, one push into a near heap of a few entries. A bucket's rows are chunks of
FAR_CHUNK adjacent rows, so pouring it reads memory in order. While the queue holds fewer than
NEAR_MIN entries every push goes to the near heap: a small run works as with one heap.

Where an entry may be: the near heap may hold any entry (a push goes there when the ring or the
overflow heap is full), a bucket holds only entries of its own span (bucket number
int(t / FAR_WIDTH) at or after `S_FCUR`, within the ring), the overflow heap entries beyond the
ring; `settle` pours bucket `S_FCUR` and moves on while the near heap's first entry is not
before it, and moves overflow entries into the ring as it comes within reach.
"""

from __future__ import annotations

from sim.fast.jit import kernel
from sim.fast.layout import (
    FAR_BUCKETS, FAR_CHUNK, HP_CODE, HP_GEN, HP_SEQ, HP_TIME, HQ_COUNT, HQ_HEAD, HQ_NEAR, HQ_NEXT, HQ_OVER, HQ_ROWS,
    HQ_TAIL, NEAR_MIN, PF_POP, PF_PUSH, P_FAR_INV, S_FCUR, S_FFREE, S_FFREEN, S_FN, S_HN, S_ON, S_PF_HEAP, S_SEQ)
from sim.fast.profile import PROFILE, enter, leave


@kernel(inline="always")
def sift_in(H, n, t, seq, code, g):
    """Add row (t, seq, code, g) to heap H of n entries (the caller counts it)."""
    i = n
    while i > 0:
        p = (i - 1) >> 2
        if H[p, HP_TIME] < t or (H[p, HP_TIME] == t and H[p, HP_SEQ] < seq):
            break
        H[i, 0], H[i, 1], H[i, 2], H[i, 3] = H[p, 0], H[p, 1], H[p, 2], H[p, 3]
        i = p
    H[i, HP_TIME], H[i, HP_SEQ], H[i, HP_CODE], H[i, HP_GEN] = t, seq, code, g


@kernel(inline="always")
def sift_out(H, n):
    """Remove the first row of heap H of n entries (the caller counts it and read it first)."""
    n -= 1
    t, seq, lc, lg = H[n, 0], H[n, 1], H[n, 2], H[n, 3]
    i = 0
    while True:
        c = 4 * i + 1
        if c >= n:
            break
        best, bt, bs = c, H[c, HP_TIME], H[c, HP_SEQ]
        for j in range(c + 1, min(c + 4, n)):
            tj = H[j, HP_TIME]
            if tj < bt or (tj == bt and H[j, HP_SEQ] < bs):
                best, bt, bs = j, tj, H[j, HP_SEQ]
        if t < bt or (t == bt and seq < bs):
            break
        H[i, 0], H[i, 1], H[i, 2], H[i, 3] = bt, bs, H[best, 2], H[best, 3]
        i = best
    if n > 0:
        H[i, 0], H[i, 1], H[i, 2], H[i, 3] = t, seq, lc, lg


@kernel(inline="always")
def to_bucket(hp, S, b, t, seq, code, g):
    """Append a row to bucket b of the ring; False when it needs a chunk and none is free."""
    nxt, cnt, tail = hp[HQ_NEXT], hp[HQ_COUNT], hp[HQ_TAIL]
    n = cnt[b]
    k = n & (FAR_CHUNK - 1)
    if k == 0:  # the bucket's chunks are full (or it has none): take a free one
        ch = S[S_FFREE]
        if ch < 0:
            return False
        S[S_FFREE] = nxt[ch]
        S[S_FFREEN] -= 1
        nxt[ch] = -1
        if n == 0:
            hp[HQ_HEAD][b] = ch
        else:
            nxt[tail[b]] = ch
        tail[b] = ch
    F = hp[HQ_ROWS]
    r = tail[b] * FAR_CHUNK + k
    F[r, HP_TIME], F[r, HP_SEQ], F[r, HP_CODE], F[r, HP_GEN] = t, seq, code, g
    cnt[b] = n + 1
    S[S_FN] += 1
    return True


@kernel(inline="always")
def place(hp, S, P, t, seq, code, g):
    """An entry goes to the near heap, its bucket, or the overflow heap (see the module's text)."""
    x = t * P[P_FAR_INV]
    cur = S[S_FCUR]
    if S[S_HN] + S[S_FN] + S[S_ON] >= NEAR_MIN and x >= cur:
        if x < cur + FAR_BUCKETS:
            if to_bucket(hp, S, int(x) & (FAR_BUCKETS - 1), t, seq, code, g):
                return
        elif S[S_ON] < hp[HQ_OVER].shape[0]:
            sift_in(hp[HQ_OVER], S[S_ON], t, seq, code, g)
            S[S_ON] += 1
            return
    sift_in(hp[HQ_NEAR], S[S_HN], t, seq, code, g)
    S[S_HN] += 1


@kernel(inline="always")
def push(hp, S, P, t, kind, a, g):
    """Add an entry acting at `t` after every entry already there for `t`."""
    mark = enter(S)
    seq = float(S[S_SEQ])
    S[S_SEQ] += 1
    place(hp, S, P, t, seq, float(a * 16 + kind), float(g))
    leave(S, PF_PUSH, mark)


@kernel
def settle(hp, S, P):
    """Pour buckets into the near heap until its first entry is the earliest of all; False when the
    near heap has no room for the next bucket (the loop returns GROW_HEAP)."""
    H, F, nxt, head, cnt, over = hp[HQ_NEAR], hp[HQ_ROWS], hp[HQ_NEXT], hp[HQ_HEAD], hp[HQ_COUNT], hp[HQ_OVER]
    inv = P[P_FAR_INV]
    while S[S_FN] + S[S_ON] > 0:
        cur = S[S_FCUR]
        if S[S_HN] > 0 and H[0, HP_TIME] * inv < cur:
            break  # no bucket left holds anything earlier
        b = cur & (FAR_BUCKETS - 1)
        c = cnt[b]
        if c > 0:
            if S[S_HN] + c + 16 > H.shape[0]:
                return False
            ch, left = head[b], c
            while ch >= 0:  # chunk after chunk: rows read in order, a cache miss per chunk at most
                first = ch * FAR_CHUNK
                for r in range(first, first + min(FAR_CHUNK, left)):
                    sift_in(H, S[S_HN], F[r, 0], F[r, 1], F[r, 2], F[r, 3])
                    S[S_HN] += 1
                left -= FAR_CHUNK
                following = nxt[ch]
                nxt[ch] = S[S_FFREE]
                S[S_FFREE] = ch
                S[S_FFREEN] += 1
                ch = following
            head[b] = -1
            cnt[b] = 0
            S[S_FN] -= c
        S[S_FCUR] = cur + 1
        while S[S_ON] > 0 and over[0, HP_TIME] * inv < cur + 1 + FAR_BUCKETS:  # within the ring's reach now
            t, seq, code, g = over[0, 0], over[0, 1], over[0, 2], over[0, 3]
            sift_out(over, S[S_ON])
            S[S_ON] -= 1
            if not to_bucket(hp, S, int(t * inv) & (FAR_BUCKETS - 1), t, seq, code, g):
                if S[S_HN] + 16 >= H.shape[0]:  # put it back; the loop grows the arrays first
                    sift_in(over, S[S_ON], t, seq, code, g)
                    S[S_ON] += 1
                    return False
                sift_in(H, S[S_HN], t, seq, code, g)
                S[S_HN] += 1
    return True


@kernel(inline="always")
def top_kind(hp):
    """The kind of the earliest entry (settled, and the near heap is not empty)."""
    return int(hp[HQ_NEAR][0, HP_CODE]) & 15


@kernel(inline="always")
def pop(hp, S):
    """Removes the earliest entry (settled); returns its (kind, a, g)."""
    mark = enter(S)
    if PROFILE:
        S[S_PF_HEAP] += S[S_HN] + S[S_FN] + S[S_ON]
    H = hp[HQ_NEAR]
    code, g = int(H[0, HP_CODE]), int(H[0, HP_GEN])
    sift_out(H, S[S_HN])
    S[S_HN] -= 1
    leave(S, PF_POP, mark)
    return code & 15, code >> 4, g


@kernel
def push_many(hp, S, P, times, kind, values, g):
    """One entry per time, in order (a capacity ramp's steps)."""
    for i in range(times.shape[0]):
        push(hp, S, P, times[i], kind, values[i], g)


@kernel
def push_codes(hp, S, P, times, codes):
    """One entry per time with its code (a x 16 + kind) and generation 0, in order (the run's start)."""
    for i in range(times.shape[0]):
        seq = float(S[S_SEQ])
        S[S_SEQ] += 1
        place(hp, S, P, times[i], seq, float(codes[i]), 0.0)
