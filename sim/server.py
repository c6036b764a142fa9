"""The login tier of the reference engine: checks, queue, workers, protections (docs/model.md section 3, 3.1).

Requests are plain objects moved by SimPy callbacks (no process per request): an arrival goes
through the checks in the contract's order, then to a free worker or the queue; a worker's
completion is a Timeout whose callback answers the client and takes the next request.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

import numpy as np
import simpy

from sim.bucket import TokenBucket
from sim.protections import admits, codel_shed, limit_sample, queue_retry_after, serve_newest
from sim.record import Counter, Level, StartCounter, Tallies
from sim.scenario import Scenario
from sim.streams import DrawStream

__all__ = ["Request", "LoginServer", "OK", "TIMEOUT", "ERROR", "REFUSED", "SHORT", "SHORT_OUTCOME", "expire"]

# Outcomes a client sees: (kind, Retry-After seconds); SHORT never reaches the server (its limiter refused it)
OK, REFUSED, TIMEOUT, ERROR, SHORT = "ok", "refused", "timeout", "error", "short"
SHORT_OUTCOME = (SHORT, 0.0)
_OK = (OK, 0.0)
_CONN_REFUSED = (REFUSED, 0.0)
_ERROR = (ERROR, 0.0)
TIMEOUT_OUTCOME = _TIMEOUT = (TIMEOUT, 0.0)


class Request:
    """One attempt at the server."""

    __slots__ = ("cid", "sent", "deadline", "reply", "started", "live", "hang", "fault", "resume")

    def __init__(self, cid: int, sent: float, deadline: float, reply: simpy.Event, resume: bool = False):
        self.cid, self.sent, self.deadline, self.reply = cid, sent, deadline, reply
        self.resume = resume  # a session resumption (docs/model.md section 3.4), not a full login
        self.started = -1.0   # service start time (-1: not in service)
        self.live = True      # False once lost to an outage/failover or cancelled
        self.hang = False
        self.fault = False    # an injected fault: served, then answered with an error


class LoginServer:
    """Workers, a bounded queue and the protections in front of it."""

    def __init__(self, env: simpy.Environment, s: Scenario, rng: np.random.Generator,
                 tallies: Tallies, counts: dict[str, Counter], levels: dict[str, Level],
                 steady_refusals: StartCounter, key: Callable[[int], float]):
        self.env, self.rng, self.tallies, self.counts, self.levels = env, rng, tallies, counts, levels
        self.steady_refusals = steady_refusals
        srv = s.server
        self.configured = srv.workers
        self.dedicated = srv.workers            # what capacity and failover events scale
        self.extra = 0                          # supernode slots (p2p): not scaled by events
        self.workers = srv.workers              # dedicated + extra: the workers that take requests
        self.service = DrawStream(srv.service_time, rng)
        self.mean_service = srv.service_time.mean
        self.queue_limit = srv.queue_limit
        self.lifo = srv.discipline == "lifo"
        self.drop_expired = srv.drop_expired or srv.cancel_on_timeout
        self.cancel = srv.cancel_on_timeout
        self.reject_cost = srv.reject_cost
        self.rtt = s.client.rtt
        self.busy_503 = (REFUSED, srv.retry_after)
        self.overload = srv.overload
        self.rate_limit = srv.rate_limit
        self.bucket = TokenBucket(srv.rate_limit.rate, srv.rate_limit.bucket) if srv.rate_limit else None
        self.key = key                          # a client's fixed uniform, for admit/partition membership
        self.queue: deque[Request] = deque()
        self.reject_work: deque[tuple[Request, tuple[str, float]]] = deque()
        # levels "serving" (requests in service) and "rejecting" (reject work) make up the busy
        # workers; "queue" + "serving" is the number in system
        self.busy = 0                           # workers occupied (reject work included)
        self.serving = 0                        # requests in service (reject work excluded)
        self.in_service: set[Request] = set()
        self.outage: str | None = None          # None | "refuse" | "blackhole"
        self.outages: list[str] = []            # the modes of the outages in progress
        self.admit: tuple[float, tuple[str, float]] | None = None
        # offset, fraction, failure, hang, isolate_at
        self.partitions: list[tuple[float, float, float, float, float]] = []
        self.learned: Callable[[int, float], bool] = lambda cid, now: True   # failover knowledge
        self.home_full: Callable[[], bool] | None = None   # p2p: no supernode can home another client
        self.fault_rate = srv.fault_rate
        self.fault_fast = srv.fault_when == "fast"
        # docs/model.md section 3.3: adaptive protections (sim.protections holds their kernels)
        self.queue_ra = srv.retry_after_from == "queue"
        self.ra_top = srv.retry_after_max
        self.limit_prm, self.limit = srv.concurrency.state() if srv.concurrency is not None else (None, None)
        self.codel_prm, self.codel = srv.codel.state() if srv.codel is not None else (None, None)
        self.adaptive_lifo = srv.codel is not None and srv.codel.adaptive_lifo
        self.resume_service = DrawStream(srv.resume.service_time, rng) if srv.resume is not None else None

    # --- arrival --------------------------------------------------------------------------

    def submit(self, req: Request) -> tuple[str, float] | None:
        """An attempt reaches the server: the first check that applies decides (docs/model.md section 3).

        Returns the refusal when the server refuses at once (the client takes it one round trip
        later), else None: the request waits, is served or is blackholed, and `req.reply` fires.
        """
        now, cid = self.env.now, req.cid
        if not self.learned(cid, now):
            return self._refuse(req, _CONN_REFUSED)
        if self.outage is not None:
            if self.outage == "refuse":
                return self._refuse(req, _CONN_REFUSED)
            return None  # blackhole: no answer, the attempt times out
        if self.admit is not None and self.key(cid) >= self.admit[0]:
            return self._refuse(req, self.admit[1], costly=True)
        if self.bucket is not None and not self.bucket.take(now):
            return self._refuse(req, (REFUSED, self.rate_limit.retry_after), costly=True)
        hang = self._partition_hang(cid, now)
        if hang is None:
            return self._refuse(req, _CONN_REFUSED)  # fail-fast after isolate_at
        if self.home_full is not None and self.home_full():
            return self._refuse(req, self._busy(), costly=True)
        req.hang = hang
        if self.fault_rate > 0 and self.rng.random() < self.fault_rate:  # fails whatever the load
            if self.fault_fast:
                return _ERROR  # at once, no worker: the client counts an error one round trip later
            req.fault = True
        if self.limit is not None and not admits(self.limit, len(self.queue) + self.serving):
            return self._refuse(req, self._busy(), costly=True)  # beyond the adaptive concurrency limit
        if self.busy < self.workers and not self.reject_work:
            if self.codel is not None:  # no wait: it starts the interval's minimum at 0
                codel_shed(self.codel_prm, self.codel, now, 0.0)
            self._start(req)
        elif len(self.queue) >= self.queue_limit:
            return self._refuse(req, self._busy(), costly=True)
        else:
            self.queue.append(req)
            self.levels["queue"].add(now, 1)
        return None

    def _partition_of(self, cid: int) -> tuple[float, float, float, float, float] | None:
        """The active partition this client depends on, if any (membership by its fixed key)."""
        for entry in self.partitions:
            if (self.key(cid) + entry[0]) % 1.0 < entry[1]:
                return entry
        return None

    def _partition_hang(self, cid: int, now: float) -> bool | None:
        """False: no hang; True: this attempt will hang if it is served; None: fail fast."""
        entry = self._partition_of(cid)
        if entry is None:
            return False
        if now >= entry[4]:  # isolated: the attempts that would have hung fail fast instead
            return None if self.rng.random() < entry[2] else False
        return True

    # --- refusals -------------------------------------------------------------------------

    def _busy(self) -> tuple[str, float]:
        """The 503 of a tier too busy (queue full, concurrency limit, CoDel, no home): its
        Retry-After fixed, or computed from the queue now (docs/model.md section 3.3)."""
        if not self.queue_ra:
            return self.busy_503
        return REFUSED, queue_retry_after(len(self.queue), self.workers, self.mean_service, self.ra_top)

    def _refuse(self, req: Request, outcome: tuple[str, float], costly: bool = False) -> tuple[str, float] | None:
        now = self.env.now
        self.counts["rejected"].add(now)
        self.steady_refusals.add(req.sent)
        if costly and self.reject_cost > 0:
            self.reject_work.append((req, outcome))
            self.dispatch()
            return None  # waits for a worker: the reply comes later, the client's deadline applies
        return outcome

    def _send_refusal(self, req: Request, outcome: tuple[str, float]) -> None:
        """The refusal reaches the client one round trip later, unless its deadline comes first."""
        now = self.env.now
        if now + self.rtt >= req.deadline:
            ev = self.env.timeout(max(0.0, req.deadline - now), req)
            ev.callbacks.append(expire)
        elif self.rtt > 0:
            ev = self.env.timeout(self.rtt, (req, outcome))
            ev.callbacks.append(_deliver_refusal)
        elif not req.reply.triggered:
            req.reply.succeed(outcome)

    # --- workers --------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Free workers take reject work first, then queued requests by the discipline."""
        env, queue = self.env, self.queue
        while self.busy < self.workers:
            if self.reject_work:
                req, outcome = self.reject_work.popleft()
                self.busy += 1
                self.levels["rejecting"].add(env.now, 1)
                ev = env.timeout(self.reject_cost, (req, outcome))
                ev.callbacks.append(self._reject_done)
                continue
            if not queue:
                return
            newest = self.lifo or (self.adaptive_lifo and serve_newest(self.codel))
            req = queue.pop() if newest else queue.popleft()
            self.levels["queue"].add(env.now, -1)
            if self.drop_expired and env.now >= req.deadline:
                continue  # discarded at the head without using a worker
            if self.codel is not None and codel_shed(self.codel_prm, self.codel, env.now, env.now - req.sent):
                self._send_refusal(req, self._refuse(req, self._busy()))  # CoDel sheds it: a 503, no worker
                continue
            self._start(req)

    def _start(self, req: Request) -> None:
        env = self.env
        now = env.now
        self.busy += 1
        self.serving += 1
        self.levels["serving"].add(now, 1)
        self.tallies.service_started(now, now - req.sent)
        req.started = now
        self.in_service.add(req)
        entry = self._partition_of(req.cid) if req.hang else None
        if entry is not None and self.rng.random() < entry[2]:
            work = entry[3]  # hang or not is decided at service start, with probability `failure`
        else:
            req.hang = False
            work = self._service_time(req.resume)
        if self.cancel and now + work > req.deadline:
            work = max(0.0, req.deadline - now)  # deadline propagation: stop at the deadline
        ev = env.timeout(work, req)
        ev.callbacks.append(self._done)

    def _service_time(self, resume: bool) -> float:
        t = (self.resume_service if resume and self.resume_service is not None else self.service).next()
        if self.overload is not None:
            t *= 1.0 + self.overload.per_request * max(0.0, len(self.queue) + self.serving - self.overload.knee)
        return t

    def _done(self, ev: simpy.Event) -> None:
        req: Request = ev.value
        if not req.live:
            return  # lost to an outage or failover: already accounted for
        now = self.env.now
        if self.limit is not None:  # the limit learns from the time this request spent at the tier
            limit_sample(self.limit_prm, self.limit, now - req.sent, len(self.queue) + self.serving,
                         now >= req.deadline)
        self._finish(req, now)
        if now >= req.deadline:
            pass  # late: the client has timed out (a response at exactly the deadline is late)
        elif not req.reply.triggered:
            req.reply.succeed(_ERROR if req.hang or req.fault else _OK)
        self.dispatch()

    def _finish(self, req: Request, now: float) -> None:
        """A request leaves its worker: account its work (wasted if it ended at/after the deadline)."""
        wasted = now >= req.deadline
        self.tallies.work(now - req.started, wasted)
        if wasted:
            self.counts["wasted"].add(now)
        self.in_service.discard(req)
        self.serving -= 1
        self.busy -= 1
        self.levels["serving"].add(now, -1)

    def _reject_done(self, ev: simpy.Event) -> None:
        req, outcome = ev.value
        self.tallies.work(self.reject_cost, False)
        self.busy -= 1
        self.levels["rejecting"].add(self.env.now, -1)
        self._send_refusal(req, outcome)
        self.dispatch()

    # --- events ---------------------------------------------------------------------------

    def lose_everything(self, answer: bool) -> None:
        """Outage or failover: queued and in-service requests are lost (counted as rejected).

        answer=True: their clients learn at once (refused); False (blackhole): they time out.
        Killed work is wasted worker time.
        """
        now = self.env.now
        lost = list(self.queue) + list(self.in_service)
        for req, _outcome in self.reject_work:
            if answer and not req.reply.triggered:
                req.reply.succeed(_CONN_REFUSED)
        self.reject_work.clear()
        for req in self.in_service:
            req.live = False
            self.tallies.work(now - req.started, True)
            self.counts["wasted"].add(now)
        self.serving -= len(self.in_service)
        self.busy -= len(self.in_service)
        self.levels["serving"].add(now, -len(self.in_service))
        self.in_service.clear()
        self.levels["queue"].add(now, -len(self.queue))
        self.queue.clear()
        for req in lost:
            self.counts["rejected"].add(now)
            self.steady_refusals.add(req.sent)
            if answer and not req.reply.triggered:
                req.reply.succeed(_CONN_REFUSED)

    def set_workers(self, dedicated: int) -> None:
        """The dedicated workers (capacity, failover). Fewer never pre-empt requests in service;
        more start queued work at once."""
        self.dedicated = max(0, int(dedicated))
        self._apply_workers()

    def set_extra(self, extra: int) -> None:
        """The workers that supernode slots add (p2p)."""
        self.extra = max(0, int(extra))
        self._apply_workers()

    def _apply_workers(self) -> None:
        self.workers = self.dedicated + self.extra
        self.levels["workers"].set(self.env.now, self.workers)
        self.dispatch()

    def waiting(self, now: float) -> int:
        """Queued requests whose client still waits for them (its deadline has not passed)."""
        return sum(req.deadline > now for req in self.queue)

    def capacity_rps(self) -> float:
        mean = self.mean_service
        return math.inf if mean == 0 else self.workers / mean


def expire(ev: simpy.Event) -> None:
    """The client's deadline: a request still unanswered times out (a reply at this instant is late)."""
    req: Request = ev.value
    if not req.reply.triggered:
        req.reply.succeed(_TIMEOUT)


def _deliver_refusal(ev: simpy.Event) -> None:
    req, outcome = ev.value
    if not req.reply.triggered:
        req.reply.succeed(outcome)
