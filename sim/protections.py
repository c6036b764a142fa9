"""Adaptive server protections (docs/model.md section 3.3): a concurrency limit that learns from
latency, CoDel queue timeouts with adaptive LIFO, and a Retry-After computed from the queue.

Pure (numpy and the standard library only), like `sim.limiters`: the reference engine, the
compiled engine (`sim.fast` registers `KERNELS` with numba) and the lab server call the very same
functions. Each protection keeps its state in a small float row and acts through scalar kernels:

    admits(limit_row, in_system)                   may a new request enter? in_system < int(limit)
    limit_sample(prm, limit_row, rtt, inflight, dropped)   a request left its worker: a new limit
    codel_shed(prm, codel_row, now, delay)         a worker takes a request that waited `delay`:
                                                   True when CoDel sheds it instead
    serve_newest(codel_row)                        adaptive LIFO: newest first while overloaded
    queue_retry_after(queued, workers, mean, top)  the Retry-After a refusal carries now

The limit algorithms, with their sources' defaults (initial 20, min 20, max 200 in both):

    ========  =========================================================================
    aimd      Netflix concurrency-limits `AIMDLimit`: after a drop or a sample slower
              than `timeout` (5 s), limit = int(limit x backoff (0.9)); else, when
              inflight x 2 >= limit, limit + 1; clamped to [min, max]
    gradient  Netflix concurrency-limits `Gradient2Limit`: long = exponential average of
              the samples (window 600, the first 10 averaged); gradient = clamp(tolerance
              (1.5) x long / sample, 0.5, 1); limit = limit x (1 - smoothing) + (limit x
              gradient + queue_size (4)) x smoothing (0.2); no change while inflight <
              limit / 2; long x 0.95 when long / sample > 2
    ========  =========================================================================

    >>> prm, row = limit_params("aimd"), limit_row("aimd")
    >>> [int(limit_sample(prm, row, 0.1, 20, False)) for _ in range(3)]
    [21, 22, 23]
    >>> int(limit_sample(prm, row, 6.0, 20, False))     # slower than the 5 s timeout: x 0.9
    20
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LIMIT_KINDS", "LIMIT_DEFAULTS", "LIMIT_KEYS", "AIMD", "GRADIENT", "limit_params", "limit_row",
           "admits", "limit_sample", "codel_params", "codel_row", "codel_shed", "serve_newest",
           "queue_retry_after", "KERNELS"]

AIMD, GRADIENT = 1, 2
LIMIT_KINDS = {"aimd": AIMD, "gradient": GRADIENT}
#: every key's default, by kind (Netflix concurrency-limits AIMDLimit @784c960d, Gradient2Limit @f2528def)
LIMIT_DEFAULTS: dict[str, dict[str, float]] = {
    "aimd": {"initial": 20, "min": 20, "max": 200, "backoff": 0.9, "timeout": 5.0},
    "gradient": {"initial": 20, "min": 20, "max": 200, "smoothing": 0.2, "queue_size": 4, "long_window": 600,
                 "tolerance": 1.5},
}
LIMIT_KEYS = {kind: tuple(d) for kind, d in LIMIT_DEFAULTS.items()}

# limit params (float64 x 10): code, initial, min, max, backoff, timeout, smoothing, queue_size, long_window,
# tolerance
(LP_CODE, LP_INITIAL, LP_MIN, LP_MAX, LP_BACKOFF, LP_TIMEOUT, LP_SMOOTHING, LP_QUEUE, LP_WINDOW,
 LP_TOLERANCE) = range(10)
# limit row: the limit (gradient: the estimated limit, a float; aimd: a whole number), the long
# RTT's value, its warm-up sum and count (ExpAvgMeasurement)
LR_LIMIT, LR_LONG, LR_SUM, LR_COUNT = range(4)
WARMUP = 10  # Gradient2Limit's ExpAvgMeasurement(longWindow, 10): the first 10 samples are averaged

# CoDel params: target, interval; row: overloaded (1.0/0.0), min delay of the interval, the
# interval's end, reset (1.0: the next request starts the interval's minimum)
CP_TARGET, CP_INTERVAL = range(2)
CR_OVER, CR_MIN, CR_END, CR_RESET = range(4)


def limit_params(kind: str, **keys: float) -> np.ndarray:
    """The kind's `prm` row: its defaults, with the keys given."""
    values = {**LIMIT_DEFAULTS[kind], **keys}
    prm = np.zeros(10)
    prm[LP_CODE] = LIMIT_KINDS[kind]
    for name, index in (("initial", LP_INITIAL), ("min", LP_MIN), ("max", LP_MAX), ("backoff", LP_BACKOFF),
                        ("timeout", LP_TIMEOUT), ("smoothing", LP_SMOOTHING), ("queue_size", LP_QUEUE),
                        ("long_window", LP_WINDOW), ("tolerance", LP_TOLERANCE)):
        if name in values:
            prm[index] = values[name]
    return prm


def limit_row(kind: str, **keys: float) -> np.ndarray:
    """A fresh state row: the limit starts at `initial`."""
    row = np.zeros(4)
    row[LR_LIMIT] = float({**LIMIT_DEFAULTS[kind], **keys}["initial"])
    return row


def admits(row: np.ndarray, in_system: int) -> bool:
    """A new request may enter while fewer than int(limit) are queued or in service (Netflix's
    `SimpleLimiter`: rejected when inflight >= limit)."""
    return in_system < int(row[LR_LIMIT])


def limit_sample(prm: np.ndarray, row: np.ndarray, rtt: float, inflight: float, dropped: bool) -> float:
    """One request left its worker after `rtt` (its time at the server: queue wait + service),
    with `inflight` requests at the server counting it; `dropped`: its client had already given
    up on it (a late answer). Returns the new limit."""
    limit = row[LR_LIMIT]
    if prm[LP_CODE] == AIMD:
        if dropped or rtt > prm[LP_TIMEOUT]:
            limit = float(int(limit * prm[LP_BACKOFF]))
        elif inflight * 2 >= limit:
            limit = limit + 1.0
        limit = min(prm[LP_MAX], max(prm[LP_MIN], limit))
        row[LR_LIMIT] = limit
        return limit
    # Gradient2Limit._update (the long RTT is an ExpAvgMeasurement; `dropped` is not used)
    if row[LR_COUNT] < WARMUP:
        row[LR_COUNT] += 1.0
        row[LR_SUM] += rtt
        row[LR_LONG] = row[LR_SUM] / row[LR_COUNT]
    else:
        factor = 2.0 / (prm[LP_WINDOW] + 1.0)
        row[LR_LONG] = row[LR_LONG] * (1.0 - factor) + rtt * factor
    long = row[LR_LONG]
    if rtt > 0 and long / rtt > 2:  # back to normal after a long overload: let the baseline fall faster
        row[LR_LONG] = long * 0.95
    if inflight < limit / 2:  # app-limited: no evidence either way
        return limit
    gradient = 1.0 if rtt <= 0 else max(0.5, min(1.0, prm[LP_TOLERANCE] * long / rtt))
    new = limit * gradient + prm[LP_QUEUE]
    new = limit * (1.0 - prm[LP_SMOOTHING]) + new * prm[LP_SMOOTHING]
    new = max(prm[LP_MIN], min(prm[LP_MAX], new))
    row[LR_LIMIT] = new
    return new


def codel_params(target: float = 0.005, interval: float = 0.100) -> np.ndarray:
    """Facebook's defaults (folly `executors/Codel.cpp`, wangle `concurrent/Codel.cpp`): 5 ms, 100 ms."""
    return np.array([target, interval])


def codel_row() -> np.ndarray:
    """Not overloaded; the first interval ends at t = 0, and the first request resets it."""
    row = np.zeros(4)
    row[CR_RESET] = 1.0
    return row


def codel_shed(prm: np.ndarray, row: np.ndarray, now: float, delay: float) -> bool:
    """folly `Codel::overloaded`: a worker takes a request that waited `delay` in the queue.

    Once an interval has passed, the tier is overloaded for the next one if the smallest wait of
    the last was above `target` (the queue never emptied); the first request of an interval only
    starts its minimum. While overloaded, a request that waited more than 2 x target is shed.
    """
    if now > row[CR_END] and row[CR_RESET] == 0.0:
        row[CR_RESET] = 1.0
        row[CR_END] = now + prm[CP_INTERVAL]
        row[CR_OVER] = 1.0 if row[CR_MIN] > prm[CP_TARGET] else 0.0
    if row[CR_RESET] != 0.0:
        row[CR_RESET] = 0.0
        row[CR_MIN] = delay
        return False
    if delay < row[CR_MIN]:
        row[CR_MIN] = delay
    return row[CR_OVER] != 0.0 and delay > 2.0 * prm[CP_TARGET]


def serve_newest(row: np.ndarray) -> bool:
    """Adaptive LIFO ("Fail at Scale"): the queue is served newest first while CoDel says overloaded."""
    return row[CR_OVER] != 0.0


def queue_retry_after(queued: float, workers: float, mean_service: float, top: float) -> float:
    """The Retry-After of a busy refusal when `server.retry_after_from = "queue"`: the time the workers need
    to drain the queue (queued x mean service / workers), in whole seconds rounded up, as HTTP's
    delta-seconds, between 1 s and `top` (32 s, Kubernetes APF's largest)."""
    drain = queued * mean_service / workers if workers > 0 else math.inf
    if not drain < top:  # no worker, an infinite service time, or a queue longer than `top`
        return top
    seconds = math.ceil(drain)
    return float(min(top, max(1.0, seconds)))


#: the functions `sim.fast` compiles with numba
KERNELS = (admits, limit_sample, codel_shed, serve_newest, queue_retry_after)
