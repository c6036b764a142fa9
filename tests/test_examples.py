"""Examples are tests: every shipped scenario is loaded, validated and run (shortened, scaled down)."""

from __future__ import annotations

import pytest

from sim.config import load_scenario, shipped_scenarios
from sim.des import run


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.stem)
def test_every_shipped_scenario_runs_shortened(path):
    full = load_scenario(path)
    scale = min(1.0, 5_000 / max(1, full.population.clients))
    s = load_scenario(path, scale=scale)
    until = min(s.duration, 1800.0)
    r = run(s, until=until)
    summary, ts = r.summary, r.timeseries
    assert summary["duration_s"] == until
    assert summary["logins"] <= summary["episodes"]
    assert ts["attempts"].sum() == summary["attempts"] and ts["successes"].sum() == summary["logins"]
    if s.population.login_rate == 0:
        total = ts["online"] + ts["connecting"] + ts["offline"] + ts["gave_up"]
        assert abs(total - s.population.clients).max() < 1e-6
