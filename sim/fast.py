"""The population-scale engine (`fast`): MODEL.md section 3 as a compiled event loop.

The same model as the reference engine (`sim.des`), executed by a different scheduler: per-client
state lives in numpy arrays, and one numba-compiled loop pops a 4-ary heap of (time, seq, kind,
client) entries and moves clients through the same steps as `Model.life` (episode, attempt,
retry timer, online, offline, reboot, give-up). Agreement with `des` is statistical equality,
not an approximation; `tests/test_fast.py` holds the two engines against each other.

Random numbers come from the one seeded generator: each distribution's own vectorised `sample`
fills blocks that the loop consumes (it returns to Python for more), so every draw has exactly
the distribution `des` draws from. The policy formulas are `sim.policies`' own functions,
compiled. Who a fraction event picks and when (`sim.waves`) is drawn in Python at the event's
`at`, between two stretches of the loop; the hits then join the loop as a sorted stream.

    >>> from sim.config import load_scenario
    >>> result = run(load_scenario("scenarios/quickstart.toml"), until=600.0)
    >>> result.summary["engine"]
    'fast'

Server-wide events (outage, capacity, admit, partition, failover) act in Python between two
stretches of the loop, at their `at` and at their ends, in the order `des` fires them (file order
at the same instant, an end after the events scheduled before it); a capacity ramp's steps are
heap entries of the loop.

Supernodes (MODEL.md 3.2) live in the loop too: per client its supernode slot, home and place
in its home's child list (a doubly linked list through two arrays), so a leaving supernode finds
its orphans in O(children); the minute's tick is a heap entry. Promotion picks are uniform among
the ripe ONLINE ordinary clients by rejection from all of them (exact, and an exact full scan
when rejection is slow); these picks, home choices and the tick's stochastic rounding draw from
numba's generator, seeded from the run's generator, so a seed still fixes the run.

Everything in the scenario format is supported but more than 64 partition events (anything
unsupported raises `UnsupportedScenario` naming it, and `--engine auto` falls back to des).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time

import numpy as np
from numba import njit
from numba.extending import register_jitable

from sim import policies
from sim.results import Progress, RunResult, UnsupportedScenario
from sim.metrics import summarize, timeseries
from sim.record import COUNTS, LEVELS, RunRecords
from sim.scenario import Scenario
from sim.waves import pick, rate_schedule, wave_times

__all__ = ["run", "policy_delay", "SUPPORTED_EVENTS"]

for _kernel in policies.KERNELS:  # the formulas become callable from compiled code, unchanged for Python
    register_jitable(_kernel)

SUPPORTED_EVENTS = ("reboot", "disconnect", "login", "outage", "capacity", "admit", "partition", "surge", "failover",
                    "p2p-rules")
INF = math.inf

# client states (as in sim.des), plus a slot for a login_rate client that has not arrived yet
OFFLINE, CONNECTING, ONLINE, GAVE_UP, NOT_YET = 0, 1, 2, 3, 4
L_QUEUE, L_SERVING, L_REJECTING, L_WORKERS, L_SUPERNODES, L_ORBIT = (
    LEVELS.index(n) for n in ("queue", "serving", "rejecting", "workers", "supernodes", "orbit"))
C_ATTEMPTS, C_SUCCESSES, C_REJECTED, C_TIMEOUTS, C_ERRORS, C_WASTED = (
    COUNTS.index(n) for n in ("attempts", "successes", "rejected", "timeouts", "errors", "wasted"))
SC_REFUSALS, SC_TIMEOUTS = 0, 1  # start counters: steady_refusals, steady_timeouts

# heap entry kinds: a client's timer or reply (valid while its generation matches; a refusal's
# Retry-After waits in `cra`), a service or reject-work end (by pool slot), a ramp step (by ramp id)
(K_SESSION_END, K_WANT, K_REBOOT_END, K_ATTEMPT, K_RETRY, K_REFUSED, K_TIMEOUT, K_DONE, K_REJECT_DONE,
 K_WORKERS, K_TICK) = range(11)
P2P_TICK = 60.0  # MODEL.md 3.2: the supernode rules act every minute
# pool slot states: what a request slot holds
R_FREE, R_QUEUED, R_SERVING, R_REJECT, R_DEAD = range(5)
# hit kinds (the sorted stream of fraction-event hits)
H_REBOOT, H_DISCONNECT, H_LOGIN = 0, 1, 2
# what a client does next inside one event
(A_NONE, A_EPISODE, A_ATTEMPT, A_FAIL, A_TIMEOUT, A_SUCCESS, A_ONLINE, A_OFFLINE, A_REBOOT, A_GIVE_UP,
 A_ERROR) = range(11)
# control codes: server actions Python asks for between two stretches
CT_WORKERS, CT_LOSE, CT_DISPATCH = range(3)
# outage modes (S_OUTAGE)
OUT_NONE, OUT_REFUSE, OUT_BLACKHOLE = range(3)
MAX_PARTITIONS = 64

# draw streams: blocks of each distribution's own samples
D_TIMEOUT, D_CONNECT, D_RELAUNCH, D_SESSION, D_OFFLINE, D_SERVICE, D_UNIFORM, D_U01 = range(8)
N_STREAMS, BLOCK, SPARE = 8, 1 << 15, 8

# float parameters
(P_WIDTH, P_STEADY0, P_STEADY1, P_TAIL0, P_RTT, P_GIVE_UP, P_RETRY_AFTER, P_QLIMIT, P_BASE, P_CAP, P_MULT,
 P_TOP, P_KNEE, P_PER_REQ, P_RL_RATE, P_RL_BURST, P_RL_RA, P_W_START, P_THR0, P_THR1, P_REJECT_COST,
 P_ADMIT, P_ADMIT_RA, P_RATIO, P_PROMO_DELAY, P_PROMO_RATE, P_SHUTDOWN_AT, P_SHUTDOWN_RATE, P_PER_WORKER) = range(29)
# int parameters
(Q_WORKERS, Q_POLICY, Q_RANDOM, Q_MAX_ATT, Q_LIFO, Q_DROP, Q_CANCEL, Q_HONOR, Q_NBINS, Q_OVERLOAD, Q_RL, Q_ABASE,
 Q_DEDICATED, Q_EXTRA, Q_P2P, Q_CHILDREN, Q_SLOTS, Q_MARGIN) = range(18)
# int state
(S_HN, S_SEQ, S_QH, S_QN, S_FREE, S_BUSY, S_SERVING, S_HIT, S_ARR, S_EVENTS, S_N0, S_N1, S_N2, S_N3, S_EPISODES,
 S_GAVE_UP, S_WAITS_STARTED, S_WAITS_POS, S_LOGINS, S_OUTAGE, S_RJH, S_RJN, S_REDISPATCH, S_RAMP, S_NPART,
 S_NSN, S_NROOM, S_NONS, S_SFREE, S_POS) = range(30)
N_S = S_POS + N_STREAMS
# float state
(G_BUSY_TIME, G_WASTED_TIME, G_WAITS_SUM, G_TOKENS, G_TOKENS_AT, G_SHARE, G_SINCE, G_TAIL_MAX, G_LOWEST,
 G_LOWEST_AT, G_BELOW0, G_BELOW1, G_EVER0, G_EVER1, G_LAST_UP0, G_LAST_UP1, G_REDISPATCH_AT) = range(17)

# loop exit codes: done, or Python must grow / refill something and call again
DONE, GROW_HEAP, REFILL, GROW_POOL, GROW_LOGINS = range(5)

POLICY_CODES = {k: i for i, k in enumerate(policies.KERNELS[1:])}  # none_delay -> 0, ... grpc_delay -> 7


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
    """Load the compiled loop from numba's cache, compiling it the first time (~30-60 s on 2
    cores; cached on disk for every later process). Returns the seconds it took in this process."""
    if not _warm:
        from sim.config import parse_scenario
        started = time.perf_counter()
        s = parse_scenario(_WARM_UP, "sim.fast warm-up")
        Engine(s, s.duration, np.random.default_rng(0)).run()
        _warm.append(time.perf_counter() - started)
    return _warm[0]


def warm_up_source() -> str:
    """How this process's warm-up got the compiled loop: from numba's cache, or by compiling it."""
    stats = _advance.stats
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


class Engine:
    """Arrays, records and the Python side of the loop: the events' actions, refills, growth."""

    def __init__(self, s: Scenario, end: float, rng: np.random.Generator):
        self.s, self.end, self.rng = s, end, rng
        self.records = rec = RunRecords(s, end)
        pop, c, srv = s.population, s.client, s.server
        n, online = pop.clients, int(round(pop.online_at_start * pop.clients))
        surges = [(e.at, e.duration, e.factor) for e in s.events if e.kind == "surge"]
        self.arrivals = _arrival_times(rng, rate_schedule(pop.login_rate, surges), end)
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
        self.streams = (c.timeout, c.connect_delay, c.relaunch, pop.session, pop.offline, srv.service_time, None, None)
        self.draws = np.empty((N_STREAMS, BLOCK))
        for k in range(N_STREAMS):
            self.draws[k] = self._sample(k, BLOCK)
        self.hits = (np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0))
        self.logins = np.empty(max(1024, m))
        self._init_params(s, rec, m, n)
        self._start_p2p(srv.p2p, m)
        workers = int(self.Q[Q_WORKERS])
        rec.levels["workers"].set(0.0, workers)
        rec.capacity_at_start = INF if srv.service_time.mean == 0 else workers / srv.service_time.mean
        self._export_records(rec)

    # --- setup ----------------------------------------------------------------------------

    def _init_heap(self, pop, n: int, online: int, m: int) -> None:
        """Sessions of the clients online at t = 0 and offline times of the others: a sorted
        array is already a heap."""
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
        size = len(t)
        cap = size + 2 * m + 1024
        self.H = np.zeros((cap, 4))  # a sorted array is already a heap
        self.H[:size, 0], self.H[:size, 1], self.H[:size, 2] = t[order], np.arange(size), a[order] * 16 + k[order]
        self.heap_size = size

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
            rec.watch.start, thresholds[0], thresholds[1], srv.reject_cost, INF, 0.0, 0.0, 0.0, 0.0, INF, 0.0, 0.0],
            dtype=float)
        p2p = srv.p2p
        self.Q = np.array([srv.workers, POLICY_CODES[type(pol).kernel], int(pol.random), pol.max_attempts,
                           int(srv.discipline == "lifo"), int(srv.drop_expired or srv.cancel_on_timeout),
                           int(srv.cancel_on_timeout), int(c.honor_retry_after), len(rec.counts["attempts"].bins),
                           int(ov is not None), int(rl is not None), n, srv.workers, 0, int(p2p is not None),
                           p2p.children if p2p else 0, p2p.slots if p2p else 0, 16 + (p2p.children if p2p else 0)],
                          dtype=np.int64)
        self.S = np.zeros(N_S, dtype=np.int64)
        self.S[S_HN], self.S[S_SEQ] = self.heap_size, self.heap_size
        self.S[S_FREE] = len(self.free)
        online = int((self.st == ONLINE).sum())
        self.S[S_N0 + OFFLINE], self.S[S_N0 + ONLINE] = int((self.st == OFFLINE).sum()), online
        self.G = np.zeros(17)
        self.G[G_TOKENS], self.G[G_TOKENS_AT] = (rl.bucket if rl else 0.0), 0.0

    def _start_p2p(self, cfg, m: int) -> None:
        """MODEL.md 3.2 at t = 0 (as `Model._start_p2p`): the wanted supernodes among the clients
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
                   np.arange(slots - 1, -1, -1, dtype=i4), np.zeros(slots, i4))
        S = self.S
        S[S_NONS], S[S_SFREE] = len(online), slots
        self._set_rules(cfg)
        self.P[P_PER_WORKER] = cfg.children / cfg.slots if cfg.slots else 0.0
        _p2p_seed(int(self.rng.integers(2**63)))
        rng = self.rng
        chosen = (rng.choice(online, size=min(len(online), round(cfg.supernode_ratio * len(online))), replace=False)
                  if len(online) else online)
        others = rng.permutation(np.setdiff1d(online, chosen, assume_unique=True))
        _p2p_start(self.Q, S, self.pp, chosen.astype(i4), others.astype(i4))
        nsn = int(S[S_NSN])
        self.Q[Q_EXTRA] = cfg.slots * nsn
        self.Q[Q_WORKERS] = self.Q[Q_DEDICATED] + self.Q[Q_EXTRA]
        self.records.levels["supernodes"].set(0.0, nsn)
        if P2P_TICK < self.end:
            self._grow_heap(int(S[S_HN]) + 64)
            _push(self.H, S, P2P_TICK, K_TICK, 0, 0)

    def _set_rules(self, cfg) -> None:
        self.rules = cfg
        P = self.P
        P[P_RATIO], P[P_PROMO_DELAY], P[P_PROMO_RATE] = cfg.supernode_ratio, cfg.promotion_delay, cfg.promotion_rate
        P[P_SHUTDOWN_AT], P[P_SHUTDOWN_RATE] = cfg.overload_shutdown, cfg.shutdown_rate

    def _sample(self, k: int, size: int) -> np.ndarray:
        dist = self.streams[k]
        if k == D_U01:  # partition draws: hang or not, fail fast or not
            return self.rng.random(size)
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
                self.H,
                (self.rc, self.rg, self.rsent, self.rdl, self.rstart, self.free, self.queue, self.rstate,
                 self.rhang, self.rejects),
                self.draws, self.PT,
                (self.LV, self.LB, self.LS, self.WS, self.CT, self.CB, self.CS, self.SCB, self.SCT,
                 self.SCS, self.logins))

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
            status = _advance(float(until), P, Q, S, G, cl, hp, pool, draws, PT, self.hits, self.arrivals, rec,
                              self.pp)
            if status == DONE:
                return
            self._make_room(status)

    def _make_room(self, status: int) -> None:
        if status == GROW_HEAP:
            self._grow_heap(2 * len(self.H))
        elif status == REFILL:
            self._refill()
        elif status == GROW_POOL:
            self._grow_pool()
        elif status == GROW_LOGINS:
            self.logins = _grown(self.logins, 2 * len(self.logins))

    def _grow_heap(self, size: int) -> None:
        if size > len(self.H):
            self.H = _grown(self.H, size)

    def control(self, code: int, x: int) -> None:
        """A server action at the current time (the `at` the loop stopped before)."""
        self._grow_heap(int(self.S[S_HN]) + len(self.rc) + 64)  # a loss answers at most every slot
        now = self.now
        P, Q, S, G, cl, hp, pool, draws, PT, rec = self._loop_args()
        _control(code, x, now, P, Q, S, G, cl, hp, pool, draws, PT, rec)

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

    # --- the scenario's events (MODEL.md 3.1), as `sim.des.Model.fire` acts -----------------

    def fire(self, e) -> None:
        self.now = e.at
        getattr(self, "_" + e.kind.replace("-", "_"))(e)

    def _at(self, t: float, act, arg=None) -> None:
        """An action at `t` (an event's end); it never happens at or after the end of the run."""
        def acting(_):
            self.now = t
            act(arg)
        self.later(t, acting, None)

    def _reboot(self, e) -> None:
        self.hit_clients(e)

    _disconnect = _login = _reboot

    def _p2p_rules(self, e) -> None:
        """A `p2p-rules` event: the tick's parameters change from now (the block's others stay)."""
        self._set_rules(self.rules.model_copy(update=e.changes()))

    def _surge(self, e) -> None:
        """Read by the arrival times (`_arrival_times`)."""

    def _admit(self, e) -> None:
        self.P[P_ADMIT], self.P[P_ADMIT_RA] = e.fraction, e.retry_after

    def _outage(self, e) -> None:
        mode = OUT_REFUSE if e.mode == "refuse" else OUT_BLACKHOLE
        self.outages.append(mode)  # overlapping outages: the tier is down until the last ends
        self.S[S_OUTAGE] = mode
        self.control(CT_LOSE, int(mode == OUT_REFUSE))
        if e.drop_sessions:
            self.drop_all_sessions()
        self._at(e.at + e.duration, self._outage_end, mode)

    def _outage_end(self, mode: int) -> None:
        self.outages.remove(mode)
        self.S[S_OUTAGE] = self.outages[-1] if self.outages else OUT_NONE
        if not self.outages:
            self.control(CT_DISPATCH, 0)

    def _capacity(self, e) -> None:
        """Workers become factor x configured, linearly over `ramp` (steps as heap entries);
        a newer event replaces a ramp."""
        self.S[S_RAMP] += 1
        start, target = int(self.Q[Q_DEDICATED]), int(round(self.configured * e.factor))
        if e.ramp <= 0 or start == target:
            self.control(CT_WORKERS, target)
            return
        step = 1 if target > start else -1
        ws = np.arange(start + step, target + step, step)
        times = e.at + e.ramp * (ws - start) / (target - start)
        self._grow_heap(int(self.S[S_HN]) + len(ws) + 64)
        hp = self.H
        _push_many(hp, self.S, times, K_WORKERS, ws.astype(np.int64), int(self.S[S_RAMP]))

    def _partition(self, e) -> None:
        entry = (float(self.rng.random()), e.fraction, e.failure, e.hang,
                 INF if e.isolate_at is None else e.isolate_at)
        self.partitions.append(entry)
        self._partitions_changed()
        self._at(e.at + e.duration, self._partition_end, entry)

    def _partition_end(self, entry) -> None:
        self.partitions.remove(entry)
        self._partitions_changed()

    def _partitions_changed(self) -> None:
        self.S[S_NPART] = len(self.partitions)
        for i, entry in enumerate(self.partitions):
            self.PT[i] = entry

    def _failover(self, e) -> None:
        """The primary dies: in-flight requests fail, sessions drop, clients find the standby late.
        Every client draws its propagation now (des draws those of later arrivals when they come)."""
        m = len(self.st)
        self.learned[:m] = e.at + np.broadcast_to(np.asarray(e.propagation.sample(self.rng, m), dtype=float), (m,))
        existing = int(self.Q[Q_ABASE] + self.S[S_ARR])
        if existing:
            self.records.last_event_end = max(self.records.last_event_end, float(self.learned[:existing].max()))
        self.control(CT_LOSE, 1)
        self.drop_all_sessions()
        self.control(CT_WORKERS, int(round(int(self.Q[Q_DEDICATED]) * e.factor)))

    def drop_all_sessions(self) -> None:
        """Every ONLINE client loses its session now (hits before anything else at this instant)."""
        ids = np.flatnonzero(self.st == ONLINE)
        self._merge_hits(np.full(len(ids), self.now), ids, H_DISCONNECT, np.zeros(len(ids)))

    def hit_clients(self, e) -> None:
        """A fraction event at its `at`: pick the clients now, draw their times, merge the hits."""
        st = self.st
        if e.kind == "login":
            ids = pick(self.rng, np.flatnonzero((st == OFFLINE) & (self.rebooting == 0)), e.fraction)
        elif self.s.server.p2p is not None and e.supernode_fraction is not None:
            role = self.pp[0] >= 0
            ids = np.concatenate([pick(self.rng, np.flatnonzero((st == ONLINE) & ~role), e.fraction),
                                  pick(self.rng, np.flatnonzero((st == ONLINE) & role), e.supernode_fraction)])
        else:
            ids = pick(self.rng, np.flatnonzero(st == ONLINE), e.fraction)
        times = wave_times(self.rng, e.at, len(ids), e.spread, e.wave_table())
        downtimes = (np.asarray(e.downtime.sample(self.rng, len(ids)), dtype=float) if e.kind == "reboot"
                     else np.zeros(len(ids)))
        if len(ids):
            self.records.last_event_end = max(self.records.last_event_end, float((times + downtimes).max()))
        kind = {"reboot": H_REBOOT, "disconnect": H_DISCONNECT, "login": H_LOGIN}[e.kind]
        self._merge_hits(times, ids, kind, downtimes)

    def _merge_hits(self, times: np.ndarray, ids: np.ndarray, kind: int, downtimes: np.ndarray) -> None:
        keep = times < self.end
        at = int(self.S[S_HIT])
        old_t, old_c, old_k, old_d = (a[at:] for a in self.hits)
        t = np.concatenate([old_t, times[keep]])
        order = np.argsort(t, kind="stable")
        self.hits = (t[order], np.concatenate([old_c, ids[keep].astype(np.int64)])[order],
                     np.concatenate([old_k, np.full(int(keep.sum()), kind, dtype=np.int64)])[order],
                     np.concatenate([old_d, downtimes[keep]])[order])
        self.S[S_HIT] = 0


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


def _arrival_times(rng: np.random.Generator, schedule: list[tuple[float, float]], end: float) -> np.ndarray:
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


# --- compiled parts ------------------------------------------------------------------------

@njit(cache=True)
def policy_delay(code, n, u, previous, base, cap, multiplier, top):
    """The policy's delay before retry n: the `sim.policies` formula function for `code`."""
    if code == 0:
        return policies.none_delay(n, u, previous, base, cap, multiplier, top)
    if code == 1:
        return policies.constant_delay(n, u, previous, base, cap, multiplier, top)
    if code == 2:
        return policies.random_delay(n, u, previous, base, cap, multiplier, top)
    if code == 3:
        return policies.exponential_delay(n, u, previous, base, cap, multiplier, top)
    if code == 4:
        return policies.full_jitter_delay(n, u, previous, base, cap, multiplier, top)
    if code == 5:
        return policies.equal_jitter_delay(n, u, previous, base, cap, multiplier, top)
    if code == 6:
        return policies.decorrelated_delay(n, u, previous, base, cap, multiplier, top)
    return policies.grpc_delay(n, u, previous, base, cap, multiplier, top)


# The heap: a 4-ary min-heap of rows (time, seq, client x 16 + kind, generation), ordered by time
# then by seq (the order entries were pushed, as SimPy breaks ties); a row is 32 bytes and a
# node's 4 children are adjacent, so a step down touches two cache lines, not five arrays.

@njit(cache=True, inline="always")
def _push(hp, S, t, kind, a, g):
    i = S[S_HN]
    seq = float(S[S_SEQ])
    S[S_HN] = i + 1
    S[S_SEQ] += 1
    while i > 0:
        p = (i - 1) >> 2
        if hp[p, 0] < t or (hp[p, 0] == t and hp[p, 1] < seq):
            break
        hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3] = hp[p, 0], hp[p, 1], hp[p, 2], hp[p, 3]
        i = p
    hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3] = t, seq, float(a * 16 + kind), float(g)


@njit(cache=True, inline="always")
def _top_kind(hp):
    return int(hp[0, 2]) & 15


@njit(cache=True, inline="always")
def _pop(hp, S):
    """Removes the earliest entry; returns its (kind, a, g)."""
    code, g = int(hp[0, 2]), int(hp[0, 3])
    n = S[S_HN] - 1
    S[S_HN] = n
    t, seq, lc, lg = hp[n, 0], hp[n, 1], hp[n, 2], hp[n, 3]
    i = 0
    while True:
        c = 4 * i + 1
        if c >= n:
            break
        best, bt, bs = c, hp[c, 0], hp[c, 1]
        for j in range(c + 1, min(c + 4, n)):
            tj = hp[j, 0]
            if tj < bt or (tj == bt and hp[j, 1] < bs):
                best, bt, bs = j, tj, hp[j, 1]
        if t < bt or (t == bt and seq < bs):
            break
        hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3] = bt, bs, hp[best, 2], hp[best, 3]
        i = best
    if n > 0:
        hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3] = t, seq, lc, lg
    return code & 15, code >> 4, g


@njit(cache=True, inline="always")
def _level_add(rec, k, t, delta, width, nbins):
    """`sim.record.Level.add` over arrays: integrate the old value into bins and windows."""
    LV, LB, LS, WS = rec[0], rec[1], rec[2], rec[3]
    t0 = LV[k, 1]
    v = LV[k, 0]
    LV[k, 1] = t
    LV[k, 0] = v + delta
    if t <= t0:
        return
    for w in range(WS.shape[0]):
        if math.isnan(LS[k, w]) and WS[w] < t:
            LS[k, w] = LV[k, 2] + v * (WS[w] - t0)
    if v == 0:
        return
    LV[k, 2] += v * (t - t0)
    i = int(t0 / width)
    if t <= (i + 1) * width or i >= nbins - 1:
        LB[k, i if i < nbins else nbins - 1] += v * (t - t0)
    else:
        j = min(int(t / width), nbins - 1)
        LB[k, i] += v * ((i + 1) * width - t0)
        for b in range(i + 1, j):
            LB[k, b] += v * width
        LB[k, j] += v * (t - j * width)


@njit(cache=True, inline="always")
def _count(rec, k, t, width, nbins):
    """`sim.record.Counter.add(t)`: an event at a window's start is in it."""
    WS, CT, CB, CS = rec[3], rec[4], rec[5], rec[6]
    for w in range(WS.shape[0]):
        if CS[k, w] < 0 and WS[w] <= t:
            CS[k, w] = CT[k]
    CT[k] += 1
    i = int(t / width)
    CB[k, i if i < nbins else nbins - 1] += 1


@njit(cache=True, inline="always")
def _count_start(rec, k, t, width, nbins):
    """`sim.record.StartCounter.add(t)` with the steady window only."""
    WS, SCB, SCT, SCS = rec[3], rec[7], rec[8], rec[9]
    SCT[k] += 1
    i = int(t / width)
    SCB[k, i if i < nbins else nbins - 1] += 1
    if t >= WS[0]:
        SCS[k] += 1


@njit(cache=True, inline="always")
def _watch(P, G, t, online, connecting, gave_up):
    """`sim.record.ShareWatch.update` over the float state."""
    wanting = online + connecting + gave_up
    share = online / wanting if wanting else 1.0
    if t > P[P_TAIL0]:
        G[G_TAIL_MAX] = max(G[G_TAIL_MAX], G[G_SHARE])
    for k in range(2):
        if share < P[P_THR0 + k]:
            if t >= P[P_W_START]:
                G[G_EVER0 + k] = 1.0
            G[G_BELOW0 + k] = 1.0
        elif G[G_BELOW0 + k] != 0.0:
            G[G_BELOW0 + k] = 0.0
            if t > P[P_W_START]:
                G[G_EVER0 + k] = 1.0
                G[G_LAST_UP0 + k] = t
    if share < G[G_LOWEST]:
        G[G_LOWEST] = share
        G[G_LOWEST_AT] = t
    G[G_SHARE] = share
    G[G_SINCE] = t


@njit(cache=True, inline="always")
def _set_state(P, Q, S, G, st, rec, cid, new, t):
    old = st[cid]
    if old == new:
        return
    st[cid] = new
    S[S_N0 + old] -= 1
    S[S_N0 + new] += 1
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    _level_add(rec, _state_level(old), t, -1.0, width, nbins)
    _level_add(rec, _state_level(new), t, 1.0, width, nbins)
    _watch(P, G, t, S[S_N0 + ONLINE], S[S_N0 + CONNECTING], S[S_N0 + GAVE_UP])


@njit(cache=True, inline="always")
def _state_level(state):
    # LEVELS = online, connecting, offline, gave_up, ...; states are offline, connecting, online, gave_up
    if state == OFFLINE:
        return 2
    if state == ONLINE:
        return 0
    return state  # connecting 1, gave_up 3


@njit(cache=True, inline="always")
def _draw(draws, S, k):
    i = S[S_POS + k]
    S[S_POS + k] = i + 1
    return draws[k, i]


@njit(cache=True)
def _push_many(hp, S, times, kind, values, g):
    for i in range(times.shape[0]):
        _push(hp, S, times[i], kind, values[i], g)


@njit(cache=True)
def _partition_of(S, PT, key):
    """The active partition this client depends on (membership by its fixed key), or -1."""
    for i in range(S[S_NPART]):
        if (key + PT[i, 0]) % 1.0 < PT[i, 1]:
            return i
    return -1


@njit(cache=True)
def _partition_hang(S, PT, draws, key, now):
    """0: no hang; 1: this attempt will hang if it is served; -1: fail fast (after isolate_at)."""
    i = _partition_of(S, PT, key)
    if i < 0:
        return 0
    if now >= PT[i, 4]:
        return -1 if _draw(draws, S, D_U01) < PT[i, 2] else 0
    return 1


@njit(cache=True)
def _start(P, Q, S, G, keys, pool, draws, PT, hp, rec, r, now):
    """A request takes a worker: a partition hang (decided now), else the service draw times the
    overload factor; cut at the deadline with cancel_on_timeout; its end goes on the heap."""
    rc, rsent, rdl, rstart, rstate, rhang = pool[0], pool[2], pool[3], pool[4], pool[7], pool[8]
    S[S_BUSY] += 1
    S[S_SERVING] += 1
    _level_add(rec, L_SERVING, now, 1.0, P[P_WIDTH], Q[Q_NBINS])
    if P[P_STEADY0] <= now < P[P_STEADY1]:
        wait = now - rsent[r]
        S[S_WAITS_STARTED] += 1
        G[G_WAITS_SUM] += wait
        if wait > 0:
            S[S_WAITS_POS] += 1
    rstart[r] = now
    rstate[r] = R_SERVING
    i = _partition_of(S, PT, keys[rc[r]]) if rhang[r] else -1
    if i >= 0 and _draw(draws, S, D_U01) < PT[i, 2]:
        work = PT[i, 3]
    else:
        rhang[r] = 0
        work = _draw(draws, S, D_SERVICE)
        if Q[Q_OVERLOAD]:
            work *= 1.0 + P[P_PER_REQ] * max(0.0, S[S_QN] + S[S_SERVING] - P[P_KNEE])
    if Q[Q_CANCEL] and now + work > rdl[r]:
        work = max(0.0, rdl[r] - now)
    _push(hp, S, now + work, K_DONE, r, 0)


@njit(cache=True)
def _low(S, hp, draws):
    """Too few draws or heap slots left to start another request in this event."""
    block = draws.shape[1]
    return (S[S_POS + D_SERVICE] + 4 > block or S[S_POS + D_U01] + 4 > block
            or S[S_HN] + 8 > hp.shape[0])


@njit(cache=True)
def _dispatch(P, Q, S, G, keys, pool, draws, PT, hp, rec, now):
    """Free workers take reject work first, then queued requests by the discipline; expired ones
    are dropped at the head. Short of draws or heap, it stops and the loop resumes it at once."""
    rdl, queue, rejects = pool[3], pool[6], pool[9]
    cap = queue.shape[0]
    while S[S_BUSY] < Q[Q_WORKERS] and (S[S_RJN] > 0 or S[S_QN] > 0):
        if _low(S, hp, draws):
            S[S_REDISPATCH] = 1
            G[G_REDISPATCH_AT] = now
            return
        if S[S_RJN] > 0:
            r = rejects[S[S_RJH]]
            S[S_RJH] = (S[S_RJH] + 1) % cap
            S[S_RJN] -= 1
            S[S_BUSY] += 1
            _level_add(rec, L_REJECTING, now, 1.0, P[P_WIDTH], Q[Q_NBINS])
            _push(hp, S, now + P[P_REJECT_COST], K_REJECT_DONE, r, 0)
            continue
        if Q[Q_LIFO]:
            r = queue[(S[S_QH] + S[S_QN] - 1) % cap]
        else:
            r = queue[S[S_QH]]
            S[S_QH] = (S[S_QH] + 1) % cap
        S[S_QN] -= 1
        _level_add(rec, L_QUEUE, now, -1.0, P[P_WIDTH], Q[Q_NBINS])
        if Q[Q_DROP] and now >= rdl[r]:
            _free(S, pool, r)
            continue
        _start(P, Q, S, G, keys, pool, draws, PT, hp, rec, r, now)


@njit(cache=True, inline="always")
def _free(S, pool, r):
    pool[7][r] = R_FREE
    pool[5][S[S_FREE]] = r
    S[S_FREE] += 1


@njit(cache=True)
def _answer_refused(S, cl, hp, pool, r, now):
    """An immediate connection error to the client still waiting for request `r` (ra 0)."""
    gen, cra = cl[1], cl[9]
    cid = pool[0][r]
    if pool[1][r] == gen[cid]:
        cra[cid] = 0.0
        _push(hp, S, now, K_REFUSED, cid, gen[cid])


@njit(cache=True)
def _lose(P, Q, S, G, cl, hp, pool, rec, answer, now):
    """`LoginServer.lose_everything`: queued, waiting reject work and in-service requests are lost
    (rejected; killed work is wasted); answer=1: their clients learn at once, else they time out."""
    rsent, rstart, rstate, queue, rejects = pool[2], pool[4], pool[7], pool[6], pool[9]
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    cap = queue.shape[0]
    for j in range(S[S_RJN]):  # already counted as rejected when refused
        r = rejects[(S[S_RJH] + j) % cap]
        if answer:
            _answer_refused(S, cl, hp, pool, r, now)
        _free(S, pool, r)
    S[S_RJN] = 0
    for j in range(S[S_QN]):
        r = queue[(S[S_QH] + j) % cap]
        _count(rec, C_REJECTED, now, width, nbins)
        _count_start(rec, SC_REFUSALS, rsent[r], width, nbins)
        if answer:
            _answer_refused(S, cl, hp, pool, r, now)
        _free(S, pool, r)
    _level_add(rec, L_QUEUE, now, -float(S[S_QN]), width, nbins)
    S[S_QN] = 0
    killed = 0
    for r in range(rstate.shape[0]):
        if rstate[r] != R_SERVING:
            continue
        rstate[r] = R_DEAD  # its end is still on the heap: the slot is freed there
        killed += 1
        G[G_BUSY_TIME] += now - rstart[r]
        G[G_WASTED_TIME] += now - rstart[r]
        _count(rec, C_WASTED, now, width, nbins)
        _count(rec, C_REJECTED, now, width, nbins)
        _count_start(rec, SC_REFUSALS, rsent[r], width, nbins)
        if answer:
            _answer_refused(S, cl, hp, pool, r, now)
    S[S_SERVING] -= killed
    S[S_BUSY] -= killed
    _level_add(rec, L_SERVING, now, -float(killed), width, nbins)


@njit(cache=True)
def _control(code, x, now, P, Q, S, G, cl, hp, pool, draws, PT, rec):
    """A server action between two stretches: set the workers, lose everything, or dispatch."""
    if code == CT_WORKERS:
        x = max(0, x) + Q[Q_EXTRA]  # the dedicated workers; supernode slots stay
        _level_add(rec, L_WORKERS, now, float(x - Q[Q_WORKERS]), P[P_WIDTH], Q[Q_NBINS])
        Q[Q_DEDICATED] = x - Q[Q_EXTRA]
        Q[Q_WORKERS] = x
    elif code == CT_LOSE:
        _lose(P, Q, S, G, cl, hp, pool, rec, x, now)
        return
    if S[S_REDISPATCH] == 0:
        _dispatch(P, Q, S, G, cl[10], pool, draws, PT, hp, rec, now)


@njit(cache=True, inline="always")
def _wake(P, Q, S, cl, rec, cid, now):
    """An event interrupts the client: whatever it waited for no longer concerns it."""
    gen, orbiting = cl[1], cl[3]
    gen[cid] += 1
    if orbiting[cid]:
        orbiting[cid] = 0
        _level_add(rec, L_ORBIT, now, -1.0, P[P_WIDTH], Q[Q_NBINS])


# --- supernodes (MODEL.md 3.2), compiled: `sim.p2p.Supernodes` and `sim.des.Model`'s p2p part ---
# pp: per client: its supernode slot or -1, online since, home slot or -1, the home's child list
# (next, previous), and its place in `ons` (the ONLINE non-supernodes, the promotion candidates);
# per supernode slot: its client, first child, child count, place in `room` (or -1), `room` (the
# slots with room), place in `active`, `active` (the slots in use), free slots, a scratch list.
# Picks draw from numba's generator, seeded from the run's generator (`Engine._start_p2p`).


@njit(cache=True)
def _p2p_seed(seed):
    np.random.seed(seed)


@njit(cache=True)
def _pick(n):
    """A uniform index in [0, n)."""
    return min(n - 1, int(np.random.random() * n))


@njit(cache=True)
def _stochastic_round(x):
    """`sim.p2p.stochastic_round`: floor(x) plus one with probability frac(x)."""
    whole = math.floor(x)
    return int(whole) + (1 if np.random.random() < x - whole else 0)


@njit(cache=True)
def _list_add(items, pos, S, count, x):
    pos[x] = S[count]
    items[S[count]] = x
    S[count] += 1


@njit(cache=True)
def _list_remove(items, pos, S, count, x):
    """Swap-remove `x` from a list with positions (a no-op when it is not in it)."""
    i = pos[x]
    if i < 0:
        return
    last = items[S[count] - 1]
    items[i] = last
    pos[last] = i
    pos[x] = -1
    S[count] -= 1


@njit(cache=True)
def _home(Q, S, pp, cid, slot):
    home, nxt, prv, head, nkids = pp[2], pp[3], pp[4], pp[8], pp[9]
    home[cid] = slot
    first = head[slot]
    nxt[cid] = first
    prv[cid] = -1
    if first >= 0:
        prv[first] = cid
    head[slot] = cid
    nkids[slot] += 1
    if nkids[slot] >= Q[Q_CHILDREN]:
        _list_remove(pp[11], pp[10], S, S_NROOM, slot)


@njit(cache=True)
def _unhome(Q, S, pp, cid):
    """`cid` leaves its home (offline or promoted); a no-op when it has none."""
    home, nxt, prv, head, nkids, rpos = pp[2], pp[3], pp[4], pp[8], pp[9], pp[10]
    slot = home[cid]
    if slot < 0:
        return
    home[cid] = -1
    if prv[cid] >= 0:
        nxt[prv[cid]] = nxt[cid]
    else:
        head[slot] = nxt[cid]
    if nxt[cid] >= 0:
        prv[nxt[cid]] = prv[cid]
    nkids[slot] -= 1
    if nkids[slot] < Q[Q_CHILDREN] and rpos[slot] < 0:
        _list_add(pp[11], rpos, S, S_NROOM, slot)


@njit(cache=True)
def _place(Q, S, pp, cid):
    """Home `cid` on a supernode chosen uniformly among those with room (none: it stays unhomed)."""
    if S[S_NROOM] > 0:
        _home(Q, S, pp, cid, pp[11][_pick(S[S_NROOM])])


@njit(cache=True)
def _promote(Q, S, pp, cid):
    """An ONLINE ordinary client becomes a supernode with no children, leaving its own home."""
    sidx, scid, head, nkids = pp[0], pp[7], pp[8], pp[9]
    _unhome(Q, S, pp, cid)
    _list_remove(pp[6], pp[5], S, S_NONS, cid)
    S[S_SFREE] -= 1
    slot = pp[14][S[S_SFREE]]
    sidx[cid], scid[slot], head[slot], nkids[slot] = slot, cid, -1, 0
    _list_add(pp[13], pp[12], S, S_NSN, slot)
    _list_add(pp[11], pp[10], S, S_NROOM, slot)


@njit(cache=True)
def _demote(P, Q, S, G, cl, hp, pp, rec, cid, now):
    """`cid` stops being a supernode: its children lose their sessions and start episodes now."""
    st, gen = cl[0], cl[1]
    sidx, home, nxt = pp[0], pp[2], pp[3]
    slot = sidx[cid]
    child = pp[8][slot]
    while child >= 0:
        after = nxt[child]
        home[child] = -1
        # homed clients are online: each is dropped (as `Model.drop`), by hand rather than by
        # `_become`, which calls this function: numba compiles no recursion
        if st[child] == ONLINE:
            _wake(P, Q, S, cl, rec, child, now)
            _set_state(P, Q, S, G, st, rec, child, CONNECTING, now)
            _list_remove(pp[6], pp[5], S, S_NONS, child)
            _push(hp, S, now, K_WANT, child, gen[child])
        child = after
    pp[8][slot], pp[9][slot] = -1, 0
    _list_remove(pp[11], pp[10], S, S_NROOM, slot)
    _list_remove(pp[13], pp[12], S, S_NSN, slot)
    sidx[cid] = -1
    pp[14][S[S_SFREE]] = slot
    S[S_SFREE] += 1


@njit(cache=True)
def _supernodes_changed(P, Q, S, G, rec, now):
    """Supernode slots are workers (`LoginServer.set_extra`); more of them dispatch at once."""
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    LV = rec[0]
    _level_add(rec, L_SUPERNODES, now, float(S[S_NSN]) - LV[L_SUPERNODES, 0], width, nbins)
    extra = Q[Q_SLOTS] * S[S_NSN]
    workers = Q[Q_DEDICATED] + extra
    if workers != Q[Q_WORKERS]:
        _level_add(rec, L_WORKERS, now, float(workers - Q[Q_WORKERS]), width, nbins)
        if workers > Q[Q_WORKERS]:
            S[S_REDISPATCH] = 1  # the loop dispatches before anything else happens
            G[G_REDISPATCH_AT] = now
    Q[Q_EXTRA], Q[Q_WORKERS] = extra, workers


@njit(cache=True)
def _become(P, Q, S, G, cl, hp, pp, rec, cid, new, now):
    """`Model.set_state`: the state levels, and with p2p a login's home or a leaving client's."""
    st = cl[0]
    old = st[cid]
    if old == new:
        return
    _set_state(P, Q, S, G, st, rec, cid, new, now)
    if not Q[Q_P2P]:
        return
    if new == ONLINE:
        pp[1][cid] = now
        _list_add(pp[6], pp[5], S, S_NONS, cid)
        _place(Q, S, pp, cid)  # no room: online unhomed
    elif old == ONLINE:
        if pp[0][cid] >= 0:  # a supernode takes its children with it
            _demote(P, Q, S, G, cl, hp, pp, rec, cid, now)
            _supernodes_changed(P, Q, S, G, rec, now)
        else:
            _list_remove(pp[6], pp[5], S, S_NONS, cid)
            _unhome(Q, S, pp, cid)


@njit(cache=True, inline="always")
def _home_full(P, Q, S):
    """No supernode (nor the dedicated workers' share of homes) can home another client."""
    homes = S[S_NSN] * Q[Q_CHILDREN] + Q[Q_DEDICATED] * P[P_PER_WORKER]
    return S[S_N0 + ONLINE] >= homes


@njit(cache=True)
def _waiting(S, pool, now):
    """Queued requests whose client still waits for them (`LoginServer.waiting`)."""
    rdl, queue = pool[3], pool[6]
    cap = queue.shape[0]
    n = 0
    for j in range(S[S_QN]):
        if rdl[queue[(S[S_QH] + j) % cap]] > now:
            n += 1
    return n


@njit(cache=True)
def _tick(P, Q, S, G, cl, hp, pp, pool, rec, now):
    """The minute's rules: promote towards the wanted count, then shut down under overload."""
    ons, since, active, scid, buf = pp[6], pp[1], pp[13], pp[7], pp[15]
    wanted = P[P_RATIO] * S[S_N0 + ONLINE]
    have = S[S_NSN]
    if have < wanted:
        k = min(_stochastic_round(P[P_PROMO_RATE] * wanted), math.ceil(wanted - have), S[S_SFREE])
        if k > 0:
            ripe = now - P[P_PROMO_DELAY]
            # uniform among the ripe ONLINE ordinary clients, without replacement: draws from all
            # of them kept when ripe, then (if that is slow) an exact pick among a full scan
            tries, budget = 0, 8 * k + 64
            while k > 0 and S[S_NONS] > 0 and tries < budget:
                tries += 1
                c = ons[_pick(S[S_NONS])]
                if since[c] <= ripe:
                    _promote(Q, S, pp, c)
                    k -= 1
            if k > 0 and S[S_NONS] > 0:
                ripe_ids = np.empty(S[S_NONS], dtype=np.int32)
                n = 0
                for j in range(S[S_NONS]):
                    if since[ons[j]] <= ripe:
                        ripe_ids[n] = ons[j]
                        n += 1
                for i in range(min(k, n)):
                    j = i + _pick(n - i)
                    ripe_ids[i], ripe_ids[j] = ripe_ids[j], ripe_ids[i]
                    _promote(Q, S, pp, ripe_ids[i])
            _supernodes_changed(P, Q, S, G, rec, now)
    have = S[S_NSN]
    if have > 0 and Q[Q_SLOTS] > 0 and P[P_SHUTDOWN_AT] < INF:
        if _waiting(S, pool, now) / (Q[Q_SLOTS] * have) > P[P_SHUTDOWN_AT]:
            k = min(_stochastic_round(P[P_SHUTDOWN_RATE] * have), have)
            if k > 0:
                for i in range(have):
                    buf[i] = scid[active[i]]
                for i in range(k):
                    j = i + _pick(have - i)
                    buf[i], buf[j] = buf[j], buf[i]
                for i in range(k):
                    _demote(P, Q, S, G, cl, hp, pp, rec, buf[i], now)
                _supernodes_changed(P, Q, S, G, rec, now)
                for i in range(k):  # an ordinary online client now: its promotion clock restarts
                    since[buf[i]] = now
                    _list_add(ons, pp[5], S, S_NONS, buf[i])
                    _place(Q, S, pp, buf[i])


@njit(cache=True)
def _p2p_start(Q, S, pp, chosen, others):
    """t = 0: the chosen supernodes, then every other online client homed in the given order."""
    for i in range(chosen.shape[0]):
        _promote(Q, S, pp, chosen[i])
    for i in range(others.shape[0]):
        _place(Q, S, pp, others[i])


@njit(cache=True)
def _advance(until, P, Q, S, G, cl, hp, pool, draws, PT, hits, arrivals, rec, pp):
    """Process every event before `until`; returns DONE, or what Python must do before calling again."""
    st, gen, rebooting, orbiting, begun, first, sent, prev, natt, cra, keys, learned = cl
    rc, rg, rsent, rdl, rstart, free, queue, rstate, rhang, rejects = pool
    hit_t, hit_c, hit_k, hit_d = hits
    logins = rec[10]
    width, nbins = P[P_WIDTH], Q[Q_NBINS]
    n_hits, n_arr = hit_t.shape[0], arrivals.shape[0]
    block = draws.shape[1]
    while True:
        if S[S_HN] + Q[Q_MARGIN] > hp.shape[0]:  # the margin: a supernode's orphans
            return GROW_HEAP
        if S[S_HN] > 0 and _top_kind(hp) == K_TICK and S[S_HN] + S[S_N0 + ONLINE] + 16 > hp.shape[0]:
            return GROW_HEAP
        if S[S_FREE] < 4:
            return GROW_POOL
        if S[S_LOGINS] + 4 > logins.shape[0]:
            return GROW_LOGINS
        for k in range(N_STREAMS):
            if S[S_POS + k] + SPARE > block:
                return REFILL
        if S[S_REDISPATCH]:  # a dispatch that ran short of draws or heap resumes at its instant
            S[S_REDISPATCH] = 0
            _dispatch(P, Q, S, G, cl[10], pool, draws, PT, hp, rec, G[G_REDISPATCH_AT])
            continue
        t_heap = hp[0, 0] if S[S_HN] > 0 else INF
        t_hit = hit_t[S[S_HIT]] if S[S_HIT] < n_hits else INF
        t_arr = arrivals[S[S_ARR]] if S[S_ARR] < n_arr else INF
        now = min(t_heap, t_hit, t_arr)
        if now >= until:
            return DONE
        action, cid, ra, arg = A_NONE, -1, 0.0, 0.0
        if t_hit == now:  # a fraction event hits one client (MODEL.md 3.1)
            i = S[S_HIT]
            S[S_HIT] = i + 1
            cid, kind = hit_c[i], hit_k[i]
            cur = st[cid]
            if kind == H_REBOOT and cur != OFFLINE:
                _wake(P, Q, S, cl, rec, cid, now)
                _become(P, Q, S, G, cl, hp, pp, rec, cid, OFFLINE, now)
                rebooting[cid] = 1
                action, arg = A_REBOOT, hit_d[i]
            elif kind == H_DISCONNECT and cur == ONLINE:
                _wake(P, Q, S, cl, rec, cid, now)
                _become(P, Q, S, G, cl, hp, pp, rec, cid, CONNECTING, now)
                action = A_EPISODE
            elif kind == H_LOGIN and cur == OFFLINE and rebooting[cid] == 0:
                _wake(P, Q, S, cl, rec, cid, now)
                _become(P, Q, S, G, cl, hp, pp, rec, cid, CONNECTING, now)
                action = A_EPISODE
        elif t_arr == now:  # a new client from login_rate: connecting at once
            cid = Q[Q_ABASE] + S[S_ARR]
            S[S_ARR] += 1
            st[cid] = CONNECTING
            S[S_N0 + CONNECTING] += 1
            _level_add(rec, _state_level(CONNECTING), now, 1.0, width, nbins)
            _watch(P, G, now, S[S_N0 + ONLINE], S[S_N0 + CONNECTING], S[S_N0 + GAVE_UP])
            action = A_EPISODE
        else:
            kind, a, g = _pop(hp, S)
            if kind == K_WORKERS:  # a capacity ramp's step, unless a newer capacity event replaced it
                if g == S[S_RAMP]:
                    _control(CT_WORKERS, a, now, P, Q, S, G, cl, hp, pool, draws, PT, rec)
            elif kind == K_TICK:  # the supernode rules' minute
                _tick(P, Q, S, G, cl, hp, pp, pool, rec, now)
                _push(hp, S, now + P2P_TICK, K_TICK, 0, 0)
            elif kind == K_REJECT_DONE:  # a refusal's work is done: it goes back to the client
                r = a
                cid = rc[r]
                G[G_BUSY_TIME] += P[P_REJECT_COST]
                S[S_BUSY] -= 1
                _level_add(rec, L_REJECTING, now, -1.0, width, nbins)
                deliver = rg[r] == gen[cid]
                late = now + P[P_RTT] >= rdl[r]  # then the client's own deadline answers it
                _free(S, pool, r)
                if deliver and not late and P[P_RTT] > 0:
                    _push(hp, S, now + P[P_RTT], K_REFUSED, cid, gen[cid])
                    deliver = False
                _dispatch(P, Q, S, G, cl[10], pool, draws, PT, hp, rec, now)
                if deliver and not late:
                    gen[cid] += 1
                    action = A_FAIL
                    ra = cra[cid]
            elif kind == K_DONE and rstate[a] == R_DEAD:  # lost to an outage or failover: accounted
                _free(S, pool, a)
            elif kind == K_DONE:  # a request leaves its worker
                r = a
                cid = rc[r]
                wasted = now >= rdl[r]
                G[G_BUSY_TIME] += now - rstart[r]
                if wasted:
                    G[G_WASTED_TIME] += now - rstart[r]
                    _count(rec, C_WASTED, now, width, nbins)
                S[S_SERVING] -= 1
                S[S_BUSY] -= 1
                _level_add(rec, L_SERVING, now, -1.0, width, nbins)
                deliver = not wasted and rg[r] == gen[cid]  # an orphan's reply reaches nobody
                hung = rhang[r] != 0
                _free(S, pool, r)
                _dispatch(P, Q, S, G, cl[10], pool, draws, PT, hp, rec, now)
                if deliver:
                    gen[cid] += 1  # its deadline no longer concerns it
                    action = A_ERROR if hung else A_SUCCESS
            else:
                cid = a
                if g != gen[cid]:
                    continue  # stale: the client was interrupted or already answered
                if kind == K_SESSION_END:
                    action = A_OFFLINE
                elif kind == K_WANT:
                    action = A_EPISODE
                elif kind == K_REBOOT_END:
                    rebooting[cid] = 0
                    action = A_EPISODE
                elif kind == K_ATTEMPT:
                    action = A_ATTEMPT
                elif kind == K_RETRY:
                    orbiting[cid] = 0
                    _level_add(rec, L_ORBIT, now, -1.0, width, nbins)
                    action = A_ATTEMPT
                elif kind == K_TIMEOUT:
                    gen[cid] += 1
                    action = A_TIMEOUT
                else:  # a refusal arrives one round trip after it was sent
                    gen[cid] += 1
                    action = A_FAIL
                    ra = cra[cid]
        S[S_EVENTS] += 1
        while action != A_NONE:  # the client's next steps at this instant (sim.des Model.life)
            if action == A_EPISODE:
                _become(P, Q, S, G, cl, hp, pp, rec, cid, CONNECTING, now)
                S[S_EPISODES] += 1
                begun[cid] = now
                natt[cid] = 0
                prev[cid] = math.nan
                delay = _draw(draws, S, D_CONNECT)
                if delay > 0:
                    _push(hp, S, now + delay, K_ATTEMPT, cid, gen[cid])
                    action = A_NONE
                else:
                    action = A_ATTEMPT
            elif action == A_ATTEMPT:
                if natt[cid] == 0:
                    first[cid] = now
                natt[cid] += 1
                _count(rec, C_ATTEMPTS, now, width, nbins)
                sent[cid] = now
                timeout = _draw(draws, S, D_TIMEOUT)
                # the checks in the contract's order (LoginServer.submit); -1: no refusal
                ra, costly, hang = -1.0, False, 0
                if now < learned[cid] or S[S_OUTAGE] == OUT_REFUSE:
                    ra = 0.0
                elif S[S_OUTAGE] == OUT_BLACKHOLE:  # no answer: the attempt times out
                    if timeout < INF:
                        _push(hp, S, now + timeout, K_TIMEOUT, cid, gen[cid])
                    action = A_NONE
                    continue
                elif P[P_ADMIT] < 1.0 and keys[cid] >= P[P_ADMIT]:
                    ra, costly = P[P_ADMIT_RA], True
                elif Q[Q_RL] and not _take_token(P, G, now):
                    ra, costly = P[P_RL_RA], True
                else:
                    hang = _partition_hang(S, PT, draws, keys[cid], now)
                    if hang < 0:  # fail fast after isolate_at
                        ra = 0.0
                    elif Q[Q_P2P] and _home_full(P, Q, S):  # p2p: no supernode can home it
                        ra, costly = P[P_RETRY_AFTER], True
                    elif not (S[S_BUSY] < Q[Q_WORKERS] and S[S_RJN] == 0) and S[S_QN] >= P[P_QLIMIT]:
                        ra, costly = P[P_RETRY_AFTER], True
                if ra < 0 or (costly and P[P_REJECT_COST] > 0):  # the request stays at the server
                    S[S_FREE] -= 1
                    r = free[S[S_FREE]]
                    rc[r], rg[r], rsent[r], rdl[r], rhang[r] = cid, gen[cid], now, now + timeout, hang
                    if ra >= 0:  # refused with work: the reply waits for a worker
                        _count(rec, C_REJECTED, now, width, nbins)
                        _count_start(rec, SC_REFUSALS, now, width, nbins)
                        cra[cid] = ra
                        rstate[r] = R_REJECT
                        rejects[(S[S_RJH] + S[S_RJN]) % rejects.shape[0]] = r
                        S[S_RJN] += 1
                        _dispatch(P, Q, S, G, cl[10], pool, draws, PT, hp, rec, now)
                    elif S[S_BUSY] < Q[Q_WORKERS] and S[S_RJN] == 0:
                        _start(P, Q, S, G, keys, pool, draws, PT, hp, rec, r, now)
                    else:  # the ring is as long as the pool: it never overflows
                        rstate[r] = R_QUEUED
                        queue[(S[S_QH] + S[S_QN]) % queue.shape[0]] = r
                        S[S_QN] += 1
                        _level_add(rec, L_QUEUE, now, 1.0, width, nbins)
                    if timeout < INF:
                        _push(hp, S, now + timeout, K_TIMEOUT, cid, gen[cid])
                    action = A_NONE
                else:  # refused at once: the answer comes back one round trip later
                    _count(rec, C_REJECTED, now, width, nbins)
                    _count_start(rec, SC_REFUSALS, now, width, nbins)
                    cra[cid] = ra
                    rtt = P[P_RTT]
                    if rtt >= timeout:  # the deadline comes first: a timeout
                        if timeout > 0:
                            _push(hp, S, now + timeout, K_TIMEOUT, cid, gen[cid])
                            action = A_NONE
                        else:
                            action = A_TIMEOUT
                    elif rtt > 0:
                        _push(hp, S, now + rtt, K_REFUSED, cid, gen[cid])
                        action = A_NONE
                    else:
                        action = A_FAIL
            elif action == A_TIMEOUT:
                _count(rec, C_TIMEOUTS, now, width, nbins)
                _count_start(rec, SC_TIMEOUTS, sent[cid], width, nbins)
                ra = 0.0
                action = A_FAIL
            elif action == A_FAIL:
                if Q[Q_MAX_ATT] != 0 and natt[cid] >= Q[Q_MAX_ATT]:
                    action = A_GIVE_UP
                    continue
                u = _draw(draws, S, D_UNIFORM) if Q[Q_RANDOM] else 0.0
                p = P[P_BASE] if math.isnan(prev[cid]) else prev[cid]
                d = policy_delay(Q[Q_POLICY], float(natt[cid] - 1), u, p, P[P_BASE], P[P_CAP], P[P_MULT], P[P_TOP])
                prev[cid] = d
                wait = max(d, ra) if Q[Q_HONOR] else d
                if now + wait > first[cid] + P[P_GIVE_UP]:
                    action = A_GIVE_UP
                elif wait > 0:  # on a retry timer: the orbit of the retrial queue
                    orbiting[cid] = 1
                    _level_add(rec, L_ORBIT, now, 1.0, width, nbins)
                    _push(hp, S, now + wait, K_RETRY, cid, gen[cid])
                    action = A_NONE
                else:  # at once, as a new entry at this instant (bounds the work of one event)
                    _push(hp, S, now, K_ATTEMPT, cid, gen[cid])
                    action = A_NONE
            elif action == A_ERROR:  # a partition hang ended in an error before the deadline
                _count(rec, C_ERRORS, now, width, nbins)
                ra = 0.0
                action = A_FAIL
            elif action == A_SUCCESS:
                logins[S[S_LOGINS]] = now - begun[cid]
                S[S_LOGINS] += 1
                _count(rec, C_SUCCESSES, now, width, nbins)
                action = A_ONLINE
            elif action == A_ONLINE:
                _become(P, Q, S, G, cl, hp, pp, rec, cid, ONLINE, now)
                session = _draw(draws, S, D_SESSION)
                if session < INF:
                    _push(hp, S, now + session, K_SESSION_END, cid, gen[cid])
                action = A_NONE
            elif action == A_OFFLINE:
                _become(P, Q, S, G, cl, hp, pp, rec, cid, OFFLINE, now)
                wait = _draw(draws, S, D_OFFLINE)
                if wait < INF:
                    _push(hp, S, now + wait, K_WANT, cid, gen[cid])
                action = A_NONE
            elif action == A_REBOOT:
                if arg > 0:
                    _push(hp, S, now + arg, K_REBOOT_END, cid, gen[cid])
                    action = A_NONE
                else:
                    rebooting[cid] = 0
                    action = A_EPISODE
            else:  # A_GIVE_UP: the episode ends; the user relaunches later (or never)
                S[S_GAVE_UP] += 1
                _become(P, Q, S, G, cl, hp, pp, rec, cid, GAVE_UP, now)
                wait = _draw(draws, S, D_RELAUNCH)
                if wait < INF:
                    _push(hp, S, now + wait, K_WANT, cid, gen[cid])
                action = A_NONE


@njit(cache=True, inline="always")
def _take_token(P, G, now):
    """`sim.bucket.TokenBucket.take`: every attempt that gets this far takes a token."""
    tokens = min(P[P_RL_BURST], G[G_TOKENS] + (now - G[G_TOKENS_AT]) * P[P_RL_RATE])
    G[G_TOKENS_AT] = now
    if tokens >= 1.0:
        G[G_TOKENS] = tokens - 1.0
        return True
    G[G_TOKENS] = tokens
    return False
