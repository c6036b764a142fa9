"""One Locust user = one device of the scenario (docs/model.md section 7).

A device sleeps until its planned actions (reboot, dropped session, login), logs in with the
target's flow, and on failure waits the delay of the SAME policy object the simulator uses
(honouring Retry-After, `max_attempts`, `give_up_after`, `relaunch`). It enforces
`client.timeout` itself around each attempt: `FastHttpUser` ignores a per-request timeout and
its built-in retries would hide attempts: it sends a per-request `timeout` as a query parameter,
and `max_retries` retries idempotent requests without backoff, reported as one sample.

What Locust shows: each attempt is a `LOGIN login attempt` request, each finished episode a
`LOGIN login episode` request (time from the first attempt to success; a give-up is its
failure), and the optional heartbeat a `GET heartbeat` request. An exception inside a device (a
bug, never an answer of the server) goes where Locust keeps a task's exceptions
(`runner.exceptions`, `*_exceptions.csv`), with no secret in its message; that device's activity
ends (it waits for its plan's next action) and `loginstorm loadtest` exits 1.

With a client limiter (`[client.limiter]`, `sim.limiters`) the device applies it as the
reference engine does (`sim.des.Model.episode`): before every attempt `on_send` may refuse the
call locally (nothing is sent; a `LOGIN login short-circuited` failure of 0 ms, then the
policy's delay as after any failure), every answer or timeout goes to `on_result`, and before a
retry a quota, throttle or budget may deny it (`on_retry`): the episode ends as a give-up, a
`LOGIN login suppressed` failure. Neither is a `login attempt`. A per-device limiter is the
device's own row, fresh when the device starts and when it reboots (the app restarts); a shared
one is its group's row in `Storm.limiter_states`, shared by the devices of this process only.

Session resumption (docs/model.md section 3.4), with `client.resume_window` > 0 and a flow that
has a refresh mechanism (`oauth2-password`: see loadtests/flows.py; on every other flow each
login is a full one): the device keeps the refresh token of its last successful login, issued
at that attempt's start (the server issued it later, so the device never holds a token the
server has already let expire). An attempt while the token is younger than the window is a
resumption, as `sim.des.Model.episode` decides it per attempt: the flow sends the refresh-token
grant, the attempt log's `resume` column says 1, and a success resumed the session (the answer's
new refresh token replaces the old). A refused or timed-out resumption keeps the token for the
retry; one the server answers 400 or 401 (it no longer honours the token: revoked, expired on
its clock, unknown after a restart) drops it, so the retry is a full login. A reboot forgets the
token, and so does a `token-purge` event for the devices the plan picked (a PURGE action, at its
time, whatever the device is doing).

The simulated clients online at the start hold a token issued at t = 0. A device online at the
start has none, so it fetches one: a warm-up login (the flow's full login, once, not retried),
at a time drawn uniformly over the first half of the time before the scenario's first event
(at once without events), paced by --max-rps. Its token counts as issued at t = 0. A warm-up is
no attempt of the storm: Locust reports it as `LOGIN login warm-up`, the attempt log has no row
for it, and one that fails leaves the device without a token (its next login is a full one).
The warm-up loads the server before the storm: give the first event time for it (about the
devices online at the start x a full login's mean service time / workers).
"""

from __future__ import annotations

import logging
import math
import time
import traceback

import gevent
import numpy as np
from locust import User, task
from locust.contrib.fasthttp import FastHttpSession

from loadtests.attemptlog import SHORT_CIRCUITED, SUPPRESSED
from loadtests.flows import ERROR, TIMEOUT, Outcome, Reply, Step
from loadtests.plan import DROP, LOGIN, PURGE, REBOOT
from sim.limiters import FAILED, OK, SHORT, TIMED_OUT, on_result, on_retry, on_send
from sim.policies import with_retry_after

__all__ = ["DeviceUser", "LoginFailure", "DeviceError", "OFFLINE", "CONNECTING", "ONLINE", "GAVE_UP",
           "SHORT_NAME", "SUPPRESSED_NAME", "WARM_UP_NAME"]

log = logging.getLogger("loginstorm")
OFFLINE, CONNECTING, ONLINE, GAVE_UP = "offline", "connecting", "online", "gave_up"
ATTEMPT, EPISODE, HEARTBEAT = "login attempt", "login episode", "heartbeat"
#: the limiter's Locust entries (request type LOGIN): calls refused locally, retries denied
SHORT_NAME, SUPPRESSED_NAME = "login short-circuited", "login suppressed"
#: the Locust entry of the login that fetches a refresh token for a device online at the start
WARM_UP_NAME = "login warm-up"
#: a resumption answered with one of these: the server no longer honours the token (RFC 6749 5.2)
TOKEN_REJECTED = frozenset({400, 401})
#: the HTTP client's own timeouts stay out of the way: the device's timer decides
TRANSPORT_TIMEOUT_S = 24 * 3600.0
#: an exception's message is cut to this length (one line on the terminal)
MESSAGE_CHARS = 300


class LoginFailure(Exception):
    """A failed attempt or episode, with a fixed message (grouped by Locust, never holding a secret)."""


class DeviceError(RuntimeError):
    """An exception raised inside a device, its message secret-free (`Storm.masked`)."""


class _Silent:
    """The session's own per-request events are not reported: an attempt is the unit."""

    @staticmethod
    def fire(**_) -> None:
        pass


class DeviceUser(User):
    """A device playing one row of the storm's plan (see loadtests/locustfile.py for the options)."""

    abstract = True      # the locustfile's concrete subclass is the one Locust runs

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.context = environment.loginstorm
        self.storm = self.context.storm
        self.state: str | None = None        # None: not (yet) part of the population
        self.logged_in = False
        self.episodes = 0
        self.row: int | None = None
        self.activity: gevent.Greenlet | None = None
        self.in_attempt = False
        self.token: str | None = None
        self.session = self._new_session()
        self.warm = False        # the connection has carried an answer (and may since have gone stale)
        self.limiter = self.storm.limiter
        self.limiter_state = None     # a per-device limiter's row (a shared one lives in the storm)
        self.refresh: str | None = None     # the refresh token of the last login (resume_window > 0)
        self.refresh_at = -math.inf         # when it was issued (time.time())
        self.resumes = False                # resume_window > 0 and the flow can send a refresh grant
        self.warm_up_at: float | None = None   # story time of the warm-up login, if it is still to come

    # -- Locust entry points ------------------------------------------------------------------

    @task
    def live(self) -> None:
        """The device's whole life; returns only when the test stops it."""
        try:
            self._live()
        except Exception as exc:  # the device stops, the load test goes on
            self._failed(exc)
        gevent.sleep(TRANSPORT_TIMEOUT_S)

    def on_stop(self) -> None:
        if self.activity is not None:
            self.activity.kill(block=False)
        self.session.client.close()

    # -- the plan -------------------------------------------------------------------------------

    def _live(self) -> None:
        storm = self.storm
        self.row = self.context.rows.claim()
        plan = storm.plan
        if self.row >= plan.devices:
            return                          # more users than devices: this one has no part
        self.rng = np.random.default_rng([storm.scenario.seed, 1, self.row])
        self.flow = storm.flow(self.row)
        self.policy = storm.policy
        self.client = storm.scenario.client
        self._fresh_limiter()
        self.resumes = self.client.resume_window > 0 and getattr(self.flow, "refreshes", False)
        start = self.context.rows.start
        if self.resumes and self.row < plan.population and plan.online_at_start[self.row]:
            self.warm_up_at = self._warm_up_time()
        if self.row < plan.population:
            self._begin(self._online_loop if plan.online_at_start[self.row] else self._offline_loop)
        else:
            pass                                # a newcomer: absent until its arrival
        for when, kind, arg in plan.actions(self.row):
            gevent.sleep(max(0.0, start + when - time.time()))
            self._act(kind, arg)

    def _act(self, kind: str, arg: float) -> None:
        if kind == REBOOT and self.state not in (OFFLINE, None):
            self._begin(lambda: self._reboot(arg))   # downtime, then an episode
        elif kind == DROP and self.state == ONLINE:
            self._begin(self._episode_loop)
        elif kind == LOGIN and self.state in (OFFLINE, None) and not self.rebooting:
            self._begin(self._episode_loop)
        elif kind == PURGE:
            self.refresh = None                      # revoked: the next login is a full one

    def _begin(self, activity) -> None:
        """Abandon what the device was doing (an attempt in flight is cut off) and start `activity`."""
        if self.activity is not None and not self.activity.dead:
            self.activity.kill(block=True)
            if self.in_attempt:
                self._reset_session()
        self.in_attempt = False
        self.rebooting = False
        self.activity = gevent.spawn(self._run, activity)

    rebooting = False

    # -- activities: each runs in self.activity and returns the next one (None: wait for the plan) ----

    def _run(self, activity) -> None:
        try:
            while activity is not None:
                activity = activity()
        except Exception as exc:  # the activity ends; the plan's next action starts the next one
            self._failed(exc)

    def _reboot(self, downtime: float):
        self._set_state(OFFLINE)
        self.rebooting, self.logged_in = True, False
        self.refresh, self.warm_up_at = None, None   # the app forgets its session
        self._reset_session()
        self._fresh_limiter()                # the app restarts: a per-device limiter starts afresh
        gevent.sleep(downtime)
        self.rebooting = False
        return self._episode_loop

    def _offline_loop(self):
        self._set_state(OFFLINE)
        return self._episode_loop if self._sleep_draw(self.storm.scenario.population.offline, scaled=True) else None

    def _online_loop(self):
        """Hold the session (heartbeats if configured) until it ends or the server forgets it."""
        self._set_state(ONLINE)
        end = time.time() + float(self.storm.scenario.population.session.sample(self.rng)) / self.storm.plan.speed
        if self.warm_up_at is not None:
            when, self.warm_up_at = self.context.rows.start + self.warm_up_at, None
            if when < end:
                gevent.sleep(max(0.0, when - time.time()))
                self._warm_up()
        beat = self.storm.target.heartbeat
        while beat is not None and self.logged_in and time.time() + beat.every < end:
            gevent.sleep(beat.every)
            if not self._heartbeat(beat.path):
                return self._episode_loop   # the server no longer knows the session: log in again
        if math.isinf(end):
            return None
        gevent.sleep(max(0.0, end - time.time()))
        self.logged_in = False
        return self._offline_loop

    def _episode_loop(self):
        while not self._episode():
            self._set_state(GAVE_UP)
            if not self._sleep_draw(self.client.relaunch):
                return None
        return self._online_loop

    def _sleep_draw(self, dist, scaled: bool = False) -> bool:
        """Sleep a draw (divided by --speed for the story's own times); False if it is forever."""
        wait = float(dist.sample(self.rng)) / (self.storm.plan.speed if scaled else 1.0)
        if math.isinf(wait):
            return False
        gevent.sleep(wait)
        return True

    # -- an episode: attempts and the policy's delays (docs/model.md section 3.1) -------------------------

    def _episode(self) -> bool:
        """One episode; True at success, False at give-up (the rules of `sim.des.Model.episode`)."""
        self._set_state(CONNECTING)
        self.logged_in, self.token = False, None
        gevent.sleep(float(self.client.connect_delay.sample(self.rng)))
        first = time.time()
        self.episodes += 1
        previous, attempts = None, 0
        lim, held = self.limiter, 0.0
        while True:
            self.context.pace()               # --max-rps: the load test's own safety valve
            attempts += 1
            resume = self._holds_token()        # decided per attempt, as sim.des does
            if lim is not None and self._short_circuits(attempts == 1):
                outcome, start, elapsed = self._short_circuited()
                resume = False                  # not sent: no resumption either
            else:
                outcome, start, elapsed = self._attempt(resume)
                if lim is not None:
                    result = OK if outcome.ok else TIMED_OUT if outcome.kind == TIMEOUT else FAILED
                    on_result(lim.code, lim.prm, self._limiter_row(), self.context.story_time(), result, held)
            wait, suppressed = None, False
            if outcome.ok:
                self.token, self.logged_in = outcome.token, True
                if self.resumes:
                    self.refresh, self.refresh_at = outcome.refresh, start
            elif resume and outcome.status in TOKEN_REJECTED:
                self.refresh = None             # the server no longer honours it: the retry is a full login
            if not outcome.ok and self.policy.allows_retry(attempts):
                if lim is not None and lim.stops_retries:
                    cost = on_retry(lim.code, lim.prm, self._limiter_row(), self.context.story_time(),
                                    outcome.kind == TIMEOUT)
                    suppressed = cost < 0     # denied: the SDK hands the last failure to the app
                    held = held if suppressed else float(cost)
                if not suppressed:
                    previous = self.policy.delay(attempts - 1, self.rng, previous)
                    wait = float(with_retry_after(previous, outcome.retry_after, self.client.honor_retry_after))
                    if start + elapsed + wait - first > self.client.give_up_after:
                        wait = None
            if outcome.kind == SHORT_CIRCUITED:
                self.context.log_not_sent(self.row, self.episodes, attempts, start, outcome, wait)
            else:
                self.context.log_attempt(self.row, self.episodes, attempts, start, elapsed, outcome, wait, resume)
            if suppressed:
                self._suppressed(attempts + 1)
            if outcome.ok:
                self._report(EPISODE, time.time() - first, 0, None, first)
                return True
            if wait is None:
                self._report(EPISODE, time.time() - first, 0, LoginFailure("gave up"), first)
                return False
            gevent.sleep(wait)

    # -- session resumption (docs/model.md section 3.4) ---------------------------------------------

    def _holds_token(self) -> bool:
        """The next attempt is a resumption: a refresh token younger than client.resume_window."""
        return self.refresh is not None and time.time() - self.refresh_at < self.client.resume_window

    def _warm_up_time(self) -> float:
        """When a device online at the start fetches its token (story seconds): uniform over the
        first half of the time before the first event, drawn from a stream of its own."""
        storm = self.storm
        first = min((e.at for e in storm.scenario.events), default=0.0) / storm.plan.speed
        return float(np.random.default_rng([storm.scenario.seed, 2, self.row]).uniform(0.0, first / 2))

    def _warm_up(self) -> None:
        """The login that gives a device online at the start the token the model says it holds."""
        self.context.pace()
        outcome, _, _ = self._attempt(name=WARM_UP_NAME)
        if outcome.ok:
            self.token, self.logged_in = outcome.token, True
            self.refresh, self.refresh_at = outcome.refresh, self.context.rows.start   # issued at t = 0

    # -- the client's limiter (sim.limiters) --------------------------------------------------------

    def _fresh_limiter(self) -> None:
        """A per-device limiter's state as a new app has it (at the device's start and at a reboot)."""
        if self.limiter is not None and self.limiter.per_device:
            self.limiter_state = self.limiter.initial_row()

    def _limiter_row(self):
        """The row this device's limiter acts on: its own, or its group's in this process."""
        return self.limiter_state if self.limiter.per_device else self.storm.limiter_row(self.row)

    def _short_circuits(self, first: bool) -> bool:
        """`on_send` now: True if the limiter refuses the call locally (adaptive draws its uniform)."""
        lim = self.limiter
        u = float(self.rng.random()) if lim.draws else 0.0
        return on_send(lim.code, lim.prm, self._limiter_row(), self.context.story_time(), first, u) == SHORT

    def _short_circuited(self) -> tuple[Outcome, float, float]:
        """A call the limiter refused: nothing sent, a failure at once (reported apart from the attempts)."""
        start = time.time()
        message = f"short-circuited by the {self.limiter.kind} (not sent)"
        self._report(SHORT_NAME, 0.0, 0, LoginFailure(message), start)
        return Outcome(SHORT_CIRCUITED, message), start, 0.0

    def _suppressed(self, attempt: int) -> None:
        """A retry the limiter denied: the episode ends (logged and reported apart from the attempts)."""
        start = time.time()
        message = f"retry suppressed by the {self.limiter.kind}"
        self.context.log_not_sent(self.row, self.episodes, attempt, start, Outcome(SUPPRESSED, message), None)
        self._report(SUPPRESSED_NAME, 0.0, 0, LoginFailure(message), start)

    def _attempt(self, resume: bool = False, name: str = ATTEMPT) -> tuple[Outcome, float, float]:
        """One login attempt through the flow's steps (`resume`: the refresh grant), cut off at
        the client timeout; reported to Locust as `name`."""
        timeout = float(self.client.timeout.sample(self.rng))
        steps = self.flow(refresh=self.refresh) if resume else self.flow()
        start, t0, length = time.time(), time.perf_counter(), 0
        timer = gevent.Timeout(None if math.isinf(timeout) else timeout)
        self.in_attempt = True
        timer.start()
        try:
            step = next(steps)
            while True:
                reply = self._send(step, timer)
                if reply is None:
                    outcome = Outcome(TIMEOUT, "timeout")
                    break
                length += len(reply.text)
                step = steps.send(reply)
        except StopIteration as done:
            outcome = done.value
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            outcome = Outcome(TIMEOUT, "timeout")
        finally:
            timer.close()
            self.in_attempt = False
        elapsed = time.perf_counter() - t0
        if outcome.kind in (TIMEOUT, ERROR) and outcome.status == 0:
            self._hang_up()                  # as a real client does: the server can see it
        self._report(name, elapsed, length, None if outcome.ok else LoginFailure(outcome.message), start)
        return outcome, start, elapsed

    def _send(self, step: Step, timer: gevent.Timeout) -> Reply | None:
        """Send one step; None if the device's timer went off inside the HTTP client.

        A connection that already carried an answer may have been closed by the server while
        idle (keep-alive timeouts: uvicorn 5 s, nginx 75 s). Like common HTTP clients (OkHttp's
        retry on connection failure), the step then goes once more on a new connection; a
        failure on a new connection is the attempt's answer. Nothing else is retried here.
        """
        for _ in range(2):
            warm, self.warm = self.warm, True
            response = self.session.request(step.method, step.path, data=step.body, headers=dict(step.headers),
                                            allow_redirects=False)
            error = getattr(response, "error", None)
            if error is timer or getattr(error, "original", None) is timer:   # geventhttpclient wraps it
                return None
            status = response.status_code or 0
            if status:
                headers = response.headers      # (its truth value would sum up every header)
                return Reply(status, headers if headers is not None else {}, response.text or "")
            self._hang_up()
            if not warm:
                break
        return Reply(0, {}, "")

    def _heartbeat(self, path: str) -> bool:
        """GET the heartbeat path with the session's token or cookie; False if the session is gone."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}   # else: the cookie
        timeout = float(self.client.timeout.sample(self.rng))
        start, t0 = time.time(), time.perf_counter()
        timer = gevent.Timeout(None if math.isinf(timeout) else timeout)
        timer.start()
        try:
            reply = self._send(Step("GET", path, headers=headers), timer)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            reply = None
        finally:
            timer.close()
        seconds = time.perf_counter() - t0
        if reply is None:
            self._report(HEARTBEAT, seconds, 0, LoginFailure("timeout"), start, request_type="GET")
            self._hang_up()
            return True
        failure = None if reply.status == 200 else LoginFailure(
            f"HTTP {reply.status}" if reply.status else "connection error")
        self._report(HEARTBEAT, seconds, len(reply.text), failure, start, request_type="GET")
        return reply.status not in (401, 403)

    # -- plumbing ---------------------------------------------------------------------------------

    def _set_state(self, new: str) -> None:
        old, self.state = self.state, new
        if old != new:
            self.context.state_changed(self.row, old, new)

    def _new_session(self) -> FastHttpSession:
        target = self.storm.target
        return FastHttpSession(self.environment.host, request_event=_Silent, user=None,
                               insecure=not target.verify_tls, concurrency=1, max_retries=0,
                               network_timeout=TRANSPORT_TIMEOUT_S, connection_timeout=TRANSPORT_TIMEOUT_S)

    def _reset_session(self) -> None:
        """Close the connection (the server sees the hang-up) and start afresh, cookies too."""
        self.session.client.close()
        self.session = self._new_session()
        self.warm = False

    def _hang_up(self) -> None:
        """Close the connection and open a new one at the next request, keeping the cookies."""
        cookies = self.session.cookiejar
        self._reset_session()
        self.session.cookiejar = self.session.client.cookiejar = cookies

    def _failed(self, exc: Exception) -> None:
        """Record an exception raised inside this device as Locust records a task's (its `user_error`
        event), under a message with this device's secrets masked."""
        message = " ".join(f"{type(exc).__name__}: {exc}".split())       # one line
        for token in (self.token, self.refresh):                          # the session's tokens too
            if token:
                message = message.replace(token, "***")
        error = DeviceError(self.storm.masked(message, self.row)[:MESSAGE_CHARS])
        log.error("device %s stopped by %s\n%s", self.row, error, "".join(traceback.format_tb(exc.__traceback__)))
        self.environment.events.user_error.fire(user_instance=self, exception=error, tb=exc.__traceback__)

    def _report(self, name: str, seconds: float, length: int, exception: Exception | None, start: float,
                request_type: str = "LOGIN") -> None:
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=seconds * 1000.0, response_length=length,
            response=None, context={}, exception=exception, start_time=start, url=None)
