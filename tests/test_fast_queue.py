"""The fast engine's event queue (`sim.fast.heap`: near heap, ring of buckets, overflow heap)
takes entries out in the order one heap of them all would, by (time, seq): checked against
Python's `heapq` over interleaved pushes and pops that reach every part of the queue, including
the fallbacks to the near heap when the ring's rows or the overflow heap run out."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from sim.fast.heap import pop, push, settle
from sim.fast.layout import (
    FAR_BUCKETS, FAR_CHUNK, FAR_WIDTH, HP_SEQ, HP_TIME, NEAR_MIN, N_P, N_S, P_FAR_INV, S_FFREE, S_FFREEN, S_FN,
    S_HN, S_ON)


def queue(chunks: int, over: int, near: int = 64 * NEAR_MIN):
    """Empty queue arrays as `Engine` makes them, with `chunks` ring chunks and `over` overflow rows."""
    nxt = np.arange(1, chunks + 1, dtype=np.int64)
    nxt[-1] = -1
    hp = (np.zeros((near, 4)), np.zeros((chunks * FAR_CHUNK, 4)), nxt, np.full(FAR_BUCKETS, -1, dtype=np.int64),
          np.zeros(FAR_BUCKETS, dtype=np.int64), np.zeros(FAR_BUCKETS, dtype=np.int64), np.zeros((over, 4)))
    S = np.zeros(N_S, dtype=np.int64)
    S[S_FFREE], S[S_FFREEN] = 0, chunks
    P = np.zeros(N_P)
    P[P_FAR_INV] = 1.0 / FAR_WIDTH
    return hp, S, P


def drive(chunks: int, over: int, seed: int, steps: int = 60_000):
    """Random pushes (soon, within the ring's reach, beyond it, at the same instants) and pops;
    returns the popped (time, seq, code) of the queue and of heapq, and the most each part held."""
    rng = np.random.default_rng(seed)
    hp, S, P = queue(chunks, over)
    ref: list[tuple[float, int, int]] = []
    got, want = [], []
    most = {"ring": 0, "over": 0, "near": 0}
    seq, now = 0, 0.0
    horizon = FAR_BUCKETS * FAR_WIDTH
    for step in range(steps):
        size = len(ref)
        if size and (rng.random() < 0.45 or size > 3 * NEAR_MIN + 5_000):
            assert settle(hp, S, P)
            t = hp[0][0, HP_TIME]
            s = int(hp[0][0, HP_SEQ])
            kind, a, g = pop(hp, S)
            got.append((t, s, a * 16 + kind))
            want.append(heapq.heappop(ref))
            now = t
        else:
            u = rng.random()
            if u < 0.3:
                t = now + rng.exponential(0.5)
            elif u < 0.75:
                t = now + rng.uniform(0, horizon)
            elif u < 0.9:
                t = now + rng.uniform(horizon, 4 * horizon)
            elif u < 0.95:
                t = now  # at the current instant: after everything already there, by seq
            else:
                t = now + round(rng.uniform(0, 60))  # many entries at equal times
            a, kind = int(rng.integers(1_000_000)), int(rng.integers(12))
            push(hp, S, P, t, kind, a, 0)
            heapq.heappush(ref, (t, seq, a * 16 + kind))
            seq += 1
        most["ring"] = max(most["ring"], int(S[S_FN]))
        most["over"] = max(most["over"], int(S[S_ON]))
        most["near"] = max(most["near"], int(S[S_HN]))
        assert S[S_HN] + S[S_FN] + S[S_ON] == len(ref), step
    while ref:
        assert settle(hp, S, P)
        t, s = hp[0][0, HP_TIME], int(hp[0][0, HP_SEQ])
        kind, a, g = pop(hp, S)
        got.append((t, s, a * 16 + kind))
        want.append(heapq.heappop(ref))
    return got, want, most


@pytest.mark.parametrize("chunks, over", [(100_000, 200_000), (200, 300)],
                         ids=["roomy", "chunks and overflow run out"])
def test_the_queue_pops_in_the_order_of_one_heap(chunks, over):
    got, want, most = drive(chunks, over, seed=chunks)
    assert len(got) == len(want) > 20_000
    assert got == want
    # every part held entries, so every path was taken
    assert most["ring"] >= min(chunks, 1_000) and most["over"] >= min(over, 100) and most["near"] >= NEAR_MIN
    if chunks < NEAR_MIN:  # the chunks and the overflow ran out: the near heap took the rest
        assert most["over"] == over


def test_a_small_queue_stays_in_the_near_heap():
    """Below NEAR_MIN entries in all every push goes to the near heap: small runs work as one heap."""
    hp, S, P = queue(1000, 1000)
    for i in range(NEAR_MIN):
        push(hp, S, P, 10_000.0 * (i % 7), 1, i, 0)
    assert S[S_HN] == NEAR_MIN and S[S_FN] == 0 and S[S_ON] == 0
    push(hp, S, P, 10.0, 1, 0, 0)  # the next one, within the ring's reach, goes to its bucket
    assert S[S_FN] == 1
