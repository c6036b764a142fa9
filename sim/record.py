"""What a run records: per-bin counters, time-weighted levels and per-episode tallies.

Pure bookkeeping (no SimPy): the engine calls `count`, `Level.add/set` and `Tallies` as things
happen; `sim.metrics` turns the records into the summary. Memory is bounded by the number of
bins and episodes, never by the number of attempts.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["COUNTS", "STATES", "LEVELS", "DERIVED", "COLUMNS", "Window", "Level", "Counter", "StartCounter",
           "ShareWatch", "Tallies", "RunRecords"]

#: per-bin event counts (also kept per steady window)
COUNTS = ("attempts", "successes", "rejected", "timeouts", "errors", "wasted", "suppressed", "short_circuited",
          "resumptions", "resumed")
#: client states; their counts are time-weighted levels
STATES = ("online", "connecting", "offline", "gave_up")
#: time-weighted levels of the server and the population
LEVELS = STATES + ("queue", "serving", "rejecting", "workers", "supernodes", "orbit")
#: levels that are sums of recorded ones: busy workers and requests in the system
DERIVED = {"busy": ("serving", "rejecting"), "in_system": ("queue", "serving")}
#: the columns of timeseries.csv (docs/model.md section 5)
COLUMNS = ("t",) + STATES + COUNTS + ("queue", "busy", "workers", "supernodes")


class Window:
    """A time interval [start, end) over which levels are averaged and counts kept.

    Every window of a run ends where the run ends, which keeps the hot paths short.
    """

    __slots__ = ("start", "end")

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end

    @property
    def length(self) -> float:
        return max(0.0, self.end - self.start)

    def overlap(self, t0: float, t1: float) -> float:
        return max(0.0, min(t1, self.end) - max(t0, self.start))


class _Snapshots:
    """Window sums as differences: a running total, snapshotted when time passes a window's start.

    Every window of a run ends where the run ends, so a window's sum is the final total minus
    the total at its start; the hot paths pay one comparison for all windows together.
    """

    __slots__ = ()

    def _init_windows(self, windows: tuple[Window, ...]) -> None:
        self.windows = windows
        self.snaps: list[float | None] = [0 if w.start <= 0 else None for w in windows]
        self.pending = sorted((w.start, k) for k, w in enumerate(windows) if w.start > 0)
        self.next_start = self.pending[0][0] if self.pending else math.inf

    def _snap(self, t: float, total_at, inclusive: bool = False) -> None:
        """Snapshot every pending window that starts before t (or at t, inclusive); total_at(start) is
        the total then."""
        while self.pending and (self.pending[0][0] <= t if inclusive else self.pending[0][0] < t):
            start, k = self.pending.pop(0)
            self.snaps[k] = total_at(start)
        self.next_start = self.pending[0][0] if self.pending else math.inf


class Level(_Snapshots):
    """A piecewise-constant quantity integrated over time bins and windows.

        >>> lv = Level(width=10.0, nbins=2, windows=(Window(5.0, 20.0),))
        >>> lv.set(0.0, 3); lv.set(5.0, 1); lv.close(20.0); lv.bins, lv.sums
        ([20.0, 10.0], [15.0])
    """

    __slots__ = ("value", "since", "width", "nbins", "bins", "acc", "windows", "snaps", "pending", "next_start")

    def __init__(self, width: float, nbins: int, windows: tuple[Window, ...], value: float = 0.0):
        self.value, self.since, self.width, self.nbins = value, 0.0, width, nbins
        self.bins = [0.0] * nbins
        self.acc = 0.0  # integral from 0 to `since`
        self._init_windows(windows)

    def set(self, t: float, value: float) -> None:
        self.add(t, value - self.value)

    def close(self, t: float) -> None:
        """Integrate up to the end of the run."""
        self.add(t, 0.0)

    def add(self, t: float, delta: float) -> None:
        """The level changes by `delta` at time t (>= the time of the last change)."""
        # hot path: called at every change of every level; integrates the old value first
        t0, v = self.since, self.value
        self.since = t
        self.value = v + delta
        if t <= t0:
            return
        if t > self.next_start:
            acc = self.acc
            self._snap(t, lambda start: acc + v * (start - t0))
        if not v:
            return
        self.acc += v * (t - t0)
        width, bins = self.width, self.bins
        i = int(t0 / width)
        if t <= (i + 1) * width or i >= self.nbins - 1:
            bins[i if i < self.nbins else -1] += v * (t - t0)
        else:
            j = min(int(t / width), self.nbins - 1)
            bins[i] += v * ((i + 1) * width - t0)
            for k in range(i + 1, j):
                bins[k] += v * width
            bins[j] += v * (t - j * width)

    @property
    def sums(self) -> list[float]:
        """The integral over each window so far."""
        return [0.0 if snap is None else self.acc - snap for snap in self.snaps]

    def mean(self, window: int) -> float | None:
        """Time average over window number `window` (None for an empty window)."""
        length = self.windows[window].length
        return self.sums[window] / length if length > 0 else None


class Counter(_Snapshots):
    """Per-bin counts of events, plus counts inside the windows; events come in time order."""

    __slots__ = ("width", "nbins", "bins", "total", "windows", "snaps", "pending", "next_start")

    def __init__(self, width: float, nbins: int, windows: tuple[Window, ...]):
        self.width, self.nbins = width, nbins
        self.bins = [0] * nbins
        self.total = 0
        self._init_windows(windows)

    def add(self, t: float, n: int = 1) -> None:
        if t >= self.next_start:
            total = self.total
            self._snap(t, lambda start: total, inclusive=True)  # an event at a window's start is in it
        self.total += n
        i = int(t / self.width)
        self.bins[i if i < self.nbins else -1] += n

    @property
    def sums(self) -> list[int]:
        return [0 if snap is None else self.total - snap for snap in self.snaps]


class StartCounter:
    """Counts by a time that need not come in order (an attempt's start): bins and windows by loop."""

    __slots__ = ("width", "nbins", "bins", "starts", "sums", "total")

    def __init__(self, width: float, nbins: int, windows: tuple[Window, ...]):
        self.width, self.nbins = width, nbins
        self.bins = [0] * nbins
        self.starts = tuple(w.start for w in windows)
        self.sums = [0] * len(windows)
        self.total = 0

    def add(self, t: float, n: int = 1) -> None:
        self.total += n
        i = int(t / self.width)
        self.bins[i if i < self.nbins else -1] += n
        for k, start in enumerate(self.starts):
            if t >= start:
                self.sums[k] += n


class ShareWatch:
    """Follows the online share to find recovery times and the tail's maximum exactly.

    share = online / (online + connecting + gave_up), 1 when the denominator is 0. Recovery
    for a threshold is measured from `start` to the start of the last stretch during which the
    share stays at or above it until the end (docs/model.md section 5, `recovery_s`).
    """

    __slots__ = ("start", "tail_start", "thresholds", "below", "ever", "last_up", "share", "since", "tail_max",
                 "lowest", "lowest_at")

    def __init__(self, start: float, tail_start: float, thresholds: tuple[float, ...] = (0.90, 0.99)):
        self.start, self.tail_start, self.thresholds = start, tail_start, thresholds
        self.below = [False] * len(thresholds)
        self.ever = [False] * len(thresholds)
        self.last_up = [start] * len(thresholds)
        self.share, self.since, self.tail_max = 1.0, 0.0, -math.inf
        self.lowest, self.lowest_at = 1.0, 0.0  # the lowest share reached, and when first

    def update(self, t: float, online: int, connecting: int, gave_up: int) -> None:
        wanting = online + connecting + gave_up
        share = online / wanting if wanting else 1.0
        if t > self.tail_start:
            self.tail_max = max(self.tail_max, self.share)
        for k, threshold in enumerate(self.thresholds):
            if share < threshold:
                if t >= self.start:
                    self.ever[k] = True
                self.below[k] = True
            elif self.below[k]:
                self.below[k] = False
                if t > self.start:
                    self.ever[k] = True
                    self.last_up[k] = t
        if share < self.lowest:
            self.lowest, self.lowest_at = share, t
        self.share, self.since = share, t

    def close(self, t: float) -> None:
        if t > self.tail_start:
            self.tail_max = max(self.tail_max, self.share)

    def recovery(self) -> list[float | None]:
        """Seconds from `start` until the share stayed above each threshold; None if below at the end."""
        out: list[float | None] = []
        for k in range(len(self.thresholds)):
            if self.below[k]:
                out.append(None)
            else:
                out.append(self.last_up[k] - self.start if self.ever[k] else 0.0)
        return out


class Tallies:
    """Per-episode and per-request tallies that the summary needs (no per-attempt lists)."""

    def __init__(self, steady: Window):
        self.steady = steady
        self._login_times = np.empty(1024)
        self.logins = 0
        self.episodes = 0
        self.gave_up = 0
        self.busy_time = 0.0       # all worker time, reject work included
        self.wasted_time = 0.0     # worker time of requests that ended at or after their deadline
        self.waits_started = 0     # requests that started service in the steady window ...
        self.waits_sum = 0.0       # ... their total queue wait ...
        self.waits_positive = 0    # ... and how many waited at all

    def login(self, login_time: float) -> None:
        if self.logins == len(self._login_times):
            self._login_times = np.concatenate([self._login_times, np.empty(len(self._login_times))])
        self._login_times[self.logins] = login_time
        self.logins += 1

    def service_started(self, t: float, wait: float) -> None:
        if self.steady.start <= t < self.steady.end:
            self.waits_started += 1
            self.waits_sum += wait
            if wait > 0:
                self.waits_positive += 1

    def work(self, duration: float, wasted: bool) -> None:
        self.busy_time += duration
        if wasted:
            self.wasted_time += duration

    @property
    def login_times(self) -> np.ndarray:
        return self._login_times[: self.logins]


class RunRecords:
    """Every record of one run of a scenario lasting `end` seconds: what `sim.metrics` summarises.

    The engines fill it as the model runs; `loadtests.measure` fills it from a load test's logs.
    """

    def __init__(self, s, end: float) -> None:
        self.s, self.end = s, end
        width = s.bin_width
        nbins = max(1, math.ceil(end / width - 1e-9))
        self.steady = Window(min(s.warmup_s, end), end)
        self.tail = Window(0.9 * end, end)
        windows = (self.steady, self.tail)
        self.levels = {name: Level(width, nbins, windows) for name in LEVELS}
        self.counts = {name: Counter(width, nbins, windows) for name in COUNTS}
        self.steady_refusals = StartCounter(width, nbins, (self.steady,))  # by attempt start time
        self.steady_timeouts = StartCounter(width, nbins, (self.steady,))
        self.tallies = Tallies(self.steady)
        first_at = min((e.at for e in s.events if e.at < end), default=0.0)
        self.watch = ShareWatch(first_at, self.tail.start)
        self.last_event_end = max((e.end() for e in s.events if e.at < end), default=0.0)
        self.capacity_at_start: float | None = None
