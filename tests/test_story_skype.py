"""The Skype 2007 story (scenarios/skype-2007.toml) as relations, at --scale 0.002.

Collapse: supernodes that shut themselves down under waiting logins orphan their children, who
log in again and overload the rest; the online share falls to the floor that the dedicated
servers can home, far below 10 %, and stays there. The fix (supernodes that refuse new
children instead of shutting down, jittered clients) loses only the rebooted clients, each
wave for minutes: its share never falls below 1 - 0.2 x 0.4 (one wave's reboots) by much, and
it is back to 99 % within hours of the last wave.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.config import load_scenario
from sim.des import run

SCALE = 0.002
FIXED = ["server.p2p.overload_shutdown=inf", "client.policy.name=full-jitter"]


def share(ts) -> np.ndarray:
    wanting = ts["online"] + ts["connecting"] + ts["gave_up"]
    return ts["online"] / wanting


@pytest.mark.parametrize("seed", [1, 2])
def test_skype_2007_collapses_to_a_few_percent_and_does_not_heal(seed):
    s = load_scenario("scenarios/skype-2007.toml", scale=SCALE, seed=seed)
    r = run(s, until=6 * 3600.0)
    online = share(r.timeseries)
    floor = s.server.workers * s.server.p2p.children / s.population.clients  # homes of the dedicated servers
    assert online.min() < 0.10 and online.min() < floor + 0.02
    assert online[-6:].max() < 0.2  # five hours after the first wave it is still down
    assert r.summary["recovery_s"]["p99"] is None
    assert r.timeseries["supernodes"][-1] < 0.25 * r.timeseries["supernodes"][0]


def test_skype_2007_fixed_variant_recovers_within_hours_of_the_last_wave():
    s = load_scenario("scenarios/skype-2007.toml", scale=SCALE, sets=FIXED)
    r = run(s, until=20 * 3600.0)
    online = share(r.timeseries)
    last_wave = s.events[0].at + max(w.offset for w in s.events[0].waves)
    assert online.min() > 1 - 0.4 - 0.05  # at worst the clients of one wave's rebooted supernodes
    p99 = r.summary["recovery_s"]["p99"]
    assert p99 is not None and s.events[0].at + p99 < last_wave + 6 * 3600.0
