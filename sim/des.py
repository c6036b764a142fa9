"""The reference engine (`des`): docs/model.md section 3 in SimPy, one process per active client.

A client's life is one generator (`Model.life`), read like its sequence diagram: online until
its session ends or an event drops it, offline, then an episode of attempts with the policy's
delays between them. A client with nothing scheduled (an endless session, say) has no process;
an event that touches it starts one, so memory follows the clients that are doing something.

    >>> from sim.config import load_scenario
    >>> result = run(load_scenario("scenarios/quickstart.toml"), until=600.0)
    >>> result.summary["engine"]
    'des'
"""

from __future__ import annotations

import math
import time
from array import array
from typing import Generator

import numpy as np
import simpy

from sim.distributions import Exponential, Uniform
from sim.limiters import FAILED, OK as RESULT_OK, SHORT, TIMED_OUT, group_of, on_result, on_retry, on_send
from sim.metrics import summarize, timeseries
from sim.p2p import Supernodes, stochastic_round
from sim.record import RunRecords
from sim.results import Progress, RunResult, UnsupportedScenario
from sim.scenario import Scenario
from sim.server import ERROR, OK, SHORT_OUTCOME, TIMEOUT, TIMEOUT_OUTCOME, LoginServer, Request, expire
from sim.streams import DelayStream, DrawStream
from sim.waves import next_arrival, pick, rate_schedule, wave_times

__all__ = ["run", "RunResult", "UnsupportedScenario"]

OFFLINE, CONNECTING, ONLINE, GAVE_UP = 0, 1, 2, 3
STATE_NAMES = ("offline", "connecting", "online", "gave_up")
# What a client does next: (step, argument)
EPISODE = ("episode", None)
GIVE_UP = ("gave_up", None)
ONLINE_STEP = ("online", None)


def run(scenario: Scenario, *, until: float | None = None, progress: Progress | None = None,
        rng: np.random.Generator | None = None) -> RunResult:
    """Simulate one scenario to its `duration` (or `until`) and return its records."""
    end = scenario.duration if until is None else min(until, scenario.duration)
    if end <= 0:
        raise UnsupportedScenario(f"--until must be > 0, got {until}")
    model = Model(scenario, end, rng if rng is not None else np.random.default_rng(scenario.seed))
    started = time.perf_counter()
    events = model.run(progress)
    wallclock = time.perf_counter() - started
    summary = summarize(model, events=events, wallclock=wallclock)
    return RunResult(scenario, summary, timeseries(model))


class Model(RunRecords):
    """The wiring: environment, records, server, population and the scenario's events."""

    def __init__(self, s: Scenario, end: float, rng: np.random.Generator):
        super().__init__(s, end)
        self.rng = rng
        self.env = env = simpy.Environment()
        self.server = LoginServer(env, s, rng, self.tallies, self.counts, self.levels,
                                  self.steady_refusals, self.key)
        self.levels["workers"].set(0.0, s.server.workers)
        c = s.client
        self.policy = c.build_policy()
        self.delays = DelayStream(self.policy, rng)
        self.timeout, self.connect_delay, self.relaunch = (
            DrawStream(d, rng) for d in (c.timeout, c.connect_delay, c.relaunch))
        self.session, self.offline = (DrawStream(d, rng) for d in (s.population.session, s.population.offline))
        self.uniform = DrawStream(Uniform(0.0, 1.0), rng)
        self.limiter = lim = c.build_limiter()
        if lim is not None:  # docs/model.md section 4.7: one row of state per device or per group
            self.lgroups = lim.groups_for(s.population.clients)
            self.lstate = lim.new_states(self.lgroups)
        self.state = array("b")
        self.keys = array("d")
        # docs/model.md section 3.4: when each client last logged in (-inf: it holds no token)
        self.resume_window = c.resume_window
        self.token_at = array("d")
        self.rebooting = bytearray()
        self.procs: dict[int, list] = {}
        self.n_state = [0, 0, 0, 0]
        self.ramp_id = 0  # the capacity event whose ramp is in force
        for event in s.events:  # first, so that an event at t = 0 acts before the clients do
            if event.at < end:
                env.process(self.fire(event))
        self._populate()
        self.p2p: Supernodes | None = None
        if s.server.p2p is not None:
            self._start_p2p()
        self.capacity_at_start = self.server.capacity_rps()
        if s.population.login_rate > 0:
            env.process(self.arrivals())

    # --- population -----------------------------------------------------------------------

    def key(self, cid: int) -> float:
        """The client's fixed uniform draw: admit and partition membership by id."""
        return self.keys[cid]

    def _new_client(self, state: int) -> int:
        cid = len(self.state)
        self.state.append(state)
        self.keys.append(self.uniform.next())
        self.token_at.append(-math.inf)
        self.rebooting.append(0)
        if self.p2p is not None:
            self.supernode.append(0)
            self.online_since.append(-math.inf)
        n = self.n_state
        n[state] += 1
        self.levels[STATE_NAMES[state]].add(self.env.now, 1)
        self.watch.update(self.env.now, n[ONLINE], n[CONNECTING], n[GAVE_UP])
        return cid

    def _populate(self) -> None:
        pop = self.s.population
        online = int(round(pop.online_at_start * pop.clients))
        self.keys.extend(self.rng.random(pop.clients))
        self.token_at.extend([0.0] * online + [-math.inf] * (pop.clients - online))  # online: logged in
        self.state.extend([ONLINE] * online + [OFFLINE] * (pop.clients - online))
        self.rebooting.extend(bytes(pop.clients))
        self.n_state[ONLINE], self.n_state[OFFLINE] = online, pop.clients - online
        self.levels["online"].set(0.0, online)
        self.levels["offline"].set(0.0, pop.clients - online)
        self.watch.update(0.0, online, 0, 0)
        if not pop.session.is_infinite:
            for cid, t in enumerate(pop.session.sample(self.rng, online)):
                self.wake(cid, ("online", float(t)))
        if not pop.offline.is_infinite:
            for cid, t in zip(range(online, pop.clients), pop.offline.sample(self.rng, pop.clients - online)):
                self.wake(cid, ("offline", float(t)))

    def set_state(self, cid: int, new: int) -> None:
        old = self.state[cid]
        if old == new:
            return
        now = self.env.now
        self.state[cid] = new
        n = self.n_state
        n[old] -= 1
        n[new] += 1
        self.levels[STATE_NAMES[old]].add(now, -1)
        self.levels[STATE_NAMES[new]].add(now, 1)
        self.watch.update(now, n[ONLINE], n[CONNECTING], n[GAVE_UP])
        if self.p2p is not None:
            if new == ONLINE:
                self.online_since[cid] = now
                self.p2p.place(cid)  # a login with no supernode room stays online unhomed
            elif old == ONLINE:
                self._leave_online(cid)

    def wake(self, cid: int, step: tuple) -> None:
        """Send a client to `step` now: interrupt its process, or start one if it has none."""
        slot = self.procs.get(cid)
        if slot is None:
            slot = self.procs[cid] = [None, step, False]
            slot[0] = self.env.process(self.life(cid, slot))
            return
        # Not begun yet, or an interrupt already on its way: the latest step wins, once.
        already = slot[1] is not None
        slot[1] = step
        if slot[2] and not already:
            slot[0].interrupt()

    # --- one client -----------------------------------------------------------------------

    def life(self, cid: int, slot: list) -> Generator:
        """One client from its first step until it settles with nothing scheduled."""
        slot[2] = True
        step, slot[1] = slot[1], None
        while step is not None:
            try:
                kind, arg = step
                if kind == "episode":
                    step = yield from self.episode(cid)
                elif kind == "online":
                    step = yield from self.online(cid, arg)
                elif kind == "offline":
                    step = yield from self.wait_offline(cid, arg)
                elif kind == "reboot":
                    step = yield from self.reboot(cid, arg)
                else:
                    step = yield from self.gave_up(cid)
            except simpy.Interrupt:
                step, slot[1] = slot[1], None
        del self.procs[cid]

    def online(self, cid: int, session: float | None) -> Generator:
        self.set_state(cid, ONLINE)
        if session is None:
            session = self.session.next()
        if math.isinf(session):
            return None
        yield self.env.timeout(session)
        return ("offline", None)

    def wait_offline(self, cid: int, wait: float | None) -> Generator:
        self.set_state(cid, OFFLINE)
        if wait is None:
            wait = self.offline.next()
        if math.isinf(wait):
            return None
        yield self.env.timeout(wait)
        return EPISODE

    def reboot(self, cid: int, downtime: float) -> Generator:
        self.set_state(cid, OFFLINE)
        self.rebooting[cid] = 1
        self.token_at[cid] = -math.inf  # the device forgets its session: the next login is a full one
        if self.limiter is not None and self.limiter.per_device:  # the app restarts with a fresh limiter
            self.lstate[cid] = self.limiter.initial_row()
        try:
            if downtime > 0:
                yield self.env.timeout(downtime)
        finally:
            self.rebooting[cid] = 0
        return EPISODE

    def gave_up(self, cid: int) -> Generator:
        self.set_state(cid, GAVE_UP)
        wait = self.relaunch.next()
        if math.isinf(wait):
            return None
        yield self.env.timeout(wait)
        return EPISODE

    def episode(self, cid: int) -> Generator:
        """Attempts until success or give-up: the policy's delay (or Retry-After) between them."""
        env, policy, client = self.env, self.policy, self.s.client
        self.set_state(cid, CONNECTING)
        self.tallies.episodes += 1
        begun = env.now
        delay = self.connect_delay.next()
        if delay > 0:
            yield env.timeout(delay)
        first = env.now
        attempts, previous = 0, None
        lim, held = self.limiter, 0.0
        while True:
            attempts += 1
            # a valid token makes it a resumption (docs/model.md section 3.4)
            resume = env.now - self.token_at[cid] < self.resume_window
            if lim is None:
                outcome, retry_after = yield from self.attempt(cid, resume)
            else:
                row = self._limiter_row(cid)
                u = self.uniform.next() if lim.draws else 0.0
                if on_send(lim.code, lim.prm, row, env.now, attempts == 1, u) == SHORT:
                    self.counts["short_circuited"].add(env.now)  # refused locally: not sent
                    outcome, retry_after = SHORT_OUTCOME
                else:
                    outcome, retry_after = yield from self.attempt(cid, resume)
                    result = RESULT_OK if outcome == OK else TIMED_OUT if outcome == TIMEOUT else FAILED
                    on_result(lim.code, lim.prm, self._limiter_row(cid), env.now, result, held)
            if outcome == OK:
                self.tallies.login(env.now - begun)
                self.counts["successes"].add(env.now)
                if self.resume_window > 0:
                    if resume:
                        self.counts["resumed"].add(env.now)
                    self.token_at[cid] = env.now
                return ONLINE_STEP
            if not policy.allows_retry(attempts):
                break
            if lim is not None and lim.stops_retries:
                cost = on_retry(lim.code, lim.prm, self._limiter_row(cid), env.now, outcome == TIMEOUT)
                if cost < 0:  # denied: the SDK hands the last failure to the app, which relaunches later
                    self.counts["suppressed"].add(env.now)
                    break
                held = cost
            previous = self.delays.next(attempts - 1, previous)
            wait = max(previous, retry_after) if client.honor_retry_after else previous
            if env.now + wait > first + client.give_up_after:
                break
            if wait > 0:  # on a retry timer: the orbit of the retrial queue
                orbit = self.levels["orbit"]
                orbit.add(env.now, 1)
                try:
                    yield env.timeout(wait)
                finally:
                    orbit.add(env.now, -1)
        self.tallies.gave_up += 1
        return GIVE_UP

    def _limiter_row(self, cid: int) -> np.ndarray:
        """The limiter state this device uses: its own row, or its group's (arrivals add rows)."""
        lim = self.limiter
        if not lim.per_device:
            return self.lstate[group_of(cid, self.lgroups, False)]
        if cid >= len(self.lstate):
            grown = lim.new_states(max(2 * len(self.lstate), cid + 1))
            grown[:len(self.lstate)] = self.lstate
            self.lstate = grown
        return self.lstate[cid]

    def attempt(self, cid: int, resume: bool = False) -> Generator:
        """One request: sent now, answered by the server or ended by the client's timeout."""
        env = self.env
        now = env.now
        self.counts["attempts"].add(now)
        timeout = self.timeout.next()
        if resume:
            self.counts["resumptions"].add(now)
        req = Request(cid, now, now + timeout, env.event(), resume)
        refusal = self.server.submit(req)
        if refusal is None:  # waiting, in service or blackholed: the reply or the deadline decides
            if timeout < math.inf:
                env.timeout(timeout, req).callbacks.append(expire)
            outcome = yield req.reply
        else:  # refused at once: the answer comes back one round trip later, unless the deadline is first
            rtt = self.s.client.rtt
            if rtt >= timeout:
                refusal = TIMEOUT_OUTCOME
                rtt = timeout
            if rtt > 0:
                yield env.timeout(rtt)
            outcome = refusal
        if outcome[0] == TIMEOUT:
            self.counts["timeouts"].add(env.now)
            self.steady_timeouts.add(now)
        elif outcome[0] == ERROR:
            self.counts["errors"].add(env.now)
        return outcome

    # --- supernodes (docs/model.md section 3.2) ----------------------------------------------------------

    def _start_p2p(self) -> None:
        """The wanted supernodes among the clients online at t = 0; every other one homed."""
        cfg, n = self.s.server.p2p, len(self.state)
        self.p2p_rules = cfg  # a `p2p-rules` event replaces it
        self.p2p = Supernodes(cfg.children, self.uniform.next)
        self.supernode = bytearray(n)
        # Online at t = 0 means online long before: eligible for promotion at once.
        self.online_since = array("d")
        self.online_since.frombytes(np.full(n, -np.inf).tobytes())
        online = np.flatnonzero(np.frombuffer(self.state, dtype=np.int8) == ONLINE)
        chosen = self.rng.choice(online, size=min(len(online), round(cfg.supernode_ratio * len(online))),
                                 replace=False) if len(online) else online
        for cid in chosen:
            self._promote(int(cid))
        others = np.setdiff1d(online, chosen, assume_unique=True)
        self.p2p.place_all(int(cid) for cid in self.rng.permutation(others))
        srv = self.server
        # Dedicated workers home clients too, as `workers / slots` always-on supernodes would
        # (Skype's own servers, the 2010 "mega-supernodes"): a capacity event adds homes.
        per_worker = cfg.children / cfg.slots if cfg.slots else 0.0
        srv.home_full = lambda: self.n_state[ONLINE] >= self.p2p.homes + srv.dedicated * per_worker
        self._supernodes_changed()
        self.env.process(self.p2p_ticks())

    def _supernodes_changed(self) -> None:
        self.levels["supernodes"].set(self.env.now, len(self.p2p))
        self.server.set_extra(self.s.server.p2p.slots * len(self.p2p))

    def _promote(self, cid: int) -> None:
        self.p2p.promote(cid)
        self.supernode[cid] = 1

    def _demote(self, cid: int) -> list[int]:
        """`cid` stops being a supernode; returns its orphans (the caller drops their sessions)."""
        self.supernode[cid] = 0
        return self.p2p.leave(cid)

    def _leave_online(self, cid: int) -> None:
        """An ONLINE client leaves (reboot, dropped or ended session): a supernode takes its
        children with it; an ordinary client frees its place in its home."""
        if self.supernode[cid]:
            orphans = self._demote(cid)
            self._supernodes_changed()
            for child in orphans:
                self.drop(child)
        else:
            self.p2p.unhome(cid)

    def p2p_ticks(self) -> Generator:
        """Every minute: promote towards the wanted count, then shut down under overload."""
        env, rng = self.env, self.rng
        while True:
            yield env.timeout(60.0)
            now, cfg = env.now, self.p2p_rules
            wanted = cfg.supernode_ratio * self.n_state[ONLINE]
            have = len(self.p2p)
            if have < wanted:
                k = min(stochastic_round(cfg.promotion_rate * wanted, rng.random()), math.ceil(wanted - have))
                if k > 0:
                    eligible = np.flatnonzero(
                        (np.frombuffer(self.state, dtype=np.int8) == ONLINE)
                        & (np.frombuffer(self.supernode, dtype=np.uint8) == 0)
                        & (np.frombuffer(self.online_since, dtype=float) <= now - cfg.promotion_delay))
                    for cid in rng.choice(eligible, size=min(k, len(eligible)), replace=False):
                        self._promote(int(cid))
                    self._supernodes_changed()
            have = len(self.p2p)
            if have and cfg.slots and self.server.waiting(now) / (cfg.slots * have) > cfg.overload_shutdown:
                k = stochastic_round(cfg.shutdown_rate * have, rng.random())
                if k > 0:
                    leaving = rng.choice(np.fromiter(self.p2p.children, dtype=np.int64, count=have),
                                         size=min(k, have), replace=False)
                    orphans = []
                    for cid in leaving:
                        orphans += self._demote(int(cid))
                    self._supernodes_changed()
                    for cid in leaving:  # an ordinary online client now: its clock restarts
                        self.online_since[int(cid)] = now
                        self.p2p.place(int(cid))
                    for child in orphans:
                        self.drop(child)

    # --- arrivals and events --------------------------------------------------------------

    def arrivals(self) -> Generator:
        """Poisson arrivals of new clients at `login_rate`, times any active surge factors."""
        env = self.env
        schedule = rate_schedule(self.s.population.login_rate,
                                 [(e.at, e.duration, e.factor) for e in self.s.events if e.kind == "surge"])
        unit = DrawStream(Exponential(1.0), self.rng)
        t = 0.0
        while True:
            t = next_arrival(t, unit.next(), schedule)
            if t >= self.end:
                return
            yield env.timeout(t - env.now)
            self.wake(self._new_client(CONNECTING), EPISODE)

    def fire(self, e) -> Generator:
        """One scenario event: wait for its `at`, then act (docs/model.md section 3.1)."""
        env = self.env
        yield env.timeout(e.at)
        if e.kind in ("reboot", "disconnect", "login"):
            yield from self.hit_clients(e)
        elif e.kind == "outage":
            yield from self.outage(e)
        elif e.kind == "capacity":
            yield from self.capacity(e)
        elif e.kind == "admit":
            self.server.admit = (e.fraction, ("refused", e.retry_after))
        elif e.kind == "partition":
            entry = (float(self.rng.random()), e.fraction, e.failure, e.hang,
                     math.inf if e.isolate_at is None else e.isolate_at)
            self.server.partitions.append(entry)
            yield env.timeout(e.duration)
            self.server.partitions.remove(entry)
        elif e.kind == "failover":
            self.failover(e)
        elif e.kind == "p2p-rules":
            self.p2p_rules = self.p2p_rules.model_copy(update=e.changes())
        elif e.kind == "token-purge":  # revoked: the next login of each picked client is a full one
            for cid in pick(self.rng, np.arange(len(self.token_at)), e.fraction):
                self.token_at[int(cid)] = -math.inf
        # surge: read by `arrivals`

    def hit_clients(self, e) -> Generator:
        state = np.frombuffer(self.state, dtype=np.int8)
        if e.kind == "login":
            eligible = np.flatnonzero((state == OFFLINE) & (np.frombuffer(self.rebooting, dtype=np.uint8) == 0))
            ids = pick(self.rng, eligible, e.fraction)
        elif self.p2p is not None and e.supernode_fraction is not None:
            role = np.frombuffer(self.supernode, dtype=np.uint8)
            ids = np.concatenate([pick(self.rng, np.flatnonzero((state == ONLINE) & (role == 0)), e.fraction),
                                  pick(self.rng, np.flatnonzero((state == ONLINE) & (role == 1)),
                                       e.supernode_fraction)])
            del role
        else:
            ids = pick(self.rng, np.flatnonzero(state == ONLINE), e.fraction)
        del state  # a view must not outlive this instant: new clients grow the array
        times = wave_times(self.rng, e.at, len(ids), e.spread, e.wave_table())
        downtimes = e.downtime.sample(self.rng, len(ids)) if e.kind == "reboot" else np.zeros(len(ids))
        if len(ids):
            self.last_event_end = max(self.last_event_end, float((times + downtimes).max()))
        order = np.argsort(times, kind="stable")
        env = self.env
        for i in order:
            t, cid = float(times[i]), int(ids[i])
            if t >= self.end:
                break
            if t > env.now:
                yield env.timeout(t - env.now)
            current = self.state[cid]
            if e.kind == "reboot" and current != OFFLINE:
                self.set_state(cid, OFFLINE)  # at once: a second hit in the same instant sees it
                self.rebooting[cid] = 1
                self.wake(cid, ("reboot", float(downtimes[i])))
            elif e.kind == "disconnect" and current == ONLINE:
                self.drop(cid)
            elif e.kind == "login" and current == OFFLINE and not self.rebooting[cid]:
                self.set_state(cid, CONNECTING)
                self.wake(cid, EPISODE)

    def drop(self, cid: int) -> None:
        """An ONLINE client loses its session and starts an episode (no-op for any other client:
        a supernode that left before may have taken it along already)."""
        if self.state[cid] != ONLINE:
            return
        self.set_state(cid, CONNECTING)
        self.wake(cid, EPISODE)

    def drop_all_sessions(self) -> None:
        for cid in np.flatnonzero(np.frombuffer(self.state, dtype=np.int8) == ONLINE):
            self.drop(int(cid))

    def outage(self, e) -> Generator:
        srv = self.server
        srv.outages.append(e.mode)  # overlapping outages: the tier is down until the last ends
        srv.outage = e.mode
        srv.lose_everything(answer=e.mode == "refuse")
        if e.drop_sessions:
            self.drop_all_sessions()
        yield self.env.timeout(e.duration)
        srv.outages.remove(e.mode)
        srv.outage = srv.outages[-1] if srv.outages else None
        if srv.outage is None:
            srv.dispatch()

    def capacity(self, e) -> Generator:
        """Workers become factor x configured, linearly over `ramp`; a newer event replaces a ramp."""
        srv, env = self.server, self.env
        self.ramp_id = ramp_id = self.ramp_id + 1
        start, target = srv.dedicated, int(round(srv.configured * e.factor))
        if e.ramp <= 0 or start == target:
            srv.set_workers(target)
            return
        step = 1 if target > start else -1
        for w in range(start + step, target + step, step):
            at = e.at + e.ramp * (w - start) / (target - start)
            if at > env.now:
                yield env.timeout(at - env.now)
            if self.ramp_id != ramp_id:
                return
            srv.set_workers(w)

    def failover(self, e) -> None:
        """The primary dies: in-flight requests fail, sessions drop, clients find the standby late."""
        srv = self.server
        n = len(self.state)
        learned = array("d", e.at + np.asarray(e.propagation.sample(self.rng, n), dtype=float))
        if n:
            self.last_event_end = max(self.last_event_end, max(learned))
        rng, propagation, at = self.rng, e.propagation, e.at

        def knows(cid: int, now: float) -> bool:
            while cid >= len(learned):  # clients that arrived later draw their own
                learned.append(at + propagation.sample(rng))
            return now >= learned[cid]

        srv.learned = knows
        srv.lose_everything(answer=True)
        self.drop_all_sessions()
        srv.set_workers(int(round(srv.dedicated * e.factor)))

    # --- the loop -------------------------------------------------------------------------

    def run(self, progress: Progress | None) -> int:
        """Step SimPy's own loop to the end time; returns the number of events processed."""
        env, end = self.env, self.end
        step, peek = env.step, env.peek
        events = 0
        try:
            while peek() < end:
                step()
                events += 1
                if progress is not None and not events & 0x3FFF:
                    progress(env.now, events)
        except simpy.core.EmptySchedule:  # pragma: no cover - peek() guards it
            pass
        for level in self.levels.values():
            level.close(end)
        self.watch.close(end)
        if progress is not None:
            progress(end, events)
        return events

