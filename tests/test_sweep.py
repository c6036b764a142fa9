"""`sweep` and `threshold`: grids, seeds that follow the point, executors that agree, resuming a
killed sweep, and a tipping point that theory places before the simulator finds it.

Every storm here is a few hundred clients for a minute of simulated time: a run takes ~0.05-0.3 s
with the des engine.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sim.cli.sweep import sweep_command, threshold_command
from sim.overrides import parse_grid
from sim.sweep import (
    POINT_FIELDS, REGIMES, SUMMARY_COLUMNS, WALLCLOCK_COLUMNS, Point, format_value, plan_points, regime, run_sweep,
)
from sim.threshold import threshold, threshold_line

# The tipping-point storm (see test_threshold_finds_the_fluid_tipping_point for the theory): c = 10
# workers at a constant s = 100 ms (capacity r = c/s = 100 logins/s), an unlimited FIFO queue that
# serves timed-out requests anyway (cancel_on_timeout and drop_expired false: wasted work), a
# T = 2 s timeout and no backoff (policy none: retry at once). A reboot of `fraction` x 1000
# clients spread uniformly over S = 0.5 s, no downtime.
TIP = """
name = "tip"
duration = "60s"
seed = 11
resolution = "1s"

[population]
clients = 1000

[client]
timeout = "2s"
policy = "none"

[server]
workers = 10
service_time = "100ms"

[[events]]
at = "5s"
kind = "reboot"
fraction = 0.3
spread = { dist = "uniform", low = "0s", high = "500ms" }
"""
CLIENTS, WORKERS, SERVICE, TIMEOUT, SPREAD = 1000, 10, 0.1, 2.0, 0.5


@pytest.fixture
def tip(tmp_path: Path) -> Path:
    path = tmp_path / "tip.toml"
    path.write_text(TIP)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _model_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """sweep.csv by (point, replication), wall-clock columns left out."""
    return {(r["point"], r["replication"]): {k: v for k, v in r.items() if k not in WALLCLOCK_COLUMNS}
            for r in _rows(path)}


# --- grids --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("server.workers=200,400,800", ("server.workers", [200, 400, 800])),
    ("server.discipline=fifo,lifo", ("server.discipline", ["fifo", "lifo"])),
    ("events.0.fraction=0.05:0.5:10", ("events.0.fraction", [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5])),
    ("events.0.fraction=0.01:1:3:log", ("events.0.fraction", [0.01, 0.1, 1.0])),
    ("events.0.fraction=0.01:1:9:log", ("events.0.fraction", [round(10 ** (-2 + i / 4), 12) for i in range(9)])),
    ("server.workers=100:1000:4:log", ("server.workers", [100, 215, 464, 1000])),
    ("server.workers=2:8:4", ("server.workers", [2, 4, 6, 8])),
    ("events.0.duration=1m:30m:8", ("events.0.duration", [60.0 + i * 1740 / 7 for i in range(8)])),
    ("client.timeout=500ms,2s,1m", ("client.timeout", [0.5, 2.0, 60.0])),
    ('client.connect_delay={dist="uniform",low=0,high=5},2', ("client.connect_delay",
                                                              [{"dist": "uniform", "low": 0, "high": 5}, 2])),
])
def test_parse_grid(spec, expected):
    key, values = parse_grid(spec)
    assert key == expected[0]
    assert values == pytest.approx(expected[1]) if not isinstance(values[0], (str, dict)) else values == expected[1]
    assert [type(v) for v in values] == [type(v) for v in expected[1]]


@pytest.mark.parametrize("spec, message", [
    ("server.workers", "expected KEY=V1,V2"),
    ("=1,2", "expected KEY=V1,V2"),
    ("server.workers=", "expected KEY=V1,V2"),
    ("server.workers=1,,2", "empty value"),
    ("server.workers=1,2,1", "given twice"),
    ("events.0.fraction=0:1:5:log", "a log range needs LO and HI > 0"),
    ("events.0.fraction=0.1:1:1", "N >= 2"),
    ("events.0.fraction=0.1:1:5:cubic", "must be log or lin"),
    ("events.0.duration=1m:forever:3", "finite numbers or durations"),
    ("events.0.duration=1m:soon:3", "finite numbers or durations"),
    ("client.policy.name=none,constant", "use --policies"),
    ("seed=1,2", "use --policies for the policy and --replications"),
    ("events.0.fraction=0.1:0.9", "a range needs its number of values, LO:HI:N"),
])
def test_parse_grid_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(spec)


def test_plan_points_crosses_grids_and_policies():
    points = plan_points([("a", [1, 2]), ("b", ["x"])], ["none", "constant"])
    assert [(dict(p.values), p.policy) for p in points] == [
        ({"a": 1, "b": "x"}, "none"), ({"a": 1, "b": "x"}, "constant"),
        ({"a": 2, "b": "x"}, "none"), ({"a": 2, "b": "x"}, "constant")]
    assert len({p.id for p in points}) == 4
    with pytest.raises(ValueError, match="given twice: a"):
        plan_points([("a", [1]), ("a", [2])], ["none"])


def test_point_id_and_seed_follow_the_point_not_its_place():
    p = Point((("server.workers", 4), ("events.0.fraction", 0.3)), "none")
    same = Point((("events.0.fraction", 0.3), ("server.workers", 4)), "none")
    assert p.id == same.id and len(p.id) == 12
    assert p.id != Point((("server.workers", 4), ("events.0.fraction", 0.3)), "constant").id
    child = p.seed_sequence(7).spawn(3)[2]
    assert child.spawn_key == p.replication_seed(7, 2).spawn_key
    assert np.array_equal(child.generate_state(4), p.replication_seed(7, 2).generate_state(4))
    assert p.sets() == ("server.workers=4", "events.0.fraction=0.3", "client.policy.name=none")


def test_regime_definitions():
    base = {"metastable": False, "lowest_online_share": 0.5, "recovery_s": {"p90": 1.0, "p99": 2.0}}
    assert regime({**base, "metastable": True, "recovery_s": {"p90": None, "p99": None}}) == "metastable"
    assert regime({**base, "lowest_online_share": 0.995, "recovery_s": {"p90": 0.0, "p99": 0.0}}) == "undisturbed"
    assert regime(base) == "recovered"
    assert regime({**base, "recovery_s": {"p90": 1.0, "p99": None}}) == "unrecovered"


def test_format_value():
    assert format_value("events.0.fraction", 0.18) == "18 %"
    assert format_value("events.0.duration", 90.0, duration=True) == "1m30s"
    assert format_value("server.workers", 400) == "400"


# --- seeds and executors ------------------------------------------------------------------

def test_rows_do_not_depend_on_order_or_on_the_other_points(tip, tmp_path):
    """The same point gives the same run whether the grid is reversed or cut down to it."""
    full = run_sweep(tip, ["events.0.fraction=0.2,0.6", "server.workers=10,12"], ["none", "constant"],
                     replications=2, engine="des", out_dir=tmp_path / "full", executor="serial")
    reversed_ = run_sweep(tip, ["server.workers=12,10", "events.0.fraction=0.6,0.2"], ["constant", "none"],
                          replications=2, engine="des", out_dir=tmp_path / "reversed", executor="serial")
    subset = run_sweep(tip, ["events.0.fraction=0.6", "server.workers=12"], ["none"],
                       replications=2, engine="des", out_dir=tmp_path / "subset", executor="serial")
    assert full.runs_now == 16 and subset.runs_now == 2
    a, b, c = (_model_rows(r.out_dir / "sweep.csv") for r in (full, reversed_, subset))
    assert set(a) == set(b) and set(c) < set(a)
    for key, row in a.items():
        # the same values per column; the grid columns come in the order the grids were given
        assert b[key] == row
        if key in c:
            assert c[key] == row
    # the replications differ from each other
    assert len({r["attempts"] + r["login_time_s.p50"] for r in a.values()}) > 8


def test_serial_process_pool_and_dask_agree(tip, tmp_path):
    """Identical sweep.csv rows (wall clock aside) serially, on 2 processes and on a Dask LocalCluster."""
    grids = ["events.0.fraction=0.2,0.6", "server.workers=10,12"]
    outs = {}
    for name, executor, jobs in (("serial", "serial", None), ("pool", "process", 2), ("dask", "local", 2)):
        result = run_sweep(tip, grids, ["none", "constant"], replications=2, engine="des",
                           out_dir=tmp_path / name, executor=executor, jobs=jobs)
        assert result.runs_now == 16
        outs[name] = _model_rows(result.out_dir / "sweep.csv")
    assert outs["serial"] == outs["pool"] == outs["dask"]
    assert len(outs["serial"]) == 16


def test_output_files_and_their_columns(tip, tmp_path):
    result = run_sweep(tip, ["events.0.fraction=0.2,0.6"], ["none"], replications=2, engine="des",
                       out_dir=tmp_path / "out", executor="serial")
    runs = _rows(tmp_path / "out" / "sweep.csv")
    assert list(runs[0])[:6] == ["point", "policy", "events.0.fraction", "replication", "spawn_key", "regime"]
    assert list(runs[0])[6:] == list(SUMMARY_COLUMNS)
    assert {"recovery_s.p99", "steady.utilization", "metastable", "wallclock_s"} <= set(runs[0])
    assert {r["metastable"] for r in runs} == {"true", "false"}
    points = _rows(tmp_path / "out" / "points.csv")
    assert [float(p["events.0.fraction"]) for p in points] == [0.2, 0.6]
    assert [p["regime"] for p in points] == ["recovered", "metastable"]
    assert [float(p["metastable_share"]) for p in points] == [0.0, 1.0]
    for p in points:
        assert sum(float(p[f"regime.{r}"]) for r in REGIMES) == pytest.approx(1.0)
        for name in POINT_FIELDS:
            assert {name, f"{name}.low", f"{name}.high"} <= set(p)
    meta = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert meta["grid"] == {"events.0.fraction": [0.2, 0.6]} and meta["points"] == 2
    assert (meta["scenario"], meta["policies"], meta["replications"], meta["engine"], meta["seed"]) == \
        ("tip", ["none"], 2, "des", 11)
    assert meta["complete"] is True
    assert result.table[1]["regime.metastable"] == 1.0


def test_policies_default_to_the_scenarios_own(tip, tmp_path):
    result = run_sweep(tip, ["server.workers=10"], [], replications=1, engine="des", out_dir=tmp_path / "o",
                       executor="serial")
    assert [p.policy for p in result.points] == ["none"]


def test_a_bad_value_fails_before_anything_runs(tip, tmp_path):
    with pytest.raises(Exception, match="grid point server.workers=-1"):
        run_sweep(tip, ["server.workers=10,-1"], ["none"], engine="des", out_dir=tmp_path / "o",
                  executor="serial")
    assert not (tmp_path / "o" / "sweep.csv").exists()


# --- resume -------------------------------------------------------------------------------

KILLED = """
import sys
from pathlib import Path
from sim.sweep import run_sweep
run_sweep(sys.argv[1], ["events.0.fraction=0.5,0.7", "server.workers=9,10"], ["none", "constant"],
          replications=2, engine="des", out_dir=Path(sys.argv[2]), executor="serial")
"""


def test_resume_after_a_killed_sweep(tip, tmp_path):
    """Kill a sweep (SIGKILL, by its PID) after some runs; --resume runs only the missing ones."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tip), str(out)], cwd=Path(__file__).parent.parent)
    csv_path = out / "sweep.csv"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if csv_path.exists() and csv_path.read_text().count("\n") >= 4:  # header + 3 runs
                break
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = csv_path.read_bytes()
    kept = before[:before.rfind(b"\n") + 1]  # a half-written line is dropped on resume
    done_before = kept.count(b"\n") - 1
    assert 3 <= done_before < 16, "the sweep should have been killed part-way"
    result = run_sweep(tip, ["events.0.fraction=0.5,0.7", "server.workers=9,10"], ["none", "constant"],
                       replications=2, engine="des", out_dir=out, executor="serial", resume=True)
    assert (result.runs_resumed, result.runs_now) == (done_before, 16 - done_before)
    after = csv_path.read_bytes()
    assert after.startswith(kept)  # the runs done before the kill are still there, untouched
    rows = _rows(csv_path)
    pairs = [(r["point"], r["replication"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == 16
    assert len(_rows(out / "points.csv")) == 8
    # and they are the runs an uninterrupted sweep makes
    fresh = run_sweep(tip, ["events.0.fraction=0.5,0.7", "server.workers=9,10"], ["none", "constant"],
                      replications=2, engine="des", out_dir=tmp_path / "fresh", executor="serial")
    assert _model_rows(csv_path) == _model_rows(fresh.out_dir / "sweep.csv")


def test_resume_refuses_another_sweep(tip, tmp_path):
    run_sweep(tip, ["server.workers=10"], ["none"], engine="des", out_dir=tmp_path / "o", executor="serial")
    with pytest.raises(ValueError, match="another seed"):
        run_sweep(tip, ["server.workers=10"], ["none"], engine="des", seed=5, out_dir=tmp_path / "o",
                  executor="serial", resume=True)
    again = run_sweep(tip, ["server.workers=10"], ["none"], replications=2, engine="des", out_dir=tmp_path / "o",
                      executor="serial", resume=True)
    assert (again.runs_resumed, again.runs_now) == (1, 1)


# --- a tipping point theory can place -----------------------------------------------------

def fluid_tipping_clients(r: float, s: float, timeout: float, spread: float) -> float:
    """The rebooted clients x* above which the storm sustains itself (fluid limit, FIFO, wasted work).

    x clients send their first attempt uniformly over [0, S] (faster than the r = c/s the tier
    serves, S < T); the queue never empties, so arrival i starts service at i/r and succeeds
    iff i/r + s - i*S/x < T: the first n1 = (T - s) r x / (x - rS) log in. Each of the others
    times out at its T and retries at once, behind all x first attempts (still served: wasted
    work). The first retry, from client n1 (sent at n1*S/x + T), starts service at x/r; it
    succeeds iff x/r + s - n1*S/x - T < T. When it fails, so does every later retry (they queue
    behind it, and the queue grows faster than the clock), and the K = x - n1 >= r*T clients
    left retry every T forever: more than the tier serves, goodput 0 (metastable). So the
    boundary is x/r - n1*S/x = 2T - s, i.e. x^2 - r(S + 2T - s) x + r^2 S T = 0, larger root.
    (S = 0 gives x* = r(2T - s): twice the work one timeout holds, less one service slot.)
    """
    b = r * (spread + 2 * timeout - s)
    return (b + math.sqrt(b * b - 4 * r * r * spread * timeout)) / 2


def test_fluid_formula_limits():
    r = WORKERS / SERVICE
    assert fluid_tipping_clients(r, SERVICE, TIMEOUT, 0.0) == pytest.approx(r * (2 * TIMEOUT - SERVICE))
    assert fluid_tipping_clients(r, SERVICE, TIMEOUT, SPREAD) == pytest.approx(416.0, abs=1.0)


def test_threshold_finds_the_fluid_tipping_point(tip):
    """Bisection on the reboot fraction lands within 10 % of the fluid limit's 41.6 %.

    The fluid limit ignores that arrivals are random over the spread (a few clients either way),
    so 10 % is generous; the measured bracket is ~0.41-0.43.
    """
    expected = fluid_tipping_clients(WORKERS / SERVICE, SERVICE, TIMEOUT, SPREAD) / CLIENTS
    result = threshold(tip, "events.0.fraction", 0.1, 0.9, policy="none", replications=3, engine="des",
                       tolerance=0.02, executor="serial")
    assert result.direction == "up" and not result.log_scale
    assert result.survived < result.estimate < result.tipped
    assert result.tipped - result.survived <= 0.02 * result.tipped
    assert result.estimate == pytest.approx(expected, rel=0.10)
    assert [p.value for p in result.probes[:2]] == [0.1, 0.9]
    assert all(p.tipped == (p.metastable_share > 0.5) for p in result.probes)
    # deterministic: the same probes again
    again = threshold(tip, "events.0.fraction", 0.1, 0.9, policy="none", replications=3, engine="des",
                      tolerance=0.02, executor="serial")
    assert again.probes == result.probes
    assert threshold_line([result]).startswith("survivable events.0.fraction: up to 4")


def test_sweep_phase_shares_flip_at_the_tipping_point(tip, tmp_path):
    """Well below x* every replication recovers; well above, every one is metastable; a wave of
    0.5 % of the clients never takes the online share below 99 % (undisturbed)."""
    result = run_sweep(tip, ["events.0.fraction=0.005,0.3,0.55"], ["none"], replications=3, engine="des",
                       out_dir=tmp_path / "phase", executor="serial")
    shares = [(row["regime.undisturbed"], row["regime.recovered"], row["metastable_share"]) for row in result.table]
    assert shares == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]


def test_threshold_in_the_other_direction_and_recovery_criterion(tip):
    """Fewer workers tip: with 41 % of the clients rebooting the storm survives from ~10 workers up;
    the recovery criterion (mean p99 over 5 s) tips before metastability does."""
    down = threshold(tip, "server.workers", 6, 16, policy="none", replications=2, engine="des",
                     sets=["events.0.fraction=0.41"], executor="serial")
    assert down.direction == "down" and isinstance(down.survived, int)
    assert down.tipped < down.survived <= 11 and down.survived - down.tipped == 1
    slow = threshold(tip, "events.0.fraction", 0.1, 0.9, policy="none", replications=2, engine="des",
                     criterion=("recovery_p99", 5.0), tolerance=0.05, executor="serial")
    assert slow.direction == "up" and slow.estimate < 0.40
    none = threshold(tip, "events.0.fraction", 0.05, 0.2, policy="none", replications=1, engine="des",
                     executor="serial")
    assert (none.direction, none.estimate, none.survived) == (None, None, 0.2)
    assert "all of the range" in threshold_line([none])


# --- the commands -------------------------------------------------------------------------

def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("sweep")(sweep_command)
    app.command("threshold")(threshold_command)
    return app


def test_sweep_command_writes_and_reports(tip, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(_app(), ["sweep", str(tip), "--grid", "events.0.fraction=0.2,0.6",
                                         "--policies", "none,constant", "--replications", "2", "--engine", "des",
                                         "--jobs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 points x 2 replications" in result.output and "sweep.csv" in result.output
    assert len(_rows(out / "sweep.csv")) == 8
    again = CliRunner().invoke(_app(), ["sweep", str(tip), "--grid", "events.0.fraction=0.2,0.6",
                                        "--policies", "none,constant", "--replications", "2", "--engine", "des",
                                        "--jobs", "1", "--out", str(out), "--resume", "--quiet"])
    assert again.exit_code == 0 and again.output == ""
    bad = CliRunner().invoke(_app(), ["sweep", str(tip), "--grid", "events.0.fraction=0.1:1:1", "--out", str(out)])
    assert bad.exit_code == 2 and "N >= 2" in bad.output
    unknown = CliRunner().invoke(_app(), ["sweep", str(tip), "--grid", "server.wrokers=1,2", "--engine", "des",
                                          "--jobs", "1", "--out", str(out)])
    assert unknown.exit_code == 2 and "did you mean 'workers'" in unknown.output


def test_threshold_command_prints_the_survivable_line(tip):
    result = CliRunner().invoke(_app(), ["threshold", str(tip), "--vary", "events.0.fraction", "--lo", "0.1",
                                         "--hi", "0.9", "--policies", "none", "--replications", "1",
                                         "--tolerance", "5%", "--engine", "des", "--jobs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "survivable events.0.fraction: up to 4" in result.output and "% with none" in result.output


def test_threshold_names_a_bad_key_and_the_probe_that_met_it(tip):
    result = CliRunner().invoke(_app(), ["threshold", str(tip), "--vary", "server.workrs", "--lo", "1", "--hi", "3",
                                         "--policies", "none", "--engine", "des", "--jobs", "1", "--quiet"])
    assert result.exit_code == 2
    assert "(probe server.workrs=1 none)" in result.output and "did you mean 'workers'?" in result.output
    assert "Traceback" not in result.output

