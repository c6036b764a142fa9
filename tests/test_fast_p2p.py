"""The fast engine's supernodes (docs/model.md section 3.2) against the reference engine and hand timelines.

A small P2P storm (collapse by overload self-shutdown, orphans, home refusals, promotions, a
`p2p-rules` fix, recovery) must agree with `des` as in `test_fast` (Welch at 1 % family-wise on
the summary fields and on the online share, supernode count and workers of every bin); the hand
timelines of `test_p2p` must come out exactly; the compiled bookkeeping (child lists, candidate
and room lists, slot stack) must match what the client states imply at any cut of the storm. The
slow checks hold the shipped p2p scenarios, scaled down, against `des`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim import fast
from sim.config import load_scenario, parse_scenario
from sim.results import RunResult
import test_engine
from test_fast import ALPHA, FIELDS, assert_agree, both_engines, defined, welch

# A small P2P storm: a reboot that hits the supernodes twice as hard, the survivors' overload
# self-shutdown, orphans, refusals for lack of a home, promotions (delay and rate), reject work,
# and a p2p-rules fix that ends the shutdowns: collapse to a few per cent online, then recovery.
P2P_STORM = """
name = "p2p-storm"
duration = "2h"
seed = 7
resolution = "2m"
warmup = "30m"

[population]
clients = 4000
online_at_start = 0.9
session = { dist = "exponential", mean = "1h" }
offline = { dist = "exponential", mean = "10m" }

[client]
timeout = "10s"
connect_delay = { dist = "uniform", low = "0s", high = "10s" }
policy = { name = "exponential", base = "5s", cap = "5m" }

[server]
workers = 2
service_time = { dist = "exponential", mean = "1500ms" }
queue_limit = 300
drop_expired = true
reject_cost = "20ms"
retry_after = "10s"

[server.p2p]
supernode_ratio = 0.01
children = 110
slots = 1
promotion_delay = "10m"
promotion_rate = 0.2
overload_shutdown = 1.0
shutdown_rate = 0.2

[[events]]
at = "30m"
kind = "reboot"
fraction = 0.3
supernode_fraction = 0.6
spread = { dist = "uniform", low = "0s", high = "2m" }
downtime = { dist = "lognormal", median = "1m", p99 = "4m" }

[[events]]
at = "1h20m"
kind = "p2p-rules"
overload_shutdown = inf
promotion_rate = 0.5
"""

P2P_FIELDS = FIELDS + ("steady.blocking", "peak_offered_rps")


def test_p2p_storm_agrees_with_des():
    runs = both_engines(parse_scenario(P2P_STORM, "test_fast"), reps=8)
    assert_agree(runs, defined(runs, P2P_FIELDS))
    for name in ("supernodes", "workers"):  # the supernode count and the slots it adds, bin by bin
        a = np.array([r.timeseries[name] for r in runs["des"]])
        b = np.array([r.timeseries[name] for r in runs["fast"]])
        for i in range(a.shape[1]):
            welch(f"{name} of bin {i}", a[:, i], b[:, i], alpha=ALPHA / a.shape[1])
    collapsed = [r.summary["lowest_online_share"] for r in runs["fast"]]
    assert max(collapsed) < 0.2  # the storm really is one: the agreement covers the collapse


def test_p2p_same_seed_same_output_different_seed_different():
    """The supernode picks draw from numba's generator, seeded from the run's: still one seed, one run."""
    s = parse_scenario(P2P_STORM, "test_fast")
    a, b = fast.run(s), fast.run(s)
    c = fast.run(parse_scenario(P2P_STORM, "test_fast", seed=8))
    strip = lambda r: {k: v for k, v in r.summary.items() if k != "wallclock_s"}  # noqa: E731
    assert strip(a) == strip(b) and strip(a) != strip(c)
    for name in a.timeseries:
        np.testing.assert_array_equal(a.timeseries[name], b.timeseries[name])


def p2p_run(**kw) -> RunResult:
    return fast.run(parse_scenario(test_engine.scenario_text(**kw), source="test_fast"))


def test_p2p_start_slots_and_capacity():
    """round(0.02 x 1 000) = 20 supernodes, each 2 slots: 3 + 40 workers from t = 0."""
    r = p2p_run(duration=120, resolution=60, population={"clients": 1000},
                server={"workers": 3}, p2p={"supernode_ratio": 0.02, "children": 100, "slots": 2})
    np.testing.assert_array_equal(r.timeseries["supernodes"], [20, 20])
    np.testing.assert_array_equal(r.timeseries["workers"], [43, 43])
    assert r.summary["capacity_rps"] == pytest.approx(43 / 0.125)


@pytest.mark.parametrize("fix_at", [None, 330])
def test_p2p_promotion_rate_per_minute_and_a_rules_event(fix_at):
    """1 000 online (10 supernodes), 9 000 log in at once: wanted = 100. Each tick promotes
    0.05 x 100 = 5 (0.1 x 100 = 10 once a p2p-rules event at 330 s raised the rate)."""
    events = [{"at": 1, "kind": "login", "fraction": 1.0, "spread": {"dist": "uniform", "low": "0s", "high": "20s"}}]
    if fix_at is not None:
        events.append({"at": fix_at, "kind": "p2p-rules", "promotion_rate": 0.1})
    r = p2p_run(duration=1500, resolution=60, population={"clients": 10_000, "online_at_start": 0.1},
                server={"workers": 50, "service_time": 0.001}, events=events,
                p2p={"supernode_ratio": 0.01, "children": 1000, "slots": 1, "promotion_rate": 0.05})
    expected, count = [], 10
    for minute in range(25):
        expected.append(count)
        fixed = fix_at is not None and (minute + 1) * 60 > fix_at
        count = min(100, count + (10 if fixed else 5))
    np.testing.assert_array_equal(r.timeseries["supernodes"], expected)
    assert r.timeseries["online"][-1] == 10_000


def test_p2p_promotion_waits_for_promotion_delay():
    """Ratio 1: the 90 clients logging in near t = 1 s are wanted at once but promotable only
    150 s after their login, at the tick of t = 180."""
    r = p2p_run(duration=300, resolution=60, population={"clients": 100, "online_at_start": 0.1},
                server={"service_time": 0.001}, events=[{"at": 1, "kind": "login", "fraction": 1.0}],
                p2p={"supernode_ratio": 1.0, "children": 100, "slots": 0, "promotion_delay": 150})
    np.testing.assert_array_equal(r.timeseries["supernodes"], [10, 10, 10, 100, 100])


def test_p2p_home_constraint():
    """5 supernodes x 110 children = 550 homes: of 1 000 clients only 550 get online, and each
    of the other 450 is refused at least once."""
    r = p2p_run(duration=900, resolution=60, population={"clients": 1000, "online_at_start": 0.5},
                client={"policy": {"name": "constant", "base": 30}},
                server={"workers": 100, "service_time": 0.001, "retry_after": 30},
                p2p={"supernode_ratio": 0.01, "children": 110, "slots": 0, "promotion_rate": 0.0},
                events=[{"at": 1, "kind": "login", "fraction": 1.0,
                         "spread": {"dist": "uniform", "low": "0s", "high": "400s"}}])
    assert r.timeseries["online"].max() <= 550 and r.timeseries["online"][-1] == 550
    assert r.timeseries["connecting"][-1] == 450 and r.summary["rejected"] > 450


@pytest.mark.parametrize("timeout, expected", [(math.inf, [8, 4, 2, 1]), (5.0, [8, 8, 8, 8])])
def test_p2p_overload_shutdown_counts_only_waiting_logins(timeout, expected):
    """8 supernodes (1 slot each, 1-hour logins), 800 logins queued at t = 1: waiting / slots far
    above 3, so each tick demotes half: 8 -> 4 -> 2 -> 1. With a 5-s client timeout nobody still
    waits for the queued requests at the first tick, and no supernode leaves."""
    r = p2p_run(duration=240, resolution=60, population={"clients": 1600, "online_at_start": 0.5},
                client={"timeout": timeout, "policy": {"name": "constant", "base": 1000}},
                server={"workers": 0, "service_time": 3600},
                p2p={"supernode_ratio": 0.01, "children": 200, "slots": 1, "promotion_rate": 0.0,
                     "overload_shutdown": 3.0, "shutdown_rate": 0.5},
                events=[{"at": 1, "kind": "login", "fraction": 1.0}])
    np.testing.assert_array_equal(r.timeseries["supernodes"], expected)
    np.testing.assert_array_equal(r.timeseries["workers"], expected)
    assert r.timeseries["queue"][1] > 700


def test_p2p_a_leaving_supernode_takes_exactly_its_children():
    """2 supernodes home the other 998 clients; a disconnect hits one of them (and no one else)
    at t = 10: it and exactly its children start episodes; then 1 x 600 homes cap who gets back."""
    s = parse_scenario(test_engine.scenario_text(
        duration=600, resolution=60, population={"clients": 1000},
        client={"policy": {"name": "constant", "base": 20},
                "connect_delay": {"dist": "uniform", "low": "0s", "high": "300s"}},
        server={"workers": 100, "service_time": 0.001, "retry_after": 20},
        p2p={"supernode_ratio": 0.002, "children": 600, "slots": 0, "promotion_rate": 0.0},
        events=[{"at": 10, "kind": "disconnect", "fraction": 0.0, "supernode_fraction": 0.5}]), "test_fast")
    engine = fast.Engine(s, s.duration, np.random.default_rng(3))
    sidx, home = engine.pp[0], engine.pp[2]
    supernodes = np.flatnonzero(sidx >= 0)
    kids = {int(c): set(np.flatnonzero(home == sidx[c]).tolist()) for c in supernodes}
    assert len(kids) == 2 and sum(map(len, kids.values())) == 998
    events = engine.run()
    assert events > 0
    left = [c for c in kids if engine.pp[0][c] < 0]
    assert len(left) == 1
    assert engine.records.tallies.episodes == 1 + len(kids[left[0]])
    assert int((engine.st == fast.ONLINE).sum()) == 600


@pytest.mark.parametrize("until", [1500.0, 2400.0, 3600.0, 5400.0, 7200.0])
def test_p2p_bookkeeping_is_consistent_through_a_storm(until):
    """After the P2P storm's collapse, shutdowns and recovery, the compiled bookkeeping agrees with
    what it must be, recomputed from the client states: the candidate list is exactly the ONLINE
    ordinary clients, each supernode's child list holds exactly the clients homed on it, homed
    clients are online, the room list is the supernodes below `children`, the counts add up."""
    s = parse_scenario(P2P_STORM, "test_fast")
    engine = fast.Engine(s, until, np.random.default_rng(int(until)))
    engine.run()
    sidx, since, home, nxt, prv, onpos, ons, scid, head, nkids, rpos, room, apos, active, sfree, _ = engine.pp
    S, children = engine.S, int(engine.Q[fast.Q_CHILDREN])
    online, role = engine.st == fast.ONLINE, sidx >= 0
    assert online[role].all() and S[fast.S_NSN] == role.sum()
    assert sorted(ons[: S[fast.S_NONS]]) == list(np.flatnonzero(online & ~role))
    assert all(onpos[c] == i for i, c in enumerate(ons[: S[fast.S_NONS]]))
    slots = active[: S[fast.S_NSN]]
    assert sorted(scid[slots]) == list(np.flatnonzero(role)) and (sidx[scid[slots]] == slots).all()
    for slot in slots:
        kids, c = [], head[slot]
        while c >= 0:
            kids.append(c)
            c = nxt[c]
        assert sorted(kids) == list(np.flatnonzero(home == slot)) and len(kids) == nkids[slot] <= children
    assert online[home >= 0].all() and not role[home >= 0].any()
    assert sorted(room[: S[fast.S_NROOM]]) == sorted(slot for slot in slots if nkids[slot] < children)
    assert S[fast.S_SFREE] + S[fast.S_NSN] == len(scid)  # no supernode slot leaks
    assert engine.Q[fast.Q_WORKERS] == engine.Q[fast.Q_DEDICATED] + role.sum()  # 1 slot each
    assert S[fast.S_N0 + fast.ONLINE] == online.sum()


@pytest.mark.slow
@pytest.mark.parametrize("name, scale, sets", [
    ("skype-2007", 0.002, ('duration="6h"', 'warmup="2h"', 'events.1.at="5h"')),
    ("skype-2010", 0.0003, ('duration="6h"', 'warmup="1h"', 'events.1.at="2h"', 'events.2.at="3h"',
                            'events.3.at="4h"')),
    ("every-key", 0.15, ()),
], ids=["skype-2007", "skype-2010", "every-key"])
def test_p2p_scenarios_agree_with_des(name, scale, sets):
    runs = both_engines(load_scenario(f"scenarios/{name}.toml", sets, scale=scale), reps=6)
    assert_agree(runs, defined(runs, P2P_FIELDS))
