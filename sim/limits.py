"""Will a run fit? An order-of-magnitude estimate of its memory, attempts and time, and the check
that refuses the absurd before it starts, naming the scenario keys that make it so (issue 18).

    >>> from sim.config import load_scenario
    >>> e = estimate(load_scenario("quickstart"), "auto")
    >>> describe(e)
    'needs ~55 MB, ~8.3 k attempts, ~0.2 s on the des engine'
    >>> check(e, available=8 * 10**9)
    []
    >>> long = load_scenario("quickstart", sets=['resolution="1ms"', 'duration="30d"'])
    >>> print(check(estimate(long, "des"), available=8 * 10**9)[0])
    duration = 30d at resolution = 1ms (~2.6 billion bins) needs ~1.2 TB of time series (des engine); this machine
    has 8.0 GB available; raise resolution, shorten duration or use --until, or pass --no-limits to run anyway

Every figure is computed in floats and clamped, so `inf` and `1e300` give estimates, never
OverflowError. Memory counts what grows with the scenario: per-client state, requests waiting,
time-series bins and login times, at the measured costs below. Attempts come from a fluid
picture of a storm: the clients an event hits retry, once per timeout-and-backoff cycle (or per
refusal's round trip and Retry-After when the queue is full), until the workers have served them
all or the run ends, the tier's outages and partitions added. On the shipped scenarios (scale
0.01, fast) it is within a factor of 2 of the attempts a run makes for most, and of 5 for all
(monday-morning over by ~5, roblox-2021 under by ~4).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from sim.scenario import P2P, Event, Scenario
from sim.units import format_duration
from sim.waves import rate_schedule

__all__ = ["Part", "Source", "Estimate", "ResourceError", "estimate", "check", "enforce", "describe",
           "check_runs", "available_memory", "MAX_ATTEMPTS", "MAX_SECONDS", "MAX_RUNS", "BYTES", "SPEED"]

# Measured on this project's machine (2 cores, numpy 2, SimPy 4, numba; December 2026) with
# tracemalloc's peak over one run of a 5-minute storm, at two population sizes; the constant is
# the slope (bytes per extra client), so the interpreter's own memory drops out. Scripts:
#   fast, 200 k vs 400 k clients, all rebooting at 10 s for 60 s, queue_limit 10:      236 B/client
#     (idle, no events: 156; churning sessions: 309; + [server.p2p]: +34 idle and storm, + 4 for the
#     promotions' scratch array, as long as the clients since the fast engine's profile)
#   des, 20 k vs 40 k: idle clients cost their three arrays (state, key, rebooting): ~10 B/client;
#     a client with a live SimPy process (a timer or an attempt, its generator, its slot): 1,885 B
#     (churning sessions, every client with a process: 1,367); [server.p2p] homes: +195 B/client
#   requests waiting (2,000 clients retrying every 2 s at one 10-hour worker, 200 s vs 400 s):
#     fast 131 B (the pool's arrays, grown by doubling), des 248 B (Request, reply event, timer)
#   time-series bins (300 churning clients, 0.1 s bins, 50 k vs 100 k bins), all 18 series of
#     sim.record (LEVELS, COUNTS and the two start counters) with the columns of sim.metrics.timeseries:
#     fast 673 B/bin (~37 B a value: arrays, then lists), des 353 B/bin (~20 B a value, Python lists)
#   the interpreter with numpy, SimPy (des) or the loaded numba loop (fast): RSS 50 MB and 175 MB
BYTES = {
    "fast": {"client": 240.0, "p2p": 39.0, "request": 131.0, "bin": 673.0, "base": 180e6},
    "des": {"client": 10.0, "active": 1_900.0, "p2p": 195.0, "request": 248.0, "bin": 353.0, "base": 50e6},
}
#: the time series a finished run keeps (`RunResult.timeseries`: 15 columns of float64 per bin)
KEPT_BIN = 15 * 8.0
#: a login time kept per episode (float64), with the doubling of its array
LOGIN = 16.0
# The client limiter's state (sim.limiters, docs/model.md section 4.7) is counted apart from the
# measured per-client bytes, because its rows can dwarf them: `Limiter.width` float64s (8 B) a row,
# one row per device with scope "device" (the clients at t = 0 plus the arrivals, on both engines)
# or one per group when shared (`Limiter.groups_for` the clients at t = 0, as both engines size
# it). A count-based breaker's row holds its whole window (up to 100,000 calls, 800 kB a device).
# The fast engine adds the quota cost held by each client's episode (one float64 a client).
LIMITER_HELD = 8.0
# Engine speed, measured here with every shipped scenario at scale 0.01 (fast) and 0.002 (des):
# fast 0.8-2.9 M events/s (the larger populations the slower: cache misses), des 52-200 k events/s
# (p2p scenarios the slowest). Events per run were 1.0-1.7 x 2 x (attempts + episodes) on both.
SPEED = {"fast": 1e6, "des": 1e5}
EVENTS_PER = 2.0  # events per attempt and per episode

#: refuse a run estimated to take longer than this (wall clock, all its replications). A storm of a
#: day is simulated in minutes at a sensible size; a day of computing is a mistake far more often
#: than a plan (and the plan can say --no-limits or use --scale)
MAX_SECONDS = 24 * 3600.0
#: refuse more estimated attempts than this even when the engine looks fast enough: ~6 h on the
#: fast engine at its measured speed, ~60 h on des, ~10x what the largest shipped story makes at full
#: size (skype-2010, ~1.6e9); past it the order-of-magnitude estimate cannot promise the 24 h
MAX_ATTEMPTS = 1e10
#: refuse a sweep with more runs than this (grid points x policies x replications): ~1 day at a
#: second a run, and sweep.csv holds a row per run
MAX_RUNS = 100_000
#: how long an arrival stays in its episode when no storm holds it (des: its process lives that long)
EPISODE = 60.0
#: retries of an episode over which the backoff policy's mean delay is averaged
RETRIES = 8


class ResourceError(ValueError):
    """A run that would not fit; `problems` holds one line per reason, each naming its keys."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Part:
    """One thing that takes memory: what, the keys that drive it (as `key = value` text), bytes."""

    what: str
    keys: str
    bytes: float
    advice: str


@dataclass(frozen=True)
class Source:
    """Where the work comes from: the keys (as text), the episodes and the attempts they bring."""

    keys: str
    episodes: float
    attempts: float


@dataclass(frozen=True)
class Estimate:
    """A run's estimated peak memory (`parts`, `memory`), attempts and wall-clock time."""

    scenario: str
    engine: str
    replications: int
    parallel: int
    parts: tuple[Part, ...]
    base: float          # the interpreter and libraries, per process
    episodes: float
    attempts: float      # per run
    sources: tuple[Source, ...]
    seconds: float       # all replications, `parallel` at a time

    @property
    def memory(self) -> float:
        """Peak bytes of all runs at once, the interpreters included."""
        return sum(p.bytes for p in self.parts) + self.base * self.parallel


def estimate(scenario: Scenario, engine: str, replications: int = 1, parallel: int = 1, *,
             until: float | None = None) -> Estimate:
    """The estimate for `replications` runs, `parallel` at a time, on `engine` (`auto` resolved as
    `sim.runner.choose_engine` does, so it is the engine that will run)."""
    from sim.runner import choose_engine  # the engine choice itself, not a copy of its rule
    engine, _ = choose_engine(scenario, engine)
    replications, parallel = max(1, replications), max(1, min(parallel, replications))
    s, end = scenario, scenario.duration if until is None else min(until, scenario.duration)
    d = _demand(s, end)
    parts = _parts(s, engine, end, d, replications, parallel)
    rounds = math.ceil(replications / parallel)
    seconds = _finite(EVENTS_PER * (d.attempts + d.episodes) / SPEED[engine] * rounds)
    return Estimate(s.name, engine, replications, parallel, parts, BYTES[engine]["base"], d.episodes, d.attempts,
                    d.sources, seconds)


def check(e: Estimate, available: int | None = None) -> list[str]:
    """One line per reason to refuse the run (empty: it fits). `available`: bytes of memory free
    (default: what this machine has now, `available_memory()`)."""
    free = float(available_memory() if available is None else available)
    lines = _memory_problems(e, free)
    runs = f" x {e.replications} runs" if e.replications > 1 else ""
    if e.seconds > MAX_SECONDS or e.attempts > MAX_ATTEMPTS:
        top = max(e.sources, key=lambda src: src.attempts)
        lines.append(f"{top.keys} makes ~{_count(e.attempts)} attempts{runs}, ~{_seconds(e.seconds)} on the "
                     f"{e.engine} engine (limits: {_seconds(MAX_SECONDS)}, {_count(MAX_ATTEMPTS)} attempts); "
                     f"lower it, use --scale or --until, or pass --no-limits to run anyway")
    return lines


def enforce(e: Estimate, available: int | None = None) -> None:
    """`check`, raising ResourceError with its lines when there are any."""
    problems = check(e, available)
    if problems:
        raise ResourceError(problems)


def describe(e: Estimate) -> str:
    """One line for `loginstorm validate`: "needs ~120 MB, ~2 M attempts, ~3 s on the fast engine"."""
    runs = f" ({e.replications} runs, {e.parallel} at a time)" if e.replications > 1 else ""
    return (f"needs ~{_bytes(e.memory)}, ~{_count(e.attempts)} attempts, ~{_seconds(e.seconds)} on the "
            f"{e.engine} engine{runs}")


def check_runs(runs: int, limit: int = MAX_RUNS) -> list[str]:
    """A line when a sweep's runs (grid points x policies x replications: `sim.sweep.run_sweep`,
    or `sim.overrides.grid_size` from the specs) are over `limit`, else none."""
    if runs <= limit:
        return []
    return [f"the sweep makes {runs:,} runs (grid points x policies x replications), over the limit of "
            f"{limit:,}; use fewer --grid values, policies or --replications, or pass --no-limits to run anyway"]


def available_memory() -> int:
    """Bytes this process may still take: MemAvailable of /proc/meminfo (else free pages from
    os.sysconf), lowered to a cgroup's memory.max less its memory.current where there is one."""
    free = _meminfo()
    try:
        limit = int(_read("/sys/fs/cgroup/memory.max")) - int(_read("/sys/fs/cgroup/memory.current"))
        free = min(free, max(0, limit))
    except (OSError, ValueError):  # no cgroup v2, or "max"
        pass
    return free


# --- what the scenario asks for -------------------------------------------------------------

@dataclass(frozen=True)
class _Demand:
    clients: float       # at t = 0 plus arrivals
    active: float        # des: clients with a live process at the peak
    episodes: float
    attempts: float
    requests: float      # waiting or in service at the peak
    sources: tuple[Source, ...]


def _demand(s: Scenario, end: float) -> _Demand:
    """Episodes from events, arrivals and churn; retries from the storm the events make."""
    n, pop = float(s.population.clients), s.population
    hit, first, hit_keys = _storm(s, n, end)
    arrivals = _arrivals(s, end)
    churn, churn_keys = _churn(s, n, end)
    rate, capacity = _cycle_rate(s, hit), _capacity(s)
    drain = min(max(0.0, end - first), _div(hit, capacity) + _down(s, end))
    retries = _finite(drain * rate) if drain > 0 else 0.0
    if s.client.max_attempts:
        retries = min(retries, hit * (s.client.max_attempts - 1))
    episodes = _finite(hit + arrivals + churn)
    sources = (Source(hit_keys, hit, _finite(hit + retries)),
               Source(f"population.login_rate = {pop.login_rate:g}/s over {_span(end)}", arrivals, arrivals),
               Source(churn_keys, churn, churn))
    # des keeps a process for each client with a timer: all of them when sessions or offline
    # times are finite, else the storm's clients and the arrivals still in their episode
    timers = not (pop.session.is_infinite and pop.offline.is_infinite)
    active = n + arrivals if timers else min(n + arrivals, hit + pop.login_rate * max(drain, EPISODE))
    return _Demand(_finite(n + arrivals), _finite(active), episodes, _finite(episodes + retries),
                   _requests(s, hit, retries, drain, capacity), sources)


def _storm(s: Scenario, n: float, end: float) -> tuple[float, float, str]:
    """Clients sent into an episode together, when the first of them go, and the keys that send
    them: the clients offline at the start (they want in after `offline`), events that hit clients
    and, with [server.p2p], the children of the supernodes an event takes down (orphans log in again)."""
    pop = s.population
    hit, first, hits = 0.0, end, []
    if not pop.offline.is_infinite and pop.online_at_start < 1 and pop.offline.mean < end:
        hit, first = n * (1.0 - pop.online_at_start), pop.offline.mean
        hits.append(f"population.online_at_start = {pop.online_at_start:g}")
    for i, e in enumerate(s.events):
        share = _share(e, s.server.p2p)
        if share > 0 and e.at < end:
            hit, first = hit + share * n, min(first, e.at)
            hits.append(f"events.{i}")
    return hit, first, f"population.clients = {pop.clients:,}" + (f" hit by {', '.join(hits)}" if hits else "")


def _share(e: Event, p2p: P2P | None) -> float:
    """The share of the clients an event sends into an episode."""
    if e.kind == "failover" or (e.kind == "outage" and e.drop_sessions):
        return 1.0
    if e.kind not in ("reboot", "disconnect", "login"):
        return 0.0
    if p2p is None or e.kind == "login":
        return e.fraction
    supernodes = e.fraction if e.supernode_fraction is None else e.supernode_fraction
    return min(1.0, e.fraction + supernodes * p2p.supernode_ratio * p2p.children)


def _arrivals(s: Scenario, end: float) -> float:
    """login_rate x the time, surges included: the integral of `sim.waves.rate_schedule`."""
    surges = [(e.at, e.duration, e.factor) for e in s.events if e.kind == "surge"]
    steps = rate_schedule(s.population.login_rate, surges) + [(math.inf, 0.0)]
    total = sum(rate * (min(t1, end) - min(t0, end)) for (t0, rate), (t1, _) in zip(steps, steps[1:])
                if rate > 0 and t0 < end)
    return _finite(total)


def _churn(s: Scenario, n: float, end: float) -> tuple[float, str]:
    """Episodes of clients that come and go by themselves: sessions that end, and come back."""
    pop = s.population
    session, offline = pop.session.mean, pop.offline.mean
    keys = f"population.session / offline (means {_span(session)} / {_span(offline)}) over {_span(end)}"
    if math.isinf(offline) or math.isinf(session):
        return 0.0, keys
    return _finite(n * _div(end, session + offline)), keys


def _down(s: Scenario, end: float) -> float:
    """Seconds the tier serves nobody, or a partition's share of clients: the storm waits them out."""
    return sum(min(e.duration, end - e.at) * (e.fraction * e.failure if e.kind == "partition" else 1.0)
               for e in s.events if e.kind in ("outage", "partition") and e.at < end)


def _capacity(s: Scenario) -> float:
    """Logins per second the dedicated workers serve (the token rate at most). Supernodes are left
    out: they are the capacity a storm takes away (skype-2007 at scale 0.01 makes 4.9 M attempts;
    counting its supernodes would predict ~100x fewer)."""
    srv = s.server
    rate = _div(float(srv.workers), srv.service_time.mean)
    return min(rate, srv.rate_limit.rate) if srv.rate_limit is not None else rate


def _cycle_rate(s: Scenario, hit: float) -> float:
    """Attempts per second of `hit` clients in an episode: those the queue holds try once per
    timeout and backoff, the ones refused once per round trip and backoff (or the longest
    Retry-After: the server's, the rate limit's, an admit gate's)."""
    c, srv = s.client, s.server
    policy = c.build_policy()
    delays = [policy.mean_delay(k) for k in range(RETRIES)]
    base, cap = policy.kernel_args()[:2]
    delay = sum(_finite(d) if d is not None else min(cap, base * 2 ** k) for k, d in enumerate(delays)) / RETRIES
    held = min(hit, srv.queue_limit + srv.workers)
    retry_after = max([srv.retry_after, srv.rate_limit.retry_after if srv.rate_limit else 0.0]
                      + [e.retry_after for e in s.events if e.kind == "admit" and e.fraction < 1])
    refused_wait = max(delay, retry_after) if c.honor_retry_after else delay
    return _div(held, c.timeout.mean + delay) + _div(hit - held, c.rtt + refused_wait)


def _requests(s: Scenario, hit: float, retries: float, drain: float, capacity: float) -> float:
    """Requests held at the peak: the queue, which keeps the requests of clients that timed out
    (the wasted work) unless expired ones are dropped; at most queue_limit + workers."""
    srv, timeout = s.server, s.client.timeout.mean
    zombies = 0.0 if srv.drop_expired or srv.cancel_on_timeout or math.isinf(timeout) else \
        max(0.0, retries - _finite(capacity * drain))
    return _finite(min(srv.queue_limit, hit + zombies) + srv.workers)


# --- memory ----------------------------------------------------------------------------------

def _parts(s: Scenario, engine: str, end: float, d: _Demand, replications: int, parallel: int) -> tuple[Part, ...]:
    b, at_once, srv = BYTES[engine], float(parallel), s.server
    per_client = b["client"] + (b["p2p"] if srv.p2p is not None else 0.0)
    clients = d.clients * per_client + (d.active * b["active"] if engine == "des" else 0.0)
    # fast sizes its request pool for min(clients, queue_limit) + workers from the start
    requests = d.requests if engine == "des" else max(d.requests, min(d.clients, srv.queue_limit) + srv.workers)
    bins = max(1.0, _div(end, s.bin_width))
    scaled = f" after --scale {s.scale:g}" if s.scale != 1.0 else ""
    queue = "inf" if math.isinf(srv.queue_limit) else f"{int(srv.queue_limit):,}"
    return (
        Part("client state", f"population.clients = {s.population.clients:,}{scaled}{_plus_arrivals(s, d)}",
             _finite(at_once * clients), "lower it, use --scale"),
        Part("requests", f"server.queue_limit = {queue} with server.workers = {srv.workers:,} "
                         f"(~{_count(requests)} requests held)", _finite(at_once * requests * b["request"]),
             "set a finite queue_limit or drop_expired" if math.isinf(srv.queue_limit) else "lower them, use --scale"),
        Part("time series", f"duration = {_span(end)} at resolution = {_span(s.bin_width)} (~{_count(bins)} bins)",
             _finite(bins * (at_once * b["bin"] + replications * KEPT_BIN)),
             "raise resolution, shorten duration or use --until"),
        Part("login times", f"{max(d.sources, key=lambda src: src.episodes).keys} (~{_count(d.episodes)} episodes)",
             _finite(at_once * d.episodes * LOGIN), "lower it, use --scale"),
    ) + _limiter_part(s, engine, d, at_once) + _token_part(s, d, at_once)


def _token_part(s: Scenario, d: _Demand, at_once: float) -> tuple[Part, ...]:
    """When each client last logged in (docs/model.md section 3.4): 8 bytes a client in both engines."""
    if s.client.resume_window <= 0:
        return ()
    return (Part("session tokens", f"client.resume_window = {s.client.resume_window:g} s: a token time for each "
                                   f"of ~{_count(d.clients)} clients", _finite(at_once * d.clients * 8.0),
                 "lower it, use --scale"),)


def _limiter_part(s: Scenario, engine: str, d: _Demand, at_once: float) -> tuple[Part, ...]:
    """The limiter's state rows (LIMITER_HELD's comment), when the client has a limiter."""
    lim = s.client.build_limiter()
    if lim is None:
        return ()
    rows = d.clients if lim.per_device else float(lim.groups_for(s.population.clients))
    held = d.clients * LIMITER_HELD if engine == "fast" else 0.0
    whose = f"~{_count(rows)} devices" if lim.per_device else f"{_count(rows)} group{'s' if rows != 1 else ''}"
    return (Part("limiter state", f"client.limiter ({lim.describe()}) with {lim.width:,} values of state for each "
                                  f"of {whose}", _finite(at_once * (rows * lim.width * 8.0 + held)),
                 "share it (scope = \"shared\"), shorten its window or use --scale"),)


def _plus_arrivals(s: Scenario, d: _Demand) -> str:
    arrivals = d.clients - s.population.clients
    return f" + ~{_count(arrivals)} arrivals (population.login_rate = {s.population.login_rate:g}/s)" \
        if arrivals >= 1 else ""


def _memory_problems(e: Estimate, free: float) -> list[str]:
    big = [p for p in e.parts if p.bytes > free]
    total = e.memory
    if not big and total > free:
        big = [max(e.parts, key=lambda p: p.bytes)]
    runs = f", {e.parallel} runs at once" if e.parallel > 1 else ""
    in_all = f" (~{_bytes(total)} in all)" if len(big) == 1 and total > 1.5 * big[0].bytes else ""
    return [f"{p.keys} needs ~{_bytes(p.bytes)} of {p.what}{in_all} ({e.engine} engine{runs}); this machine has "
            f"{_bytes(free)} available; {p.advice}, or pass --no-limits to run anyway" for p in big]


def _meminfo() -> int:
    try:
        for line in _read("/proc/meminfo").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 2**63 - 1  # nothing to go by: do not refuse on memory


def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read().strip()


# --- arithmetic that never overflows, and words ------------------------------------------------

def _div(a: float, b: float) -> float:
    """a / b with 0 / 0 = 0 and x / 0 = inf: a zero-time cycle is endless work, not an error."""
    if b == 0:
        return 0.0 if a == 0 else math.inf
    return _finite(a / b)


def _finite(x: float) -> float:
    """A figure as a float, with nan (inf - inf, 0 x inf) read as inf: an estimate is never nan."""
    x = float(x)
    return math.inf if math.isnan(x) else x


def _span(seconds: float) -> str:
    """A duration as the scenario writes it, or in seconds when that would be a wall of digits."""
    return format_duration(seconds) if seconds < 1e9 or math.isinf(seconds) else f"{seconds:.3g}s"


def _scaled(x: float, units: tuple[str, ...]) -> str:
    """x in the largest of `units` (each 1000 times the one before) that keeps it at 1 or more."""
    k = 0
    while x >= 999.5 and k < len(units) - 1:
        x, k = x / 1000.0, k + 1
    return (f"{x:.1f}" if x < 10 and k else f"{x:.0f}") + units[k]


def _bytes(n: float) -> str:
    """"120 MB", "6.1 GB"; past exabytes in powers of ten."""
    if not math.isfinite(n) or n >= 1e21:
        return "inf B" if math.isinf(n) else f"{n:.1e} B"
    return _scaled(n, (" B", " kB", " MB", " GB", " TB", " PB", " EB"))


def _count(n: float) -> str:
    """"14 k", "2.0 M", "3.6 billion"; past a thousand trillion in powers of ten."""
    if not math.isfinite(n) or n >= 1e15:
        return "inf" if math.isinf(n) else f"{n:.1e}"
    return _scaled(n, ("", " k", " M", " billion", " trillion"))


def _seconds(s: float) -> str:
    """"3 s", "4 min", "2.0 h", "3.0 d", "230 years"."""
    if not math.isfinite(s):
        return "forever"
    for unit, size in (("years", 365.25 * 86400), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if s >= size:
            x = s / size
            return f"{x:.1e} {unit}" if x >= 1e6 else (f"{x:.1f} {unit}" if x < 10 else f"{x:.0f} {unit}")
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
