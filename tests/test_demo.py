"""`make demo` (sim/demo.py): small enough for the reference engine, and its compare still tells the story.

The demo compares Skype 2007 as it was with its day-2 fix in place from the start over 18 h; here
the first wave alone (3 h), one seed, in this process: the storm as it was collapses and stays
down, the fixed network (alone and with jittered clients) is back, and ranks ahead.
"""

from __future__ import annotations

from pathlib import Path

from sim import demo
from sim.compare import build_variants, compare
from sim.config import load_scenario
from sim.runner import AUTO_FAST_CLIENTS, choose_engine


def test_demo_runs_on_the_reference_engine_and_its_fix_is_the_scenarios_day_2_event():
    s = load_scenario(demo.SCENARIO, scale=demo.SCALE)
    assert s.population.clients < AUTO_FAST_CLIENTS and choose_engine(s, "auto")[0] == "des"
    fix = next(e for e in s.events if e.kind == "p2p-rules")
    fixed = load_scenario(demo.SCENARIO, scale=demo.SCALE, sets=demo.p2p_fix().split(",")).server.p2p
    assert fixed.overload_shutdown == fix.overload_shutdown and fixed.promotion_rate == fix.promotion_rate
    simulate, comparison = demo.commands(Path("out/demo"))
    assert simulate[:2] == ["simulate", demo.SCENARIO] and comparison[:2] == ["compare", demo.SCENARIO]
    assert all(c[c.index("--engine") + 1] == "des" for c in (simulate, comparison))


def test_demo_compare_first_wave_collapses_as_it_was_and_recovers_with_the_fix():
    result = compare(demo.SCENARIO, build_variants([], demo.variants()), scale=demo.SCALE, until=3 * 3600.0,
                     replications=1, jobs=1, engine="des")
    by_name = {r.name: r for r in result.results}
    as_was = by_name["2007"].summary
    assert as_was["recovery_s"]["p90"] is None and as_was["lowest_online_share"] < 0.05
    for name in ("p2p-fix", "p2p-fix+jitter"):
        fixed = by_name[name].summary
        assert fixed["recovery_s"]["p99"] is not None and fixed["lowest_online_share"] > 0.5
    assert result.results[-1].name == "2007"
