"""The resource estimate (`sim.limits`) and the grid guard (`sim.overrides`): absurd inputs are
refused before a run starts, naming their keys; every shipped story fits; and the memory estimate
agrees with the peak that tracemalloc measures over a real run of each engine.
"""

from __future__ import annotations

import math
import re
import time
import tracemalloc

import numpy as np
import pytest

from sim.config import load_scenario, shipped_scenarios
from sim.limits import (
    MAX_RUNS, ResourceError, available_memory, check, check_runs, describe, enforce, estimate,
)
from sim.overrides import MAX_GRID_VALUES, grid_size, parse_grid, policy_list
from sim.runner import choose_engine, run_engine, warm_up

GB = 10**9
LAPTOP = 8 * GB  # what the refusals are checked against: the same on every machine


# --- refusals --------------------------------------------------------------------------------

# (--set overrides of quickstart, --scale, what the refusal must say): the inputs of issue 18 that
# passed `validate` and then crashed `simulate` (MemoryError, OverflowError) or ran forever
REFUSED = [
    (["population.clients=1000000000000"], 1.0, "population.clients = 1,000,000,000,000 needs ~"),
    ([], 1e9, "population.clients = 5,000,000,000,000 after --scale 1e+09 needs ~"),
    (['resolution="1ms"', 'duration="30d"'], 1.0, "duration = 30d at resolution = 1ms"),
    (["duration=1e300"], 1.0, "duration = 1e+300s at resolution = 30s"),
    (["population.login_rate=1e12"], 1.0, "population.login_rate = 1e+12/s over 1h makes ~"),
    (["population.login_rate=inf"], 1.0, "population.login_rate = inf/s over 1h makes ~inf attempts"),
    (['population.session="0s"', 'population.offline="0s"'], 1.0, "population.session / offline (means 0s / 0s)"),
    # refused at a full queue, answered in no time, retried at once: an endless loop at one instant
    (["client.rtt=0", 'client.policy="none"', "server.retry_after=0"], 1.0,
     "population.clients = 5,000 hit by events.0 makes ~inf attempts"),
]


@pytest.mark.parametrize("sets, scale, says", REFUSED, ids=lambda v: str(v)[:40])
def test_absurd_runs_are_refused_naming_their_keys(sets, scale, says):
    e = estimate(load_scenario("quickstart", sets=sets, scale=scale), "auto")
    problems = check(e, available=LAPTOP)
    print(describe(e), *problems, sep="\n  ")
    assert any(says in line for line in problems), problems
    assert all(line.endswith("or pass --no-limits to run anyway") for line in problems)
    assert not any(math.isnan(x) for x in (e.memory, e.attempts, e.seconds))


def test_a_memory_refusal_sets_the_estimate_against_the_machine():
    e = estimate(load_scenario("quickstart", sets=["population.clients=1000000000000"]), "auto")
    line = next(p for p in check(e, available=6_100_000_000) if "client state" in p)
    assert re.fullmatch(r"population\.clients = 1,000,000,000,000 needs ~\d+ TB of client state \(fast engine\); "
                        r"this machine has 6\.1 GB available; lower it, use --scale, or pass --no-limits to run "
                        r"anyway", line), line


def test_enforce_raises_the_lines_of_check():
    e = estimate(load_scenario("quickstart", sets=['resolution="1ms"', 'duration="30d"']), "des")
    with pytest.raises(ResourceError) as caught:
        enforce(e, available=LAPTOP)
    assert isinstance(caught.value, ValueError) and caught.value.problems == check(e, available=LAPTOP)
    enforce(estimate(load_scenario("quickstart"), "des"), available=LAPTOP)  # fits: no error


def test_the_limits_of_time_refuse_what_memory_would_let_through():
    # 5 M clients on des, each reconnecting after a 1-minute session for a day: ~7e9 logins fit
    # in ~120 GB, but at ~100 k events/s the run would take well over a day
    sets = ["population.clients=5000000", 'population.session={dist="exponential",mean="1m"}',
            'population.offline="1s"', "events.0.fraction=0.0", 'duration="1d"']
    e = estimate(load_scenario("quickstart", sets=sets), "des")
    problems = check(e, available=100 * 10**12)
    assert len(problems) == 1, problems
    assert problems[0].startswith("population.session / offline (means 1m / 1s) over 1d makes ~")
    assert "on the des engine" in problems[0] and e.seconds > 24 * 3600 and e.attempts < 1e10
    assert check(estimate(load_scenario("quickstart", sets=sets[:4]), "des"), available=100 * 10**12) == []  # 1 h


# --- what fits -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.stem)
def test_every_shipped_story_fits_at_full_size_on_the_engine_auto_picks(path):
    s = load_scenario(path)
    e = estimate(s, "auto")
    print(f"{path.stem}: {describe(e)}")
    assert e.engine == choose_engine(s, "auto")[0]
    assert check(e, available=16 * GB) == []


def test_skype_2007_at_full_size_fits_in_a_few_gigabytes():
    e = estimate(load_scenario("skype-2007"), "auto")
    print(f"skype-2007: {describe(e)}")
    assert e.engine == "fast" and check(e, available=4 * GB) == []
    assert 1 * GB < e.memory < 4 * GB  # ~7 M clients at ~275 B each, plus the queue and the interpreter


def test_describe_is_one_line_for_validate():
    line = describe(estimate(load_scenario("quickstart"), "auto"))
    assert re.fullmatch(r"needs ~[\d.]+ [kMGT]?B, ~[\d.]+( k| M| billion)? attempts, ~[\d.]+ (s|min|h) "
                        r"on the des engine", line), line


def test_replications_multiply_time_and_parallel_runs_multiply_memory():
    s = load_scenario("quickstart", scale=4)
    one, four = estimate(s, "des"), estimate(s, "des", replications=4, parallel=2)
    assert four.seconds == pytest.approx(2 * one.seconds)
    assert four.parts[0].bytes == pytest.approx(2 * one.parts[0].bytes)  # client state, two runs at once
    assert four.memory > 2 * one.memory - 1  # and an interpreter each
    assert "(4 runs, 2 at a time)" in describe(four)


def test_available_memory_reads_the_machine():
    with open("/proc/meminfo") as fh:
        total = int(next(line for line in fh if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < available_memory() <= total


# --- against measured peaks --------------------------------------------------------------------

def _traced_peak(engine: str, s, until: float | None) -> tuple[int, dict]:
    warm_up([engine])
    tracemalloc.start()
    try:
        result = run_engine(engine, s, until=until, rng=np.random.default_rng(1))
        return tracemalloc.get_traced_memory()[1], result.summary
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name, scale, engine, until", [
    ("quickstart", 4.0, "des", 900.0),          # 20 k clients, half of them rebooting: SimPy processes
    ("discord-restart", 0.04, "fast", None),    # 200 k clients behind an admit gate: the packed arrays
])
def test_the_memory_estimate_is_within_3x_of_the_measured_peak(name, scale, engine, until):
    s = load_scenario(name, scale=scale)
    e = estimate(s, engine, until=until)
    started = time.perf_counter()
    peak, summary = _traced_peak(engine, s, until)
    wall = time.perf_counter() - started
    estimated = sum(p.bytes for p in e.parts)  # the interpreter's own memory is not traced
    print(f"{name} x{scale} {engine}: traced peak {peak / 1e6:.0f} MB, estimated {estimated / 1e6:.0f} MB; "
          f"{summary['attempts']:,} attempts (estimated {e.attempts:,.0f}); {wall:.1f} s (estimated {e.seconds:.1f})")
    assert peak / 3 < estimated < 3 * peak
    assert summary["attempts"] / 10 < e.attempts < 10 * summary["attempts"]  # an order of magnitude


# --- sweeps ----------------------------------------------------------------------------------

def test_a_huge_grid_range_is_refused_before_its_values_are_made():
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"^--grid server\.workers: 100,000,000 values, more than the 10,000"):
        parse_grid("server.workers=1:10:100000000")
    with pytest.raises(ValueError, match=r"^--grid server\.workers: a 5000-digit number of values"):
        parse_grid("server.workers=1:10:" + "9" * 5000)
    assert time.perf_counter() - started < 0.5  # 1e8 floats would take seconds and 800 MB


def test_the_grid_limit_counts_values_of_lists_and_ranges_alike():
    assert len(parse_grid(f"events.0.fraction=0.0:1.0:{MAX_GRID_VALUES}")[1]) == MAX_GRID_VALUES
    listed = ",".join(str(k) for k in range(MAX_GRID_VALUES + 1))
    with pytest.raises(ValueError, match=f"--grid server.workers: {MAX_GRID_VALUES + 1:,} values"):
        parse_grid(f"server.workers={listed}")
    with pytest.raises(ValueError, match="10,001 values"):
        parse_grid(f"events.0.fraction=0.0:1.0:{MAX_GRID_VALUES + 1}")
    assert len(parse_grid(f"events.0.fraction=0.0:1.0:{MAX_GRID_VALUES + 1}", limit=None)[1]) == MAX_GRID_VALUES + 1


def test_a_sweep_too_big_to_run_is_counted_and_refused():
    specs = ["client.rtt=0.001:1.0:5000", "events.0.fraction=0.01:1:50:log"]
    runs = grid_size(specs, ["all"], 3)
    assert runs == 5000 * 50 * len(policy_list(["all"])) * 3
    problems = check_runs(runs)
    assert len(problems) == 1 and f"{runs:,} runs" in problems[0] and "--no-limits" in problems[0]
    assert grid_size(["server.workers=2,4", "server.workers=1:3:3"], [], 3) == 18  # no policies: the scenario's own
    assert grid_size(["server.workers=1:10:40"], ["none"]) == 10  # whole numbers, each once
    assert check_runs(MAX_RUNS) == [] and check_runs(MAX_RUNS + 1) != []
