"""The server's adaptive protections and session resumption on the compiled engine (`sim.fast`),
held to the reference engine (`sim.des`).

Two kinds of checks, as in tests/test_fast_limiters.py. Stories: tiny deterministic timelines
(constant times, every client at once), worked out by hand in each docstring, that both engines
must reproduce exactly: a fixed concurrency limit refuses the requests beyond it, CoDel sheds
the queue once an interval saw a standing queue, a Retry-After computed from the queue (and
capped) spaces the retries, a token is a resumption while it is younger than resume_window and
every success renews it, a reboot or a token purge revokes it, a resumption is served at its
own service time. Agreement: a disconnect storm against one worker with each protection over
8 seeds on both engines, the means of the counts held equal by Welch's t-test (tests/test_fast.py's),
1 % family-wise per case; each case must also show its feature at work in every run, so that it
cannot pass with a feature that does nothing.
"""

from __future__ import annotations

import pytest

from sim import des, fast
from sim.config import load_scenario, parse_scenario
import test_engine
from test_fast import ALPHA, welch
from test_theory import seeds

ENGINES = (("des", des), ("fast", fast))
KEYS = ("episodes", "attempts", "logins", "gave_up", "rejected", "timeouts", "errors", "wasted", "resumptions",
        "resumed")


def story(**kw) -> dict[str, dict]:
    """One deterministic scenario (`test_engine.scenario_text`) on both engines: their counts."""
    s = parse_scenario(test_engine.scenario_text(**kw), "test_fast_protections")
    return {name: counts(engine.run(s).summary) for name, engine in ENGINES}


def counts(summary: dict) -> dict:
    return {k: summary[k] for k in KEYS}


def expect(**nonzero) -> dict:
    """The expected counts: those named, every other one 0."""
    return {k: nonzero.get(k, 0) for k in KEYS}


def assert_both(runs: dict[str, dict], expected: dict) -> None:
    for name, got in runs.items():
        assert got == expected, name


AT_ZERO = test_engine.ALL_AT_ZERO  # every client starts an episode at t = 0
N = 4

# --- stories: the server's protections ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["aimd", "gradient"])
def test_a_concurrency_limit_refuses_the_requests_beyond_it(kind):
    """A limit pinned at 2 (initial = min = max: the samples cannot move it); 1000 workers,
    service 1 s, rtt 0.5, constant backoff 1 s. At 0 four clients send: two are admitted (0 and 1
    in the system), two refused (2 in the system): 503 at 0.5, retry at 1.5, by when the first two
    left at 1: admitted, done at 2.5. 6 attempts, 2 rejected, 4 logins; without the limit, 4."""
    runs = story(duration=20, population={"clients": N, **AT_ZERO},
                 client={"timeout": 100, "rtt": 0.5, "policy": {"name": "constant", "base": 1}},
                 server={"service_time": 1, "concurrency": {"kind": kind, "initial": 2, "min": 2, "max": 2}})
    assert_both(runs, expect(episodes=4, attempts=6, logins=4, rejected=2))


@pytest.mark.parametrize("top, attempts", [(3, 8), (2, 9)])
def test_an_aimd_limit_grows_with_the_samples_of_a_busy_tier(top, attempts):
    """AIMD from 2 (min 2, max `top`); five clients at 0, 1000 workers, service 1 s, rtt 0.5,
    constant backoff 1 s. Two admitted, three refused (retry at 1.5). At 1 the first to leave
    samples 2 in flight: 2 x 2 >= 2, the limit grows to 3 (the second, 1 in flight, keeps it). At
    1.5 all three are admitted: 8 attempts, 3 refused. Pinned at 2 (max 2), the last is refused
    again and comes back at 3: 9 attempts, 4 refused."""
    runs = story(duration=20, population={"clients": 5, **AT_ZERO},
                 client={"timeout": 100, "rtt": 0.5, "policy": {"name": "constant", "base": 1}},
                 server={"service_time": 1, "concurrency": {"kind": "aimd", "initial": 2, "min": 2, "max": top}})
    assert_both(runs, expect(episodes=5, attempts=attempts, logins=5, rejected=attempts - 5))


@pytest.mark.parametrize("rtt", [0.5, 0.0])
@pytest.mark.parametrize("lifo", [True, False], ids=["adaptive-lifo", "fifo"])
def test_codel_sheds_the_queue_once_an_interval_saw_a_standing_queue(lifo, rtt):
    """CoDel target 0.1 s (sheds waits above 0.2 s while overloaded), interval 5 s; 1 worker,
    service 1 s, constant backoff 1 s. Ten clients at 0: one served at once (the first interval's
    minimum is 0), nine queued. At 1 (past the first interval's end, 0) a new interval starts,
    to 6, not overloaded (its minimum was 0); the request waited 1 s but nothing is shed until 7,
    when the next interval (to 12) is overloaded (minimum 1 s > 0.1). At 8 both queued requests
    (waited 8 s) are shed: their 503s come back (after rtt), they retry at 9 (+ rtt): one is
    served, the other waits 1 s and is shed at 10 (+ rtt); it retries at 11 (+ 2 rtt) to a free
    worker and is served. Adaptive LIFO serves the newest of the two first: the same counts.
    13 attempts, 3 shed, 10 logins, whatever the round trip (0: the refusals act at once)."""
    runs = story(duration=20, population={"clients": 10, **AT_ZERO},
                 client={"timeout": 100, "rtt": rtt, "policy": {"name": "constant", "base": 1}},
                 server={"workers": 1, "service_time": 1,
                         "codel": {"target": 0.1, "interval": 5, "adaptive_lifo": lifo}})
    assert_both(runs, expect(episodes=10, attempts=13, logins=10, rejected=3))


@pytest.mark.parametrize("lifo, timeouts", [(True, 2), (False, 0)], ids=["adaptive-lifo", "fifo"])
def test_adaptive_lifo_serves_the_newest_while_codel_is_overloaded(lifo, timeouts):
    """The timeline above (ten clients at 0; the interval from 7 to 12 overloaded), with a
    timeout of 8.5 s, rtt 0.25 and an eleventh client that logs in at 7.875. At 8 the queue
    holds the two oldest (waited 8 s) and the newcomer (0.125 s). FIFO sheds the two (503 at
    8.25, retry at 9.25) and serves the newcomer; one of the retries is served at 9.25, the
    other waits 1 s, is shed at 10.25 and is served at 11.5. Adaptive LIFO serves the newcomer
    first, and the two old requests wait in the queue past their deadline: 2 timeouts at 8.5
    (retry at 9.5), and at 9 they are shed anyway (the 503s reach nobody); one retry is
    served at 9.5, the other shed at 10.5 and served at 11.75. 14 attempts, 3 shed either way."""
    runs = story(duration=30, population={"clients": 11, "online_at_start": 0.0},
                 client={"timeout": 8.5, "rtt": 0.25, "policy": {"name": "constant", "base": 1}},
                 server={"workers": 1, "service_time": 1,
                         "codel": {"target": 0.1, "interval": 5, "adaptive_lifo": lifo}},
                 events=[{"at": 0, "kind": "login", "fraction": 10 / 11}, {"at": 7.875, "kind": "login"}])
    assert_both(runs, expect(episodes=11, attempts=14, logins=11, rejected=3, timeouts=timeouts))


@pytest.mark.parametrize("top, attempts", [(32, 4), (1, 6)])
def test_a_retry_after_from_the_queue_spaces_the_retries(top, attempts):
    """1 worker, service 4 s, queue_limit 1, rtt 0.5, no backoff (delay 0), Retry-After honoured.
    Three clients at 0: one served (to 4), one queued, one refused with Retry-After ceil(1 x 4 s
    / 1) = 4 s: back at 0.5, it retries at 4.5 and queues behind the second (served 4 to 8): 4
    attempts. With retry_after_max 1 it retries at 1.5, 3 and 4.5 (refused twice more): 6. With
    the fixed Retry-After (0) it would retry every round trip: 11."""
    runs = story(duration=20, population={"clients": 3, **AT_ZERO},
                 client={"timeout": 100, "rtt": 0.5, "policy": {"name": "none"}},
                 server={"workers": 1, "service_time": 4, "queue_limit": 1, "retry_after_from": "queue",
                         "retry_after_max": top})
    assert_both(runs, expect(episodes=3, attempts=attempts, logins=3, rejected=attempts - 3))


# --- stories: session resumption ------------------------------------------------------------------


@pytest.mark.parametrize("window, resumptions", [(30, 4), (45, 8), (0, 0)])
def test_a_token_resumes_while_younger_than_the_window_and_each_login_renews_it(window, resumptions):
    """Four clients online at 0 (a token issued at 0); disconnects of all at 10 and 50 s, each
    login 0.125 s. Window 30 s: the first wave resumes (token 10 s old), each login renews the
    token (10.125), which is 39.875 s old at 50: full logins. Window 45 s: both waves resume (a
    token not renewed at 10.125 would be 50 s old at 50). Window 0: no tokens, nothing counted."""
    runs = story(duration=100, population={"clients": N}, client={"resume_window": window},
                 events=[{"at": 10, "kind": "disconnect"}, {"at": 50, "kind": "disconnect"}])
    assert_both(runs, expect(episodes=2 * N, attempts=2 * N, logins=2 * N, resumptions=resumptions,
                             resumed=resumptions))


def test_a_resumption_is_served_at_its_own_service_time_and_a_reboot_revokes_the_token():
    """resume_window "inf": tokens never expire. A full login takes 1 s, a resumption 0.125 s,
    and the client times out after 0.5 s, with one attempt per episode. The disconnect at 10
    makes resumptions: logged in at 10.125. The reboot at 20 (no downtime) revokes the tokens:
    full logins, which time out at 20.5 (their service ends at 21: wasted) and give up."""
    runs = story(duration=40, population={"clients": N},
                 client={"resume_window": "inf", "timeout": 0.5, "max_attempts": 1},
                 server={"service_time": 1, "resume": {"service_time": 0.125}},
                 events=[{"at": 10, "kind": "disconnect"}, {"at": 20, "kind": "reboot", "downtime": 0}])
    assert_both(runs, expect(episodes=2 * N, attempts=2 * N, logins=N, gave_up=N, timeouts=N, wasted=N,
                             resumptions=N, resumed=N))


def test_a_purge_of_every_token_makes_the_next_logins_full_ones():
    """resume_window "inf"; a token purge (fraction 1) at 5, disconnects of all at 10 and 20:
    the first wave logs in in full (no resumption), and those logins issue tokens, so the second
    wave resumes."""
    runs = story(duration=40, population={"clients": N}, client={"resume_window": "inf"},
                 events=[{"at": 5, "kind": "token-purge"}, {"at": 10, "kind": "disconnect"},
                         {"at": 20, "kind": "disconnect"}])
    assert_both(runs, expect(episodes=2 * N, attempts=2 * N, logins=2 * N, resumptions=N, resumed=N))


# --- agreement with the reference engine over seeds -------------------------------------------------

# A disconnect storm against one worker (25 logins/s; 900 clients reconnect within 20 s, the
# queue holds 8 s of work against a 3 s timeout): refusals, timeouts and wasted work.
STORM = """
name = "protections"
duration = "8m"
seed = 1
resolution = "10s"
warmup = "1m"
[population]
clients = 1500
session = "inf"
[client]
timeout = "3s"
connect_delay = { dist = "uniform", low = "0s", high = "1s" }
policy = { name = "exponential", base = "1s", cap = "1m" }
[server]
workers = 1
service_time = { dist = "exponential", mean = "40ms" }
queue_limit = 200
retry_after = "2s"
[[events]]
at = "1m"
kind = "disconnect"
fraction = 0.6
spread = { dist = "uniform", low = "0s", high = "20s" }
"""
PURGE = """
[[events]]
at = "50s"
kind = "token-purge"
fraction = 0.9
"""
REPS = 8
UNBOUNDED = "server.queue_limit=1000000"  # every refusal is then the protection's
RESUME = ('client.resume_window="1h"',)
CASES = {
    # sets, extra events, the counter the feature makes
    "aimd": ((UNBOUNDED, 'server.concurrency={kind="aimd", initial=10, min=5, max=100, timeout="1s"}'), "",
             "rejected"),
    "gradient": ((UNBOUNDED, 'server.concurrency={kind="gradient"}'), "", "rejected"),
    "codel-adaptive-lifo": ((UNBOUNDED, "server.codel={}"), "", "rejected"),
    "codel-fifo": ((UNBOUNDED, "server.codel={adaptive_lifo=false}"), "", "rejected"),
    "retry-after-from-queue": (('server.retry_after_from="queue"', 'server.retry_after_max="20s"'), "",
                               "rejected"),
    "resume-cheaper": (RESUME + ('server.resume={service_time={dist="exponential", mean="30ms"}}',), "",
                       "resumptions"),
    "purge-then-disconnect": (RESUME, PURGE, "resumptions"),
    # everything at once, with reject work and no round trip (CoDel's 503s then act at once)
    "all-at-once": (('server.concurrency={kind="aimd", initial=10, min=5, max=100, timeout="1s"}', "server.codel={}",
                     'server.retry_after_from="queue"', 'server.reject_cost="5ms"', 'client.rtt="0s"',
                     'client.resume_window="5m"', 'server.resume={service_time={dist="exponential", mean="30ms"}}'),
                    PURGE, "rejected"),
}


def seeded_runs(sets, events: str, tmp_path, reps: int = REPS) -> dict[str, list[dict]]:
    """The storm (with `events` added and `sets` applied) on both engines over `reps` seeds of
    its own (`test_theory.seeds`: each case its own replications)."""
    path = tmp_path / "storm.toml"
    path.write_text(STORM + events)
    s = load_scenario(str(path), list(sets))
    case = seeds(reps, STORM + events + "\n".join(sets))
    return {name: [engine.run(s.model_copy(update={"seed": k})).summary for k in case] for name, engine in ENGINES}


@pytest.mark.parametrize("case", list(CASES))
def test_protections_agree_with_des(case, tmp_path):
    sets, events, made = CASES[case]
    runs = seeded_runs(sets, events, tmp_path)
    resuming = any("resume_window" in x for x in sets)
    for name, rs in runs.items():  # the feature was at work in every run
        assert all(r[made] > 0 for r in rs), f"{name}: {made} {[r[made] for r in rs]}"
        if resuming:
            assert all(0 < r["resumed"] <= r["logins"] and r["resumptions"] <= r["attempts"] for r in rs), name
        if case == "purge-then-disconnect":  # a tenth of the tokens survived: about a tenth of the attempts
            assert all(r["resumptions"] < 0.25 * r["attempts"] for r in rs), name
    fields = ("logins", "attempts", "rejected", "timeouts") + (("resumptions", "resumed") if resuming else ())
    for f in fields:
        welch(f"{case} {f}", [r[f] for r in runs["des"]], [r[f] for r in runs["fast"]], alpha=ALPHA / len(fields))


def test_every_attempt_of_a_wave_resumes_with_a_token_that_never_expires(tmp_path):
    """resume_window "inf", the storm: every client in it was online at 0 (a token) and nothing
    revokes it, so every attempt is a resumption and every login a resumed one, on both engines."""
    runs = seeded_runs(('client.resume_window="inf"',), "", tmp_path, reps=2)
    for name, rs in runs.items():
        for r in rs:
            assert r["attempts"] > r["logins"] > 0, name  # a storm: retries
            assert (r["resumptions"], r["resumed"]) == (r["attempts"], r["logins"]), name


def test_without_the_new_keys_nothing_is_counted(tmp_path):
    runs = seeded_runs((), PURGE, tmp_path, reps=2)  # a purge without tokens revokes nothing
    for name, rs in runs.items():
        assert all((r["resumptions"], r["resumed"]) == (0, 0) for r in rs), name
