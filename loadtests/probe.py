"""Open-loop probes for `loginstorm calibrate`: attempts started at a controlled offered rate.

A closed-loop client waits for each answer (and for the Retry-After of a refusal) before it
tries again, so it can only measure what the server lets it do; it cannot see a rate limit's
onset. Here the attempt starts are spaced 1 / rate apart whatever the answers, on enough
threads (each with its own persistent connection, created once per probe) that the offered
rate is met while the server queues; nobody sleeps for a Retry-After.

    result = run_probe(storm, "http://127.0.0.1:8080", rate=40.0, seconds=3.0, timeout=10.0)
    result.accepted_rps, result.refused, result.achieved_rps, result.client_cpu_share

`burst_probe` sends N attempts at once (after an idle pause, so that a token bucket is full)
and counts how many pass; `drain` waits until the server answers a cheap GET fast again (a
worker-bound server keeps working through a backlog after the probe).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from loadtests.httpclient import RTT_PATH, Connection, attempt
from loadtests.flows import OK, REJECTED, Step
from loadtests.storm import Storm

__all__ = ["Attempt", "ProbeResult", "BurstResult", "run_probe", "burst_probe", "drain", "summarize",
           "MAX_THREADS"]

MAX_THREADS = 400          # the most attempts a probe keeps in flight (threads, each its own connection)


@dataclass(frozen=True)
class Attempt:
    """One attempt of a probe: times relative to the probe's start, in seconds."""

    slot: float                  # when it was due
    start: float                 # when it went out
    end: float
    kind: str                    # flows.OK, REJECTED, FAILED, ERROR
    status: int                  # 0: no answer
    retry_after: float | None
    timed_out: bool
    in_flight: int               # attempts in flight when it went out (itself included)


@dataclass(frozen=True)
class ProbeResult:
    """What an offered rate got. Rates are per second of the probe's `seconds`; `steady_*` are
    of the attempts that started in its second half (a token bucket is empty by then)."""

    offered_rps: float           # the target rate
    seconds: float
    attempts: int
    achieved_rps: float          # attempts started on time (within 50 ms of their slot) per second
    accepted: int                # answered with a login, whenever (a queueing server answers late)
    served_rps: float            # logins answered within the probe's seconds, per second
    refused: dict[int, int]      # status -> count (429, 503)
    retry_after_s: list[float]   # the distinct Retry-After values seen on refusals
    failed: int
    errors: int
    timeouts: int
    steady_accepted_rps: float
    steady_refused_share: float
    first_refusal_s: float | None    # start time of the first refused attempt
    in_flight_at_first_refusal: int | None
    max_in_flight: int
    latency_p50_s: float | None      # of accepted attempts
    early_latency_s: float | None    # median of accepted attempts started in the first third
    late_latency_s: float | None     # ... and in the last third
    refused_latency_s: float | None  # median time of a refused answer
    client_cpu_share: float          # the load generator's CPU during the probe, share of one core
    offered_capped: bool = False     # max_rps lowered the offered rate

    @property
    def accepted_rps(self) -> float:
        return self.accepted / self.seconds

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def client_saturated(self) -> bool:
        """The load generator, not the server, was the limit of this probe."""
        return self.client_cpu_share >= 0.8 or self.achieved_rps < 0.9 * self.offered_rps

    def to_dict(self) -> dict:
        return {**asdict(self), "refused": {str(k): v for k, v in self.refused.items()},
                "accepted_rps": self.accepted_rps, "client_saturated": self.client_saturated}


@dataclass(frozen=True)
class BurstResult:
    """`sent` attempts released at once after `pause_s` idle: how many passed."""

    sent: int
    accepted: int
    refused: int
    spread_s: float              # from the first start to the last
    pause_s: float
    statuses: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "statuses": {str(k): v for k, v in self.statuses.items()}}


class _Clock:
    """Hands out slots k / rate and counts the attempts in flight."""

    def __init__(self, rate: float, total: int, t0: float):
        self.rate, self.total, self.t0 = rate, total, t0
        self.next = 0
        self.in_flight = 0
        self.lock = threading.Lock()

    def take(self) -> float | None:
        with self.lock:
            if self.next >= self.total:
                return None
            k, self.next = self.next, self.next + 1
        return self.t0 + k / self.rate

    def enter(self) -> int:
        with self.lock:
            self.in_flight += 1
            return self.in_flight

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


def _one(conn: Connection, storm: Storm, device: int, clock: _Clock, slot: float) -> Attempt:
    now = time.perf_counter()
    if slot > now:
        time.sleep(slot - now)
    in_flight = clock.enter()
    start = time.perf_counter()
    conn.timed_out = False
    try:
        outcome, _ = attempt(conn, storm.flow(device))
    finally:
        clock.leave()
    end = time.perf_counter()
    return Attempt(slot - clock.t0, start - clock.t0, end - clock.t0, outcome.kind, outcome.status,
                   outcome.retry_after, conn.timed_out, in_flight)


def _thread(storm: Storm, host: str, timeout: float, device: int, clock: _Clock, out: list[Attempt]) -> None:
    conn = Connection(host, timeout, storm.target.verify_tls)
    try:
        while (slot := clock.take()) is not None:
            out.append(_one(conn, storm, device, clock, slot))
    finally:
        conn.close()


def run_probe(storm: Storm, host: str, rate: float, seconds: float, timeout: float) -> ProbeResult:
    """Offer `rate` attempts/s for `seconds` (open loop); waits for the answers (at most `timeout`)."""
    max_rps = storm.target.max_rps
    offered = min(rate, max_rps) if max_rps else rate
    total = max(1, round(offered * seconds))
    threads = min(MAX_THREADS, total, math.ceil(offered * min(timeout, seconds + 1.0)) + 4)
    records: list[list[Attempt]] = [[] for _ in range(threads)]
    clock = _Clock(offered, total, time.perf_counter() + 0.05 + threads * 2e-4)
    pool = [threading.Thread(target=_thread, args=(storm, host, timeout, i, clock, records[i]), daemon=True,
                             name=f"probe-{i}") for i in range(threads)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cpu = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    return summarize(offered, seconds, [a for r in records for a in r], cpu, offered < rate)


def summarize(offered: float, seconds: float, attempts: list[Attempt], cpu_share: float,
              capped: bool = False) -> ProbeResult:
    """The probe's figures from its attempts (pure: the tests feed it synthetic attempts)."""
    attempts = sorted(attempts, key=lambda a: a.start)
    on_time = sum(1 for a in attempts if a.start - a.slot <= 0.05)
    accepted = [a for a in attempts if a.kind == OK]
    refused = [a for a in attempts if a.kind == REJECTED]
    steady = [a for a in attempts if a.slot >= seconds / 2]
    steady_ok = sum(1 for a in steady if a.kind == OK)
    steady_refused = sum(1 for a in steady if a.kind == REJECTED)

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    first = refused[0] if refused else None
    return ProbeResult(
        offered_rps=offered, seconds=seconds, attempts=len(attempts), achieved_rps=on_time / seconds,
        accepted=len(accepted), served_rps=sum(1 for a in accepted if a.end <= seconds) / seconds,
        refused=dict(Counter(a.status for a in refused)),
        retry_after_s=sorted({a.retry_after for a in refused if a.retry_after is not None}),
        failed=sum(1 for a in attempts if a.kind not in (OK, REJECTED) and a.status and a.status < 500),
        errors=sum(1 for a in attempts if a.kind not in (OK, REJECTED) and not (a.status and a.status < 500)),
        timeouts=sum(1 for a in attempts if a.timed_out),
        steady_accepted_rps=steady_ok / (seconds / 2),
        steady_refused_share=steady_refused / len(steady) if steady else 0.0,
        first_refusal_s=first.start if first else None,
        in_flight_at_first_refusal=first.in_flight if first else None,
        max_in_flight=max((a.in_flight for a in attempts), default=0),
        latency_p50_s=median([a.end - a.start for a in accepted]),
        early_latency_s=median([a.end - a.start for a in accepted if a.slot < seconds / 3]),
        late_latency_s=median([a.end - a.start for a in accepted if a.slot >= 2 * seconds / 3]),
        refused_latency_s=median([a.end - a.start for a in refused]),
        client_cpu_share=cpu_share, offered_capped=capped)


def burst_probe(storm: Storm, host: str, sent: int, pause_s: float, timeout: float) -> BurstResult:
    """Wait `pause_s` (the bucket refills), then release `sent` attempts at once; count what passed."""
    time.sleep(pause_s)
    gate = threading.Barrier(sent + 1)
    results: list[tuple[float, str, int]] = []
    lock = threading.Lock()

    def fire(device: int) -> None:
        conn = Connection(host, timeout, storm.target.verify_tls)
        try:
            gate.wait()
            start = time.perf_counter()
            outcome, _ = attempt(conn, storm.flow(device))
            with lock:
                results.append((start, outcome.kind, outcome.status))
        finally:
            conn.close()

    pool = [threading.Thread(target=fire, args=(i,), daemon=True, name=f"burst-{i}") for i in range(sent)]
    for t in pool:
        t.start()
    gate.wait()
    for t in pool:
        t.join()
    starts = [s for s, _, _ in results]
    return BurstResult(sent, sum(1 for _, k, _ in results if k == OK), sum(1 for _, k, _ in results if k == REJECTED),
                       max(starts) - min(starts) if starts else 0.0, pause_s,
                       dict(Counter(status for _, k, status in results if k == REJECTED)))


def drain(host: str, fast_s: float, timeout: float, verify_tls: bool = True, bound_s: float = 20.0,
          path: str = RTT_PATH) -> float:
    """Poll a cheap GET until it answers within `fast_s` (the server's backlog is gone) or for
    `bound_s`; returns the seconds waited."""
    t0 = time.perf_counter()
    conn = Connection(host, min(timeout, bound_s), verify_tls)
    try:
        while time.perf_counter() - t0 < bound_s:
            start = time.perf_counter()
            reply = conn.send(Step("GET", path))
            if reply.status and time.perf_counter() - start <= fast_s:
                break
            time.sleep(0.1)
    finally:
        conn.close()
    return time.perf_counter() - t0
