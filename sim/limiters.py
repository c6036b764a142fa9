"""Retry limiters and circuit breakers on top of a policy's delay (docs/model.md section 4.7).

Pure (numpy and the standard library only), like `sim.policies`: the reference engine, the
compiled engine and the Locust device call the very same functions. A limiter's state is one
row of floats (`Limiter.new_states` makes one row per scope: per device, or per group of devices
sharing it), and three kernels act on a row, written with scalar arithmetic only so that numba
compiles them unchanged for the fast engine (`sim.fast` registers `KERNELS`; this module never
imports numba):

    on_send(code, prm, row, now, first, u)   before a call is sent -> SEND or SHORT (not sent)
    on_retry(code, prm, row, now, timed_out) after a failure, before the retry's delay
                                             -> the quota cost taken (>= 0), or DENIED
    on_result(code, prm, row, now, ok, held) when the call's answer (or its timeout) arrives

The five kinds, each after its source (defaults from there; docs/model.md section 4.7 cites them):

    =========  =====================================  =========================================
    kind       what it stops                          its state row
    =========  =====================================  =========================================
    quota      retries, when the token quota is short  tokens (AWS SDK standard retry mode)
    throttle   retries, while tokens <= max / 2        tokens (gRPC retry throttling)
    budget     retries beyond percent x requests       head, head start, 10 slots (tower, Finagle)
               + a floor, over a ttl
    adaptive   any call, locally, with probability     head, head start, 10 + 10 slots (requests,
               max(0, (requests - K accepts) / (r+1))  accepts: Google SRE client throttling)
    breaker    any call while open; a few probes       mode, open until, probes, window
               when half-open                          (resilience4j, Polly)
    =========  =====================================  =========================================

What the device does when stopped follows the libraries: a denied retry ends the episode with
the last failure (the SDK returns it to the application, which relaunches later, `relaunch`); a
call refused locally (adaptive, or an open breaker) fails at once without being sent, and the
policy's delay follows as after any failure (the retry loop sits above the breaker).

    >>> lim = Limiter(kind="quota", capacity=10.0)    # AWS: each retry costs 5 tokens
    >>> row = lim.new_states(1)[0]
    >>> [float(on_retry(lim.code, lim.prm, row, 0.0, False)) for _ in range(3)], float(row[0])
    ([5.0, 5.0, -1.0], 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

__all__ = ["KINDS", "CODES", "SEND", "SHORT", "DENIED", "SLOTS", "MAX_WINDOW_CALLS", "Limiter", "on_send",
           "on_retry", "on_result", "group_of", "KERNELS", "OK", "FAILED", "TIMED_OUT"]

# kind codes (0: no limiter)
NONE, QUOTA, THROTTLE, BUDGET, ADAPTIVE, BREAKER = range(6)
KINDS = ("quota", "throttle", "budget", "adaptive", "breaker")
CODES = {name: code for code, name in enumerate(KINDS, start=1)}
#: on_send's answers
SEND, SHORT = 0, 1
#: on_retry's answer when the retry is not allowed
DENIED = -1.0
#: on_result's outcomes
OK, FAILED, TIMED_OUT = 0, 1, 2
#: slots of a time window (tower's and our ring: a window of w seconds moves in steps of w / 10)
SLOTS = 10
#: the longest count-based breaker window (its ring is part of every row)
MAX_WINDOW_CALLS = 100_000

# breaker modes
CLOSED, OPEN, HALF_OPEN = 0.0, 1.0, 2.0

# params (`prm`, float64 x 8), by kind
#   quota:    capacity, cost, timeout_cost, increment
#   throttle: max_tokens, token_ratio
#   budget:   slot width (ttl / 10), deposit, withdraw, reserve
#   adaptive: slot width (window / 10), k, min_requests
#   breaker:  threshold, window (calls, or seconds), min_calls, open_for, half_open_calls, count-based (1/0),
#             slot width (time-based: window / 10)
N_PRM = 8
# breaker row: mode, open until, probes let through, probe results, probe failures, half-open since,
# then the window: count-based: filled, failures, head, ring...; time-based: head, head start,
# calls x 10, failures x 10
B_MODE, B_UNTIL, B_PERMITS, B_RESULTS, B_FAILS, B_SINCE, B_W = range(7)


# --- the time ring: SLOTS slots of `width` seconds; row[at] = head, row[at + 1] = head's start ----


def _roll(row, at, rings, now, width):
    """Move the window's head to the slot holding `now`, clearing the slots it passes."""
    start = row[at + 1]
    if now < start + width:
        return
    k = int((now - start) // width)
    head = int(row[at])
    base = at + 2
    if k >= SLOTS:
        for i in range(rings * SLOTS):
            row[base + i] = 0.0
    else:
        for _ in range(k):
            head = (head + 1) % SLOTS
            for r in range(rings):
                row[base + r * SLOTS + head] = 0.0
    row[at] = head
    row[at + 1] = start + k * width


def _ring_sum(row, at, ring):
    total = 0.0
    base = at + 2 + ring * SLOTS
    for i in range(SLOTS):
        total += row[base + i]
    return total


def _ring_add(row, at, ring, value):
    row[at + 2 + ring * SLOTS + int(row[at])] += value


# --- the breaker's window -----------------------------------------------------------------------


def _window_reset(prm, row):
    for i in range(B_W, row.shape[0]):
        row[i] = 0.0


def _window_record(prm, row, now, failed):
    """Adds one outcome; returns (calls, failures) in the window."""
    if prm[5] > 0:  # count-based: the last `window` calls
        n = int(prm[1])
        filled, head = row[B_W], int(row[B_W + 2])
        if filled >= n:
            row[B_W + 1] -= row[B_W + 3 + head]
        else:
            filled += 1.0
            row[B_W] = filled
        row[B_W + 3 + head] = failed
        row[B_W + 1] += failed
        row[B_W + 2] = (head + 1) % n
        return filled, row[B_W + 1]
    _roll(row, B_W, 2, now, prm[6])
    _ring_add(row, B_W, 0, 1.0)
    _ring_add(row, B_W, 1, failed)
    return _ring_sum(row, B_W, 0), _ring_sum(row, B_W, 1)


def _open(prm, row, now):
    row[B_MODE] = OPEN
    row[B_UNTIL] = now + prm[3]
    _window_reset(prm, row)


# --- the three kernels ----------------------------------------------------------------------------


def on_send(code, prm, row, now, first, u):
    """A call is about to be sent (`first`: the episode's first attempt). SEND, or SHORT: refused
    locally, not sent. `u` is a uniform draw in [0, 1) (read only by `adaptive`)."""
    if code == BUDGET:
        if first:  # every request deposits; its retries withdraw (on_retry)
            _roll(row, 0, 1, now, prm[0])
            _ring_add(row, 0, 0, prm[1])
        return SEND
    if code == ADAPTIVE:
        _roll(row, 0, 2, now, prm[0])
        requests, accepts = _ring_sum(row, 0, 0), _ring_sum(row, 0, 1)
        _ring_add(row, 0, 0, 1.0)  # a call refused locally counts as a request too
        if requests >= prm[2]:
            p = (requests - prm[1] * accepts) / (requests + 1.0)
            if u < p:
                return SHORT
        return SEND
    if code == BREAKER:
        mode = row[B_MODE]
        if mode == OPEN:
            if now < row[B_UNTIL]:
                return SHORT
            row[B_MODE] = HALF_OPEN
            row[B_PERMITS] = 0.0
            row[B_RESULTS] = 0.0
            row[B_FAILS] = 0.0
            row[B_SINCE] = now
            mode = HALF_OPEN
        if mode == HALF_OPEN:
            if row[B_PERMITS] < prm[4]:
                row[B_PERMITS] += 1.0
                return SEND
            if now >= row[B_SINCE] + prm[3]:  # its probes were lost (their devices rebooted): open again
                _open(prm, row, now)
            return SHORT
    return SEND


def on_retry(code, prm, row, now, timed_out):
    """A failed call may be retried: the quota cost taken (0 for the others), or DENIED."""
    if code == QUOTA:
        cost = prm[2] if timed_out else prm[1]
        if cost > row[0]:
            return DENIED
        row[0] -= cost
        return cost
    if code == THROTTLE:
        return 0.0 if row[0] > prm[0] / 2.0 else DENIED
    if code == BUDGET:
        _roll(row, 0, 1, now, prm[0])
        if _ring_sum(row, 0, 0) + prm[3] < prm[2]:
            return DENIED
        _ring_add(row, 0, 0, -prm[2])
        return 0.0
    return 0.0


def on_result(code, prm, row, now, outcome, held):
    """A sent call's answer (OK, FAILED) or timeout (TIMED_OUT) reached the device. `held` is the
    quota cost its episode's last retry took (0: the episode made no retry)."""
    ok = outcome == OK
    if code == QUOTA:
        if ok:
            row[0] = min(prm[0], row[0] + (held if held > 0 else prm[3]))
    elif code == THROTTLE:
        row[0] = min(prm[0], row[0] + prm[1]) if ok else max(0.0, row[0] - 1.0)
    elif code == ADAPTIVE:
        if ok:
            _roll(row, 0, 2, now, prm[0])
            _ring_add(row, 0, 1, 1.0)
    elif code == BREAKER:
        failed = 0.0 if ok else 1.0
        mode = row[B_MODE]
        if mode == HALF_OPEN:
            row[B_RESULTS] += 1.0
            row[B_FAILS] += failed
            if row[B_RESULTS] >= prm[4]:
                if row[B_FAILS] >= prm[0] * row[B_RESULTS]:
                    _open(prm, row, now)
                else:
                    row[B_MODE] = CLOSED
                    _window_reset(prm, row)
        elif mode == CLOSED:
            calls, fails = _window_record(prm, row, now, failed)
            if calls >= prm[2] and fails >= prm[0] * calls:
                _open(prm, row, now)


def group_of(cid: int, groups: int, per_device: bool) -> int:
    """The row a device uses: its own, or its group's (devices split by id modulo groups)."""
    return cid if per_device else cid % groups


#: what a compiled engine registers with numba, helpers first
KERNELS = (_roll, _ring_sum, _ring_add, _window_reset, _window_record, _open, on_send, on_retry, on_result,
           group_of)


# --- the configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limiter:
    """One `[client.limiter]` table, checked: ``Limiter(kind="budget", percent=20, scope="shared")``.

    Keys a kind does not use are refused (`ValueError` naming the key). ``groups(devices)`` says
    how many rows the scope needs; ``group_of(cid, groups)`` which row a device uses.
    """

    kind: str
    scope: str = "device"
    groups: int | None = None       # shared: that many groups (devices split by id modulo groups)
    group_size: int | None = None   # shared: groups of this many devices
    # quota (AWS SDK standard mode)
    capacity: float | None = None
    cost: float | None = None
    timeout_cost: float | None = None
    increment: float | None = None
    # throttle (gRPC)
    max_tokens: float | None = None
    token_ratio: float | None = None
    # budget (tower, Finagle)
    ttl: float | None = None
    min_per_sec: float | None = None
    percent: float | None = None
    # adaptive (Google SRE)
    k: float | None = None
    window: float | None = None     # adaptive: seconds; breaker: calls (count) or seconds (time)
    min_requests: float | None = None
    # breaker (resilience4j, Polly)
    window_type: str | None = None  # "count" or "time"
    threshold: float | None = None
    min_calls: float | None = None
    open_for: float | None = None
    half_open_calls: float | None = None

    code: int = field(default=0, init=False, compare=False)
    prm: np.ndarray = field(default=None, init=False, compare=False, repr=False)
    width: int = field(default=1, init=False, compare=False)

    SCOPE_KEYS: ClassVar[tuple[str, ...]] = ("kind", "scope", "groups", "group_size")
    KEYS: ClassVar[dict[str, dict[str, object]]] = {
        "quota": {"capacity": 500.0, "cost": 5.0, "timeout_cost": 10.0, "increment": 1.0},
        "throttle": {"max_tokens": 10.0, "token_ratio": 0.1},
        "budget": {"ttl": 10.0, "min_per_sec": 10.0, "percent": 20.0},
        "adaptive": {"k": 2.0, "window": 120.0, "min_requests": 0.0},
        "breaker": {"window_type": "count", "window": 100.0, "threshold": 0.5, "min_calls": 100.0,
                    "open_for": 60.0, "half_open_calls": 10.0},
    }

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in self.KEYS:
            raise ValueError(f"kind: unknown limiter {kind!r} (one of {', '.join(KINDS)})")
        own = self.KEYS[kind]
        for f in fields(self):
            if f.init and f.name not in self.SCOPE_KEYS and f.name not in own and getattr(self, f.name) is not None:
                raise ValueError(f"{f.name}: a {kind} limiter takes no {f.name!r} (it takes {', '.join(own)})")
        for key, default in own.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, default)
        self._check_scope()
        self._check_values()
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("code", CODES[kind])
        set_("prm", self._params())
        set_("width", self._width())

    # --- checks ---

    def _check_scope(self) -> None:
        if self.scope not in ("device", "shared"):
            raise ValueError(f"scope: must be \"device\" or \"shared\", got {self.scope!r}")
        for key in ("groups", "group_size"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.scope == "device":
                raise ValueError(f"{key}: only a shared limiter has groups (set scope = \"shared\")")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: must be a whole number >= 1, got {value!r}")
        if self.groups is not None and self.group_size is not None:
            raise ValueError("group_size: give groups or group_size, not both")

    def _check_values(self) -> None:
        def number(key: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key}: must be a finite number, got {value!r}")
            if value < low or (low_open and value == low) or value > high:
                bound = f"> {low:g}" if low_open else f">= {low:g}"
                raise ValueError(f"{key}: must be {bound}" + (f" and <= {high:g}" if high < math.inf else "")
                                 + f", got {value:g}")
            object.__setattr__(self, key, float(value))

        kind = self.kind
        if kind == "quota":
            number("capacity", 0.0)
            number("cost", 0.0)
            number("timeout_cost", 0.0)
            number("increment", 0.0)
        elif kind == "throttle":
            number("max_tokens", 0.0, 1000.0, low_open=True)  # gRFC A6: max_tokens in (0, 1000]
            number("token_ratio", 0.0, low_open=True)
        elif kind == "budget":
            number("ttl", 1.0, 60.0)                           # tower: ttl in [1 s, 60 s]
            number("min_per_sec", 0.0)
            number("percent", 0.0, 100000.0)                   # tower: retry_percent (a share) in [0, 1000]
        elif kind == "adaptive":
            number("k", 1.0)
            number("window", 0.0, low_open=True)
            number("min_requests", 0.0)
        else:
            if self.window_type not in ("count", "time"):
                raise ValueError(f"window_type: must be \"count\" or \"time\", got {self.window_type!r}")
            number("threshold", 0.0, 1.0, low_open=True)
            if self.window_type == "count":
                number("window", 1.0, MAX_WINDOW_CALLS)
                if self.window != int(self.window):
                    raise ValueError(f"window: a count-based window is a whole number of calls, got {self.window:g}")
            else:
                number("window", 0.0, low_open=True)
            number("min_calls", 1.0)
            number("open_for", 0.0)
            number("half_open_calls", 1.0)
            if self.half_open_calls != int(self.half_open_calls):
                raise ValueError(f"half_open_calls: must be a whole number, got {self.half_open_calls:g}")

    # --- what the engines read ---

    def _params(self) -> np.ndarray:
        prm = np.zeros(N_PRM)
        kind = self.kind
        if kind == "quota":
            prm[:4] = self.capacity, self.cost, self.timeout_cost, self.increment
        elif kind == "throttle":
            prm[:2] = self.max_tokens, self.token_ratio
        elif kind == "budget":
            # tower's TpsBudget in whole units: a request deposits `deposit`, a retry withdraws
            # `withdraw`, and a reserve of min_per_sec x ttl retries is always there
            share = self.percent / 100.0
            if share == 0:
                deposit, withdraw = 0.0, 1.0
            elif share <= 1.0:
                deposit, withdraw = 1.0, float(int(1.0 / share))
            else:
                deposit, withdraw = 1000.0, float(int(1000.0 / share))
            prm[:4] = self.ttl / SLOTS, deposit, withdraw, self.min_per_sec * self.ttl * withdraw
        elif kind == "adaptive":
            prm[:3] = self.window / SLOTS, self.k, self.min_requests
        else:
            count = self.window_type == "count"
            prm[:7] = (self.threshold, self.window, self.min_calls, self.open_for, self.half_open_calls,
                       1.0 if count else 0.0, 0.0 if count else self.window / SLOTS)
        return prm

    def _width(self) -> int:
        if self.kind in ("quota", "throttle"):
            return 1
        if self.kind == "budget":
            return 2 + SLOTS
        if self.kind == "adaptive":
            return 2 + 2 * SLOTS
        return B_W + (3 + int(self.window) if self.window_type == "count" else 2 + 2 * SLOTS)

    def initial_row(self) -> np.ndarray:
        """A fresh scope's state: a full quota or bucket, empty windows, a closed breaker."""
        row = np.zeros(self.width)
        if self.kind == "quota":
            row[0] = self.capacity
        elif self.kind == "throttle":
            row[0] = self.max_tokens
        return row

    def groups_for(self, devices: int) -> int:
        """Rows of state for `devices` devices: one each (device scope), else the groups."""
        if self.scope == "device":
            return max(1, devices)
        if self.groups is not None:
            return self.groups
        if self.group_size is not None:
            return max(1, -(-devices // self.group_size))
        return 1

    def new_states(self, rows: int) -> np.ndarray:
        """`rows` fresh states, one row each (a C-contiguous float64 array)."""
        return np.tile(self.initial_row(), (max(1, rows), 1))

    @property
    def per_device(self) -> bool:
        return self.scope == "device"

    @property
    def stops_retries(self) -> bool:
        """quota, throttle, budget: they deny retries (the episode ends); the others refuse calls."""
        return self.kind in ("quota", "throttle", "budget")

    @property
    def draws(self) -> bool:
        """adaptive draws one uniform per call."""
        return self.kind == "adaptive"

    def settings(self) -> dict[str, object]:
        """The keys in force for this kind, defaults filled in (for docs and `loginstorm policies`)."""
        out: dict[str, object] = {"kind": self.kind, "scope": self.scope}
        if self.groups is not None:
            out["groups"] = self.groups
        if self.group_size is not None:
            out["group_size"] = self.group_size
        for key in self.KEYS[self.kind]:
            value = getattr(self, key)
            out[key] = int(value) if isinstance(value, float) and value.is_integer() else value
        return out

    def describe(self) -> str:
        """One line: ``budget 20 % + 10/s over 10s, shared by 1 group``."""
        k = self.kind
        if k == "quota":
            text = f"quota {self.capacity:g} tokens, retry costs {self.cost:g} ({self.timeout_cost:g} after a timeout)"
        elif k == "throttle":
            text = f"throttle {self.max_tokens:g} tokens, +{self.token_ratio:g} per success, retries above half"
        elif k == "budget":
            text = f"budget {self.percent:g} % + {self.min_per_sec:g}/s over {self.ttl:g}s"
        elif k == "adaptive":
            text = f"adaptive K={self.k:g} over {self.window:g}s"
        else:
            unit = "calls" if self.window_type == "count" else "s"
            probes = f"{self.half_open_calls:g} probe{'s' if self.half_open_calls != 1 else ''}"
            text = (f"breaker {self.threshold * 100:g} % of {self.window:g} {unit} (min {self.min_calls:g}), "
                    f"open {self.open_for:g}s, {probes}")
        if self.scope == "device":
            return text + ", per device"
        if self.groups is not None:
            return text + f", shared by {self.groups} group{'s' if self.groups != 1 else ''}"
        if self.group_size is not None:
            return text + f", shared by groups of {self.group_size} devices"
        return text + ", shared by all devices"

