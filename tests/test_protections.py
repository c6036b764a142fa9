"""The adaptive server protections of sim/protections.py, session resumption and the metastability
verdict, on the reference engine (the compiled engine's agreement is tests/test_fast_protections.py).

Timelines are worked out by hand from each source's rule (quoted in the test); the limit
algorithms' long-run level is compared with an independent computation made here: the rule
applied to round-trip times drawn from the M/M/c/K sojourn-time distribution of the tier it
limits. Resumption is checked by statistical equality with the same storm at the resumption's
service time; the verdict by Brooker's simple-collapse scenario.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim import des
from sim.config import ScenarioError, load_scenario
from sim.metrics import WASTED_COLLAPSE, level_mean, metastable, wasted_share, TAIL
from sim.protections import (admits, codel_params, codel_row, codel_shed, limit_params, limit_row, limit_sample,
                             queue_retry_after, serve_newest)
from test_fast import welch

# --- hand timelines --------------------------------------------------------------------------


def test_aimd_timeline_as_netflix():
    """AIMDLimit: `if (didDrop || rtt > timeout) limit = (int)(limit * backoffRatio); else if
    (inflight * 2 >= limit) limit + 1`, clamped to [min, max]."""
    prm, row = limit_params("aimd", initial=10, min=5, max=12), limit_row("aimd", initial=10)
    assert limit_sample(prm, row, 0.1, 5, False) == 11          # 5 x 2 >= 10: +1
    assert limit_sample(prm, row, 0.1, 5, False) == 11          # 5 x 2 < 11: app-limited, unchanged
    assert limit_sample(prm, row, 0.1, 6, False) == 12
    assert limit_sample(prm, row, 0.1, 12, False) == 12         # clamped at max
    assert limit_sample(prm, row, 5.0, 12, False) == 12         # rtt == timeout is not slower than it
    assert limit_sample(prm, row, 5.01, 12, False) == 10        # int(12 x 0.9) = 10
    assert limit_sample(prm, row, 0.1, 12, True) == 9           # a drop: int(10 x 0.9)
    for _ in range(5):
        limit_sample(prm, row, 9.0, 12, False)
    assert row[0] == 5                                          # clamped at min
    assert admits(row, 4) and not admits(row, 5)                # SimpleLimiter: inflight >= limit rejects


def test_gradient_timeline_as_netflix():
    """Gradient2Limit: the long RTT averages its first 10 samples, then an EMA with factor 2/(600+1);
    gradient = clamp(1.5 x long / short, 0.5, 1); new = limit x gradient + 4, smoothed by 0.2;
    unchanged while inflight < limit / 2; long x 0.95 when long / short > 2."""
    prm, row = limit_params("gradient", initial=20, min=20, max=200), limit_row("gradient", initial=20)
    assert limit_sample(prm, row, 1.0, 20, False) == pytest.approx(20 * 0.8 + (20 * 1.0 + 4) * 0.2)   # 20.8
    assert row[1] == 1.0                                         # long = mean of 1 sample
    limit = row[0]
    assert limit_sample(prm, row, 4.0, 5, False) == limit        # inflight 5 < 20.8 / 2: app-limited
    assert row[1] == pytest.approx(2.5)                          # ... but the long RTT learns: (1 + 4) / 2
    # short 4 x the long 2.5 x 1.5 / ... : gradient = max(0.5, min(1, 1.5 x long / short))
    new = limit_sample(prm, row, 10.0, 30, False)
    long = (1 + 4 + 10) / 3
    gradient = max(0.5, min(1.0, 1.5 * long / 10.0))
    assert new == pytest.approx(limit * 0.8 + (limit * gradient + 4) * 0.2)
    # after the warm-up: EMA with factor 2 / 601
    for _ in range(7):
        limit_sample(prm, row, 1.0, 30, False)
    before = row[1]
    limit_sample(prm, row, 2.0, 30, False)
    assert row[1] == pytest.approx(before * (1 - 2 / 601) + 2.0 * 2 / 601)   # long / short < 2: no decay
    # a long RTT far above the latest sample falls by 5 % at once
    prm2, row2 = limit_params("gradient"), limit_row("gradient")
    limit_sample(prm2, row2, 10.0, 30, False)
    limit_sample(prm2, row2, 1.0, 30, False)                     # long = 5.5 > 2 x 1
    assert row2[1] == pytest.approx(5.5 * 0.95)


def test_gradient_limit_falls_no_faster_than_half():
    prm, row = limit_params("gradient", initial=100, min=1, max=200), limit_row("gradient", initial=100)
    for _ in range(10):                                               # the warm-up: long = 1 s
        limit_sample(prm, row, 1.0, 200, False)
    for _ in range(3):
        before = row[0]
        limit_sample(prm, row, 1000.0, 100, False)                # gradient clamped at 0.5
        assert row[0] == pytest.approx(before * 0.8 + (before * 0.5 + 4) * 0.2)


def test_codel_mode_switches_as_folly():
    """folly Codel::overloaded: once `now` is past the interval's end, overloaded = (min delay of the
    interval > target) and that request only restarts the minimum; while overloaded, a request that
    waited more than 2 x target is shed."""
    prm, row = codel_params(0.005, 0.100), codel_row()
    assert not codel_shed(prm, row, 0.00, 0.020)     # the first request starts the minimum: 20 ms
    assert not serve_newest(row)
    assert not codel_shed(prm, row, 0.05, 0.030)     # past the first interval (it ended at t = 0):
    assert serve_newest(row)                         # min 20 ms > 5 ms -> overloaded until 0.15,
    assert row[2] == pytest.approx(0.15)             # and this request only restarts the minimum
    assert codel_shed(prm, row, 0.06, 0.011)         # 11 ms > 2 x 5 ms while overloaded: shed
    assert not codel_shed(prm, row, 0.07, 0.010)     # exactly 2 x target: kept
    assert not codel_shed(prm, row, 0.08, 0.0)       # the queue emptied once: min 0
    assert not codel_shed(prm, row, 0.16, 0.050)     # next interval: min was 0 -> not overloaded
    assert not serve_newest(row)
    assert not codel_shed(prm, row, 0.17, 0.050)     # not overloaded: nothing is shed
    assert not codel_shed(prm, row, 0.27, 0.050)     # min 50 ms over (0.16, 0.26]: overloaded again
    assert serve_newest(row) and codel_shed(prm, row, 0.28, 0.050)


def test_queue_retry_after_rounds_up_within_bounds():
    """The time the workers need to drain the queue, whole seconds rounded up, in [1, top]."""
    assert queue_retry_after(0, 4, 0.2, 32) == 1.0                 # an empty queue still says 1 s
    assert queue_retry_after(30, 4, 0.2, 32) == 2.0                # 1.5 s -> 2
    assert queue_retry_after(40, 4, 0.2, 32) == 2.0                # exactly 2 s
    assert queue_retry_after(1000, 4, 0.2, 32) == 32.0             # 50 s capped at 32
    assert queue_retry_after(5, 0, 0.2, 32) == 32.0                # no worker: the longest


# --- the schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("sets, key, words", [
    (["server.concurrency.kind=vegas"], "server.concurrency.kind", "aimd"),
    (["server.concurrency.kind=aimd", "server.concurrency.smoothing=0.5"], "smoothing", "gradient"),
    (["server.concurrency.kind=gradient", "server.concurrency.backoff=0.9"], "backoff", "aimd"),
    (["server.concurrency.kind=aimd", "server.concurrency.backoff=0.3"], "backoff", "0.5"),
    (["server.concurrency.kind=aimd", "server.concurrency.initial=500"], "initial", "between"),
    (["server.codel.target=200ms", "server.codel.interval=100ms"], "interval", "longer"),
    (["server.retry_after_from=drops"], "retry_after_from", "queue"),
    (["client.resume_window=-1s"], "resume_window", ""),
])
def test_bad_protection_keys_name_the_key(sets, key, words):
    with pytest.raises(ScenarioError) as err:
        load_scenario("quickstart", sets=sets)
    text = str(err.value)
    assert key in text and words in text, text


def test_limit_defaults_are_filled_from_the_source():
    s = load_scenario("quickstart", sets=["server.concurrency.kind=gradient"])
    c = s.server.concurrency
    assert (c.initial, c.min, c.max, c.smoothing, c.queue_size, c.long_window, c.tolerance) == (
        20, 20, 200, 0.2, 4, 600, 1.5)
    assert c.backoff is None and c.timeout is None
    a = load_scenario("quickstart", sets=["server.concurrency.kind=aimd"]).server.concurrency
    assert (a.backoff, a.timeout) == (0.9, 5.0)


# --- the limits against M/M/c/K theory ----------------------------------------------------------

LAM, MU, C = 10.0, 1.0, 2     # arrivals, service rate, workers: five times overloaded


def sojourn_sampler(K: int, rng: np.random.Generator):
    """Round trips of admitted requests at an M/M/c/K tier (FIFO): an arrival sees n with probability
    pi_n / (1 - pi_K); with n >= c it waits n - c + 1 departures at rate c mu, then its service."""
    a = LAM / MU
    weights = [a ** n / math.factorial(n) if n <= C else a ** C / math.factorial(C) * (a / C) ** (n - C)
               for n in range(K)]
    p = np.array(weights) / sum(weights)

    def draw(size: int) -> np.ndarray:
        n = rng.choice(K, size=size, p=p)
        waits = np.where(n >= C, rng.gamma(np.maximum(n - C + 1, 1), 1 / (C * MU)), 0.0)
        return waits + rng.exponential(1 / MU, size)
    return draw


def aimd_equilibrium(timeout: float, backoff: float) -> int:
    """The K where AIMD's mean step turns negative: +1 per sample within the timeout (the tier is full,
    so inflight x 2 >= limit), limit - int(limit x backoff) per slower one."""
    rng = np.random.default_rng(7)
    for K in range(C + 1, 200):
        rtt = sojourn_sampler(K, rng)(40_000)
        slow = float(np.mean(rtt > timeout))
        if (1 - slow) - slow * (K - int(K * backoff)) <= 0:
            return K
    raise AssertionError("no equilibrium below 200")


def gradient_drift(K: int, tolerance: float, n: int = 30_000) -> float:
    """Gradient2's mean step at a tier held at K: the rule's long RTT (an average with factor
    2 / 601, cut by 5 % whenever it exceeds twice a sample) followed over round trips drawn from the
    M/M/c/K sojourn time, and the step limit x (gradient - 1) + 4 averaged over the second half."""
    rtt = sojourn_sampler(K, np.random.default_rng(K))(n)
    long, f, steps = float(rtt[:10].mean()), 2 / 601, []
    for i, x in enumerate(rtt[10:].tolist()):
        long = long * (1 - f) + x * f
        if long / x > 2:
            long *= 0.95
        if i > n // 2:
            steps.append(K * (max(0.5, min(1.0, tolerance * long / x)) - 1) + 4)
    return float(np.mean(steps))


def limited_tier(kind: str, extra: list[str]) -> dict:
    s = load_scenario("quickstart", sets=[
        "duration=3000s", "warmup=500s", "resolution=10s", "population.clients=0", f"population.login_rate={LAM}",
        "events=[]", "client.timeout=inf", "client.max_attempts=1", "client.policy=none",
        "client.connect_delay=0s", f"server.workers={C}",
        f'server.service_time={{dist="exponential",mean="{1 / MU}s"}}',
        "server.queue_limit=inf", f"server.concurrency.kind={kind}", "server.concurrency.min=1",
        "server.concurrency.initial=5", *extra])
    return des.run(s).summary


@pytest.mark.parametrize("timeout", [5.0, 10.0])
def test_aimd_settles_where_theory_puts_it(timeout):
    """Under a steady overload the tier stays full, so requests in the system = the limit; AIMD's
    limit settles where a sample's chance of exceeding the timeout balances the +1 steps."""
    want = aimd_equilibrium(timeout, 0.9)
    got = limited_tier("aimd", [f"server.concurrency.timeout={timeout}s"])["steady"]["mean_in_system"]
    assert got == pytest.approx(want, rel=0.2), (got, want)


def test_gradient_climbs_to_its_max_where_theory_sees_no_slowdown():
    """With the default tolerance of 1.5 a sample counts as slow only above 1.5 x the long RTT; the
    round trips of a full M/M/2/K tier spread less as K grows (Erlang), so at every K the rule's mean
    step, computed here on M/M/c/K round trips, is positive: the limit climbs to its max and the tier
    holds that many."""
    assert all(gradient_drift(K, 1.5) > 0 for K in (5, 20, 60))
    climbed = limited_tier("gradient", ["server.concurrency.max=60"])
    assert climbed["steady"]["mean_in_system"] == pytest.approx(60, rel=0.05)
    # a tolerance of 1 makes every sample above the long RTT "slow": the same overload is held lower
    low = limited_tier("gradient", ["server.concurrency.max=60", "server.concurrency.tolerance=1"])
    assert low["steady"]["mean_in_system"] < 0.6 * 60


def test_aimd_limit_refuses_early_and_keeps_waits_short():
    """Without the limit the same overload queues without end; with it, waits stay near the timeout."""
    limited = limited_tier("aimd", [])
    assert limited["rejected"] > 0.5 * limited["attempts"]          # most of a 5x overload refused at once
    assert limited["steady"]["mean_wait_s"] < 6.0


# --- CoDel and the computed Retry-After in a storm ---------------------------------------------------


def quickstart(*sets: str, seed: int = 1) -> dict:
    return des.run(load_scenario("quickstart", sets=[f"seed={seed}", "duration=20m", *sets])).summary


def test_codel_sheds_and_adaptive_lifo_serves_fresh_requests():
    """Quickstart's queue waits exceed the 5 s timeout; CoDel sheds the stale ones and serves new ones
    first, so less of the tier's work is wasted."""
    plain = quickstart()
    codel = quickstart("server.codel.target=5ms")
    assert codel["wasted_work_fraction"] < 0.5 * plain["wasted_work_fraction"], (plain, codel)
    assert codel["timeouts"] < 0.5 * plain["timeouts"] and codel["attempts"] < plain["attempts"]


def test_queue_retry_after_spreads_the_retries():
    """With Retry-After from the queue (capped at 32 s) clients that honour it come back later than
    with the fixed 5 s, so fewer attempts are refused."""
    fixed = quickstart("client.policy=none")
    computed = quickstart("client.policy=none", "server.retry_after_from=queue")
    assert computed["attempts"] < fixed["attempts"]


# --- resumption ----------------------------------------------------------------------------------

STORM = ["duration=30m", "events=[]", "events.0.kind=disconnect", "events.0.at=5m", "events.0.fraction=0.5",
         'events.0.spread={dist="uniform",low="0s",high="30s"}']
FIELDS = ("attempts", "logins", "timeouts", "rejected", "wasted_work_fraction", "recovery_s.p90")


def field(summary: dict, path: str):
    for key in path.split("."):
        summary = summary[key]
    return summary


def test_all_resumptions_match_the_storm_at_their_service_time():
    """Every client holds a token (resume_window inf), so every login of the disconnect storm is a
    resumption at 20 ms; the same storm with a 20 ms service time and no resumption is the same
    storm in distribution."""
    cheap = '{dist="lognormal",median="20ms",p99="150ms"}'
    resumed, plain = [], []
    for seed in range(1, 9):
        resumed.append(des.run(load_scenario("quickstart", sets=[
            f"seed={seed}", *STORM, "client.resume_window=inf", f"server.resume.service_time={cheap}"])).summary)
        plain.append(des.run(load_scenario("quickstart", sets=[
            f"seed={seed + 100}", *STORM, f"server.service_time={cheap}"])).summary)
    for r in resumed:
        assert r["resumptions"] == r["attempts"] > 0 and r["resumed"] == r["logins"]
    for f in FIELDS:
        welch(f, [field(r, f) for r in resumed], [field(p, f) for p in plain], alpha=0.01)
    full = des.run(load_scenario("quickstart", sets=["seed=1", *STORM])).summary
    assert full["resumptions"] == 0
    assert full["attempts"] > 1.2 * np.mean([r["attempts"] for r in resumed])   # full logins storm longer


def test_token_purge_and_reboots_force_full_logins():
    resume = ["client.resume_window=inf", 'server.resume.service_time="10ms"']
    purged = quickstart(*STORM, *resume, "events.1.kind=token-purge", "events.1.at=4m", "events.1.fraction=1")
    assert purged["resumptions"] == 0 and purged["attempts"] > 0
    half = quickstart(*STORM, *resume, "events.1.kind=token-purge", "events.1.at=4m", "events.1.fraction=0.5")
    first_try = half["episodes"]
    assert 0.35 * first_try < half["resumed"] < 0.65 * first_try      # about half still hold a token
    rebooted = quickstart(*resume)                                      # quickstart's wave is a reboot
    assert rebooted["resumptions"] == 0 and rebooted["logins"] > 0
    window = quickstart(*STORM, "client.resume_window=2m", 'server.resume.service_time="10ms"')
    assert window["resumptions"] == 0                                   # tokens from t = 0 expired at 2 min


# --- the verdict: latency-driven collapse ----------------------------------------------------------


def old_verdict(m) -> bool:
    """The busy-only definition the verdict had before: tail down and workers >= 95 % busy."""
    if m.last_event_end > 0.9 * m.end:
        return False
    busy, workers = level_mean(m, "busy", TAIL), m.levels["workers"].mean(TAIL)
    return bool(workers) and m.watch.tail_max < 0.99 and busy / workers >= 0.95


def brooker_runs(policy: list[str], seeds=range(1, 11)) -> list[tuple[bool, bool, float]]:
    out = []
    for seed in seeds:
        s = load_scenario("brooker-collapse", sets=[f"seed={seed}", *policy])
        m = des.Model(s, s.duration, np.random.default_rng(s.seed))
        m.run(None)
        out.append((metastable(m), old_verdict(m), wasted_share(m)))
    return out


def test_brooker_collapse_is_metastable_without_backoff_only():
    """Brooker's simple collapse: without backoff, runs that tip stay collapsed (every completion in
    the tail reaches nobody) long after the spike; jittered backoff (U(0, 20 s), U(0, 40 s)) recovers
    in every run. The old busy-only verdict saw none of it: 100 000 workers are never busy."""
    none = brooker_runs([])
    jitter = brooker_runs(["client.policy=full-jitter", "client.policy.base=20s"])
    collapsed = [r for r in none if r[0]]
    assert len(collapsed) >= 2, none                             # the tier is bistable: some runs tip
    assert all(share >= WASTED_COLLAPSE for _, _, share in collapsed)
    assert not any(v for v, _, _ in jitter), jitter
    assert not any(old for _, old, _ in none + jitter)           # the old definition was blind to it
    assert all(share < 0.1 for _, _, share in jitter)
