"""The reference engine against the precise rules of docs/model.md section 3.1, one rule per test.

Each scenario is small and, where it can be, deterministic: constant service times, constant
timeouts, constant backoff and binary-exact numbers (0.5, 0.125, 1.5 ...) make the outcome
computable by hand. The hand computation is written next to each check, and where a count
depends on a timeline, a few lines of plain Python walk that timeline independently of the
engine. Random outcomes (who is picked, who is admitted, Poisson arrivals) are held to
binomial or Poisson bands (5 standard deviations), never to numbers from an earlier run.

Same-instant ordering is avoided on purpose: no client acts at the very instant an event
starts or ends (except where a test is about exactly that), because docs/model.md does not say
which goes first.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.des import run
from sim.results import RunResult

Z = 5.0  # width of the statistical bands, in standard deviations


# --- helpers ------------------------------------------------------------------------------------

def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def scenario_text(*, duration: float, resolution: float = 1.0, population: dict | None = None,
                  client: dict | None = None, server: dict | None = None, events: list[dict] = (),
                  p2p: dict | None = None, **top) -> str:
    """A scenario file from plain dicts (tables) and a list of event dicts."""
    lines = ['name = "engine-test"', f"duration = {duration!r}", f"resolution = {resolution!r}"]
    lines += [f"{k} = {_toml(v)}" for k, v in top.items()]
    server = {"workers": 1000, "service_time": 0.125, **(server or {})}
    for table, body in (("population", population or {}), ("client", client or {}), ("server", server)):
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
    if p2p is not None:
        lines.append("[server.p2p]")
        lines += [f"{k} = {_toml(v)}" for k, v in p2p.items()]
    for event in events:
        lines.append("[[events]]")
        lines += [f"{k} = {_toml(v)}" for k, v in event.items()]
    return "\n".join(lines) + "\n"


def simulate(*, seed: int | None = None, until: float | None = None, **kw) -> RunResult:
    return run(parse_scenario(scenario_text(**kw), source="test_engine", seed=seed), until=until)


def starts_before(first: float, period: float, end: float) -> int:
    """How many of first, first + period, first + 2 period, ... lie before `end` (a timeline walk)."""
    n, t = 0, first
    while t < end:
        n, t = n + 1, t + period
    return n


def col(r: RunResult, name: str) -> np.ndarray:
    return r.timeseries[name]


def counts_in(r: RunResult, name: str, t0: float, t1: float) -> int:
    """Sum of a count column over the bins starting in [t0, t1)."""
    t = col(r, "t")
    return int(col(r, name)[(t >= t0) & (t < t1)].sum())


def busy_time(r: RunResult) -> float:
    """All worker time, integrated from the busy column (bin averages x bin lengths)."""
    t = col(r, "t")
    lengths = np.minimum(np.diff(np.append(t, r.summary["duration_s"])), r.scenario.bin_width)
    return float(np.sum(col(r, "busy") * lengths))


def binomial_band(n: int, p: float) -> tuple[float, float]:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    return mean - Z * sd, mean + Z * sd


# Everyone offline with a zero offline time: the whole population starts an episode at t = 0.
ALL_AT_ZERO = {"online_at_start": 0.0, "offline": "0s"}


# --- client rules: max_attempts, relaunch, give_up_after, Retry-After ---------------------------

def test_max_attempts_then_give_up_against_a_refusing_tier():
    """A refuse outage covers the run: every attempt is refused one rtt later.

    Episode from t = 0: connect_delay 1 -> attempts at 1, 3, 5 (refused at +1, then 1 s of
    constant backoff); the 3rd refusal at 6 ends the episode (max_attempts 3 counts the first).
    """
    n = 10
    r = simulate(duration=100, population={"clients": n, **ALL_AT_ZERO},
                 client={"rtt": 1, "connect_delay": 1, "max_attempts": 3,
                         "policy": {"name": "constant", "base": 1}},
                 events=[{"at": 0, "kind": "outage", "duration": 1000, "mode": "refuse"}])
    s = r.summary
    assert (s["episodes"], s["attempts"], s["gave_up"], s["rejected"], s["logins"]) == (n, 3 * n, n, 3 * n, 0), s
    assert s["amplification"] == 3.0
    gave_up = col(r, "gave_up")
    assert np.all(gave_up[6:] == n) and np.all(gave_up[:6] == 0), f"gave_up level: {gave_up[:10]}"


def test_relaunch_restarts_episodes_after_giving_up():
    """As above with relaunch 10 s: an episode starting at s gives up at s + 6 and the next
    one starts at s + 16; walk that timeline to the end of the run (events at `duration` never happen)."""
    n, duration, rtt, cd, delay, relaunch, max_attempts = 4, 100.0, 1.0, 1.0, 1.0, 10.0, 3
    episodes = attempts = gave_up = 0
    start = 0.0
    while start < duration:
        episodes += 1
        t = start + cd
        for k in range(max_attempts):
            if t >= duration:
                break
            attempts += 1
            refused_at = t + rtt
            if k == max_attempts - 1:
                gave_up += refused_at < duration
            t = refused_at + delay
        start = refused_at + relaunch
    assert (episodes, attempts, gave_up) == (7, 20, 6)  # 0, 16, ..., 96; the last one is cut short
    r = simulate(duration=duration, population={"clients": n, **ALL_AT_ZERO},
                 client={"rtt": rtt, "connect_delay": cd, "max_attempts": max_attempts, "relaunch": relaunch,
                         "policy": {"name": "constant", "base": delay}},
                 events=[{"at": 0, "kind": "outage", "duration": 1000}])
    s = r.summary
    assert (s["episodes"], s["attempts"], s["gave_up"]) == (n * episodes, n * attempts, n * gave_up), s


def _attempts_within(rtt: float, delays, give_up_after: float) -> int:
    """Attempts of one always-refused episode: at a failure the client gives up if its next
    attempt would start later than first + give_up_after (times relative to the first attempt)."""
    start, n = 0.0, 1
    while True:
        nxt = start + rtt + delays(n - 1)
        if nxt > give_up_after:
            return n
        start, n = nxt, n + 1


@pytest.mark.parametrize("clients, share, online", [(7, 0.3, 2), (7, 0.4, 3), (10, 0.0, 0), (10, 1.0, 10)])
def test_start_puts_round_share_online(clients, share, online):
    """Exactly round(online_at_start x clients) are ONLINE at t = 0 (2.1 -> 2, 2.8 -> 3)."""
    r = simulate(duration=10, population={"clients": clients, "online_at_start": share})
    assert np.all(col(r, "online") == online) and np.all(col(r, "offline") == clients - online)


@pytest.mark.parametrize("policy, give_up_after, expected", [
    ({"name": "constant", "base": 2}, 9.5, 4),       # attempts at 0, 2.5, 5, 7.5 (10 > 9.5)
    ({"name": "constant", "base": 2}, 10.0, 5),      # the 5th starts at exactly first + 10: allowed
    ({"name": "constant", "base": 2}, 11.0, 5),
    ({"name": "exponential", "base": 1}, 16.75, 4),  # 0, 1.5, 4, 8.5 (then 17)
    ({"name": "exponential", "base": 1}, 17.0, 5),   # 17 = first + give_up_after: allowed
])
def test_give_up_after_counts_from_the_first_attempt(policy, give_up_after, expected):
    rtt = 0.5
    if policy["name"] == "constant":
        delays = lambda n: policy["base"]  # noqa: E731
    else:
        delays = lambda n: policy["base"] * 2.0 ** n  # noqa: E731
    assert _attempts_within(rtt, delays, give_up_after) == expected
    n = 4
    r = simulate(duration=100, population={"clients": n, **ALL_AT_ZERO},
                 client={"rtt": rtt, "connect_delay": 1, "give_up_after": give_up_after, "policy": policy},
                 events=[{"at": 0, "kind": "outage", "duration": 1000}])
    s = r.summary
    assert (s["attempts"], s["gave_up"], s["episodes"]) == (n * expected, n, n), s


def _decorrelated_timelines(rng: np.random.Generator, n: int, horizon: float, *, rtt: float, base: float,
                            retry_after: float = 0.0, max_attempts: int = 0, relaunch: float = math.inf,
                            reset: bool = True, previous_is_wait: bool = False) -> np.ndarray:
    """Attempts made before `horizon` by n always-refused clients under decorrelated jitter
    (uncapped): delay = U(b, 3 previous), previous starting at b; wait = max(delay, Retry-After).
    A direct Monte Carlo of the rule, vectorised over clients; `reset` and `previous_is_wait`
    give the wrong readings, so a test can show it tells them apart."""
    t, prev, k = np.zeros(n), np.full(n, base), np.zeros(n, dtype=int)
    attempts = np.zeros(n, dtype=int)
    while (t < horizon).any():
        attempts += t < horizon
        k += 1
        done = k == max_attempts if max_attempts else np.zeros(n, dtype=bool)
        delay = base + (3 * prev - base) * rng.random(n)
        wait = np.maximum(delay, retry_after)
        prev = np.where(done, base if reset else prev, wait if previous_is_wait else delay)
        t = t + rtt + np.where(done, relaunch, wait)
        k = np.where(done, 0, k)
    return attempts


def _check_against_chain(got: float, n: int, right: np.ndarray, wrong: np.ndarray, what: str) -> None:
    """`got` (a mean over n engine clients) within Z SE of the rule's Monte Carlo mean, and the
    wrong reading's mean outside that band (else the test could not tell them apart)."""
    band = Z * right.std() / math.sqrt(n) + Z * right.std() / math.sqrt(len(right))
    assert abs(wrong.mean() - right.mean()) > 2 * band, "test too weak to tell the readings apart"
    assert abs(got - right.mean()) <= band, \
        f"{what}: expected {right.mean():.3f} +- {band:.3f} attempts per client " \
        f"(the other reading gives {wrong.mean():.3f}), got {got:.3f}"


def test_decorrelated_jitter_previous_resets_at_each_episode():
    """Refuse outage over the run, max_attempts 3, relaunch 1 s, rtt 0.5: each episode draws
    U(1, 3) then U(1, 3 d1); carrying `previous` into the next episode would stretch them."""
    n, horizon = 100, 300.0
    kw = dict(rtt=0.5, base=1.0, max_attempts=3, relaunch=1.0)
    rng = np.random.default_rng(0)
    right = _decorrelated_timelines(rng, 100_000, horizon, **kw)
    wrong = _decorrelated_timelines(rng, 100_000, horizon, **kw, reset=False)
    r = simulate(duration=horizon, seed=29, population={"clients": n, **ALL_AT_ZERO},
                 client={"rtt": 0.5, "max_attempts": 3, "relaunch": 1,
                         "policy": {"name": "decorrelated-jitter", "base": 1}},
                 events=[{"at": 0, "kind": "outage", "duration": 1000}])
    _check_against_chain(r.summary["attempts"] / n, n, right, wrong, "attempts")


def test_decorrelated_jitter_previous_is_the_policy_draw_not_the_retry_after_wait():
    """Queue-full 503s with Retry-After 10 s (one worker held for the run): each refused client
    waits max(draw, 10), but its next draw is U(1, 3 x its own last draw), not U(1, 3 x 10)."""
    n, horizon = 400, 60.0
    kw = dict(rtt=0.5, base=1.0, retry_after=10.0)
    rng = np.random.default_rng(1)
    right = _decorrelated_timelines(rng, 100_000, horizon, **kw)
    wrong = _decorrelated_timelines(rng, 100_000, horizon, **kw, previous_is_wait=True)
    r = simulate(duration=horizon, seed=31, population={"clients": n + 1, **ALL_AT_ZERO},
                 client={"rtt": 0.5, "policy": {"name": "decorrelated-jitter", "base": 1}},
                 server={"workers": 1, "service_time": 1000, "queue_limit": 0, "retry_after": 10})
    _check_against_chain((r.summary["attempts"] - 1) / n, n, right, wrong, "attempts")


@pytest.mark.parametrize("honor", [True, False])
def test_honor_retry_after_on_queue_full(honor):
    """One worker busy for the whole run (service 1000 s), no queue: the first client holds it,
    the 4 others get 503 + Retry-After 5 s. Policy `none`: an honouring client retries every
    rtt + 5 = 5.5 s, the others every rtt = 0.5 s; attempts start at 0, p, 2p, ... < 100."""
    n, duration, rtt, retry_after = 5, 100.0, 0.5, 5.0
    r = simulate(duration=duration, population={"clients": n, **ALL_AT_ZERO},
                 client={"rtt": rtt, "honor_retry_after": honor},
                 server={"workers": 1, "service_time": 1000, "queue_limit": 0, "retry_after": retry_after})
    period = rtt + (retry_after if honor else 0.0)
    per_client = starts_before(0.0, period, duration)
    assert per_client == (19 if honor else 200)
    s = r.summary
    assert (s["attempts"], s["rejected"], s["logins"]) == (1 + (n - 1) * per_client, (n - 1) * per_client, 0), s


# --- outage, admit, rate limit ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_outage_refuse_vs_blackhole_with_dropped_sessions(mode):
    """20 clients: 10 online, 10 offline that a `login` event sends in at 9 s (service 2 s, so
    they are in service at 10). Outage at 10 for 19.25 s with drop_sessions; timeout 3 s, rtt
    0.5 s, constant backoff 1 s.

    refuse: the 10 requests in service are lost and refused at once (retry at 11), every
    attempt before 29.25 is refused one rtt later (period 1.5 s). The 10 dropped clients try
    from 10. blackhole: the lost requests never answer (timeout at 12, retry at 13); every
    attempt before 29.25 times out (period 3 + 1 = 4 s).
    """
    end = 10 + 19.25
    r = simulate(duration=60, population={"clients": 20, "online_at_start": 0.5},
                 client={"timeout": 3, "rtt": 0.5, "policy": {"name": "constant", "base": 1}},
                 server={"workers": 100, "service_time": 2},
                 events=[{"at": 9, "kind": "login"},
                         {"at": 10, "kind": "outage", "duration": 19.25, "mode": mode, "drop_sessions": True}])
    s = r.summary
    if mode == "refuse":
        late = starts_before(11, 1.5, end)        # login group after its lost request: 11, 12.5, ... 29
        dropped = starts_before(10, 1.5, end)     # 10, 11.5, ..., 28
        assert (late, dropped) == (13, 13)
        rejected = 10 + 10 * late + 10 * dropped
        attempts = 10 * (1 + late + 1) + 10 * (dropped + 1)
        assert (s["rejected"], s["timeouts"], s["attempts"]) == (rejected, 0, attempts), s
    else:
        late = starts_before(13, 4.0, end)        # 13, 17, 21, 25, 29 blackholed
        dropped = starts_before(10, 4.0, end)     # 10, 14, 18, 22, 26
        assert (late, dropped) == (5, 5)
        timeouts = 10 * (1 + late) + 10 * dropped
        attempts = 10 * (1 + late + 1) + 10 * (dropped + 1)
        # only the 10 requests lost at `at` are rejected (and their clients still time out)
        assert (s["rejected"], s["timeouts"], s["attempts"]) == (10, timeouts, attempts), s
        assert counts_in(r, "rejected", 10, 11) == 10
    # the 10 requests killed in service are wasted work, in either mode
    assert s["wasted"] == 10 and s["wasted_work_fraction"] > 0
    # every dropped session starts an episode; the lost requests' episodes simply continue
    assert (s["episodes"], s["logins"], s["gave_up"]) == (20, 20, 0), s
    online = col(r, "online")
    assert online[9] == 10 and online[10] == 0 and online[-1] == 20, f"online level: {online[:12]}"


def test_nested_outages_keep_the_tier_down_until_the_last_one_ends():
    """Outage 10-40 s with another 20-25 s inside it; 10 clients sent in by a login at 30.25
    (inside the first outage only) must be refused until 40: they log in at 40.625 or later."""
    r = simulate(duration=60, population={"clients": 10, "online_at_start": 0.0},
                 client={"rtt": 0.5, "policy": {"name": "constant", "base": 1}},
                 events=[{"at": 10, "kind": "outage", "duration": 30},
                         {"at": 20, "kind": "outage", "duration": 5},
                         {"at": 30.25, "kind": "login"}])
    assert counts_in(r, "successes", 0, 40) == 0, f"logins during the outage: {counts_in(r, 'successes', 0, 40)}"
    assert r.summary["rejected"] > 0 and r.summary["logins"] == 10


def test_admit_gate_lets_a_fixed_share_in_and_refuses_the_rest():
    """2000 clients try at 1 s; an admit gate at 0 lets fraction 0.3 in (by client id) and
    answers the others 503 + Retry-After 5 s; at 15 s the gate opens fully.

    Admitted: logged in at 1.125. The others: refused at 1, 6.5, 12 (rtt 0.5 + 5 s), admitted
    at 17.5. So the share in before 15 s is Binomial(2000, 0.3), and each other client has
    exactly 3 refusals.
    """
    n, f = 2000, 0.3
    r = simulate(duration=30, seed=3, population={"clients": n, **ALL_AT_ZERO},
                 client={"rtt": 0.5, "connect_delay": 1},
                 events=[{"at": 0, "kind": "admit", "fraction": f, "retry_after": 5},
                         {"at": 15, "kind": "admit", "fraction": 1.0, "retry_after": 5}])
    s = r.summary
    first = counts_in(r, "successes", 0, 15)
    low, high = binomial_band(n, f)
    assert low <= first <= high, f"admitted share: expected Binomial({n}, {f}), got {first}"
    refusals = starts_before(1, 5.5, 15)
    assert refusals == 3
    assert (s["logins"], s["rejected"], s["attempts"]) == (
        n, refusals * (n - first), first + (refusals + 1) * (n - first)), s
    assert counts_in(r, "rejected", 15, 30) == 0


def test_admit_gate_applies_to_attempts_at_its_own_instant():
    """`admit` (docs/model.md section 2): from `at`, only `fraction` of clients may log in. Attempts made at
    exactly `at` = 0 are from `at`; with fraction 0 nobody may log in."""
    r = simulate(duration=10, population={"clients": 100, **ALL_AT_ZERO}, client={"max_attempts": 1},
                 events=[{"at": 0, "kind": "admit", "fraction": 0.0}])
    assert r.summary["logins"] == 0, f"expected no logins through a closed gate, got {r.summary['logins']}"


def test_refusals_before_the_rate_limit_take_no_token():
    """Check order: outage -> admit gate -> rate limit. 20 clients try at 1, 2.5, 4, ... (rtt
    0.5, backoff 1 s). A refuse outage answers 1, 2.5, 4; a closed gate (fraction 0 until
    10.25) answers 5.5 ... 10. Neither takes a token, so at 11.5 the bucket (rate 1/s, burst
    5) is full: exactly 5 log in. Had those attempts drawn tokens, about 1.5 would be left."""
    r = simulate(duration=60, population={"clients": 20, **ALL_AT_ZERO},
                 client={"rtt": 0.5, "connect_delay": 1, "policy": {"name": "constant", "base": 1}},
                 server={"rate_limit": {"rate": 1, "burst": 5}},
                 events=[{"at": 0, "kind": "outage", "duration": 5.25},
                         {"at": 0, "kind": "admit", "fraction": 0.0},
                         {"at": 10.25, "kind": "admit", "fraction": 1.0}])
    successes = col(r, "successes")
    assert successes[:11].sum() == 0 and successes[11] == 5, successes[:14]
    assert r.summary["logins"] == 20


@pytest.mark.parametrize("burst", [10, None])
def test_rate_limit_token_bucket(burst):
    """100 clients at t = 0 against a bucket (rate 2/s, burst 10, or default burst = rate), 429
    with Retry-After 1 s, policy none, rtt 0.5: waves at 0, 1.5, 3, ... each admit the tokens
    refilled since the last wave (3 per wave), walked here as a plain token bucket."""
    n, rate, rtt, retry_after, duration = 100, 2.0, 0.5, 1.0, 90.0
    bucket = rate if burst is None else float(burst)
    waves, tokens, last, t, waiting = [], bucket, 0.0, 0.0, n
    while waiting and t < duration:
        tokens = min(bucket, tokens + (t - last) * rate)
        last = t
        admitted = min(waiting, int(tokens))
        tokens -= admitted
        waves.append((t, waiting, admitted))
        waiting -= admitted
        t += rtt + retry_after
    assert waiting == 0
    rl = {"rate": rate, "retry_after": retry_after} | ({} if burst is None else {"burst": burst})
    r = simulate(duration=duration, resolution=1.5, population={"clients": n, **ALL_AT_ZERO},
                 client={"rtt": rtt}, server={"rate_limit": rl})
    s = r.summary
    attempts = sum(w for _, w, _ in waves)
    assert (s["logins"], s["attempts"], s["rejected"]) == (n, attempts, attempts - n), s
    successes = col(r, "successes")
    assert [int(x) for x in successes[: len(waves)]] == [a for _, _, a in waves]
    assert successes[0] == bucket, "the bucket starts full: exactly `burst` logins at t = 0"
    # throughput bound of a token bucket: logins by time T <= burst + rate T
    cumulative = np.cumsum(successes)
    ends = col(r, "t") + 1.5
    assert np.all(cumulative <= bucket + rate * ends + 1e-9)


# --- partition ----------------------------------------------------------------------------------

def test_partition_hang_errors_then_fail_fast_after_isolate_at():
    """Half the clients (by id) depend on a failing back end from 0 to 39.75 s: each of their
    attempts holds a worker for 2 s and errors (timeout 5 s > hang), then constant backoff 1 s:
    attempts at 1, 4, ..., 19. From isolate_at 20 they fail fast (refused, rtt 0.5): 22, 23.5,
    ..., 38.5; at 40 the partition is over and they log in. Non-members log in at 1.125."""
    n, hang, delay, rtt, isolate_at, end = 400, 2.0, 1.0, 0.5, 20.0, 39.75
    errors = starts_before(1.0, hang + delay, isolate_at)
    first_fast = 1.0 + errors * (hang + delay)
    refusals = starts_before(first_fast, rtt + delay, end)
    assert (errors, first_fast, refusals) == (7, 22.0, 12)
    r = simulate(duration=60, seed=5, population={"clients": n, **ALL_AT_ZERO},
                 client={"timeout": 5, "rtt": rtt, "connect_delay": 1, "policy": {"name": "constant", "base": delay}},
                 events=[{"at": 0, "kind": "partition", "duration": end, "fraction": 0.5, "hang": hang,
                          "isolate_at": isolate_at}])
    s = r.summary
    members = n - counts_in(r, "successes", 0, 2)
    low, high = binomial_band(n, 0.5)
    assert low <= members <= high, f"partition members: expected Binomial({n}, 0.5), got {members}"
    assert (s["errors"], s["rejected"], s["timeouts"], s["logins"]) == \
        (errors * members, refusals * members, 0, n), s
    assert s["attempts"] == (n - members) + members * (errors + refusals + 1)
    assert counts_in(r, "errors", first_fast, 60) == 0, "errors after isolate_at"
    assert counts_in(r, "rejected", 0, first_fast) == 0, "fail-fast refusals before isolate_at"
    # a hang holds a worker: the members are all busy in [2, 3)
    assert col(r, "busy")[2] == members


def test_partition_hang_longer_than_timeout_is_a_timeout_and_wasted_work():
    """Every client's attempts hang 8 s against a 5 s timeout (partition 0-30 s): attempts at
    1, 7, 13, 19, 25 time out, and each hang ends after its deadline, so it is wasted work and
    not an error. The attempt at 31 is served (0.125 s)."""
    n, hang, timeout, service = 10, 8.0, 5.0, 0.125
    hung = starts_before(1.0, timeout + 1.0, 30.0)
    assert hung == 5
    r = simulate(duration=40, population={"clients": n, **ALL_AT_ZERO},
                 client={"timeout": timeout, "connect_delay": 1, "policy": {"name": "constant", "base": 1}},
                 server={"service_time": service},
                 events=[{"at": 0, "kind": "partition", "duration": 30, "hang": hang}])
    s = r.summary
    assert (s["errors"], s["timeouts"], s["wasted"], s["logins"]) == (0, n * hung, n * hung, n), s
    expected = hung * hang / (hung * hang + service)
    assert s["wasted_work_fraction"] == pytest.approx(expected, rel=1e-12)
    # login time runs from the episode's start (t = 0, before connect_delay) to the success at 31.125
    assert s["login_time_s"] == {"p50": 31.125, "p95": 31.125, "p99": 31.125}


@pytest.mark.parametrize("isolate_at", [None, 0.0], ids=["hang", "fail-fast"])
def test_partition_failure_is_a_per_attempt_probability(isolate_at):
    """failure 0.4: each member attempt hangs (2 s, then an error) or, after isolate_at, fails
    fast, with probability 0.4; the others are served normally. One attempt each."""
    n, failure = 1000, 0.4
    event = {"at": 0, "kind": "partition", "duration": 100, "failure": failure, "hang": 2}
    if isolate_at is not None:
        event["isolate_at"] = isolate_at
    r = simulate(duration=20, seed=37, population={"clients": n, **ALL_AT_ZERO},
                 client={"connect_delay": 1, "max_attempts": 1}, events=[event])
    s = r.summary
    failed = s["errors"] if isolate_at is None else s["rejected"]
    low, high = binomial_band(n, failure)
    assert low <= failed <= high, f"failed attempts: expected Binomial({n}, {failure}), got {failed}"
    assert s["logins"] == n - failed and s["errors"] + s["rejected"] == failed, s


# --- capacity -----------------------------------------------------------------------------------

def _linear_mean(w0: float, w1: float, at: float, ramp: float, a: float, b: float) -> float:
    """Average over [a, b] of w0 until `at`, then linear to w1 over `ramp`, then w1."""
    def integral(t: float) -> float:   # of the ramp function from 0 to t
        if t <= at:
            return w0 * t
        x = min(t, at + ramp) - at
        area = w0 * at + w0 * x + (w1 - w0) * x * x / (2 * ramp)
        return area + w1 * max(0.0, t - at - ramp)
    return (integral(b) - integral(a)) / (b - a)


def test_capacity_ramp_is_linear_within_one_worker():
    w0, factor, at, ramp, width = 4, 3.0, 10.0, 80.0, 5.0
    r = simulate(duration=120, resolution=width, server={"workers": w0},
                 events=[{"at": at, "kind": "capacity", "factor": factor, "ramp": ramp}])
    t, workers = col(r, "t"), col(r, "workers")
    linear = np.array([_linear_mean(w0, factor * w0, at, ramp, a, a + width) for a in t])
    assert np.all(np.abs(workers - linear) <= 1.0 + 1e-9), list(zip(t, workers, linear))
    assert np.all(workers[t < at] == w0) and np.all(workers[t >= at + ramp] == factor * w0)
    assert np.all(np.diff(workers) >= 0), "a ramp up never goes down"


def test_capacity_factor_is_relative_to_configured_and_a_new_event_replaces_a_ramp():
    r = simulate(duration=100, resolution=5, server={"workers": 4},
                 events=[{"at": 10, "kind": "capacity", "factor": 3.0},
                         {"at": 20, "kind": "capacity", "factor": 2.0},                # 8, not 24
                         {"at": 30, "kind": "capacity", "factor": 5.0, "ramp": 40},    # 8 -> 20 ...
                         {"at": 55, "kind": "capacity", "factor": 1.0}])               # ... cut off: 4
    t, workers = col(r, "t"), col(r, "workers")
    assert workers[t == 10][0] == 12 and workers[t == 20][0] == 8, workers
    assert np.all(workers[t >= 55] == 4), f"an unfinished ramp kept going after it was replaced: {workers}"


def test_fewer_workers_never_preempt_requests_in_service():
    """8 clients at 0, 4 workers, service 10 s: 4 in service when capacity halves at 5 s. They
    finish at 10 (busy 4 > workers 2 meanwhile); then 2 at a time: logins at 10 (4), 20 (2), 30 (2)."""
    r = simulate(duration=40, population={"clients": 8, **ALL_AT_ZERO},
                 server={"workers": 4, "service_time": 10},
                 events=[{"at": 5, "kind": "capacity", "factor": 0.5}])
    busy, workers, successes = col(r, "busy"), col(r, "workers"), col(r, "successes")
    assert np.all(busy[5:10] == 4) and np.all(workers[5:] == 2), (busy, workers)
    assert {int(i): int(successes[i]) for i in np.flatnonzero(successes)} == {10: 4, 20: 2, 30: 2}
    assert r.summary["logins"] == 8 and r.summary["wasted"] == 0


# --- failover -----------------------------------------------------------------------------------

def test_failover_with_ip_takeover_loses_in_flight_and_drops_sessions():
    """100 online, 100 sent in by a login at 9.5 s (service 1 s, so in service at 10). Failover
    at 10, propagation 0, factor 0.5: the 100 requests in service are lost (refused at once,
    wasted), every session drops and tries again at once against 200 x 0.5 = 100 workers:
    the dropped ones log in at 11, the lost ones retry at 11 (backoff 1 s) and log in at 12."""
    r = simulate(duration=20, population={"clients": 200, "online_at_start": 0.5},
                 client={"rtt": 0.5, "policy": {"name": "constant", "base": 1}},
                 server={"workers": 200, "service_time": 1},
                 events=[{"at": 9.5, "kind": "login"},
                         {"at": 10, "kind": "failover", "factor": 0.5, "propagation": "0s"}])
    s = r.summary
    assert (s["rejected"], s["wasted"], s["logins"], s["episodes"], s["timeouts"]) == (100, 100, 200, 200, 0), s
    workers, online, successes = col(r, "workers"), col(r, "online"), col(r, "successes")
    assert np.all(workers[:10] == 200) and np.all(workers[10:] == 100), workers
    assert (online[9], online[10], online[11], online[12]) == (100, 0, 100, 200), online[8:14]
    assert (successes[11], successes[12]) == (100, 100)


def test_failover_propagation_refuses_until_each_client_learns():
    """400 online; failover at 10 with propagation U(0, 20). A client that learns at 10 + p is
    refused at 10, 11.5, 13, ... (rtt 0.5 + backoff 1) while before 10 + p: ceil(p / 1.5)
    refusals. Their total is a sum of 400 independent draws of that; its mean and variance
    come from the uniform distribution directly. Workers to spare (1000 x 0.5): the first
    attempt after learning logs in 0.125 s later, so login times are 1.5 ceil(p / 1.5) + 0.125."""
    n, high, period = 400, 20.0, 1.5
    base = dict(duration=60, seed=9, population={"clients": n},
                client={"rtt": 0.5, "policy": {"name": "constant", "base": 1}})
    r = simulate(**base, events=[{"at": 10, "kind": "failover", "factor": 0.5,
                                  "propagation": {"dist": "uniform", "low": "0s", "high": "20s"}}])
    instant = simulate(**base, events=[{"at": 10, "kind": "failover", "factor": 0.5, "propagation": "0s"}])
    # P(ceil(p / 1.5) = k) = length of ((k-1) 1.5, k 1.5] inside (0, 20), over 20
    ks = np.arange(1, math.ceil(high / period) + 1)
    probs = (np.minimum(ks * period, high) - (ks - 1) * period) / high
    mean, var = float(np.sum(ks * probs)), float(np.sum(ks**2 * probs) - np.sum(ks * probs) ** 2)
    assert probs.sum() == pytest.approx(1.0) and mean == pytest.approx(7.175)
    s = r.summary
    band = Z * math.sqrt(n * var)
    assert abs(s["rejected"] - n * mean) <= band, f"refusals: expected {n * mean} +- {band:.1f}, got {s['rejected']}"
    assert (s["logins"], s["episodes"], s["timeouts"]) == (n, n, 0), s
    assert counts_in(r, "rejected", 10 + high, 60) == 0, "refused after everyone learned the standby"
    assert np.all(col(r, "workers")[:10] == 1000) and np.all(col(r, "workers")[10:] == 500)
    assert instant.summary["rejected"] == 0
    assert instant.summary["login_time_s"] == {"p50": 0.125, "p95": 0.125, "p99": 0.125}
    # median of 400 U(0, 20) draws: 10 +- 5 x 0.5 s, then rounded up to the 1.5 s retry grid
    q = s["login_time_s"]
    assert abs(q["p50"] - 10.0) <= Z * 0.5 + period + 0.125 and q["p99"] <= period * math.ceil(high / period) + 0.125, q


# --- arrivals and fraction events ---------------------------------------------------------------

def test_surge_multiplies_the_login_rate_and_surges_multiply_each_other():
    """login_rate 5/s; surge x4 over [100, 200), surge x2 over [150, 250): rates 5, 20, 40, 10, 5."""
    r = simulate(duration=300, resolution=10, seed=11, population={"login_rate": 5},
                 events=[{"at": 100, "kind": "surge", "duration": 100, "factor": 4},
                         {"at": 150, "kind": "surge", "duration": 100, "factor": 2}])
    for (t0, t1), rate in zip([(0, 100), (100, 150), (150, 200), (200, 250), (250, 300)], [5, 20, 40, 10, 5]):
        mean = rate * (t1 - t0)
        got = counts_in(r, "attempts", t0, t1)
        assert abs(got - mean) <= Z * math.sqrt(mean), f"attempts in [{t0}, {t1}): expected Poisson({mean}), got {got}"
    s = r.summary
    assert s["episodes"] == s["attempts"] and s["clients"] == 0, s


def test_disconnect_and_login_pick_exactly_round_fraction_of_eligible():
    """1000 clients, 300 online: a disconnect of 0.339 picks round(101.7) = 102 online ones, a
    login of 0.251 picks round(175.7) = 176 of the 700 offline ones (rounded, not truncated)."""
    r = simulate(duration=20, seed=2, population={"clients": 1000, "online_at_start": 0.3},
                 events=[{"at": 5, "kind": "disconnect", "fraction": 0.339},
                         {"at": 10, "kind": "login", "fraction": 0.251}])
    s = r.summary
    assert (s["episodes"], s["logins"]) == (102 + 176, 102 + 176), s
    online = col(r, "online")
    assert (online[4], online[-1]) == (300, 300 + 176)


def test_login_event_skips_rebooting_clients():
    """All 300 online reboot at 5 (downtime 20): they are OFFLINE but rebooting, so a login of
    0.2 at 10 picks round(0.2 x 700) = 140 of the others, not 0.2 x 1000."""
    r = simulate(duration=40, seed=2, population={"clients": 1000, "online_at_start": 0.3},
                 events=[{"at": 5, "kind": "reboot", "downtime": 20},
                         {"at": 10, "kind": "login", "fraction": 0.2}])
    s = r.summary
    assert (s["episodes"], s["logins"]) == (440, 440), s
    assert counts_in(r, "successes", 10, 20) == 140 and counts_in(r, "successes", 25, 40) == 300
    offline = col(r, "offline")
    assert np.all(offline[6:10] == 1000) and np.all(offline[10:25] == 1000 - 140), offline


def test_disconnect_acts_only_on_clients_still_online_at_their_time():
    """A disconnect picked at 4 hits at 6 (spread 2 s); a reboot at 5 has taken every client
    OFFLINE for 100 s meanwhile, so the disconnect does nothing: no episode before the end."""
    r = simulate(duration=50, population={"clients": 10},
                 events=[{"at": 4, "kind": "disconnect", "spread": "2s"},
                         {"at": 5, "kind": "reboot", "downtime": 100}])
    assert (r.summary["episodes"], r.summary["attempts"]) == (0, 0), r.summary
    assert np.all(col(r, "offline")[5:] == 10)


def test_reboot_waves_share_the_clients_by_weight():
    """2000 reboot at 10 in three waves (offsets 0, 100, 200 s; weights 2, 3, 5), spread U(0, 10),
    downtime 5: each wave's logins fall in its own 50 s window, Binomial(2000, weight share)."""
    n, weights = 2000, [2, 3, 5]
    r = simulate(duration=260, resolution=5, seed=13, population={"clients": n},
                 events=[{"at": 10, "kind": "reboot", "downtime": 5,
                          "spread": {"dist": "uniform", "low": "0s", "high": "10s"},
                          "waves": [{"offset": f"{o}s", "weight": w} for o, w in zip((0, 100, 200), weights)]}])
    got = [counts_in(r, "successes", 10 + o, 60 + o) for o in (0, 100, 200)]
    assert sum(got) == n == r.summary["logins"], got
    for k, w in zip(got, weights):
        low, high = binomial_band(n, w / sum(weights))
        assert low <= k <= high, f"wave share: expected Binomial({n}, {w / sum(weights)}), got {k} (all: {got})"


def test_reboot_abandons_an_episode_in_progress_and_leaves_an_orphan():
    """50 online; a disconnect at 5 sends them in (service 10 s, timeout 12 s); a reboot picked
    at 4 hits them at 6 (spread 2 s) while CONNECTING: the episode is abandoned (neither login
    nor give-up), the requests stay at the server and complete in time at 15 for nobody (not
    logins, not wasted); after 20 s of downtime a new episode logs in at 36."""
    n = 50
    r = simulate(duration=50, population={"clients": n}, client={"timeout": 12},
                 server={"service_time": 10},
                 events=[{"at": 5, "kind": "disconnect"},
                         {"at": 4, "kind": "reboot", "spread": "2s", "downtime": 20}])
    s = r.summary
    assert (s["episodes"], s["logins"], s["gave_up"], s["attempts"], s["wasted"], s["timeouts"]) == \
        (2 * n, n, 0, 2 * n, 0, 0), s
    successes = col(r, "successes")
    assert successes[15] == 0 and successes[36] == n
    assert np.all(col(r, "offline")[6:26] == n) and np.all(col(r, "busy")[6:15] == n)


# --- server disciplines and protections ---------------------------------------------------------

def test_lifo_serves_newcomers_first_and_starves_the_backlog():
    """A backlog of 600 at t = 0 plus 45 logins/s against 50/s: under fifo everyone waits behind
    the backlog (~12 s); under lifo a newcomer is served almost at once while the backlog waits
    for idle moments. So lifo's median login time is far smaller and its p99 far larger."""
    common = dict(duration=40, seed=17, population={"clients": 600, **ALL_AT_ZERO, "login_rate": 45})
    fifo, lifo = (simulate(**common, server={"workers": 5, "discipline": d,
                                             "service_time": {"dist": "exponential", "mean": "100ms"}})
                  .summary["login_time_s"] for d in ("fifo", "lifo"))
    assert lifo["p50"] < fifo["p50"] / 5, (fifo, lifo)
    assert lifo["p99"] > 1.5 * fifo["p99"], (fifo, lifo)


# 4 clients at t = 0, one worker, service 1 s, one attempt each. Timeline (A, B, C, D in order):
#   timeout 2.5, none:          A 0-1 ok, B 1-2 ok, C 2-3 late, D 3-4 late: wasted 2 of 4 s
#   timeout 2.5, drop_expired:  C 2-3 late (started in time), D at 3 >= 2.5 discarded: 1 of 3 s
#   timeout 2.5, cancel:        C 2-2.5 cancelled (wasted 0.5), D discarded: 0.5 of 2.5 s
#   timeout 2.0, none:          B ends at exactly 2.0 = its deadline: late; 3 of 4 s wasted
#   timeout 2.0, cancel:        B 1-2 late (not cut: it ends at the deadline), C, D discarded: 1 of 2 s
@pytest.mark.parametrize("timeout, flags, logins, timeouts, wasted, fraction", [
    (2.5, {}, 2, 2, 2, 2 / 4),
    (2.5, {"drop_expired": True}, 2, 2, 1, 1 / 3),
    (2.5, {"cancel_on_timeout": True}, 2, 2, 1, 0.5 / 2.5),
    (2.0, {}, 1, 3, 3, 3 / 4),
    (2.0, {"cancel_on_timeout": True}, 1, 3, 1, 1 / 2),
], ids=["late", "drop-expired", "cancel", "exactly-at-deadline", "exactly-at-deadline-cancel"])
def test_wasted_work_drop_expired_cancel_and_the_deadline_instant(timeout, flags, logins, timeouts, wasted, fraction):
    r = simulate(duration=10, population={"clients": 4, **ALL_AT_ZERO}, client={"timeout": timeout, "max_attempts": 1},
                 server={"workers": 1, "service_time": 1, **flags})
    s = r.summary
    assert (s["logins"], s["timeouts"], s["wasted"]) == (logins, timeouts, wasted), s
    assert s["wasted_work_fraction"] == pytest.approx(fraction, rel=1e-12)


def test_expired_requests_deeper_in_the_queue_still_hold_their_place():
    """One worker (service 10 s), queue_limit 1, timeout 1 s, drop_expired. A is served 0-10, B
    waits (expired from 1 s but not at the head), so C arriving at 2 finds the queue full: 503.
    B is discarded at 10 without work; A's 10 s are all wasted."""
    r = simulate(duration=20, population={"clients": 3, "online_at_start": 0.0},
                 client={"timeout": 1, "max_attempts": 1, "rtt": 0.5},
                 server={"workers": 1, "service_time": 10, "queue_limit": 1, "drop_expired": True},
                 events=[{"at": 0, "kind": "login", "fraction": 0.67}, {"at": 2, "kind": "login"}])
    s = r.summary
    assert (s["rejected"], s["timeouts"], s["logins"], s["wasted"], s["wasted_work_fraction"]) == (1, 2, 0, 1, 1.0), s
    assert np.all(col(r, "queue")[:10] == 1) and np.all(col(r, "queue")[10:] == 0)
    assert busy_time(r) == pytest.approx(10.0)


def test_reject_work_goes_before_queued_requests_and_counts_as_busy_not_in_system():
    """One worker (service 1 s), queue_limit 1, reject_cost 0.25 s, 4 clients at 0: A served
    0-1, B queued, C and D refused (queue full) with 0.25 s of worker time each, done at 1-1.5
    BEFORE B, which is served 1.5-2.5. Busy 2.5 s of 5; in system (queue + service, not reject
    work): A 1 s + B waiting 1.5 s + B served 1 s = 3.5 s."""
    r = simulate(duration=5, resolution=0.5, warmup=0, population={"clients": 4, **ALL_AT_ZERO},
                 client={"max_attempts": 1, "rtt": 0.5},
                 server={"workers": 1, "service_time": 1, "queue_limit": 1, "reject_cost": 0.25})
    s = r.summary
    assert (s["logins"], s["rejected"], s["gave_up"], s["wasted_work_fraction"]) == (2, 2, 2, 0.0), s
    successes = col(r, "successes")
    assert (successes[2], successes[5], successes.sum()) == (1, 1, 2), successes   # at 1.0 and 2.5
    assert s["login_time_s"]["p50"] == pytest.approx(1.75)   # median of {1, 2.5}
    assert s["steady"]["utilization"] == pytest.approx(2.5 / 5)
    assert s["steady"]["mean_in_system"] == pytest.approx(3.5 / 5)
    assert busy_time(r) == pytest.approx(2.5)


@pytest.mark.parametrize("event, costly", [
    ({"kind": "outage", "duration": 1000}, False),
    ({"kind": "admit", "fraction": 0.0}, True),
], ids=["outage-refusal-is-free", "admit-503-costs"])
def test_reject_cost_applies_to_503s_and_429s_only(event, costly):
    """10 clients try at 1 s, three attempts each (rtt 0.5, backoff 1 s), all refused, with
    reject_cost 0.25 s: a refuse outage costs the tier nothing; an admit 503 costs 0.25 s each."""
    r = simulate(duration=20, population={"clients": 10, **ALL_AT_ZERO},
                 client={"rtt": 0.5, "connect_delay": 1, "max_attempts": 3, "policy": {"name": "constant", "base": 1}},
                 server={"reject_cost": 0.25}, events=[{"at": 0, **event}])
    s = r.summary
    assert (s["rejected"], s["gave_up"], s["logins"]) == (30, 10, 0), s
    assert busy_time(r) == pytest.approx(30 * 0.25 if costly else 0.0)
    assert s["wasted_work_fraction"] == (0.0 if costly else None)


@pytest.mark.parametrize("reject_cost, fraction, timeouts", [(0.25, 2 / 2.5, 3), (0.0, 1.0, 1)])
def test_reject_cost_enters_the_wasted_work_denominator(reject_cost, fraction, timeouts):
    """One worker (service 2 s, timeout 1.5 s: A is served late, 2 s wasted), no queue: B and C
    are refused. With reject_cost 0.25 the refusals wait for the worker (done at 2.25, 2.5,
    after their clients timed out at 1.5): 0.5 s of reject work, not wasted, so the fraction
    is 2 / 2.5. Free refusals: 2 / 2, and B, C see their 503 at once (no timeout)."""
    r = simulate(duration=10, population={"clients": 3, **ALL_AT_ZERO}, client={"timeout": 1.5, "max_attempts": 1},
                 server={"workers": 1, "service_time": 2, "queue_limit": 0, "reject_cost": reject_cost})
    s = r.summary
    assert (s["rejected"], s["timeouts"], s["logins"]) == (2, timeouts, 0), s
    assert s["wasted_work_fraction"] == pytest.approx(fraction, rel=1e-12)
    assert busy_time(r) == pytest.approx(2 + 2 * reject_cost)


def test_overload_stretches_service_with_the_number_in_system():
    """200 clients at 0, 2 workers, service 0.125 s x (1 + 0.01 max(0, in_system - 10)). The k-th
    request to start service sees in_system = k for k <= 2 (arrivals), else 200 - (k - 2) (k - 2
    have left; the count includes the request starting). Total busy time is the sum of those
    stretched service times; without overload it is 200 x 0.125 = 25 s."""
    n, c, s0, knee, per = 200, 2, 0.125, 10, 0.01
    in_system = [k if k <= c else n - (k - c) for k in range(1, n + 1)]
    expected = sum(s0 * (1 + per * max(0, m - knee)) for m in in_system)
    common = dict(duration=60, warmup=0, population={"clients": n, **ALL_AT_ZERO})
    plain = simulate(**common, server={"workers": c, "service_time": s0})
    loaded = simulate(**common, server={"workers": c, "service_time": s0,
                                        "overload": {"knee": knee, "per_request": per}})
    assert plain.summary["logins"] == loaded.summary["logins"] == n
    assert busy_time(plain) == pytest.approx(n * s0, rel=1e-9)
    assert busy_time(loaded) == pytest.approx(expected, rel=1e-9)
    # mean service time = utilization x workers x window / logins
    mean_service = [x.summary["steady"]["utilization"] * c * 60 / n for x in (plain, loaded)]
    assert mean_service[0] == pytest.approx(s0) and mean_service[1] == pytest.approx(expected / n)
    assert mean_service[1] > 1.5 * mean_service[0]


# --- run control ----------------------------------------------------------------------------------

STORM = dict(
    duration=120, seed=21, population={"clients": 300},
    client={"timeout": 1, "connect_delay": {"dist": "uniform", "low": "0s", "high": "1s"},
            "policy": {"name": "full-jitter", "base": 1, "cap": 30}},
    server={"workers": 3, "service_time": {"dist": "lognormal", "median": "40ms", "p99": "300ms"},
            "queue_limit": 200, "retry_after": 1},
    events=[{"at": 20, "kind": "reboot", "fraction": 0.5, "spread": {"dist": "uniform", "low": "0s", "high": "5s"},
             "downtime": {"dist": "uniform", "low": "1s", "high": "3s"}},
            {"at": 60, "kind": "outage", "duration": 5, "drop_sessions": True}],
)


def test_until_cuts_the_same_run_short():
    full = simulate(**STORM)
    cut = simulate(**STORM, until=50)
    assert cut.summary["duration_s"] == 50 and len(col(cut, "t")) == 50
    for name, values in cut.timeseries.items():
        assert np.allclose(values, full.timeseries[name][:50], rtol=1e-12, atol=1e-9), \
            f"column {name} differs before until"
    assert cut.summary["rejected"] == counts_in(full, "rejected", 0, 50)  # the outage at 60 never fired


def test_an_event_at_the_end_of_the_run_never_fires():
    """(The loader refuses `at` >= `duration` outright; with `until` the run can end first.)"""
    r = simulate(duration=60, until=30, population={"clients": 10},
                 events=[{"at": 30, "kind": "outage", "duration": 5, "drop_sessions": True}])
    assert r.summary["episodes"] == 0 and np.all(col(r, "online") == 10)


def test_recovery_times_from_the_exact_online_share():
    """10 online; all disconnected at 10; one worker, service 1 s: logins at 11, 12, ..., 20, so
    the share online / (online + connecting) is k / 10 at 10 + k. It is back to >= 90 % at 19
    (p90 = 19 - 10) and to >= 99 % at 20 (p99 = 10). Cut at 15 it is still below: null."""
    kw = dict(duration=40, population={"clients": 10}, server={"workers": 1, "service_time": 1},
              events=[{"at": 10, "kind": "disconnect"}])
    assert simulate(**kw).summary["recovery_s"] == {"p90": 9.0, "p99": 10.0}
    assert simulate(**kw, until=15).summary["recovery_s"] == {"p90": None, "p99": None}
    calm = simulate(duration=40, population={"clients": 10}, events=[{"at": 10, "kind": "capacity", "factor": 2}])
    assert calm.summary["recovery_s"] == {"p90": 0.0, "p99": 0.0}


# --- summary invariants ---------------------------------------------------------------------------

MIXED = dict(
    duration=240, resolution=2, seed=23,
    population={"clients": 200, "session": {"dist": "exponential", "mean": "60s"},
                "offline": {"dist": "exponential", "mean": "20s"}},
    client={"timeout": {"dist": "exponential", "mean": "2s"}, "max_attempts": 4, "give_up_after": 30,
            "relaunch": {"dist": "exponential", "mean": "10s"}, "policy": {"name": "equal-jitter", "base": 1}},
    server={"workers": 3, "service_time": {"dist": "exponential", "mean": "100ms"}, "queue_limit": 20,
            "retry_after": 2, "reject_cost": 0.01, "rate_limit": {"rate": 40, "retry_after": 1}},
    events=[{"at": 50, "kind": "outage", "duration": 20, "mode": "blackhole", "drop_sessions": True},
            {"at": 100, "kind": "partition", "duration": 30, "fraction": 0.3, "hang": 3, "isolate_at": 115},
            {"at": 150, "kind": "capacity", "factor": 0.5, "ramp": 20},
            {"at": 180, "kind": "reboot", "fraction": 0.3, "spread": {"dist": "uniform", "low": "0s", "high": "10s"}}],
)

SUMMARY_FIELDS = ("scenario", "engine", "seed", "clients", "duration_s", "wallclock_s", "events_processed",
                  "episodes", "logins", "gave_up", "attempts", "amplification", "timeouts", "rejected", "errors",
                  "wasted_work_fraction", "peak_offered_rps", "capacity_rps", "login_time_s", "recovery_s",
                  "metastable", "steady")
STEADY_FIELDS = ("arrival_rate", "throughput", "utilization", "mean_wait_s", "p_wait", "blocking",
                 "abandonment", "mean_in_system", "mean_orbit", "attempts_per_login")


@pytest.mark.parametrize("kw", [STORM, MIXED], ids=["storm", "mixed"])
def test_summary_invariants(kw):
    r = simulate(**kw)
    s, ts = r.summary, r.timeseries
    assert set(SUMMARY_FIELDS) <= set(s), f"missing summary fields: {set(SUMMARY_FIELDS) - set(s)}"
    assert set(s["login_time_s"]) == {"p50", "p95", "p99"} and set(s["recovery_s"]) == {"p90", "p99"}
    assert set(STEADY_FIELDS) <= set(s["steady"])
    assert s["engine"] == "des" and s["clients"] == kw["population"]["clients"] and s["duration_s"] == kw["duration"]
    # episodes end at most once, and only after an attempt
    assert s["logins"] + s["gave_up"] <= s["episodes"] and s["attempts"] >= s["logins"] + s["gave_up"]
    assert s["amplification"] == pytest.approx(s["attempts"] / s["episodes"])
    for name in ("attempts", "successes", "rejected", "timeouts", "errors", "wasted"):
        total = s["logins"] if name == "successes" else s[name]
        assert ts[name].sum() == total, f"sum of the {name} column {ts[name].sum()} != summary {total}"
    levels = ts["online"] + ts["connecting"] + ts["offline"] + ts["gave_up"]
    assert np.allclose(levels, kw["population"]["clients"], atol=1e-6), "client states do not add up"
    width = r.scenario.bin_width
    assert np.allclose(ts["t"], np.arange(len(ts["t"])) * width)
    assert s["peak_offered_rps"] == pytest.approx(ts["attempts"].max() / width)
    service = r.scenario.server.service_time.mean
    assert s["capacity_rps"] == pytest.approx(kw["server"]["workers"] / service)
    q = s["login_time_s"]
    assert 0 <= q["p50"] <= q["p95"] <= q["p99"]
    if s["recovery_s"]["p90"] is not None and s["recovery_s"]["p99"] is not None:
        assert s["recovery_s"]["p90"] <= s["recovery_s"]["p99"]
    # steady window [warmup, end]: per-second rates times its length are the bin counts from warmup on
    warmup, length = r.scenario.warmup_s, s["duration_s"] - r.scenario.warmup_s
    st = s["steady"]
    assert st["arrival_rate"] * length == pytest.approx(counts_in(r, "attempts", warmup, math.inf))
    assert st["throughput"] * length == pytest.approx(counts_in(r, "successes", warmup, math.inf))
    for key in ("blocking", "abandonment", "p_wait"):
        assert 0 <= st[key] <= 1, f"steady.{key} = {st[key]}"
    assert 0 <= s["wasted_work_fraction"] <= 1
    assert np.all(ts["queue"] >= 0) and np.all(ts["busy"] >= 0)
    if not any(e["kind"] in ("capacity", "failover") for e in kw["events"]):   # workers never fall
        assert np.all(ts["busy"] <= ts["workers"] + 1e-9)


def test_new_clients_may_arrive_while_an_event_spreads_over_the_clients():
    """A reboot spread over 60 s while Poisson arrivals add clients: the client arrays grow in the
    middle of the spread (a regression: a numpy view held across the spread froze them)."""
    r = simulate(duration=120, population={"clients": 100, "login_rate": 2.0},
                 events=[{"at": 1, "kind": "reboot", "fraction": 1.0,
                          "spread": {"dist": "uniform", "low": "0s", "high": "60s"}, "downtime": 5}])
    assert r.summary["clients"] == 100 and r.summary["episodes"] >= 100 + 120 * 2.0 - Z * (120 * 2.0) ** 0.5


def test_lowest_online_share_is_exact_and_dated():
    """Half of 100 online clients lose their session at t = 10 and wait 100 s before their first
    attempt: the share is exactly 50/100 from t = 10 until they log in again at t = 110."""
    r = simulate(duration=300, resolution=60, population={"clients": 100}, client={"connect_delay": 100},
                 events=[{"at": 10, "kind": "disconnect", "fraction": 0.5}])
    assert r.summary["lowest_online_share"] == 0.5 and r.summary["lowest_online_at_s"] == 10.0
    assert r.summary["lowest_online_share"] <= (col(r, "online") / 100).min()  # bins average it up
