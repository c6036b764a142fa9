"""`loginstorm calibrate`: fit a login endpoint's capacity from a short step-load run.

The simulator models the target as `workers` parallel servers with a mean `service_time`
(MODEL.md section 3). This module measures both: closed-loop clients log in back to back at
concurrency c = 1, 2, 4, ... (each step after a short warm-up), and the throughput curve is
fitted to that model,

    X(c) = min(c / (S + r), W / S)

Below the knee every client finds a free worker, so an attempt takes S plus the round trip r;
above it all W workers are busy and logins complete at W / S whatever c is. The target's
`max_rps` caps the attempts per second of every step; a step the cap holds back ends the run
and is left out of the fit.

    storm = load_storm(StormOptions("quickstart", credentials="users.csv"))
    calibration = calibrate(storm, "http://127.0.0.1:8080", progress=print)
    calibration.capacity_option()       # 'workers=4,service_time=50.2ms' for `loginstorm loadtest`

Plain threads and `http.client` (one persistent connection per client), no gevent: the
`loginstorm calibrate` process (`loadtests.cli`) imports this module and is not monkey-patched.
A rate limit in front of the workers caps the throughput too; the fit then measures the rate
limit, not the workers.
"""

from __future__ import annotations

import http.client
import math
import ssl
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

import numpy as np

from loadtests.flows import FAILED, OK, REJECTED, Flow, Outcome, Reply, Step
from loadtests.storm import Storm, host_allowed
from sim.units import format_duration

__all__ = ["StepResult", "Calibration", "CalibrationError", "Connection", "concurrency_levels", "run_step",
           "step_load", "round_trip", "fit", "calibrate", "milliseconds", "progress_line", "closing_lines"]

MIN_GAIN = 0.10          # a step that adds less throughput than this share does not count as a gain
FLAT_STEPS = 2           # ... and this many such steps in a row end the run: the workers are saturated
CAPPED = 0.9             # a step whose attempts reached this share of max_rps was held back by the cap
PAUSE_S = 0.1            # a client pauses this long (or the Retry-After) after an attempt that failed
RTT_PATH, RTT_PROBES = "/healthz", 20
_GRID = np.exp(np.linspace(-2.0, 2.0, 4001))   # service times tried, relative to the first guess
_NO_ANSWER = Reply(0, {}, "")


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

    def capacity_option(self) -> str:
        """The `--capacity` value for `loginstorm loadtest`."""
        return f"workers={self.workers},service_time={format_duration(self.service_time_s)}"

    def to_dict(self) -> dict:
        return {"workers": self.workers, "service_time_s": self.service_time_s, "capacity_rps": self.capacity_rps,
                "capacity": self.capacity_option(), "rtt_s": self.rtt_s, "saturated": self.saturated,
                "max_throughput_rps": self.max_throughput_rps, "steps": [s.to_dict() for s in self.steps]}


# --- the client side ------------------------------------------------------------------------

class Connection:
    """One client's persistent HTTP(S) connection, carrying the cookies it was given.

    A step that fails on a kept-alive connection (the server may close one while idle) goes
    once more on a new connection, as HTTP clients do; a failure on a new one, or a timeout,
    is the answer: status 0.
    """

    def __init__(self, host: str, timeout: float, verify_tls: bool = True):
        url = urlsplit(host)
        if url.scheme == "https":
            context = ssl.create_default_context()
            if not verify_tls:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            self.http = http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout, context=context)
        else:
            self.http = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        self.cookies: dict[str, str] = {}
        self.fresh = True

    def send(self, step: Step) -> Reply:
        for _ in range(2):
            fresh = self.fresh
            try:
                reply = self._exchange(step)
            except TimeoutError:
                self.close()
                return _NO_ANSWER
            except (OSError, http.client.HTTPException):
                self.close()
                if fresh:
                    return _NO_ANSWER
                continue
            self.fresh = False
            return reply
        return _NO_ANSWER

    def close(self) -> None:
        """Hang up; the next step opens a new connection (http.client reconnects by itself)."""
        self.http.close()
        self.fresh = True

    def _exchange(self, step: Step) -> Reply:
        headers = dict(step.headers)
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        body = step.body.encode("utf-8") if step.body is not None else None
        self.http.request(step.method, step.path, body=body, headers=headers)
        response = self.http.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        for line in response.headers.get_all("Set-Cookie") or ():
            jar = SimpleCookie()
            try:
                jar.load(line)
            except CookieError:
                continue
            self.cookies.update({name: morsel.value for name, morsel in jar.items()})
        return Reply(response.status, response.headers, text)


def _attempt(conn: Connection, flow: Flow) -> tuple[Outcome, int]:
    """One login attempt through the flow's steps: its outcome and how many requests it made."""
    steps, sent = flow(), 0
    try:
        step = next(steps)
        while True:
            reply = conn.send(step)
            sent += 1
            step = steps.send(reply)
    except StopIteration as done:
        return done.value, sent


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


def _client(conn: Connection, flow: Flow, pacer: _Pacer, start: float, end: float
            ) -> list[tuple[Outcome, float, int]]:
    """Attempts back to back until `end`; those that ended in [start, end] are recorded."""
    records = []
    while True:
        pacer.wait()
        t0 = time.perf_counter()
        if t0 >= end:
            break
        outcome, sent = _attempt(conn, flow)
        t1 = time.perf_counter()
        if start <= t1 <= end:
            records.append((outcome, t1 - t0, sent))
        if not outcome.ok:  # no hammering: a refused or failed client waits before it tries again
            time.sleep(max(0.0, min(outcome.retry_after or PAUSE_S, end - time.perf_counter())))
    conn.close()
    return records


def run_step(storm: Storm, host: str, concurrency: int, seconds: float, warmup: float,
             timeout: float) -> StepResult:
    """`concurrency` clients (devices 0..c-1 of the storm) log in back to back for warmup + seconds."""
    target, pacer = storm.target, _Pacer(storm.target.max_rps)
    start = time.perf_counter() + warmup
    with ThreadPoolExecutor(concurrency, thread_name_prefix="calibrate") as pool:
        futures = [pool.submit(_client, Connection(host, timeout, target.verify_tls), storm.flow(device), pacer,
                               start, start + seconds) for device in range(concurrency)]
        records = [record for future in futures for record in future.result()]
    capped = target.max_rps is not None and len(records) >= CAPPED * target.max_rps * seconds
    return _summary(concurrency, seconds, records, capped)


def _summary(concurrency: int, seconds: float, records: list[tuple[Outcome, float, int]],
             capped: bool) -> StepResult:
    kinds = Counter(outcome.kind for outcome, _, _ in records)
    ok = np.array([latency for outcome, latency, _ in records if outcome.ok])
    failures = Counter(outcome.message for outcome, _, _ in records if not outcome.ok).most_common(1)
    mean, p50, p95 = (float(ok.mean()), *map(float, np.percentile(ok, [50, 95]))) if len(ok) else (None,) * 3
    requests = sum(sent for _, _, sent in records) / len(records) if records else 1.0
    return StepResult(concurrency, seconds, len(records), kinds[OK], kinds[REJECTED], kinds[FAILED],
                      len(records) - kinds[OK] - kinds[REJECTED] - kinds[FAILED], mean, p50, p95, requests,
                      failures[0][0] if failures else "", capped)


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
    `max_concurrency` is reached."""
    steps: list[StepResult] = []
    best, flat = 0.0, 0
    for concurrency in concurrency_levels(max_concurrency):
        step = run_step(storm, host, concurrency, seconds, warmup, timeout)
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


def round_trip(host: str, timeout: float = 10.0, verify_tls: bool = True, path: str = RTT_PATH,
               probes: int = RTT_PROBES) -> float:
    """Median time of a cheap GET on a warm connection (any HTTP answer counts): the network round
    trip plus the server's HTTP overhead, which a login pays on top of its service; 0 if none."""
    conn = Connection(host, timeout, verify_tls)
    conn.send(Step("GET", path))   # opens the connection
    times = []
    for _ in range(probes):
        t0 = time.perf_counter()
        if conn.send(Step("GET", path)).status:
            times.append(time.perf_counter() - t0)
    conn.close()
    return statistics.median(times) if times else 0.0


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
              progress: Callable[[StepResult], None] | None = None) -> Calibration:
    """Check the host (nothing is sent to a host off `allowed_hosts`), step the load, fit."""
    host = _checked_host(host or storm.target.host, storm.target.allowed_hosts)
    rtt = round_trip(host, timeout, storm.target.verify_tls)
    steps = step_load(storm, host, max_concurrency, step_seconds, warmup, timeout, progress)
    if steps[0].successes == 0:
        raise CalibrationError(f"no login succeeded with one client ({steps[0].attempts} attempts, "
                               f"mostly {steps[0].failure or 'none finished'}): check the flow and credentials")
    return fit(steps, rtt)


def _checked_host(host: str, allowed: list[str]) -> str:
    """The base URL without a trailing slash; CalibrationError (which never repeats a user:password@)
    unless it is a plain http(s)://host[:port] on `allowed` or loopback."""
    url = urlsplit(host.rstrip("/"))
    try:
        url.port  # noqa: B018 - a port that is no number raises ValueError
    except ValueError:
        url = urlsplit("")
    if (url.scheme not in ("http", "https") or not url.hostname or "@" in url.netloc
            or url.path or url.query or url.fragment):
        raise CalibrationError("--host must be a URL like http://host:port, with no path and no user:password@")
    if not host_allowed(url.geturl(), allowed):
        raise CalibrationError(f"{url.hostname} is not on the target's allowed_hosts (loopback always is); "
                               "nothing was sent")
    return url.geturl()


# --- what a person reads ----------------------------------------------------------------------

def milliseconds(seconds: float | None) -> str:
    """`0.0502` -> `50.2ms`; None -> `-`."""
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def progress_line(step: StepResult) -> str:
    """One step of the run, as it ends."""
    return (f"c={step.concurrency}: {step.throughput_rps:.1f} logins/s, mean {milliseconds(step.mean_latency_s)}, "
            f"p95 {milliseconds(step.p95_latency_s)}, {step.rejected} refused, {step.failed} failed, "
            f"{step.errors} errors ({step.attempts} attempts in {step.seconds:g} s)")


def closing_lines(c: Calibration) -> str:
    """The fit, and the --capacity value for `loginstorm loadtest`."""
    capped = [s.concurrency for s in c.steps if s.capped]
    bound = ""
    if not c.saturated and capped:
        bound = (f"\nthe target's max_rps held back the step with {capped[0]} clients (left out of the fit): "
                 f"the target has at least {c.workers} workers")
    elif not c.saturated:
        bound = f"\nthroughput never saturated: the target has at least {c.workers} workers; raise --max-concurrency"
    return (f"workers = {c.workers}, service_time = {format_duration(c.service_time_s)} (capacity "
            f"{c.capacity_rps:.1f} logins/s; measured at most {c.max_throughput_rps:.1f}; round trip "
            f"{milliseconds(c.rtt_s)} taken off each request){bound}\n"
            f"for loginstorm loadtest: --capacity {c.capacity_option()}")
