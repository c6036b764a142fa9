"""The limiters of sim/limiters.py: hand-computed timelines, closed forms, the schema and the presets.

The kernels are pure functions of a state row, so each test drives them directly: the numbers
in a timeline are worked out by hand from the source's rule (quoted in each test), the long-run
tests compare against a closed form computed here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.config import ScenarioError, load_scenario
from sim.limiters import (DENIED, FAILED, OK, SEND, SHORT, SLOTS, TIMED_OUT, Limiter, group_of, on_result,
                          on_retry, on_send)
from sim.presets import PRESETS


def fresh(**keys):
    lim = Limiter(**keys)
    return lim, lim.new_states(1)[0]


# --- hand timelines --------------------------------------------------------------------------


def test_quota_timeline_as_botocore():
    """botocore quota.py / standard.py: a retry takes 5 (10 after a timeout) if that many are left;
    a success refunds what its episode's last retry took, or adds 1 when it needed no retry."""
    lim, row = fresh(kind="quota", capacity=20, cost=5, timeout_cost=10, increment=1)
    take = lambda timed_out: float(on_retry(lim.code, lim.prm, row, 0.0, timed_out))  # noqa: E731
    assert take(False) == 5 and row[0] == 15
    assert take(True) == 10 and row[0] == 5
    assert take(True) == DENIED and row[0] == 5       # 10 > 5 left: denied, nothing taken
    assert take(False) == 5 and row[0] == 0
    assert take(False) == DENIED
    on_result(lim.code, lim.prm, row, 0.0, OK, 5.0)   # success after a retry that cost 5
    assert row[0] == 5
    on_result(lim.code, lim.prm, row, 0.0, OK, 0.0)   # success without a retry: +1
    assert row[0] == 6
    on_result(lim.code, lim.prm, row, 0.0, FAILED, 0.0)  # failures refund nothing
    assert row[0] == 6
    for _ in range(30):
        on_result(lim.code, lim.prm, row, 0.0, OK, 10.0)
    assert row[0] == 20                                # never above capacity


def test_throttle_timeline_as_grpc():
    """gRFC A6 / grpc-go clientconn.go: tokens start at max, -1 per failure (not below 0), +ratio
    per success (not above max); a retry goes only while tokens > max / 2."""
    lim, row = fresh(kind="throttle", max_tokens=10, token_ratio=0.5)
    allowed = []
    for _ in range(7):
        on_result(lim.code, lim.prm, row, 0.0, FAILED, 0.0)
        allowed.append(on_retry(lim.code, lim.prm, row, 0.0, False) != DENIED)
    # tokens 9, 8, 7, 6, 5, 4, 3: retries while > 5, so the 5th failure in a row stops them
    assert allowed == [True, True, True, True, False, False, False]
    assert row[0] == 3
    for _ in range(4):
        on_result(lim.code, lim.prm, row, 0.0, OK, 0.0)    # 3.5, 4, 4.5, 5
    assert row[0] == 5 and on_retry(lim.code, lim.prm, row, 0.0, False) == DENIED
    on_result(lim.code, lim.prm, row, 0.0, OK, 0.0)        # 5.5 > 5
    assert on_retry(lim.code, lim.prm, row, 0.0, False) == 0.0
    for _ in range(20):
        on_result(lim.code, lim.prm, row, 0.0, FAILED, 0.0)
    assert row[0] == 0.0


def test_budget_timeline_as_tower():
    """tower TpsBudget: 20 % -> a request deposits 1, a retry withdraws 5; the reserve is
    min_per_sec x ttl x 5; deposits and withdrawals leave the window after ttl (10 slots)."""
    lim, row = fresh(kind="budget", ttl=10, min_per_sec=0, percent=20)
    send = lambda t: on_send(lim.code, lim.prm, row, t, True, 0.0)  # noqa: E731
    retry = lambda t: on_retry(lim.code, lim.prm, row, t, False) != DENIED  # noqa: E731
    assert not retry(0.0)                      # no requests, no reserve: no retry
    for k in range(10):
        send(0.1 * k)                          # 10 requests in the first 1 s slot: balance 10
    assert [retry(0.5) for _ in range(3)] == [True, True, False]  # 10 - 5 - 5 = 0
    for _ in range(5):
        send(3.0)                              # +5 in slot 3
    assert retry(9.9) and not retry(9.9)       # slot 0 still in the window (its -10 and +10 too)
    # at 10.0 slot 0 leaves the window: +10 and -10 go, slot 3 holds 5 - 5 = 0
    assert not retry(10.0)
    for _ in range(5):
        send(12.5)
    assert retry(12.5)
    # at 22.5 everything before 13.0 has left: empty again
    assert not retry(23.0)


def test_budget_reserve_allows_min_per_sec():
    lim, row = fresh(kind="budget", ttl=5, min_per_sec=2, percent=50)   # withdraw 2, reserve 2 x 5 x 2 = 20
    permitted = sum(on_retry(lim.code, lim.prm, row, 1.0, False) != DENIED for _ in range(100))
    assert permitted == 10                                                # = min_per_sec x ttl
    assert on_retry(lim.code, lim.prm, row, 6.0, False) != DENIED         # the withdrawals left the window


def test_adaptive_timeline_as_sre_throttling():
    """Google SRE: reject locally with p = max(0, (requests - K accepts) / (requests + 1)); a call
    refused locally still counts as a request."""
    lim, row = fresh(kind="adaptive", k=2, window=10, min_requests=0)
    send = lambda t, u: on_send(lim.code, lim.prm, row, t, True, u)  # noqa: E731
    assert send(0.0, 0.0) == SEND               # requests 0: p = 0
    assert send(0.0, 0.49) == SHORT             # requests 1, accepts 0: p = 1/2
    assert send(0.0, 0.67) == SEND              # requests 2: p = 2/3
    on_result(lim.code, lim.prm, row, 0.0, OK, 0.0)
    on_result(lim.code, lim.prm, row, 0.0, OK, 0.0)   # accepts 2: K accepts = 4 > requests 3
    assert send(0.0, 0.0) == SEND               # p = max(0, (3 - 4) / 4) = 0
    on_result(lim.code, lim.prm, row, 0.0, FAILED, 0.0)  # failures only do not add accepts
    # 10 s later the window has emptied
    assert send(10.0, 0.0) == SEND and float(row[2:].sum()) == 1.0


def test_adaptive_min_requests():
    lim, row = fresh(kind="adaptive", k=2, window=10, min_requests=3)
    assert [on_send(lim.code, lim.prm, row, 0.0, True, 0.0) for _ in range(4)] == [SEND, SEND, SEND, SHORT]


def test_breaker_timeline_count_window():
    """resilience4j's rules on a window of the last 4 calls: opens at a failure rate >= 50 % once
    4 calls are in the window; open for 10 s; then 2 probe calls decide: closed or open again."""
    lim, row = fresh(kind="breaker", window_type="count", window=4, threshold=0.5, min_calls=4,
                     open_for=10, half_open_calls=2)
    code, prm = lim.code, lim.prm
    for t, outcome in ((0, OK), (1, FAILED), (2, OK)):
        assert on_send(code, prm, row, t, True, 0.0) == SEND
        on_result(code, prm, row, t, outcome, 0.0)
    assert row[0] == 0                                   # 3 calls < min_calls
    on_result(code, prm, row, 3.0, TIMED_OUT, 0.0)       # 2 of 4 failed: 50 % >= 50 %
    assert row[0] == 1 and row[1] == 13.0                # open until 3 + 10
    assert on_send(code, prm, row, 12.9, True, 0.0) == SHORT
    assert on_send(code, prm, row, 13.0, True, 0.0) == SEND   # half-open: probe 1
    assert on_send(code, prm, row, 13.1, True, 0.0) == SEND   # probe 2
    assert on_send(code, prm, row, 13.2, True, 0.0) == SHORT  # only 2 probes
    on_result(code, prm, row, 14.0, OK, 0.0)
    on_result(code, prm, row, 14.0, FAILED, 0.0)         # 1 of 2 failed: 50 % -> open again
    assert row[0] == 1 and row[1] == 24.0
    assert on_send(code, prm, row, 24.0, True, 0.0) == SEND and on_send(code, prm, row, 24.0, True, 0.0) == SEND
    on_result(code, prm, row, 25.0, OK, 0.0)
    on_result(code, prm, row, 25.0, OK, 0.0)             # both probes passed: closed, window empty
    assert row[0] == 0
    for t in range(3):
        on_result(code, prm, row, 30.0 + t, FAILED, 0.0)
    assert row[0] == 0                                   # 3 failures, but fewer than min_calls
    # the count window keeps the last 4: OK then the three failures -> 75 % -> open
    on_result(code, prm, row, 40.0, OK, 0.0)
    assert row[0] == 1


def test_breaker_time_window_forgets():
    """A time-based window (Polly's sampling duration): outcomes older than the window leave it."""
    lim, row = fresh(kind="breaker", window_type="time", window=10, threshold=0.5, min_calls=4,
                     open_for=5, half_open_calls=1)
    for t in (0.0, 1.0, 2.0):
        on_result(lim.code, lim.prm, row, t, FAILED, 0.0)
    # 1 s slots: at 10.0 the window is [1, 11), the failure at 0 s has left it: 3 calls
    on_result(lim.code, lim.prm, row, 10.0, FAILED, 0.0)
    assert row[0] == 0
    on_result(lim.code, lim.prm, row, 10.5, FAILED, 0.0)  # 4 calls, all failed
    assert row[0] == 1


def test_breaker_lost_probes_reopen():
    """Probes whose devices never answer (rebooted) do not keep it half-open for ever: after
    open_for without a verdict it opens again (our choice, docs/model.md section 4.7)."""
    lim, row = fresh(kind="breaker", window_type="count", window=2, threshold=0.5, min_calls=2,
                     open_for=10, half_open_calls=1)
    on_result(lim.code, lim.prm, row, 0.0, FAILED, 0.0)
    on_result(lim.code, lim.prm, row, 0.0, FAILED, 0.0)
    assert on_send(lim.code, lim.prm, row, 10.0, True, 0.0) == SEND     # the probe, never answered
    assert on_send(lim.code, lim.prm, row, 19.9, True, 0.0) == SHORT
    assert on_send(lim.code, lim.prm, row, 20.0, True, 0.0) == SHORT    # opens again until 30
    assert row[0] == 1 and row[1] == 30.0
    assert on_send(lim.code, lim.prm, row, 30.0, True, 0.0) == SEND


# --- long-run properties against closed forms --------------------------------------------------


def _retry_loop(lim, row, rate, fail, seconds, rng):
    """Requests at `rate`/s; each attempt fails with probability `fail`; a failed attempt retries
    at once while the limiter allows (no max): returns (requests, retries)."""
    requests = retries = 0
    t = 0.0
    while t < seconds:
        t += rng.exponential(1.0 / rate)
        requests += 1
        on_send(lim.code, lim.prm, row, t, True, 0.0)
        while True:
            ok = rng.random() >= fail
            on_result(lim.code, lim.prm, row, t, OK if ok else FAILED, 0.0)
            if ok or on_retry(lim.code, lim.prm, row, t, False) == DENIED:
                break
            retries += 1
    return requests, retries


def test_budget_caps_retries_at_percent_plus_floor():
    """A budget of p % keeps retries per request <= p % + min_per_sec / request rate, and binds
    there when the backend fails most attempts."""
    rng = np.random.default_rng(7)
    rate, percent, floor = 100.0, 20.0, 1.0
    lim, row = fresh(kind="budget", ttl=10, min_per_sec=floor, percent=percent)
    requests, retries = _retry_loop(lim, row, rate, 0.9, 2000.0, rng)
    bound = percent / 100 + floor / rate                  # 0.21
    assert retries / requests <= bound * 1.01
    assert retries / requests >= bound * 0.95            # it binds: without it, 9 retries per request


def test_budget_does_not_bind_below_its_share():
    rng = np.random.default_rng(8)
    lim, row = fresh(kind="budget", ttl=10, min_per_sec=1, percent=20)
    requests, retries = _retry_loop(lim, row, 100.0, 0.1, 500.0, rng)
    expected = 0.1 / 0.9                                 # retries per request of a geometric number of failures
    assert retries / requests == pytest.approx(expected, rel=0.08)


@pytest.mark.parametrize("accepts, expected_regime", [(0.45, "sheds"), (0.7, "passes")])
def test_adaptive_rejection_probability(accepts, expected_regime):
    """SRE throttling against a backend accepting a share a of what it receives, at R requests
    per window: p = (R - K a R (1 - p)) / (R + 1), so p* = R (1 - K a) / (R (1 - K a) + 1) when
    K a < 1, else ~0."""
    rng = np.random.default_rng(11)
    k, window, rate = 2.0, 10.0, 5.0
    lim, row = fresh(kind="adaptive", k=k, window=window, min_requests=0)
    shed = sent = 0
    t = 0.0
    while t < 40_000:
        t += rng.exponential(1.0 / rate)
        if on_send(lim.code, lim.prm, row, t, True, rng.random()) == SHORT:
            shed += 1
            continue
        sent += 1
        on_result(lim.code, lim.prm, row, t, OK if rng.random() < accepts else FAILED, 0.0)
    p = shed / (shed + sent)
    r = rate * window * (1 - 0.5 / SLOTS)     # the rolling window holds 9.5 slots on average
    gap = 1 - k * accepts
    if expected_regime == "sheds":
        predicted = r * gap / (r * gap + 1)                # 0.826 at a = 0.45
        assert p == pytest.approx(predicted, abs=0.03)
    else:
        assert p < 0.02


@pytest.mark.parametrize("fail, throttled", [(0.05, False), (0.2, True)])
def test_throttle_stops_retries_above_its_threshold(fail, throttled):
    """gRPC throttling: tokens drift by -f + r (1 - f) per call, so retries stop for good when
    f > r / (1 + r) (0.091 at r = 0.1) and almost never below it."""
    rng = np.random.default_rng(3)
    lim, row = fresh(kind="throttle", max_tokens=10, token_ratio=0.1)
    denied = failures = 0
    for _ in range(50_000):
        if rng.random() < fail:
            on_result(lim.code, lim.prm, row, 0.0, FAILED, 0.0)
            failures += 1
            denied += on_retry(lim.code, lim.prm, row, 0.0, False) == DENIED
        else:
            on_result(lim.code, lim.prm, row, 0.0, OK, 0.0)
    threshold = 0.1 / 1.1
    assert (fail > threshold) == throttled
    share = denied / failures
    assert share > 0.9 if throttled else share < 0.05


def test_breaker_against_a_dead_backend_sends_probes_only():
    """Every call fails: after min_calls it opens; then each open_for lets half_open_calls probes
    through, which fail and open it again. Calls sent = min_calls + probes x cycles."""
    lim, row = fresh(kind="breaker", window_type="count", window=20, threshold=0.5, min_calls=20,
                     open_for=10, half_open_calls=2)
    sent = 0
    dt, seconds = 0.1, 1000.0
    opened_at = None
    for i in range(int(seconds / dt)):
        t = i * dt
        if on_send(lim.code, lim.prm, row, t, True, 0.0) == SEND:
            sent += 1
            on_result(lim.code, lim.prm, row, t, FAILED, 0.0)
            if opened_at is None and row[0] == 1:
                opened_at = t
    assert opened_at == pytest.approx(1.9)                 # the 20th call
    # a cycle: open_for, then the 2 probes one call apart (the second one's failure reopens it)
    first_probe, period, last = opened_at + 10.0, 10.0 + dt, seconds - dt
    cycles = math.floor((last - first_probe) / period + 1e-9) + 1
    assert sent == 20 + 2 * cycles


# --- scope, schema and presets -------------------------------------------------------------------


def test_scope_rows_and_groups():
    assert Limiter(kind="quota").groups_for(1000) == 1000
    assert Limiter(kind="quota", scope="shared").groups_for(1000) == 1
    assert Limiter(kind="quota", scope="shared", groups=7).groups_for(1000) == 7
    assert Limiter(kind="quota", scope="shared", group_size=300).groups_for(1000) == 4
    assert [group_of(c, 4, False) for c in range(6)] == [0, 1, 2, 3, 0, 1]
    assert group_of(5, 4, True) == 5


@pytest.mark.parametrize("keys, message", [
    ({"kind": "quota", "percent": 3}, "percent: a quota limiter takes no 'percent'"),
    ({"kind": "breaker", "threshold": 0}, "threshold: must be > 0"),
    ({"kind": "breaker", "window": 2.5}, "window: a count-based window is a whole number"),
    ({"kind": "budget", "ttl": 100}, "ttl: must be >= 1 and <= 60"),
    ({"kind": "quota", "groups": 2}, "groups: only a shared limiter"),
    ({"kind": "quota", "scope": "shared", "groups": 2, "group_size": 3}, "give groups or group_size, not both"),
    ({"kind": "nope"}, "kind: unknown limiter"),
])
def test_limiter_errors_name_the_key(keys, message):
    with pytest.raises(ValueError, match=message):
        Limiter(**keys)


def test_preset_expands_and_a_limiter_table_merges():
    s = load_scenario("quickstart", sets=["client.policy=aws-sdk-standard"])
    pol, lim = s.client.build_policy(), s.client.build_limiter()
    assert (pol.name, pol.base, pol.cap, pol.max_attempts) == ("full-jitter", 1.0, 20.0, 3)
    assert (lim.kind, lim.capacity, lim.cost, lim.timeout_cost, lim.scope) == ("quota", 500, 5, 10, "device")
    shared = load_scenario("quickstart", sets=["client.policy=aws-sdk-standard", "client.limiter.scope=shared"])
    assert shared.client.build_limiter().scope == "shared" and shared.client.build_limiter().capacity == 500
    other = load_scenario("quickstart", sets=["client.policy=aws-sdk-standard", "client.limiter.kind=budget"])
    assert other.client.build_limiter().kind == "budget"    # another kind replaces the preset's
    g = load_scenario("quickstart", sets=["client.policy.name=google-api-core"])
    assert g.client.give_up_after == 120.0 and g.client.build_limiter() is None
    assert g.client.build_policy().cap == 60.0              # quickstart's own cap (2m) does not apply


def test_every_preset_cites_its_source_and_builds():
    for name, preset in PRESETS.items():
        assert preset.sources and all("/" in src for src in preset.sources), name
        s = load_scenario("quickstart", sets=[f"client.policy={name}"])
        assert s.client.policy.preset == name
        assert s.client.max_attempts == preset.max_attempts


def test_a_breaker_with_no_delay_is_refused():
    with pytest.raises(ScenarioError, match="retry at the same instant for ever"):
        load_scenario("quickstart", sets=["client.policy=none", "client.limiter.kind=breaker"])
