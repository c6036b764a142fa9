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


@pytest.mark.parametrize("path", [p for p in shipped_scenarios() if p.stem not in ("quickstart", "every-key")],
                         ids=lambda p: p.stem)
def test_every_incident_scenario_states_its_scale_and_its_sources(path):
    from sim.gallery import stated_scale
    s = load_scenario(path)
    assert s.name == path.stem
    assert "--scale" in s.description and 0 < stated_scale(s.description) <= 1
    text = path.read_text()
    assert "[S]" in text and "[E" in text and "https://" in text  # facts cited, estimates marked
    assert "loginstorm compare" in text  # the protection side by side


def test_stated_scale_reads_the_description():
    from sim.gallery import stated_scale
    assert stated_scale("... Runs in under a minute at --scale 0.002.") == 0.002
    assert stated_scale("... at --scale 1e-4") == 1e-4
    assert stated_scale("no scale here") == 1.0


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.stem)
def test_the_stated_capacity_is_the_engines(path):
    """What `validate` and the report say the tier can do at t = 0 is what the engine reports."""
    from sim.describe import capacity_rps
    full = load_scenario(path)
    s = load_scenario(path, scale=min(1.0, 5_000 / max(1, full.population.clients)))
    assert capacity_rps(s) == pytest.approx(run(s, until=1.0).summary["capacity_rps"])
