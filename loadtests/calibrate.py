"""`loginstorm calibrate`: identify a login endpoint's behaviour from closed-loop steps and open-loop probes.

The simulator models the target as `workers` parallel servers with a mean `service_time`
(docs/model.md section 3), optionally behind a token-bucket rate limit, with a queue that refuses
beyond `queue_limit`. This module measures them in two parts.

Closed-loop steps: clients log in back to back at concurrency c = 1, 2, 4, ... (each step after
a short warm-up, lengthened until it holds MIN_LOGINS logins or lasts MAX_STEP_S), and the
throughput curve is fitted to

    X(c) = min(c / (S + r), W / S)

Below the knee every client finds a free worker, so an attempt takes S plus the round trip r;
above it all W workers are busy and logins complete at W / S whatever c is. The target's
`max_rps` caps the attempts per second of every step; a step the cap holds back ends the steps
and is left out of the fit.

Open-loop probes (`loadtests.probe`): attempts offered at 0.5, 1, 2, ... times the highest
closed-loop throughput, whatever the answers, until refusals start or the latency grows beyond
the capacity; then a burst after an idle pause if a rate limit showed. `loadtests.identify`
reads them: rate-limited, refuses (queue limit) or queues, each [server] key measured or assumed.

    storm = load_storm(StormOptions("quickstart", credentials="users.csv"), plan=False)
    calibration = calibrate(storm, "http://127.0.0.1:8080", progress=print)
    calibration.identification.server    # {'workers': 4, 'service_time': '50.2ms', 'queue_limit': 'inf', ...}

Run time: each step warm-up + 3 s (to 15 s on a slow endpoint), at most log2(max_concurrency) + 1
steps; probes start for PROBE_BUDGET_S (30 s) at most, each `step_seconds` plus the answers
(bounded by `timeout`) and a drain (bounded by 20 s); a burst waits 10 s at most. About 25-30 s
against a small server. Plain threads and `http.client` (`loadtests.httpclient`), no gevent: the
`loginstorm calibrate` process (`loadtests.cli`) imports this module and is not monkey-patched.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from urllib.parse import urlsplit

import numpy as np

from loadtests.flows import FAILED, OK, REJECTED, Flow, Outcome
from loadtests.httpclient import Connection, attempt, round_trip
from loadtests.identify import (Identification, client_limited, identify, rate_limited, sweep_stop,
                                unloaded_latency)
from loadtests.probe import MAX_THREADS, BurstResult, ProbeResult, burst_probe, drain, run_probe
from loadtests.storm import LOOPBACK, Storm, StormError, check_host
from sim.units import format_duration

__all__ = ["StepResult", "Calibration", "CalibrationError", "Connection", "concurrency_levels", "run_step",
           "step_load", "round_trip", "fit", "calibrate", "probe_sweep", "milliseconds", "progress_line",
           "closing_lines", "PROBE_BUDGET_S"]

MIN_GAIN = 0.10          # a step that adds less throughput than this share does not count as a gain
FLAT_STEPS = 2           # ... and this many such steps in a row end the run: the workers are saturated
CAPPED = 0.9             # a step whose attempts reached this share of max_rps was held back by the cap
MIN_LOGINS = 20          # a step is lengthened until it holds this many logins (unbiased means) ...
MAX_STEP_S = 15.0        # ... or lasts this long
PAUSE_S = 0.1            # a client pauses this long (or the Retry-After) after an attempt that failed
PROBE_BUDGET_S = 30.0    # the open-loop probes start no new probe after this many seconds
_GRID = np.exp(np.linspace(-2.0, 2.0, 4001))   # service times tried, relative to the first guess


class CalibrationError(ValueError):
    """The calibration cannot run or cannot fit (the message names no secret)."""


@dataclass(frozen=True)
class StepResult:
    """What `concurrency` clients logging in back to back achieved in a window of `seconds`.

    Counts are of attempts that ended inside the window; latencies are of the successful ones.
    """

    concurrency: int
    seconds: float
    attempts: int
    successes: int
    rejected: int                    # 429 and 503: the server said "not now"
    failed: int                      # an answer that is no login: 401, no token in the body ...
    errors: int                      # no answer (connection error, timeout) or another 5xx
    mean_latency_s: float | None
    p50_latency_s: float | None
    p95_latency_s: float | None
    requests_per_attempt: float      # HTTP requests in one attempt (a form login makes 2)
    failure: str = ""                # the most common failure message (a fixed string)
    capped: bool = False             # the target's max_rps held the attempts back
    client_cpu_share: float = 0.0    # the load generator's own CPU during the step, share of one core

    @property
    def throughput_rps(self) -> float:
        """Successful logins per second."""
        return self.successes / self.seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "throughput_rps": self.throughput_rps}


@dataclass(frozen=True)
class Calibration:
    """The fitted capacity and the steps it was fitted to.

        >>> Calibration(4, 0.0502, 79.7, [], 0.001, True, 79.0).capacity_option()
        'workers=4,service_time=50.2ms'
    """

    workers: int
    service_time_s: float
    capacity_rps: float              # workers / service_time_s
    steps: list[StepResult]
    rtt_s: float                     # the round trip taken off every request
    saturated: bool                  # False: no step had more clients than workers (workers is a lower bound)
    max_throughput_rps: float        # the highest measured
    probes: list[ProbeResult] = field(default_factory=list)      # the open-loop probes, in order
    burst: BurstResult | None = None
    identification: Identification | None = None

    def capacity_option(self) -> str:
        """The `--capacity` value for `loginstorm loadtest`."""
        return f"workers={self.workers},service_time={format_duration(self.service_time_s)}"

    def to_dict(self) -> dict:
        return {"workers": self.workers, "service_time_s": self.service_time_s, "capacity_rps": self.capacity_rps,
                "capacity": self.capacity_option(), "rtt_s": self.rtt_s, "saturated": self.saturated,
                "max_throughput_rps": self.max_throughput_rps, "steps": [s.to_dict() for s in self.steps],
                "probes": [p.to_dict() for p in self.probes], "burst": self.burst.to_dict() if self.burst else None,
                "identification": self.identification.to_dict() if self.identification else None}


# --- the client side ------------------------------------------------------------------------

class _Pacer:
    """Spaces the attempt starts of all clients 1 / max_rps apart; no cap when max_rps is None."""

    def __init__(self, max_rps: float | None):
        self.interval = 1.0 / max_rps if max_rps else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if self.interval:
            with self.lock:
                now = time.perf_counter()
                slot = max(now, self.next)
                self.next = slot + self.interval
            time.sleep(slot - now)


class _Window:
    """The measured window of a step: its end moves on while the step holds too few logins."""

    def __init__(self, start: float, seconds: float):
        self.start, self.end = start, start + seconds
        self.closed = False


def _client(conn: Connection, flow: Flow, pacer: _Pacer, window: _Window,
            records: list[tuple[Outcome, float, float, int]]) -> None:
    """Attempts back to back until the window closes, each appended as (outcome, start, end, requests)."""
    while not window.closed:
        pacer.wait()
        t0 = time.perf_counter()
        if window.closed:
            break
        outcome, sent = attempt(conn, flow)
        t1 = time.perf_counter()
        if t1 >= window.start:
            records.append((outcome, t0, t1, sent))
        if not outcome.ok:  # no hammering: a refused or failed client waits before it tries again
            time.sleep(max(0.0, min(outcome.retry_after or PAUSE_S, window.end - time.perf_counter())))
    conn.close()


def run_step(storm: Storm, host: str, concurrency: int, seconds: float, warmup: float,
             timeout: float, min_logins: int = 0, max_seconds: float | None = None) -> StepResult:
    """`concurrency` clients (devices 0..c-1 of the storm) log in back to back for warmup + seconds;
    the window grows by `seconds` at a time, up to `max_seconds`, until it holds `min_logins`
    logins (a slow endpoint's 3-s step holds too few for an unbiased mean)."""
    target, pacer = storm.target, _Pacer(storm.target.max_rps)
    limit = max(seconds, max_seconds or 0.0)
    window = _Window(time.perf_counter() + warmup, seconds)
    lists: list[list[tuple[Outcome, float, float, int]]] = [[] for _ in range(concurrency)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="calibrate") as pool:
        futures = [pool.submit(_client, Connection(host, timeout, target.verify_tls), storm.flow(device), pacer,
                               window, lists[device]) for device in range(concurrency)]
        while True:
            time.sleep(max(0.0, window.end - time.perf_counter()))
            logins = sum(1 for records in lists for o, _, t1, _ in list(records) if o.ok and t1 <= window.end)
            if (logins == 0 or logins >= min_logins or window.end - window.start + seconds > limit + 1e-9
                    or all(f.done() for f in futures)):
                break
            window.end += seconds
        window.closed = True
        for f in futures:
            f.result()
    records = [(o, t1 - t0, n) for rs in lists for o, t0, t1, n in rs if t1 <= window.end]
    length = window.end - window.start
    cpu = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    capped = target.max_rps is not None and len(records) >= CAPPED * target.max_rps * length
    return _summary(concurrency, length, records, capped, cpu)


def _summary(concurrency: int, seconds: float, records: list[tuple[Outcome, float, int]],
             capped: bool, cpu_share: float = 0.0) -> StepResult:
    kinds = Counter(outcome.kind for outcome, _, _ in records)
    ok = np.array([latency for outcome, latency, _ in records if outcome.ok])
    failures = Counter(outcome.message for outcome, _, _ in records if not outcome.ok).most_common(1)
    mean, p50, p95 = (float(ok.mean()), *map(float, np.percentile(ok, [50, 95]))) if len(ok) else (None,) * 3
    requests = sum(sent for _, _, sent in records) / len(records) if records else 1.0
    return StepResult(concurrency, seconds, len(records), kinds[OK], kinds[REJECTED], kinds[FAILED],
                      len(records) - kinds[OK] - kinds[REJECTED] - kinds[FAILED], mean, p50, p95, requests,
                      failures[0][0] if failures else "", capped, cpu_share)


def concurrency_levels(max_concurrency: int) -> list[int]:
    """1, 2, 4, ... up to `max_concurrency`, which is the last level.

        >>> concurrency_levels(64), concurrency_levels(48)
        ([1, 2, 4, 8, 16, 32, 64], [1, 2, 4, 8, 16, 32, 48])
    """
    levels = [2 ** k for k in range(max_concurrency.bit_length()) if 2 ** k < max_concurrency]
    return [*levels, max_concurrency]


def step_load(storm: Storm, host: str, max_concurrency: int = 64, seconds: float = 3.0, warmup: float = 1.0,
              timeout: float = 10.0, progress: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    """Steps at rising concurrency until the throughput has saturated (two steps without a 10 %
    gain), the endpoint refuses more than it serves, `max_rps` holds a step back, or
    `max_concurrency` is reached. A step with fewer than MIN_LOGINS logins is lengthened (by
    `seconds` at a time, to MAX_STEP_S at most)."""
    steps: list[StepResult] = []
    best, flat = 0.0, 0
    for concurrency in concurrency_levels(max_concurrency):
        step = run_step(storm, host, concurrency, seconds, warmup, timeout, MIN_LOGINS, max(seconds, MAX_STEP_S))
        steps.append(step)
        if progress is not None:
            progress(step)
        if step.successes == 0 or step.capped or step.rejected + step.errors > step.successes:
            break
        flat = flat + 1 if step.throughput_rps <= (1 + MIN_GAIN) * best else 0
        best = max(best, step.throughput_rps)
        if flat >= FLAT_STEPS:
            break
    return steps


# --- the fit ---------------------------------------------------------------------------------

def fit(steps: list[StepResult], rtt_s: float = 0.0) -> Calibration:
    """Least squares of X(c) = min(c / (S + r), W / S) over integer W and a fine grid of S.

    Why not simply S = latency at c = 1 and W = max throughput x S: the first step holds few
    logins (60 in 3 s of 50 ms), so with an exponential service time S alone is off by ~13 %
    and W, a ratio of two noisy figures, by more (on the lab, 4 workers of 50 ms: 61 ms and
    5 workers from the first step, 51 ms and 4 workers from the fit). The fit uses every step: below the knee a step's
    throughput measures S + r, above it W / S, and each step weighs by its number of logins
    (the variance of log X is about CV^2 / logins). r = `rtt_s` per HTTP request of an attempt.
    """
    used = [s for s in steps if s.successes > 0 and not s.capped]
    if not used:
        raise CalibrationError("no step without max_rps holding it back had a successful login: nothing to fit"
                               if any(s.capped for s in steps) else "no login succeeded: nothing to fit")
    c = np.array([s.concurrency for s in used], dtype=float)
    n = np.array([s.successes for s in used], dtype=float)
    log_x = np.log(n / np.array([s.seconds for s in used]))
    r = rtt_s * np.array([s.requests_per_attempt for s in used])
    guess = max(used[0].mean_latency_s - r[0], 0.1 * used[0].mean_latency_s)
    service = guess * _GRID[:, None]                       # (grid, 1) against (steps,)
    best = (math.inf, 0, 0.0)
    for workers in range(1, int(c.max()) + 1):
        error = (n * (log_x - np.log(np.minimum(c / (service + r), workers / service))) ** 2).sum(axis=1)
        i = int(np.argmin(error))
        if error[i] < best[0] * (1 - 1e-9):                # ties (W beyond every step): the smallest W
            best = (float(error[i]), workers, float(service[i, 0]))
    _, workers, s = best
    return Calibration(workers, s, workers / s, steps, rtt_s, saturated=bool(workers < c.max()),
                       max_throughput_rps=max(step.throughput_rps for step in steps))


def calibrate(storm: Storm, host: str | None = None, max_concurrency: int = 64, step_seconds: float = 3.0,
              warmup: float = 1.0, timeout: float = 10.0,
              progress: Callable[[StepResult | ProbeResult | BurstResult], None] | None = None,
              probes: bool = True, probe_budget_s: float = PROBE_BUDGET_S) -> Calibration:
    """Check the host (nothing is sent to a host off `allowed_hosts`), step the load, fit; then probe
    at open-loop rates and identify the server's behaviour (`Calibration.identification`)."""
    try:
        host = check_host(host or storm.target.host, storm.target.allowed_hosts, "--host" if host else "target.host")
    except StormError as exc:
        raise CalibrationError(str(exc)) from None
    rtt = round_trip(host, timeout, storm.target.verify_tls)
    steps = step_load(storm, host, max_concurrency, step_seconds, warmup, timeout, progress)
    if steps[0].successes == 0:
        raise CalibrationError(f"no login succeeded with one client ({steps[0].attempts} attempts, "
                               f"mostly {steps[0].failure or 'none finished'}): check the flow and credentials")
    fitted = fit(steps, rtt)
    found, burst = (probe_sweep(storm, host, fitted, step_seconds, timeout, progress, probe_budget_s)
                    if probes else ([], None))
    loopback = urlsplit(host).hostname in LOOPBACK
    ident = identify(fitted, found, burst, loopback=loopback, max_rps=storm.target.max_rps, cores=os.cpu_count(),
                     closed_loop_refusals=any(s.rejected for s in steps))
    if not probes:
        ident.warnings.insert(0, "--no-probes: no open-loop probe ran; a rate limit and what happens beyond "
                                 "the capacity were not looked for")
    return replace(fitted, probes=found, burst=burst, identification=ident)


def probe_sweep(storm: Storm, host: str, fitted: Calibration, seconds: float, timeout: float,
                progress: Callable[[ProbeResult | BurstResult], None] | None = None,
                budget_s: float = PROBE_BUDGET_S) -> tuple[list[ProbeResult], BurstResult | None]:
    """Open-loop probes at half, once, twice, ... the highest closed-loop throughput, until refusals
    start, the latency grows beyond the capacity, the client saturates, max_rps caps the rate or
    `budget_s` is spent; then, if a rate limit showed, a burst after an idle pause.

    Between probes the server's backlog drains (a cheap GET answers fast again)."""
    unloaded = unloaded_latency(fitted.steps) or fitted.service_time_s
    limiter = any(s.rejected for s in fitted.steps)
    rate, t0, found = max(0.5 * fitted.max_throughput_rps, 1.0), time.perf_counter(), []
    fast = max(5 * fitted.rtt_s, 0.02)
    while time.perf_counter() - t0 < budget_s:
        probe = run_probe(storm, host, rate, seconds, timeout)
        found.append(probe)
        if progress is not None:
            progress(probe)
        drain(host, fast, timeout, storm.target.verify_tls)
        if sweep_stop(probe, fitted.capacity_rps, unloaded, limiter) is not None:
            break
        rate *= 2
    limit = next((p for p in found if rate_limited(p, unloaded) and not client_limited(p)), None)
    if limit is None:
        return found, None
    rate_est = max(limit.steady_accepted_rps, 0.1)
    size = max(1.0, limit.accepted - rate_est * limit.seconds)
    sent = int(min(MAX_THREADS, max(20, 3 * size + 10), storm.target.max_rps or math.inf))
    pause = min(max(2.0 * size / rate_est, 1.5), 10.0)
    burst = burst_probe(storm, host, sent, pause, timeout)
    if progress is not None:
        progress(burst)
    return found, burst


# --- what a person reads ----------------------------------------------------------------------

def milliseconds(seconds: float | None) -> str:
    """`0.0502` -> `50.2ms`; None -> `-`."""
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def progress_line(item: StepResult | ProbeResult | BurstResult) -> str:
    """One step, probe or burst of the run, as it ends."""
    if isinstance(item, ProbeResult):
        p = item
        refused = ", ".join(f"{n} x {status}" for status, n in sorted(p.refused.items())) or "none"
        return (f"probe {p.offered_rps:.1f}/s offered ({p.achieved_rps:.1f}/s on time): {p.served_rps:.1f} "
                f"logins/s served, {p.steady_accepted_rps:.1f}/s accepted in the 2nd half, refused {refused}, "
                f"{p.timeouts} timeouts, "
                f"latency {milliseconds(p.early_latency_s)} -> {milliseconds(p.late_latency_s)}, up to "
                f"{p.max_in_flight} in flight, client CPU {p.client_cpu_share:.0%}")
    if isinstance(item, BurstResult):
        b = item
        return (f"burst after {b.pause_s:g} s idle: {b.accepted} of {b.sent} passed, {b.refused} refused "
                f"(released within {milliseconds(b.spread_s)})")
    step = item
    return (f"c={step.concurrency}: {step.throughput_rps:.1f} logins/s, mean {milliseconds(step.mean_latency_s)}, "
            f"p95 {milliseconds(step.p95_latency_s)}, {step.rejected} refused, {step.failed} failed, "
            f"{step.errors} errors ({step.attempts} attempts in {step.seconds:g} s)")


def closing_lines(c: Calibration, written: str | None = None, loadtest: str | None = None) -> str:
    """The fit, what was identified, the warnings, and where the calibration file is."""
    capped = [s.concurrency for s in c.steps if s.capped]
    bound = ""
    if not c.saturated and capped:
        bound = (f"\nthe target's max_rps held back the step with {capped[0]} clients (left out of the fit): "
                 f"the target has at least {c.workers} workers")
    elif not c.saturated:
        bound = f"\nthroughput never saturated: the target has at least {c.workers} workers; raise --max-concurrency"
    lines = [f"fit: workers = {c.workers}, service_time = {format_duration(c.service_time_s)} (capacity "
             f"{c.capacity_rps:.1f} logins/s; measured at most {c.max_throughput_rps:.1f}; round trip "
             f"{milliseconds(c.rtt_s)} taken off each request){bound}"]
    ident = c.identification
    if ident is not None:
        srv = ident.server
        lines.append(f"behaviour: {ident.behaviour}; workers = {srv['workers']}, service_time = "
                     f"{srv['service_time']}, queue_limit = {srv['queue_limit']}, retry_after = {srv['retry_after']}"
                     + (f"; refused with {', '.join(map(str, ident.refusal_status))}" if ident.refusal_status else ""))
        if "rate_limit" in srv:
            rl = srv["rate_limit"]
            lines.append(f"rate limit: {rl['rate']:g}/s, burst {rl['burst']:g} (a bucket of that many tokens: "
                         f"nginx burst=B nodelay is B + 1), Retry-After {rl['retry_after']}")
        if "overload" in srv:
            lines.append(f"overload: knee {srv['overload']['knee']}, per_request {srv['overload']['per_request']}")
        lines.append(f"client CPU at its busiest: {ident.client_cpu_share:.0%} of a core")
        lines += [f"warning: {w}" for w in ident.warnings]
    if written:
        lines.append(f"wrote {written}")
    lines.append(f"for loginstorm loadtest: {loadtest}" if loadtest else
                 f"for loginstorm loadtest: --capacity {c.capacity_option()}")
    return "\n".join(lines)
