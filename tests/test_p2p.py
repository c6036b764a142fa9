"""The supernode model (docs/model.md section 3.2) against small cases computed by hand.

The bookkeeping (`sim.p2p.Supernodes`) is checked on its own; the engine's use of it (workers
from slots, the home constraint, promotion rate and delay, orphans, overload self-shutdown) on
scenarios whose numbers are whole: per-tick counts such as 0.05 x 100 = 5 need no stochastic
rounding, so the expected supernode count per minute is a plain timeline.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.des import CONNECTING, ONLINE, Model
from sim.metrics import timeseries
from sim.p2p import Supernodes, stochastic_round
from test_engine import scenario_text


def model(seed: int = 1, until: float | None = None, **kw) -> Model:
    s = parse_scenario(scenario_text(**kw), source="test_p2p")
    return Model(s, s.duration if until is None else until, np.random.default_rng(seed))


def finished(m: Model) -> dict[str, np.ndarray]:
    m.run(None)
    return timeseries(m)


# --- the bookkeeping ------------------------------------------------------------------------

def test_homes_fill_up_to_children_and_orphans_are_returned():
    draws = iter(np.random.default_rng(0).random(1000))
    sn = Supernodes(children=3, uniform=lambda: next(draws))
    for cid in (100, 200):
        sn.promote(cid)
    homes = [sn.place(cid) for cid in range(7)]
    assert homes[6] is None and sorted(collections.Counter(homes[:6]).values()) == [3, 3]
    assert sn.homes == 6 and len(sn) == 2 and sn.room == []
    orphans = sn.leave(100)
    assert sorted(orphans) == sorted(cid for cid, h in enumerate(homes) if h == 100)
    assert all(cid not in sn.home for cid in orphans) and len(sn) == 1
    sn.unhome(next(cid for cid, h in enumerate(homes) if h == 200))  # a child leaves: room again
    assert sn.room == [200] and sn.place(50) == 200


def test_promotion_leaves_the_old_home_and_the_pick_is_uniform():
    rng = np.random.default_rng(5)
    sn = Supernodes(children=10**6, uniform=rng.random)
    for cid in range(4):
        sn.promote(cid)
    homes = collections.Counter(sn.place(cid) for cid in range(10, 40_010))
    # 40 000 placements over 4 supernodes with room: each gets 10 000 +- 5 sd (binomial, p = 1/4)
    assert all(abs(n - 10_000) < 5 * (40_000 * 0.25 * 0.75) ** 0.5 for n in homes.values())
    sn.promote(10)  # a homed client becomes a supernode: it no longer counts as a child
    assert 10 not in sn.home and all(10 not in kids for sn_id, kids in sn.children.items() if sn_id != 10)


def test_stochastic_rounding_keeps_the_mean():
    u = np.random.default_rng(2).random(100_000)
    values = [stochastic_round(2.3, x) for x in u]
    assert set(values) == {2, 3}
    assert abs(np.mean(values) - 2.3) < 5 * (0.3 * 0.7 / len(u)) ** 0.5
    assert stochastic_round(5.0, 0.999) == 5


# --- the engine -----------------------------------------------------------------------------

def test_start_has_the_wanted_supernodes_their_slots_and_every_client_homed():
    m = model(duration=120, resolution=60, population={"clients": 1000},
              server={"workers": 3}, p2p={"supernode_ratio": 0.02, "children": 100, "slots": 2})
    assert len(m.p2p) == 20 and len(m.p2p.home) == 980  # round(0.02 x 1000); all others homed
    assert sum(len(kids) for kids in m.p2p.children.values()) == 980
    ts = finished(m)
    np.testing.assert_array_equal(ts["supernodes"], [20, 20])
    np.testing.assert_array_equal(ts["workers"], [3 + 2 * 20] * 2)  # dedicated + slots x supernodes
    assert m.server.capacity_rps() == pytest.approx(43 / 0.125)


def test_promotion_rate_caps_new_supernodes_per_minute():
    """1 000 online (10 supernodes), 9 000 log in at once: wanted = 0.01 x 10 000 = 100.

    Each minute's tick promotes 0.05 x wanted = 5 (while fewer than wanted), so the count at
    minute m is min(100, 10 + 5 m): the timeline below is that rule, walked by hand.
    """
    m = model(duration=1500, resolution=60,
              population={"clients": 10_000, "online_at_start": 0.1},
              server={"workers": 50, "service_time": 0.001},
              p2p={"supernode_ratio": 0.01, "children": 1000, "slots": 1, "promotion_rate": 0.05},
              events=[{"at": 1, "kind": "login", "fraction": 1.0,
                       "spread": {"dist": "uniform", "low": "0s", "high": "20s"}}])
    ts = finished(m)
    assert m.n_state[ONLINE] == 10_000
    expected, count = [], 10
    for _minute in range(25):
        expected.append(count)
        count = min(100, count + 5)
    np.testing.assert_array_equal(ts["supernodes"], expected)


def test_promotion_waits_for_promotion_delay_online():
    """Every client online at t = 0 is a supernode (ratio 1); 90 log in near t = 1 s. They are
    wanted at once, but only promotable 150 s after their login: at the tick of t = 180."""
    ts = finished(model(duration=300, resolution=60, population={"clients": 100, "online_at_start": 0.1},
                        server={"service_time": 0.001},
                        p2p={"supernode_ratio": 1.0, "children": 100, "slots": 0, "promotion_delay": 150},
                        events=[{"at": 1, "kind": "login", "fraction": 1.0}]))
    np.testing.assert_array_equal(ts["supernodes"], [10, 10, 10, 100, 100])


def test_home_constraint_refuses_logins_beyond_supernodes_times_children():
    """5 supernodes x 110 children = 550 homes: of the 1 000 clients only 550 get online (the
    logins are spread over 400 s, so no two are in service when the last home fills)."""
    m = model(duration=900, resolution=60, population={"clients": 1000, "online_at_start": 0.5},
              client={"policy": {"name": "constant", "base": 30}},
              server={"workers": 100, "service_time": 0.001, "retry_after": 30},
              p2p={"supernode_ratio": 0.01, "children": 110, "slots": 0, "promotion_rate": 0.0},
              events=[{"at": 1, "kind": "login", "fraction": 1.0,
                       "spread": {"dist": "uniform", "low": "0s", "high": "400s"}}])
    ts = finished(m)
    assert m.n_state[ONLINE] == 550 and m.n_state[CONNECTING] == 450
    assert ts["online"].max() <= 550 and ts["rejected"].sum() > 450  # every one of the 450 was refused


def test_a_leaving_supernode_takes_its_children_offline():
    """2 supernodes home the other 998 clients. One drops its session at t = 10: it and exactly
    its children start episodes; then 1 supernode x 600 children = 600 homes cap who gets back
    (their first attempts are spread over 300 s, so no two are in service when the last fills)."""
    m = model(duration=600, resolution=60, population={"clients": 1000},
              client={"policy": {"name": "constant", "base": 20},
                      "connect_delay": {"dist": "uniform", "low": "0s", "high": "300s"}},
              server={"workers": 100, "service_time": 0.001, "retry_after": 20},
              p2p={"supernode_ratio": 0.002, "children": 600, "slots": 0, "promotion_rate": 0.0})
    leaving = next(iter(m.p2p.children))
    kids = set(m.p2p.children[leaving])
    states = {}

    def drop_one():
        yield m.env.timeout(10)
        m.drop(leaving)
        states.update({cid: m.state[cid] for cid in range(1000)})

    m.env.process(drop_one())
    finished(m)
    assert {cid for cid, st in states.items() if st == CONNECTING} == kids | {leaving}
    assert m.tallies.episodes == 1 + len(kids)
    assert m.n_state[ONLINE] == 600 and len(m.p2p) == 1


def test_overload_shutdown_halves_the_supernodes_each_minute():
    """8 supernodes (slot 1 each, 1-hour logins) and 800 logins waiting: waiting / slots stays far
    above 3, so each tick demotes 0.5 x supernodes: 8 -> 4 -> 2 -> 1. The demoted stay online."""
    m = model(duration=240, resolution=60, population={"clients": 1600, "online_at_start": 0.5},
              server={"workers": 0, "service_time": 3600},
              p2p={"supernode_ratio": 0.01, "children": 200, "slots": 1, "promotion_rate": 0.0,
                   "overload_shutdown": 3.0, "shutdown_rate": 0.5},
              events=[{"at": 1, "kind": "login", "fraction": 1.0}])
    first = set(m.p2p.children)
    demoted_at_60 = {}

    def look():
        yield m.env.timeout(61)
        demoted_at_60.update({cid: (m.state[cid], m.online_since[cid]) for cid in first - set(m.p2p.children)})

    m.env.process(look())
    ts = finished(m)
    np.testing.assert_array_equal(ts["supernodes"], [8, 4, 2, 1])
    np.testing.assert_array_equal(ts["workers"], [8, 4, 2, 1])
    assert len(demoted_at_60) == 4 and all(v == (ONLINE, 60.0) for v in demoted_at_60.values())
    assert ts["queue"][1] > 800  # the orphans of the demoted joined the queue


def test_a_reboot_can_hit_supernodes_harder_than_other_clients():
    """supernode_fraction 0.75 of 40 supernodes = 30; fraction 0.1 of the 3 960 others = 396."""
    m = model(duration=120, resolution=60, population={"clients": 4000},
              server={"workers": 1000, "service_time": 0.001},
              p2p={"supernode_ratio": 0.01, "children": 1000, "slots": 1, "promotion_rate": 0.0},
              events=[{"at": 10, "kind": "reboot", "fraction": 0.1, "supernode_fraction": 0.75, "downtime": 1000}])
    first = set(m.p2p.children)
    ts = finished(m)
    assert len(first - set(m.p2p.children)) == 30 and ts["supernodes"][1] == 10
    rebooted = sum(m.rebooting[cid] for cid in range(4000))
    assert rebooted == 30 + 396


def test_supernode_fraction_needs_a_p2p_block():
    from sim.config import ScenarioError
    with pytest.raises(ScenarioError, match=r"events.0.supernode_fraction: needs a \[server.p2p\] block"):
        parse_scenario(scenario_text(duration=60, population={"clients": 10},
                                     events=[{"at": 1, "kind": "reboot", "supernode_fraction": 0.5}]))


def test_overload_counts_only_logins_whose_client_still_waits():
    """Same as the halving above, but the clients give up waiting after 5 s: at the first tick
    every queued request is past its deadline, nobody waits for it, and no supernode leaves."""
    m = model(duration=180, resolution=60, population={"clients": 1600, "online_at_start": 0.5},
              client={"timeout": 5, "policy": {"name": "constant", "base": 1000}},
              server={"workers": 0, "service_time": 3600},
              p2p={"supernode_ratio": 0.01, "children": 200, "slots": 1, "promotion_rate": 0.0,
                   "overload_shutdown": 3.0, "shutdown_rate": 0.5},
              events=[{"at": 1, "kind": "login", "fraction": 1.0}])
    ts = finished(m)
    assert ts["queue"][1] > 700  # the requests are still queued ...
    np.testing.assert_array_equal(ts["supernodes"], [8, 8, 8])  # ... but nobody waits for them


def test_a_p2p_event_changes_the_rules_from_its_time():
    """As the promotion-rate case, but at t = 330 a fix raises the rate to 0.1: the ticks up to
    300 promote 5 each, those from 360 on 10 each (wanted = 100)."""
    m = model(duration=900, resolution=60,
              population={"clients": 10_000, "online_at_start": 0.1},
              server={"workers": 50, "service_time": 0.001},
              p2p={"supernode_ratio": 0.01, "children": 1000, "slots": 1, "promotion_rate": 0.05},
              events=[{"at": 1, "kind": "login", "fraction": 1.0,
                       "spread": {"dist": "uniform", "low": "0s", "high": "20s"}},
                      {"at": 330, "kind": "p2p-rules", "promotion_rate": 0.1}])
    ts = finished(m)
    expected, count = [], 10
    for minute in range(15):
        expected.append(count)
        count = min(100, count + (10 if minute + 1 >= 6 else 5))
    np.testing.assert_array_equal(ts["supernodes"], expected)
    assert m.p2p_rules.promotion_rate == 0.1 and m.p2p_rules.overload_shutdown == m.s.server.p2p.overload_shutdown


def test_a_p2p_event_needs_a_p2p_block():
    from sim.config import ScenarioError
    with pytest.raises(ScenarioError, match=r"events.0.kind: a p2p-rules event needs a \[server.p2p\] block"):
        parse_scenario(scenario_text(duration=60, population={"clients": 10},
                                     events=[{"at": 1, "kind": "p2p-rules", "promotion_rate": 0.5}]))
