"""The records against a brute-force computation: bins and window sums of levels and counters."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.record import Counter, Level, ShareWatch, StartCounter, Window

END, WIDTH = 100.0, 7.0
NBINS = int(np.ceil(END / WIDTH))

changes = st.lists(st.tuples(st.floats(0, END), st.integers(-3, 3)), max_size=40)
starts = st.lists(st.floats(0, END), min_size=1, max_size=3)


def _integral(path: list[tuple[float, float]], a: float, b: float) -> float:
    """Integral over [a, b] of the step function that takes value v from time t on."""
    total = 0.0
    for (t, v), (t_next, _) in zip(path, path[1:] + [(END, 0.0)]):
        lo, hi = max(a, t), min(b, t_next)
        if hi > lo:
            total += v * (hi - lo)
    return total


@settings(max_examples=200, deadline=None)
@given(changes, starts)
def test_level_bins_and_windows_equal_direct_integration(raw, window_starts):
    events = sorted(raw)
    windows = tuple(Window(s, END) for s in window_starts)
    level = Level(WIDTH, NBINS, windows)
    value, path = 0.0, [(0.0, 0.0)]
    for t, delta in events:
        level.add(t, delta)
        value += delta
        path.append((t, value))
    level.close(END)
    for i in range(NBINS):
        expected = _integral(path, i * WIDTH, min(END, (i + 1) * WIDTH))
        assert abs(level.bins[i] - expected) < 1e-9 * (1 + abs(expected))
    for k, w in enumerate(windows):
        expected = _integral(path, w.start, END)
        assert abs(level.sums[k] - expected) < 1e-9 * (1 + abs(expected))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, END, exclude_max=True), max_size=60), starts)
def test_counters_count_by_bin_and_window(times, window_starts):
    windows = tuple(Window(s, END) for s in window_starts)
    ordered, unordered = Counter(WIDTH, NBINS, windows), StartCounter(WIDTH, NBINS, windows)
    for t in sorted(times):
        ordered.add(t)
    for t in times:
        unordered.add(t)
    for c in (ordered, unordered):
        assert c.total == len(times)
        assert c.bins == [sum(1 for t in times if int(t / WIDTH) == i) for i in range(NBINS)]
        assert list(c.sums) == [sum(1 for t in times if t >= w.start) for w in windows]


def test_share_watch_recovery_follows_the_last_stretch_above_threshold():
    w = ShareWatch(start=10.0, tail_start=90.0)
    w.update(0.0, 100, 0, 0)
    w.update(12.0, 50, 50, 0)   # falls below both thresholds
    w.update(30.0, 95, 5, 0)    # back above 90 %
    w.update(40.0, 99, 1, 0)    # back above 99 %
    w.update(50.0, 93, 7, 0)    # below 99 % again, still above 90 %
    w.update(60.0, 100, 0, 0)
    w.close(100.0)
    assert w.recovery() == [30.0 - 10.0, 60.0 - 10.0]
    assert w.tail_max == 1.0
    below = ShareWatch(start=0.0, tail_start=90.0)
    below.update(5.0, 1, 9, 0)
    below.close(100.0)
    assert below.recovery() == [None, None] and below.tail_max == 0.1
