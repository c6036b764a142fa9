"""The client limiters and server fault injection on the compiled engine (`sim.fast`), held to the
reference engine (`sim.des`).

Two kinds of checks. Stories: tiny deterministic timelines (constant delays, binary-exact times,
fault_rate 1), worked out by hand in each docstring, that both engines must reproduce exactly:
a denied retry ends the episode, a reboot gives a per-device limiter a fresh row, a timeout's
retry costs `timeout_cost`, a short-circuited call counts toward max_attempts but not as an
attempt, an injected fault is an error and never a refusal. Agreement: the quickstart storm with
each limiter kind (and fault injection) over 8 seeds on both engines, the means of the counts
held equal by Welch's t-test (tests/test_fast.py's), 1 % family-wise per case; each case must
also show its limiter at work, so that it cannot pass with a limiter that does nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim import des, fast
from sim.config import load_scenario, parse_scenario
import test_engine
from test_fast import ALPHA, welch

ENGINES = (("des", des), ("fast", fast))


def story(**kw) -> dict[str, dict]:
    """One deterministic scenario (`test_engine.scenario_text`) on both engines: their summaries."""
    s = parse_scenario(test_engine.scenario_text(**kw), "test_fast_limiters")
    return {name: engine.run(s).summary for name, engine in ENGINES}


KEYS = ("episodes", "attempts", "logins", "gave_up", "suppressed", "short_circuited", "rejected", "timeouts",
        "errors")


def counts(summary: dict) -> dict:
    return {k: summary[k] for k in KEYS}


def per_client(n: int, **each) -> dict:
    """The expected counts: `each` per client, times n; the counts not named are 0."""
    return {k: n * each.get(k, 0) for k in KEYS}


# --- stories: exact timelines -------------------------------------------------------------------

N = 4  # clients in each story: they all follow the same timeline


def test_quota_denies_retries_and_a_reboot_gives_the_device_a_fresh_quota():
    """A per-device AWS quota of 5 tokens (a retry costs 5; a success with no retry refunds 1).
    Refuse outages 10-50 s and 70-100 s drop the sessions; rtt 0.5, constant backoff 1 s,
    relaunch 10 s; a reboot at 60 s (downtime 1 s).

    10: refused at 10.5, retry (tokens 5 -> 0); 11.5 refused at 12: denied (suppressed, gives up).
    Relaunches at 22, 32.5, 43: refused, denied at once. 53.5: logs in at 53.625 (tokens 1).
    Reboot at 60: a fresh quota (5); logs in at 61.125 (tokens min(5, 6) = 5).
    70: refused, retry (5 -> 0); 71.5 refused at 72: denied. 82, 92.5: denied. 103: logs in.
    Per client: 10 episodes, 12 attempts (9 refused), 3 logins, 7 denied retries and give-ups.
    Without the reboot's fresh quota the 70 s episode would be denied at once (11 attempts).
    """
    runs = story(duration=110, population={"clients": N},
                 client={"rtt": 0.5, "max_attempts": 10, "relaunch": 10, "policy": {"name": "constant", "base": 1},
                         "limiter": {"kind": "quota", "capacity": 5, "cost": 5, "timeout_cost": 10, "increment": 1}},
                 events=[{"at": 10, "kind": "outage", "duration": 40, "mode": "refuse", "drop_sessions": True},
                         {"at": 60, "kind": "reboot", "downtime": 1},
                         {"at": 70, "kind": "outage", "duration": 30, "mode": "refuse", "drop_sessions": True}])
    expected = per_client(N, episodes=10, attempts=12, logins=3, gave_up=7, suppressed=7, rejected=9)
    for name, s in runs.items():
        assert counts(s) == expected, name


def test_quota_charges_timeout_cost_after_a_timeout_and_refunds_one_token_per_plain_success():
    """A per-device quota of 10 (retry 5, after a timeout 10); blackhole outages 10-50 s and
    70-90 s drop the sessions; timeout 2 s, constant backoff 1 s, relaunch 10 s.

    10: times out at 12, retry costs 10 (tokens 0); 13 times out at 15: denied. Relaunches at
    25, 37 and 49 (still blackholed: times out at 51): denied. 61: logs in (the episode made
    no retry: +1 token, 1). 70: times out at 72, the retry (10) is denied; 82: denied; 94: logs in.
    Per client: 8 episodes, 9 attempts, 7 timeouts, 6 denied, 2 logins. Charging a timeout as a
    plain failure (5) would allow a second retry after the timeout at 15; refunding the first
    episode's 10 at 61 (a held cost not reset) would allow one after the timeout at 72.
    """
    runs = story(duration=100, population={"clients": N},
                 client={"timeout": 2, "rtt": 0.5, "max_attempts": 10, "relaunch": 10,
                         "policy": {"name": "constant", "base": 1},
                         "limiter": {"kind": "quota", "capacity": 10, "cost": 5, "timeout_cost": 10, "increment": 1}},
                 events=[{"at": 10, "kind": "outage", "duration": 40, "mode": "blackhole", "drop_sessions": True},
                         {"at": 70, "kind": "outage", "duration": 20, "mode": "blackhole", "drop_sessions": True}])
    expected = per_client(N, episodes=8, attempts=9, logins=2, gave_up=6, suppressed=6, timeouts=7)
    for name, s in runs.items():
        assert counts(s) == expected, name


@pytest.mark.parametrize("mode, client, failed", [
    ("refuse", {"rtt": 0.5}, "rejected"),          # refused one round trip after the call
    ("blackhole", {"timeout": 0.5}, "timeouts"),   # times out as late: a timeout is a failure too
])
def test_an_open_breaker_short_circuits_calls_that_count_toward_max_attempts(mode, client, failed):
    """A per-device breaker: opens when both of its last 2 calls failed, for 4.25 s, then lets 1
    probe through. An outage 0-30 s (each call fails 0.5 s after it is sent); connect_delay 1,
    constant 1 s, max_attempts 6, relaunch 10 s.

    Episode 1: sent at 1 and 2.5 (failed at 1.5, 3: opens until 7.25); 4, 5, 6, 7 short-circuited;
    the 6th attempt ends it at 7. Episode 2 (17): sent at 18 (half-open probe, fails at 18.5:
    open until 22.75); 19.5 .. 22.5 short-circuited; 23.5 a probe, fails at 24: gives up. Episode
    3 (34): the probe at 35 logs in (the tier is back) and closes the breaker.
    Per client: 3 episodes, 5 calls sent (4 failed), 8 short-circuited, 2 give-ups, 1 login.
    """
    runs = story(duration=40, population={"clients": N, **test_engine.ALL_AT_ZERO},
                 client={**client, "connect_delay": 1, "max_attempts": 6, "relaunch": 10,
                         "policy": {"name": "constant", "base": 1},
                         "limiter": {"kind": "breaker", "window_type": "count", "window": 2, "threshold": 0.5,
                                     "min_calls": 2, "open_for": 4.25, "half_open_calls": 1}},
                 events=[{"at": 0, "kind": "outage", "duration": 30, "mode": mode}])
    expected = per_client(N, episodes=3, attempts=5, logins=1, gave_up=2, short_circuited=8, **{failed: 4})
    for name, s in runs.items():
        assert counts(s) == expected, name


@pytest.mark.parametrize("when, timeout, expected", [
    # an error one rtt (0.5 s) after each attempt: 1 -> 1.5, 2.5 -> 3, 4 -> 4.5 (gives up)
    ("fast", 3, {"errors": 3}),
    # the rtt is longer than the timeout: each attempt times out first (1.25, 2.5, 3.75)
    ("fast", 0.25, {"timeouts": 3}),
    # served (0.125 s), then an error: 1 -> 1.125, 2.125 -> 2.25, 3.25 -> 3.375
    ("after-service", 3, {"errors": 3}),
], ids=["fast", "fast-timeout", "after-service"])
def test_every_request_faults_at_fault_rate_one(when, timeout, expected):
    """fault_rate 1: every request that reaches the queue fails; max_attempts 3, constant 1 s. An
    injected fault is an error (or a timeout), never a refusal: nothing rejected, no blocking."""
    runs = story(duration=20, population={"clients": N, **test_engine.ALL_AT_ZERO},
                 client={"timeout": timeout, "rtt": 0.5, "connect_delay": 1, "max_attempts": 3,
                         "policy": {"name": "constant", "base": 1}},
                 server={"fault_rate": 1.0, "fault_when": when})
    want = per_client(N, episodes=1, attempts=3, gave_up=1, **expected)
    for name, s in runs.items():
        assert counts(s) == want, name
        assert s["steady"]["blocking"] == 0.0, name
        assert s["wasted"] == 0, name


# --- agreement with the reference engine over seeds -----------------------------------------------

UNTIL = 1200.0  # quickstart's reboot storm (at 5 min) and its retries
REPS = 8
SHARED = 'scope="shared"'
CASES = {
    # sets, the counter the limiter makes
    "quota-aws-shared": (('client.policy="aws-sdk-standard"', f"client.limiter={{kind=\"quota\", {SHARED}}}"),
                         "suppressed"),
    "throttle-grpc-shared": (('client.policy="grpc-retry"', f"client.limiter={{kind=\"throttle\", {SHARED}}}"),
                             "suppressed"),
    "budget-shared": ((f"client.limiter={{kind=\"budget\", {SHARED}}}",), "suppressed"),
    "adaptive-shared": ((f"client.limiter={{kind=\"adaptive\", {SHARED}}}",), "short_circuited"),
    "breaker-polly-shared": (('client.policy="polly"', f"client.limiter={{kind=\"breaker\", {SHARED}}}"),
                             "short_circuited"),
    "quota-aws-device": (('client.policy="aws-sdk-standard"', 'client.limiter={kind="quota", capacity=5}'),
                         "suppressed"),
    "adaptive-device": (('client.limiter={kind="adaptive"}',), "short_circuited"),
    "fault-fast": (("server.fault_rate=0.3",), "errors"),
    "fault-after-service": (("server.fault_rate=0.3", 'server.fault_when="after-service"'), "errors"),
}


def seeded_runs(sets) -> dict[str, list[dict]]:
    s = load_scenario("scenarios/quickstart.toml", list(sets))
    return {name: [engine.run(s.model_copy(update={"seed": k}), until=UNTIL).summary for k in range(REPS)]
            for name, engine in ENGINES}


@pytest.mark.parametrize("case", list(CASES))
def test_limiters_and_faults_agree_with_des(case):
    sets, made = CASES[case]
    runs = seeded_runs(sets)
    for name, rs in runs.items():  # the limiter (or the fault) was at work in every run
        assert all(r[made] > 0 for r in rs), f"{name}: {made} {[r[made] for r in rs]}"
    fields = ("logins", "gave_up", "attempts", made)
    for f in fields:
        welch(f"{case} {f}", [r[f] for r in runs["des"]], [r[f] for r in runs["fast"]], alpha=ALPHA / len(fields))


def test_no_limiter_no_fault_counts_nothing():
    runs = seeded_runs(())
    for name, rs in runs.items():
        for r in rs:
            assert (r["suppressed"], r["short_circuited"], r["errors"]) == (0, 0, 0), name
    result = fast.run(load_scenario("scenarios/quickstart.toml"), until=UNTIL)
    assert not np.any(result.timeseries["suppressed"]) and not np.any(result.timeseries["short_circuited"])


# --- the resource estimate counts the limiter's rows ------------------------------------------------

def test_the_memory_estimate_counts_the_limiter_state():
    """rows x width x 8 bytes: a row per device (a count-based breaker holds its window: 109 values
    with resilience4j's 100 calls), or one per group when shared; the fast engine adds 8 B a client."""
    from sim.limits import estimate
    n = 5000  # quickstart's clients, no arrivals

    def limiter_bytes(sets, engine):
        parts = {p.what: p.bytes for p in estimate(load_scenario("quickstart", sets), engine).parts}
        return parts.get("limiter state")

    assert limiter_bytes([], "des") is None
    device = ['client.policy="resilience4j"']
    assert limiter_bytes(device, "des") == n * 109 * 8
    assert limiter_bytes(device, "fast") == n * 109 * 8 + n * 8
    assert limiter_bytes(device + ['client.limiter={kind="breaker", scope="shared", groups=10}'], "des") == 10 * 109 * 8
