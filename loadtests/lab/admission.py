"""The scenario's `[server]` table on a real event loop: token bucket -> limits -> bounded queue -> workers.

Every login request meets the checks of docs/model.md section 3 that a single server can make, in
that order: the rate limit (429 + its Retry-After; every request that gets this far takes a
token), the injected fault (`fault_rate`: a seeded draw per request; with `fault_when = "fast"`
a faulty request is answered 500 at once, taking no worker), the adaptive concurrency limit
(`[server.concurrency]`: 503 at once when the requests queued or in service already number
int(limit)), a full queue (503), then the queue itself, where free workers take the oldest
(fifo) or the newest (lifo) waiter. A finished service hands its worker straight to the next
waiter, so at most `workers` requests are ever in service. A faulty request with `fault_when =
"after-service"` is served like any other (its worker, its credential check) and then answered
500, as `sim.server.LoginServer` does.

The adaptive protections of docs/model.md section 3.3 call `sim.protections`, the kernels the
simulator's engines call (as the rate limit calls `sim.bucket.TokenBucket`):
- concurrency limit: `admits` before the queue; `limit_sample` when a request leaves its worker
  (its time at the lab since it arrived, the requests queued or in service counting it, and
  whether its client had hung up): the limit moves by the AIMD or gradient rule;
- CoDel (`[server.codel]`): `codel_shed` each time a worker takes a request (its wait since it
  arrived; 0 when it got a worker at once); a shed request is answered 503 without service and
  the worker takes the next one. With `adaptive_lifo`, the queue is served newest first while
  `serve_newest` (CoDel says overloaded);
- Retry-After: every 503 of a busy tier (queue full, concurrency limit, CoDel) carries
  `server.retry_after`, or with `retry_after_from = "queue"` `queue_retry_after(queued, workers,
  mean of service_time, retry_after_max)` computed at that moment (whole seconds).

A request is a full login or a resumption (`resume=True`: an OAuth 2.0 refresh-token grant, see
`app`). In sleep mode a resumption sleeps a draw of `[server.resume].service_time` (of
`service_time` without that table, as in the simulator); in cpu mode its service is its check,
which hashes no password (a refresh token is looked up), so it costs next to nothing beside a
full login's PBKDF2 run. Either way it waits for a worker like any request.

A request watches for its client hanging up while it waits and while it is served (a task
awaiting the ASGI `http.disconnect` message). A service that ends after the hang-up is wasted
work. With `cancel_on_timeout`, a waiter whose client hung up leaves the queue unserved, and a
sleep-mode service stops at the hang-up (a cpu-mode hash cannot be stopped; it runs out and
counts as wasted). `drop_expired` is ignored: a server cannot know a client's deadline, only
that it has hung up.

    admission = Admission(scenario.server, metrics, draw=DrawStream(dist, rng).next, pool=pool,
                          fault_draw=np.random.default_rng([seed, 1]).random)
    answer = await admission.handle(check, request.receive)   # a Verdict, a Refusal, FAULT or CANCELLED
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from loadtests.lab.metrics import LabMetrics
from sim.bucket import TokenBucket
from sim.protections import admits, codel_shed, limit_sample, queue_retry_after, serve_newest
from sim.scenario import Server

__all__ = ["Admission", "Refusal", "Verdict", "CANCELLED", "FAULT", "retry_after_header"]

Receive = Callable[[], Awaitable[dict[str, Any]]]


class Verdict(NamedTuple):
    """What the credential check decided: `ok`, who logged in, or which error to report."""

    ok: bool
    subject: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Refusal:
    """An answer without service: 429 (rate limit) or 503 (queue full, concurrency limit, CoDel shed)."""

    status: int
    reason: str                 # the `reason` label of rejected_total
    retry_after: float          # seconds; 0 = no header

    @property
    def headers(self) -> dict[str, str]:
        value = retry_after_header(self.retry_after)
        return {} if value is None else {"Retry-After": value}


#: the client hung up and cancel_on_timeout dropped its request: nobody reads the answer
CANCELLED = object()
#: an injected fault (`server.fault_rate`): the answer is a 500, whatever the check said
FAULT = object()


def retry_after_header(seconds: float) -> str | None:
    """Retry-After as delta-seconds (RFC 9110 10.2.3), rounded up; below 1 s a decimal.

    A decimal is nonstandard (clients may ignore it or read it as 0); the lab sends it so that a
    scenario's sub-second Retry-After survives. 0 or inf: no header.

        >>> retry_after_header(2), retry_after_header(1.2), retry_after_header(0.5), retry_after_header(0)
        ('2', '2', '0.5', None)
    """
    if seconds <= 0 or not math.isfinite(seconds):
        return None
    return str(math.ceil(seconds)) if seconds >= 1 else f"{seconds:g}"


class Admission:
    """Rate limit, limits, queue and `workers` service slots for the login requests of one lab server."""

    def __init__(self, server: Server, metrics: LabMetrics, draw: Callable[[], float] | None,
                 pool: Executor, clock: Callable[[], float] = time.monotonic,
                 fault_draw: Callable[[], float] | None = None,
                 resume_draw: Callable[[], float] | None = None):
        """`draw` gives a sleep-mode service time; None = cpu mode (the check in `pool` is the service).
        `fault_draw` gives the uniform draw in [0, 1) that decides a fault (`server.fault_rate`);
        `resume_draw` a sleep-mode resumption's service time (`[server.resume]`; None: `draw`)."""
        self.workers = server.workers
        self.fault_rate = server.fault_rate
        self.fault_fast = server.fault_when == "fast"
        self.fault_draw = fault_draw if fault_draw is not None else random.Random(0).random
        self.queue_limit = server.queue_limit
        self.lifo = server.discipline == "lifo"
        self.cancel = server.cancel_on_timeout
        self.metrics, self.draw, self.pool, self.clock = metrics, draw, pool, clock
        self.resume_draw = resume_draw
        rl = server.rate_limit
        self.bucket = TokenBucket(rl.rate, rl.bucket, clock()) if rl is not None else None
        self.rate_limited = Refusal(429, "rate_limit", rl.retry_after if rl is not None else 0.0)
        # docs/model.md section 3.3: the Retry-After of a busy tier, fixed or from the queue
        self.retry_after = server.retry_after
        self.queue_ra = server.retry_after_from == "queue"
        self.ra_top = server.retry_after_max
        self.mean_service = server.service_time.mean
        self.limit_prm, self.limit = server.concurrency.state() if server.concurrency is not None else (None, None)
        self.codel_prm, self.codel = server.codel.state() if server.codel is not None else (None, None)
        self.adaptive_lifo = server.codel is not None and server.codel.adaptive_lifo
        # waiters: (turn, arrival time); a turn resolves to None (a worker) or a Refusal (CoDel shed
        # it); may hold waiters that left (done)
        self.waiting: deque[tuple[asyncio.Future, float]] = deque()
        self.queued = 0                                         # waiters still in the queue
        self.busy = 0

    def snapshot(self) -> dict[str, Any]:
        return self.metrics.snapshot(self.queued, self.busy, self.workers,
                                     limit=float(self.limit[0]) if self.limit is not None else None,
                                     overloaded=serve_newest(self.codel) if self.codel is not None else None)

    async def handle(self, check: Callable[[], Verdict], receive: Receive,
                     resume: bool = False) -> Verdict | Refusal | object:
        """One login request (`resume`: a session resumption): refused at once, or queued (and
        perhaps shed), served (`check` runs in the pool) and judged; FAULT when an injected fault
        answers it (at once, or after its service)."""
        arrived = self.clock()
        if resume:
            self.metrics.resumptions += 1
        if self.bucket is not None and not self.bucket.take(arrived):
            return self._refused(self.rate_limited)
        fault = self.fault_rate > 0 and self.fault_draw() < self.fault_rate    # whatever the load
        if fault and self.fault_fast:
            self.metrics.faults["fast"] += 1
            return FAULT
        if self.limit is not None and not admits(self.limit, self.queued + self.busy):
            return self._busy("concurrency_limit")        # beyond the adaptive concurrency limit
        if self.busy >= self.workers and self.queued >= self.queue_limit:
            return self._busy("queue_full")
        with _watch_disconnect(receive) as gone:
            got = await self._acquire(gone, arrived)
            if isinstance(got, Refusal):                  # CoDel shed it when a worker took it
                return got
            if not got:
                self.metrics.cancelled += 1
                return CANCELLED
            return await self._serve(check, gone, fault, arrived, resume)

    def _refused(self, refusal: Refusal) -> Refusal:
        self.metrics.rejected[refusal.reason] += 1
        return refusal

    def _busy(self, reason: str) -> Refusal:
        """The 503 of a busy tier: `server.retry_after`, or the queue's Retry-After now."""
        seconds = (queue_retry_after(self.queued, self.workers, self.mean_service, self.ra_top) if self.queue_ra
                   else self.retry_after)
        return self._refused(Refusal(503, reason, seconds))

    # --- queue and workers ----------------------------------------------------------------

    async def _acquire(self, gone: asyncio.Event, arrived: float) -> bool | Refusal:
        """Wait for a worker: True when one is ours; False when the client hung up first and
        cancel_on_timeout drops it; the Refusal when CoDel shed it as a worker took it."""
        if self.busy < self.workers and not self.queued:
            self.busy += 1
            self.metrics.busy_max = max(self.metrics.busy_max, self.busy)
            if self.codel is not None:  # no wait: it starts the interval's minimum at 0
                codel_shed(self.codel_prm, self.codel, self.clock(), 0.0)
            return True
        turn: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiting.append((turn, arrived))
        self.queued += 1
        try:
            if self.cancel:
                hang_up = asyncio.ensure_future(gone.wait())
                try:
                    await asyncio.wait((turn, hang_up), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    hang_up.cancel()
            else:
                await turn
        except BaseException:  # the handler itself was cancelled (shutdown)
            self._leave(turn)
            raise
        if turn.done():
            if turn.result() is not None:  # shed: no worker was handed over
                return turn.result()
            if self.cancel and gone.is_set():
                self._release()  # discarded on reaching a worker: it does no work
                return False
            return True
        self._leave(turn)
        return False

    def _leave(self, turn: asyncio.Future) -> None:
        """A waiter goes away: it gives back the worker if it had been handed one, else its place."""
        if turn.done() and not turn.cancelled():
            if turn.result() is None:
                self._release()
            return
        turn.cancel()
        self.queued -= 1
        if len(self.waiting) > 2 * self.queued + 64:  # drop the husks of waiters that left
            self.waiting = deque(w for w in self.waiting if not w[0].done())

    def _release(self) -> None:
        """A worker is free: it takes the next waiter by the discipline (newest first while CoDel
        says overloaded, with adaptive LIFO), sheds it if CoDel says so and takes the next, or goes idle."""
        while self.waiting:
            newest = self.lifo or (self.adaptive_lifo and serve_newest(self.codel))
            turn, arrived = self.waiting.pop() if newest else self.waiting.popleft()
            if turn.done():
                continue
            self.queued -= 1
            if self.codel is not None:
                now = self.clock()
                if codel_shed(self.codel_prm, self.codel, now, now - arrived):
                    turn.set_result(self._busy("codel"))  # a 503 without service; the worker goes on
                    continue
            turn.set_result(None)
            return
        self.busy -= 1

    async def _serve(self, check: Callable[[], Verdict], gone: asyncio.Event, fault: bool, arrived: float,
                     resume: bool = False) -> Verdict | object:
        loop = asyncio.get_running_loop()
        start = self.clock()
        verdict: Verdict | object = CANCELLED
        draw = self.resume_draw if resume and self.resume_draw is not None else self.draw
        try:
            if draw is None or await self._sleep(draw(), gone):
                verdict = await loop.run_in_executor(self.pool, check)
        finally:
            end = self.clock()
            seconds = end - start
            if self.limit is not None:  # it leaves its worker: the limit learns (in flight counts it)
                limit_sample(self.limit_prm, self.limit, end - arrived, self.queued + self.busy, gone.is_set())
            self._release()
            m = self.metrics
            m.busy_seconds += seconds
            if gone.is_set():
                m.wasted += 1
                m.wasted_seconds += seconds
        if verdict is CANCELLED:
            self.metrics.cancelled += 1
            return verdict
        self.metrics.completed += 1
        if fault:                      # served, checked, then answered 500 ("after-service")
            self.metrics.faults["after-service"] += 1
            self.metrics.logins["fault"] += 1
            return FAULT
        self.metrics.logins["success" if verdict.ok else "failure"] += 1
        if resume and verdict.ok:
            self.metrics.resumed += 1
        return verdict

    async def _sleep(self, seconds: float, gone: asyncio.Event) -> bool:
        """The sleep-mode service; False when cancel_on_timeout stops it at the client's hang-up."""
        limit = seconds if math.isfinite(seconds) else None
        if not self.cancel:
            await (asyncio.sleep(limit) if limit is not None else asyncio.Event().wait())
            return True
        try:
            async with asyncio.timeout(limit):
                await gone.wait()
        except TimeoutError:
            return True
        return False


@contextmanager
def _watch_disconnect(receive: Receive) -> Iterator[asyncio.Event]:
    """An event set when the client hangs up: a task awaits the ASGI `http.disconnect` message.

    The body has been read by then, so the next message the server gives is the disconnect
    (uvicorn sends it when the connection is lost, also on the client's half-close).
    """
    gone = asyncio.Event()

    async def listen() -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 - a broken receive channel: the client is as good as gone
            pass
        gone.set()

    task = asyncio.ensure_future(listen())
    try:
        yield gone
    finally:
        task.cancel()
