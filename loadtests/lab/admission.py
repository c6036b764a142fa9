"""The scenario's `[server]` table on a real event loop: token bucket -> bounded queue -> workers.

Every login request meets the checks of docs/model.md section 3 that a single server can make, in
that order: the rate limit (429 + its Retry-After; every request that gets this far takes a
token), the injected fault (`fault_rate`: a seeded draw per request; with `fault_when = "fast"`
a faulty request is answered 500 at once, taking no worker), a full queue (503 +
`server.retry_after`), then the queue itself, where free workers take the oldest (fifo) or the
newest (lifo) waiter. A finished service hands its worker straight to the next waiter, so at
most `workers` requests are ever in service. A faulty request with `fault_when =
"after-service"` is served like any other (its worker, its credential check) and then answered
500, as `sim.server.LoginServer` does.

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
    """An instant answer without service: 429 (rate limit) or 503 (queue full)."""

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
    """Rate limit, queue and `workers` service slots for the login requests of one lab server."""

    def __init__(self, server: Server, metrics: LabMetrics, draw: Callable[[], float] | None,
                 pool: Executor, clock: Callable[[], float] = time.monotonic,
                 fault_draw: Callable[[], float] | None = None):
        """`draw` gives a sleep-mode service time; None = cpu mode (the check in `pool` is the service).
        `fault_draw` gives the uniform draw in [0, 1) that decides a fault (`server.fault_rate`)."""
        self.workers = server.workers
        self.fault_rate = server.fault_rate
        self.fault_fast = server.fault_when == "fast"
        self.fault_draw = fault_draw if fault_draw is not None else random.Random(0).random
        self.queue_limit = server.queue_limit
        self.lifo = server.discipline == "lifo"
        self.cancel = server.cancel_on_timeout
        self.metrics, self.draw, self.pool, self.clock = metrics, draw, pool, clock
        rl = server.rate_limit
        self.bucket = TokenBucket(rl.rate, rl.bucket, clock()) if rl is not None else None
        self.rate_limited = Refusal(429, "rate_limit", rl.retry_after if rl is not None else 0.0)
        self.queue_full = Refusal(503, "queue_full", server.retry_after)
        self.waiting: deque[asyncio.Future[None]] = deque()   # may hold waiters that left (done)
        self.queued = 0                                         # waiters still in the queue
        self.busy = 0

    def snapshot(self) -> dict[str, Any]:
        return self.metrics.snapshot(self.queued, self.busy, self.workers)

    async def handle(self, check: Callable[[], Verdict], receive: Receive) -> Verdict | Refusal | object:
        """One login request: refused at once, or queued, served (`check` runs in the pool) and judged;
        FAULT when an injected fault answers it (at once, or after its service)."""
        if self.bucket is not None and not self.bucket.take(self.clock()):
            return self._refused(self.rate_limited)
        fault = self.fault_rate > 0 and self.fault_draw() < self.fault_rate    # whatever the load
        if fault and self.fault_fast:
            self.metrics.faults["fast"] += 1
            return FAULT
        if self.busy >= self.workers and self.queued >= self.queue_limit:
            return self._refused(self.queue_full)
        with _watch_disconnect(receive) as gone:
            if not await self._acquire(gone):
                self.metrics.cancelled += 1
                return CANCELLED
            return await self._serve(check, gone, fault)

    def _refused(self, refusal: Refusal) -> Refusal:
        self.metrics.rejected[refusal.reason] += 1
        return refusal

    # --- queue and workers ----------------------------------------------------------------

    async def _acquire(self, gone: asyncio.Event) -> bool:
        """Wait for a worker; False when the client hung up first and cancel_on_timeout drops it."""
        if self.busy < self.workers and not self.queued:
            self.busy += 1
            self.metrics.busy_max = max(self.metrics.busy_max, self.busy)
            return True
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
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
        if turn.done():  # a worker was handed over
            if self.cancel and gone.is_set():
                self._release()  # discarded on reaching a worker: it does no work
                return False
            return True
        self._leave(turn)
        return False

    def _leave(self, turn: asyncio.Future[None]) -> None:
        """A waiter goes away: it gives back the worker if it had been handed one, else its place."""
        if turn.done() and not turn.cancelled():
            self._release()
            return
        turn.cancel()
        self.queued -= 1
        if len(self.waiting) > 2 * self.queued + 64:  # drop the husks of waiters that left
            self.waiting = deque(t for t in self.waiting if not t.done())

    def _release(self) -> None:
        """A worker is free: it takes the next waiter by the discipline, or goes idle."""
        while self.waiting:
            turn = self.waiting.pop() if self.lifo else self.waiting.popleft()
            if not turn.done():
                self.queued -= 1
                turn.set_result(None)
                return
        self.busy -= 1

    async def _serve(self, check: Callable[[], Verdict], gone: asyncio.Event, fault: bool = False) -> Verdict | object:
        loop = asyncio.get_running_loop()
        start = self.clock()
        verdict: Verdict | object = CANCELLED
        try:
            if self.draw is None or await self._sleep(self.draw(), gone):
                verdict = await loop.run_in_executor(self.pool, check)
        finally:
            seconds = self.clock() - start
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
