"""The Python side of the compiled engine: arrays, records, the scenario's events, refills.

`Engine` builds the packed arrays (`sim.fast.layout`) from a scenario, runs the compiled loop
(`sim.fast.loop.advance`) in stretches between the server-wide events' actions, which it takes
in the order `sim.des` fires them, grows the arrays and refills the draws when the loop asks,
and copies the records back into `RunRecords` at the end.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import time
from pathlib import Path

import numpy as np

from sim.fast import loop
from sim.fast.cache import CACHE
from sim.fast.events import EventActions
from sim.fast.heap import push, push_codes
from sim.fast.layout import (
    BLOCK, DONE, D_RESUME, D_U01, FAR_BUCKETS, FAR_CHUNK, FAR_WIDTH, GROW_HEAP, GROW_LOGINS, GROW_POOL, G_BELOW0,
    G_BUSY_TIME, G_EVER0, G_LAST_UP0, G_LOWEST, G_LOWEST_AT, G_SHARE, G_SINCE, G_TAIL_MAX, G_TOKENS, G_TOKENS_AT,
    G_WAITS_SUM, G_WASTED_TIME, INF, K_SESSION_END, K_TICK, K_WANT, MAX_PARTITIONS, NEAR_MIN, NOT_YET, N_G, N_P,
    N_Q, N_S, N_STREAMS, OFFLINE, ONLINE, P2P_TICK, P_FAR_INV, P_PER_WORKER, P_PROMO_DELAY, P_PROMO_RATE, P_RATIO,
    P_SHUTDOWN_AT, P_SHUTDOWN_RATE, Q_ALIFO, Q_CLIMIT, Q_CODEL, Q_DEDICATED, Q_EXTRA, Q_LIMITER, Q_L_DEVICE,
    Q_L_DRAWS, Q_L_GROUPS, Q_L_STOPS, Q_MARGIN, Q_QUEUE_RA, Q_RESUME, Q_RESUME_SVC, Q_WORKERS, REFILL, SPARE,
    S_EPISODES, S_EVENTS, S_FFREE, S_FFREEN, S_FREE, S_GAVE_UP, S_HN, S_LOGINS, S_N0, S_NONS, S_NSN, S_ON, S_POS,
    S_QH, S_QN, S_RJH, S_RJN, S_SFREE, S_WAITS_POS, S_WAITS_STARTED)
from sim.fast.p2p import seed, start_p2p
from sim.fast.server import control
from sim.fast.streams import POLICY_CODES
from sim.metrics import summarize, timeseries
from sim.record import COUNTS, LEVELS, RunRecords
from sim.results import Progress, RunResult, UnsupportedScenario
from sim.scenario import Scenario
from sim.waves import rate_schedule

SUPPORTED_EVENTS = ("reboot", "disconnect", "login", "outage", "capacity", "admit", "partition", "surge", "failover",
                    "p2p-rules", "token-purge")


def run(scenario: Scenario, *, until: float | None = None, rng: np.random.Generator | None = None,
        progress: Progress | None = None) -> RunResult:
    """Simulate one scenario to its `duration` (or `until`), as `sim.des.run` does, compiled.

    The compiled code is loaded (or compiled, the first time) before the clock starts: its cost
    is `warm_up()`'s, not the run's `wallclock_s`.
    """
    end = scenario.duration if until is None else min(until, scenario.duration)
    if end <= 0:
        raise UnsupportedScenario(f"--until must be > 0, got {until}")
    check_supported(scenario)
    warm_up()
    engine = Engine(scenario, end, rng if rng is not None else np.random.default_rng(scenario.seed))
    started = time.perf_counter()
    events = engine.run(progress)
    wallclock = time.perf_counter() - started
    rec = engine.records
    summary = summarize(rec, events=events, wallclock=wallclock, engine="fast")
    return RunResult(scenario, summary, timeseries(rec))


# A scenario that reaches every compiled function: supernodes, a capacity ramp, an outage.
_WARM_UP = """
name = "warm-up"
duration = "3m"
[population]
clients = 40
[client]
timeout = "1s"
policy = { name = "full-jitter" }
[server]
workers = 1
service_time = "10ms"
p2p = { supernode_ratio = 0.1, children = 10, slots = 1, overload_shutdown = 0.0, shutdown_rate = 0.5 }
[[events]]
at = "10s"
kind = "capacity"
factor = 3.0
ramp = "10s"
[[events]]
at = "30s"
kind = "outage"
duration = "5s"
drop_sessions = true
"""
_warm: list[float] = []  # seconds the first warm_up() took in this process


def warm_up() -> float:
    """Load the compiled loop from numba's cache, compiling it the first time (about a minute on
    2 cores; cached on disk for every later process). Returns the seconds it took in this process.

    Compiled once, never twice: processes starting together (a comparison's workers, the test
    workers, `make install`'s compile in the background) take turns on a lock next to the cache,
    so the first compiles and the others load what it wrote."""
    if not _warm:
        from sim.config import parse_scenario
        started = time.perf_counter()
        with compile_lock():
            s = parse_scenario(_WARM_UP, "sim.fast warm-up")
            Engine(s, s.duration, np.random.default_rng(0)).run()
        _warm.append(time.perf_counter() - started)
    return _warm[0]


@contextlib.contextmanager
def compile_lock():
    """An exclusive lock on `compile.lock` in numba's cache directory, for as long as the block
    runs; no lock where the directory cannot be written (numba then cannot cache either)."""
    folder = Path(os.environ.get("NUMBA_CACHE_DIR") or CACHE)
    try:
        import fcntl
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / "compile.lock", "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def warm_up_source() -> str:
    """How this process's warm-up got the compiled loop: from numba's cache, or by compiling it."""
    stats = loop.advance.stats
    return "loaded from numba's cache" if stats.cache_hits and not stats.cache_misses else \
        "compiled (and cached on disk for later runs)"


def check_supported(s: Scenario) -> None:
    """UnsupportedScenario naming the first thing this engine does not model yet."""
    missing = []
    for i, e in enumerate(s.events):
        if e.kind not in SUPPORTED_EVENTS:
            missing.append(f"events.{i}: kind = \"{e.kind}\"")
    if sum(e.kind == "partition" for e in s.events) > MAX_PARTITIONS:
        missing.append(f"more than {MAX_PARTITIONS} partition events")
    if missing:
        raise UnsupportedScenario(f"engine 'fast' does not support {', '.join(missing)} yet "
                                  f"(events it supports: {', '.join(SUPPORTED_EVENTS)}); use engine 'des'")


class Engine(EventActions):
    """Arrays, records and the Python side of the loop: refills, growth; the scenario's events
    act through `EventActions`."""

    def __init__(self, s: Scenario, end: float, rng: np.random.Generator):
        self.s, self.end, self.rng = s, end, rng
        self.records = rec = RunRecords(s, end)
        pop, c, srv = s.population, s.client, s.server
        n, online = pop.clients, int(round(pop.online_at_start * pop.clients))
        surges = [(e.at, e.duration, e.factor) for e in s.events if e.kind == "surge"]
        self.arrivals = arrival_times(rng, rate_schedule(pop.login_rate, surges), end)
        m = n + len(self.arrivals)
        self.st = np.full(m, NOT_YET, dtype=np.int8)
        self.st[:online], self.st[online:n] = ONLINE, OFFLINE
        # What an attempt reads and writes, one 64-byte row per client (one cache line: at millions
        # of clients a miss per array would dominate): generation, attempts in the episode, its
        # first attempt, this attempt's send time, the previous delay, the Retry-After of the
        # refusal on its way, when it knows the standby (failover), on a retry timer or not.
        self.rows = _rows(m + 2)  # two spare rows: the column views are strided even for 0 or 1 client
        (self.gen, self.natt, self.first, self.sent, self.prev, self.cra, self.learned,
         self.orbiting) = (self.rows[:, k] for k in range(8))
        self.prev[:] = np.nan
        self.learned[:] = -INF
        self.rebooting = np.zeros(m, dtype=np.uint8)
        self.begun = np.zeros(m)
        # the fixed uniform key of each client (admit and partition membership), as des draws it
        gated = any(e.kind in ("admit", "partition") for e in s.events)
        self.keys = rng.random(m) if gated else np.zeros(m)
        self.partitions: list[tuple[float, float, float, float, float]] = []
        self.PT = np.zeros((MAX_PARTITIONS, 5))
        self.outages: list[int] = []
        self.configured = srv.workers
        self.now = 0.0                              # the time of the event acting (Python side)
        rec.levels["online"].set(0.0, online)
        rec.levels["offline"].set(0.0, n - online)
        rec.watch.update(0.0, online, 0, 0)
        self._init_heap(pop, n, online, m)
        self._init_pool(min(m, srv.queue_limit) + srv.workers + 64)
        self.policy = c.build_policy()
        # a resumption's own service time (docs/model.md section 3.4): drawn only when resumptions
        # can happen, and last, so that every other stream draws what it drew before it existed
        resume = srv.resume.service_time if srv.resume is not None and c.resume_window > 0 else None
        self.streams = (c.timeout, c.connect_delay, c.relaunch, pop.session, pop.offline, srv.service_time, None, None,
                        resume)
        self.draws = np.empty((N_STREAMS, BLOCK))
        for k in range(N_STREAMS):
            self.draws[k] = self._sample(k, BLOCK)
        self.hits = (np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0))
        self.logins = np.empty(max(1024, m))
        self._init_params(s, rec, m, n)
        self._init_limiter(c, n, m)
        self._init_protections(s, online, m)
        self._start_p2p(srv.p2p, m)
        workers = int(self.Q[Q_WORKERS])
        rec.levels["workers"].set(0.0, workers)
        rec.capacity_at_start = INF if srv.service_time.mean == 0 else workers / srv.service_time.mean
        self._export_records(rec)

    # --- setup ----------------------------------------------------------------------------

    def _init_heap(self, pop, n: int, online: int, m: int) -> None:
        """Sessions of the clients online at t = 0 and offline times of the others, in time order
        (placed in the event queue by `_init_params`, with `push_codes`, once P and S exist)."""
        times, ids, kinds = [np.empty(0)], [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
        for dist, lo, hi, kind in ((pop.session, 0, online, K_SESSION_END), (pop.offline, online, n, K_WANT)):
            if hi > lo and not dist.is_infinite:
                t = np.asarray(dist.sample(self.rng, hi - lo), dtype=float)
                keep = np.isfinite(t)
                times.append(t[keep])
                ids.append(np.arange(lo, hi, dtype=np.int64)[keep])
                kinds.append(np.full(int(keep.sum()), kind, dtype=np.int64))
        t, a, k = np.concatenate(times), np.concatenate(ids), np.concatenate(kinds)
        order = np.argsort(t, kind="stable")
        self.start_entries = (t[order], a[order] * 16 + k[order])
        # the event queue (`sim.fast.heap`): near heap, the ring's rows in chunks (the free ones a
        # list), its buckets, the overflow heap; each grows by doubling when the loop asks
        self.H = np.zeros((4 * NEAR_MIN + 1024, 4))
        chunks = m // FAR_CHUNK + 1024
        self.F = np.zeros((chunks * FAR_CHUNK, 4))
        self.FN = np.arange(1, chunks + 1, dtype=np.int64)
        self.FN[-1] = -1
        self.FH = np.full(FAR_BUCKETS, -1, dtype=np.int64)
        self.FC = np.zeros(FAR_BUCKETS, dtype=np.int64)
        self.FT = np.zeros(FAR_BUCKETS, dtype=np.int64)
        self.O = np.zeros((len(t) + 1024, 4))

    def _init_pool(self, cap: int) -> None:
        cap = int(cap)
        self.rc, self.rg = np.zeros(cap, dtype=np.int64), np.zeros(cap)  # client, its generation
        self.rsent, self.rdl, self.rstart = np.zeros(cap), np.zeros(cap), np.zeros(cap)
        self.rstate, self.rhang = np.zeros(cap, dtype=np.int8), np.zeros(cap, dtype=np.uint8)
        self.free = np.arange(cap - 1, -1, -1, dtype=np.int64)
        self.queue = np.zeros(cap, dtype=np.int64)
        self.rejects = np.zeros(cap, dtype=np.int64)  # reject work waiting for a worker (a ring, fifo)

    def _init_params(self, s: Scenario, rec: RunRecords, m: int, n: int) -> None:
        c, srv, pol = s.client, s.server, self.policy
        base, cap, mult, top = pol.kernel_args()
        rl, ov = srv.rate_limit, srv.overload
        thresholds = rec.watch.thresholds
        self.P = np.array([
            s.bin_width, rec.steady.start, rec.steady.end, rec.tail.start, c.rtt, c.give_up_after, srv.retry_after,
            srv.queue_limit, base, cap, mult, top, ov.knee if ov else 0.0, ov.per_request if ov else 0.0,
            rl.rate if rl else 0.0, rl.bucket if rl else 0.0, rl.retry_after if rl else 0.0,
            rec.watch.start, thresholds[0], thresholds[1], srv.reject_cost, INF, 0.0, 0.0, 0.0, 0.0, INF, 0.0, 0.0,
            srv.fault_rate, c.resume_window, srv.retry_after_max, srv.service_time.mean, 0.0], dtype=float)
        p2p = srv.p2p
        self.Q = np.array([srv.workers, POLICY_CODES[type(pol).kernel], int(pol.random), pol.max_attempts,
                           int(srv.discipline == "lifo"), int(srv.drop_expired or srv.cancel_on_timeout),
                           int(srv.cancel_on_timeout), int(c.honor_retry_after), len(rec.counts["attempts"].bins),
                           int(ov is not None), int(rl is not None), n, srv.workers, 0, int(p2p is not None),
                           p2p.children if p2p else 0, p2p.slots if p2p else 0, 16 + (p2p.children if p2p else 0),
                           0, 0, 0, 0, 1, int(srv.fault_when == "fast"), 0, 0, 0, 0, 0, 0], dtype=np.int64)
        assert len(self.P) == N_P and len(self.Q) == N_Q, "sim.fast.layout's P_ or Q_ fields changed"
        self.S = np.zeros(N_S, dtype=np.int64)
        self.S[S_FFREE], self.S[S_FFREEN] = 0, len(self.FN)
        self.P[P_FAR_INV] = 1.0 / FAR_WIDTH
        push_codes(self.queue_arrays(), self.S, self.P, *self.start_entries)
        del self.start_entries
        self.S[S_FREE] = len(self.free)
        online = int((self.st == ONLINE).sum())
        self.S[S_N0 + OFFLINE], self.S[S_N0 + ONLINE] = int((self.st == OFFLINE).sum()), online
        self.G = np.zeros(N_G)
        self.G[G_TOKENS], self.G[G_TOKENS_AT] = (rl.bucket if rl else 0.0), 0.0

    def _init_limiter(self, c, n: int, m: int) -> None:
        """The client limiter's arrays (`lm`, docs/model.md section 4.7): a row of state per client
        (scope "device": the m clients, arrivals included) or per group (as `sim.des` sizes them:
        `groups_for` the clients at t = 0); size-1 dummies without a limiter."""
        self.limiter = lim = c.build_limiter()
        if lim is None:
            self.lm = (np.zeros(8), np.zeros((1, 1)), np.zeros(1), np.zeros(1))
            return
        rows = lim.groups_for(m if lim.per_device else n)
        self.lm = (np.ascontiguousarray(lim.prm, dtype=float), lim.new_states(rows),
                   np.ascontiguousarray(lim.initial_row(), dtype=float), np.zeros(max(1, m)))
        Q = self.Q
        Q[Q_LIMITER], Q[Q_L_DRAWS], Q[Q_L_STOPS] = lim.code, int(lim.draws), int(lim.stops_retries)
        Q[Q_L_DEVICE], Q[Q_L_GROUPS] = int(lim.per_device), rows

    def _init_protections(self, s: Scenario, online: int, m: int) -> None:
        """The server's adaptive protections and the clients' tokens (`pr`, docs/model.md sections
        3.3, 3.4), as `LoginServer` and `Model` set them up; size-1 dummies for what is off."""
        c, srv, Q = s.client, s.server, self.Q
        lim, codel = srv.concurrency, srv.codel
        lprm, lrow = lim.state() if lim is not None else (np.zeros(1), np.zeros(1))
        cprm, crow = codel.state() if codel is not None else (np.zeros(1), np.zeros(1))
        if c.resume_window > 0:  # the clients online at t = 0 logged in at 0; the others hold no token
            tok = np.full(m, -INF)
            tok[:online] = 0.0
        else:
            tok = np.full(1, -INF)
        self.pr = tuple(np.ascontiguousarray(a, dtype=float) for a in (lprm, lrow, cprm, crow, tok))
        Q[Q_CLIMIT], Q[Q_CODEL] = int(lim is not None), int(codel is not None)
        Q[Q_ALIFO] = int(codel is not None and codel.adaptive_lifo)
        Q[Q_QUEUE_RA] = int(srv.retry_after_from == "queue")
        Q[Q_RESUME] = int(c.resume_window > 0)
        Q[Q_RESUME_SVC] = int(self.streams[D_RESUME] is not None)

    def _start_p2p(self, cfg, m: int) -> None:
        """docs/model.md section 3.2 at t = 0 (as `Model._start_p2p`): the wanted supernodes among the clients
        online, every other one homed on a uniformly chosen supernode with room; ticks from 60 s."""
        i4 = np.int32
        if cfg is None:
            self.pp = (np.zeros(1, i4), np.zeros(1), *(np.zeros(1, i4) for _ in range(14)))
            return
        slots = int(math.ceil(cfg.supernode_ratio * m)) + 2  # never more supernodes than that
        since = np.full(m, -INF)  # online at t = 0 means online long before: ripe at once
        online = np.flatnonzero(self.st == ONLINE)
        onpos = np.full(m, -1, dtype=i4)
        onpos[online] = np.arange(len(online), dtype=i4)
        ons = np.zeros(m, dtype=i4)
        ons[: len(online)] = online
        self.pp = (np.full(m, -1, i4), since, np.full(m, -1, i4), np.full(m, -1, i4), np.full(m, -1, i4), onpos, ons,
                   np.full(slots, -1, i4), np.full(slots, -1, i4), np.zeros(slots, i4), np.full(slots, -1, i4),
                   np.zeros(slots, i4), np.full(slots, -1, i4), np.zeros(slots, i4),
                   np.arange(slots - 1, -1, -1, dtype=i4), np.zeros(max(slots, m), i4))
        S = self.S
        S[S_NONS], S[S_SFREE] = len(online), slots
        self.set_rules(cfg)
        self.P[P_PER_WORKER] = cfg.children / cfg.slots if cfg.slots else 0.0
        seed(int(self.rng.integers(2**63)))
        rng = self.rng
        chosen = (rng.choice(online, size=min(len(online), round(cfg.supernode_ratio * len(online))), replace=False)
                  if len(online) else online)
        others = rng.permutation(np.setdiff1d(online, chosen, assume_unique=True))
        start_p2p(self.Q, S, self.pp, chosen.astype(i4), others.astype(i4))
        nsn = int(S[S_NSN])
        self.Q[Q_EXTRA] = cfg.slots * nsn
        self.Q[Q_WORKERS] = self.Q[Q_DEDICATED] + self.Q[Q_EXTRA]
        self.records.levels["supernodes"].set(0.0, nsn)
        if P2P_TICK < self.end:
            self.grow_heap(int(S[S_HN]) + 64)
            push(self.queue_arrays(), S, self.P, P2P_TICK, K_TICK, 0, 0)

    def set_rules(self, cfg) -> None:
        self.rules = cfg
        P = self.P
        P[P_RATIO], P[P_PROMO_DELAY], P[P_PROMO_RATE] = cfg.supernode_ratio, cfg.promotion_delay, cfg.promotion_rate
        P[P_SHUTDOWN_AT], P[P_SHUTDOWN_RATE] = cfg.overload_shutdown, cfg.shutdown_rate

    def _sample(self, k: int, size: int) -> np.ndarray:
        dist = self.streams[k]
        if k == D_U01:  # hang or not, fail fast or not (partitions); fault or not; the adaptive limiter's
            return self.rng.random(size)
        if k == D_RESUME and dist is None:  # no resumption draws: no random numbers taken
            return np.zeros(size)
        if dist is None:
            return self.rng.random(size) if self.policy.random else np.zeros(size)
        return np.broadcast_to(np.asarray(dist.sample(self.rng, size), dtype=float), (size,))

    # --- records: RunRecords objects <-> arrays ------------------------------------------

    def _export_records(self, rec: RunRecords) -> None:
        nbins = len(rec.counts["attempts"].bins)
        self.WS = np.array([w.start for w in (rec.steady, rec.tail)])
        lv = [rec.levels[name] for name in LEVELS]
        self.LV = np.array([[x.value, x.since, x.acc] for x in lv], dtype=float)
        self.LB = np.array([x.bins for x in lv], dtype=float).reshape(len(LEVELS), nbins)
        self.LS = np.array([[np.nan if v is None else v for v in x.snaps] for x in lv], dtype=float)
        cn = [rec.counts[name] for name in COUNTS]
        self.CT = np.array([x.total for x in cn], dtype=np.int64)
        self.CB = np.array([x.bins for x in cn], dtype=np.int64).reshape(len(COUNTS), nbins)
        self.CS = np.array([[-1 if v is None else v for v in x.snaps] for x in cn], dtype=np.int64)
        self.SCB = np.zeros((2, nbins), dtype=np.int64)
        self.SCT = np.zeros(2, dtype=np.int64)
        self.SCS = np.zeros(2, dtype=np.int64)
        w, G = rec.watch, self.G
        G[G_SHARE], G[G_SINCE], G[G_TAIL_MAX], G[G_LOWEST], G[G_LOWEST_AT] = (
            w.share, w.since, w.tail_max, w.lowest, w.lowest_at)
        G[G_BELOW0:G_BELOW0 + 2], G[G_EVER0:G_EVER0 + 2], G[G_LAST_UP0:G_LAST_UP0 + 2] = w.below, w.ever, w.last_up

    def _import_records(self) -> None:
        rec, G, S = self.records, self.G, self.S
        windows = (rec.steady, rec.tail)
        for k, name in enumerate(LEVELS):
            x = rec.levels[name]
            x.value, x.since, x.acc = (float(v) for v in self.LV[k])
            x.bins = self.LB[k].tolist()
            x.snaps = [None if math.isnan(v) else float(v) for v in self.LS[k]]
            _restore_pending(x, windows)
            x.close(self.end)
        for k, name in enumerate(COUNTS):
            x = rec.counts[name]
            x.total, x.bins = int(self.CT[k]), self.CB[k].tolist()
            x.snaps = [None if v < 0 else int(v) for v in self.CS[k]]
            _restore_pending(x, windows)
        for k, x in enumerate((rec.steady_refusals, rec.steady_timeouts)):
            x.total, x.bins, x.sums = int(self.SCT[k]), self.SCB[k].tolist(), [int(self.SCS[k])]
        t = rec.tallies
        t._login_times = self.logins[: S[S_LOGINS]].copy()
        t.logins, t.episodes, t.gave_up = int(S[S_LOGINS]), int(S[S_EPISODES]), int(S[S_GAVE_UP])
        t.busy_time, t.wasted_time, t.waits_sum = float(G[G_BUSY_TIME]), float(G[G_WASTED_TIME]), float(G[G_WAITS_SUM])
        t.waits_started, t.waits_positive = int(S[S_WAITS_STARTED]), int(S[S_WAITS_POS])
        w = rec.watch
        w.share, w.since, w.tail_max = float(G[G_SHARE]), float(G[G_SINCE]), float(G[G_TAIL_MAX])
        w.lowest, w.lowest_at = float(G[G_LOWEST]), float(G[G_LOWEST_AT])
        w.below = [bool(v) for v in G[G_BELOW0:G_BELOW0 + 2]]
        w.ever = [bool(v) for v in G[G_EVER0:G_EVER0 + 2]]
        w.last_up = [float(v) for v in G[G_LAST_UP0:G_LAST_UP0 + 2]]
        w.close(self.end)

    # --- the run --------------------------------------------------------------------------

    def run(self, progress: Progress | None = None) -> int:
        """Loop stretches between the events' actions; returns the number of events processed.

        `progress(sim_time, events)` is called about 200 times over the run.

        The actions wait in a heap ordered as SimPy orders them: by time, then by when they were
        scheduled (every event's `at` at the start, in file order; an end when its event fired).
        """
        seq = itertools.count()
        self.actions = [(e.at, next(seq), self.fire, e) for e in self.s.events if e.at < self.end]
        heapq.heapify(self.actions)
        self._seq = seq
        self.progress = progress
        self.reported = 0.0
        while self.actions and self.actions[0][0] < self.end:
            at, _, act, arg = heapq.heappop(self.actions)
            self.advance(at)
            act(arg)
        self.advance(self.end)
        if progress is not None:
            progress(self.end, int(self.S[S_EVENTS]))
        self._import_records()
        return int(self.S[S_EVENTS])

    def later(self, at: float, act, arg) -> None:
        heapq.heappush(self.actions, (at, next(self._seq), act, arg))

    def _loop_args(self) -> tuple:
        return (self.P, self.Q, self.S, self.G,
                (self.st, self.gen, self.rebooting, self.orbiting, self.begun, self.first, self.sent,
                 self.prev, self.natt, self.cra, self.keys, self.learned),
                self.queue_arrays(),
                (self.rc, self.rg, self.rsent, self.rdl, self.rstart, self.free, self.queue, self.rstate,
                 self.rhang, self.rejects),
                self.draws, self.PT,
                (self.LV, self.LB, self.LS, self.WS, self.CT, self.CB, self.CS, self.SCB, self.SCT,
                 self.SCS, self.logins, self.S))

    def advance(self, until: float) -> None:
        """Run the loop to just before `until`, in slices of 1/200 of the run when reporting."""
        step = self.end / 200
        while self.progress is not None and self.reported + step < until:
            self.reported += step
            self._advance(self.reported)
            self.progress(self.reported, int(self.S[S_EVENTS]))
        self._advance(until)

    def _advance(self, until: float) -> None:
        while True:
            P, Q, S, G, cl, hp, pool, draws, PT, rec = self._loop_args()
            status = loop.advance(float(until), P, Q, S, G, cl, hp, pool, draws, PT, self.hits, self.arrivals, rec,
                                  self.pp, self.lm, self.pr)
            if status == DONE:
                return
            self._make_room(status)

    def queue_arrays(self) -> tuple:
        """The event queue `hp` (`sim.fast.layout`), as the kernels take it."""
        return self.H, self.F, self.FN, self.FH, self.FC, self.FT, self.O

    def _make_room(self, status: int) -> None:
        if status == GROW_HEAP:
            self._grow_queue()
        elif status == REFILL:
            self._refill()
        elif status == GROW_POOL:
            self._grow_pool()
        elif status == GROW_LOGINS:
            self.logins = _grown(self.logins, 2 * len(self.logins))

    def grow_heap(self, size: int) -> None:
        """Room for `size` entries in the near heap (each push of an event may land there)."""
        if size > len(self.H):
            self.H = _grown(self.H, size)

    def _grow_queue(self) -> None:
        """The part of the event queue the loop found short: the ring's free chunks, the overflow
        heap, else the near heap (to take the next bucket, or an event's pushes)."""
        S, margin = self.S, int(self.Q[Q_MARGIN])
        if S[S_FFREEN] < margin:
            old = len(self.FN)
            self.F = _grown(self.F, 2 * len(self.F))
            links = np.arange(old + 1, 2 * old + 1, dtype=np.int64)
            links[-1] = S[S_FFREE]  # the new rows in front of the free list
            self.FN = np.concatenate([self.FN, links])
            S[S_FFREE], S[S_FFREEN] = old, S[S_FFREEN] + old
        elif S[S_ON] + margin > len(self.O):
            self.O = _grown(self.O, 2 * len(self.O))
        else:
            self.grow_heap(2 * len(self.H))

    def control(self, code: int, x: int) -> None:
        """A server action at the current time (the `at` the loop stopped before)."""
        self.grow_heap(int(self.S[S_HN]) + len(self.rc) + 64)  # a loss answers at most every slot
        now = self.now
        P, Q, S, G, cl, hp, pool, draws, PT, rec = self._loop_args()
        control(code, x, now, P, Q, S, G, cl, hp, pool, draws, PT, rec, self.pr)

    def _refill(self) -> None:
        """Streams running low keep their unread draws and get a fresh block behind them."""
        for k in range(N_STREAMS):
            used = int(self.S[S_POS + k])
            if used + 4 * SPARE > BLOCK:
                self.draws[k, : BLOCK - used] = self.draws[k, used:]
                self.draws[k, BLOCK - used:] = self._sample(k, used)
                self.S[S_POS + k] = 0

    def _grow_pool(self) -> None:
        old = len(self.rc)
        new = 2 * old
        self.rc, self.rg, self.rsent, self.rdl, self.rstart, self.rstate, self.rhang = (
            _grown(a, new) for a in (self.rc, self.rg, self.rsent, self.rdl, self.rstart, self.rstate, self.rhang))
        free = np.empty(new, dtype=np.int64)
        nfree = int(self.S[S_FREE])
        free[:nfree] = self.free[:nfree]
        free[nfree:nfree + new - old] = np.arange(new - 1, old - 1, -1)
        self.free = free
        self.S[S_FREE] = nfree + new - old
        for ring, head, count in (("queue", S_QH, S_QN), ("rejects", S_RJH, S_RJN)):
            h, n = int(self.S[head]), int(self.S[count])
            grown = np.zeros(new, dtype=np.int64)
            grown[:n] = getattr(self, ring)[(h + np.arange(n)) % old]
            setattr(self, ring, grown)
            self.S[head] = 0

def _rows(m: int, width: int = 8) -> np.ndarray:
    """An (m, width) float array whose rows start on 64-byte boundaries (a row is a cache line).
    Its columns are strided views, one compiled signature for any m >= 2."""
    pad = 64 // 8
    buf = np.zeros(m * width + pad)
    skip = (-buf.ctypes.data % 64) // 8
    return buf[skip: skip + m * width].reshape(m, width)


def _restore_pending(x, windows) -> None:
    x.pending = sorted((w.start, k) for k, w in enumerate(windows) if x.snaps[k] is None)
    x.next_start = x.pending[0][0] if x.pending else INF


def _grown(a: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size,) + a.shape[1:], dtype=a.dtype)
    out[: len(a)] = a
    return out


def arrival_times(rng: np.random.Generator, schedule: list[tuple[float, float]], end: float) -> np.ndarray:
    """Poisson arrival times before `end` at a piecewise-constant rate (`sim.waves.rate_schedule`):
    cumulative Exp(1) draws mapped through the inverse integrated rate, as `next_arrival` does one
    at a time."""
    starts = np.array([t for t, _ in schedule] + [INF])
    rates = np.array([r for _, r in schedule])
    lengths = np.minimum(starts[1:], end) - np.minimum(starts[:-1], end)
    cum = np.concatenate([[0.0], np.cumsum(rates * lengths)])  # integrated rate at each step start
    total = float(cum[-1])
    if total <= 0:
        return np.empty(0)
    chunks, y = [], 0.0
    block = int(total * 1.05) + 64
    while y < total:
        ys = y + np.cumsum(rng.exponential(1.0, block))
        chunks.append(ys)
        y = float(ys[-1])
    ys = np.concatenate(chunks)
    ys = ys[ys < total]
    k = np.searchsorted(cum[:-1], ys, side="right") - 1  # the step in which each arrival falls
    times = starts[k] + (ys - cum[k]) / rates[k]
    return times[times < end]
