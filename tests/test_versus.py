"""A load test against its simulated twin: `--speed` compression, the divergence and its verdict, the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from loadtests.measure import measured_run
from loadtests.plan import build_plan
from loadtests.capacity import parse_capacity, read_capacity, server_table, twin_server
from loadtests.twin import simulated_twin
from loadtests.verdict import (RECOVERY_TOLERANCE, RELATIVE_TOLERANCE, SHARE_TOLERANCE, SPLIT_TOLERANCE,
                               counts_identity, divergence, online_share, smooth, quantile_error)
from loadtests.versus import versus_curves, write_versus_report
from sim.config import compress_scenario, load_scenario, parse_scenario, scale_scenario
from sim.distributions import Constant, Empirical, Exponential, Lognormal, Normal, Uniform
from sim.plots import versus_figure
from sim.runner import simulate
from sim.scenario import RateLimit, Server
from sim.waves import wave_times

K = 8.0
ROOT = Path(__file__).resolve().parent.parent


# --- compress_scenario ------------------------------------------------------------------------------

def test_speed_one_is_the_same_scenario():
    s = load_scenario("every-key")
    assert compress_scenario(s, 1.0) == s


@pytest.mark.parametrize("k", [0, -2, math.inf, math.nan])
def test_speed_must_be_a_positive_number(k):
    with pytest.raises(ValueError, match="speed must be a number > 0"):
        compress_scenario(load_scenario("quickstart"), k)


@pytest.mark.parametrize("dist", [Constant(10.0), Exponential(mean=30.0), Lognormal(median=2.0, p99=60.0),
                                  Uniform(low=5.0, high=50.0), Normal(mean=60.0, sd=40.0),
                                  Empirical(values=(1.0, 5.0, 30.0)), Constant(math.inf)],
                         ids=lambda d: d.dist if d.mean != math.inf else "inf")
def test_a_time_distribution_divided_by_k_has_mean_over_k_and_variance_over_k_squared(dist):
    s = load_scenario("quickstart").model_copy(update={"population": load_scenario("quickstart").population
                                                       .model_copy(update={"session": dist})})
    fast = compress_scenario(s, K).population.session
    assert type(fast) is type(dist)
    assert fast.mean == pytest.approx(dist.mean / K, rel=1e-12)
    assert fast.variance == pytest.approx(dist.variance / K ** 2, rel=1e-9)
    if dist.mean == math.inf:
        assert fast.is_infinite


def test_the_story_is_k_times_faster_and_the_clients_and_server_are_not():
    s = load_scenario("every-key", scale=0.02)
    fast = compress_scenario(s, K)
    assert (fast.duration, fast.resolution, fast.warmup) == (s.duration / K, s.resolution / K, s.warmup / K)
    assert fast.population.login_rate == s.population.login_rate * K
    assert fast.population.offline.mean == pytest.approx(s.population.offline.mean / K)
    assert fast.client == s.client and fast.server == s.server and fast.target == s.target
    assert (fast.scale, fast.source) == (s.scale, s.source)
    for slow, quick in zip(s.events, fast.events):
        assert quick.kind == slow.kind and quick.at == slow.at / K
        for name in ("duration", "ramp", "isolate_at"):
            if getattr(slow, name, None) is not None:
                assert getattr(quick, name) == getattr(slow, name) / K, (slow.kind, name)
        for name in ("spread", "downtime", "propagation"):
            if hasattr(slow, name):
                assert getattr(quick, name).mean == pytest.approx(getattr(slow, name).mean / K), (slow.kind, name)
        if getattr(slow, "waves", None):
            assert [w.offset for w in quick.waves] == [w.offset / K for w in slow.waves]
            assert [w.weight for w in quick.waves] == [w.weight for w in slow.waves]
    kept = {e.kind: e for e in fast.events}   # the server's own behaviour: real time
    assert kept["partition"].hang == 30.0 and kept["admit"].retry_after == 60.0
    assert kept["p2p-rules"].promotion_delay == 600.0 and kept["surge"].factor == 5


def test_a_reboot_wave_first_attempts_come_k_times_sooner():
    s = load_scenario("every-key")

    def back_online(event):   # when each picked client is back from its reboot: at + wave + spread + downtime
        rng = np.random.default_rng(7)
        return wave_times(rng, event.at, 1000, event.spread, event.wave_table()) + event.downtime.sample(rng, 1000)

    np.testing.assert_allclose(back_online(compress_scenario(s, K).events[0]), back_online(s.events[0]) / K,
                               rtol=1e-12)


def test_the_compressed_plan_is_the_load_tests_plan_at_that_speed():
    """The simulator's --speed (compress the scenario) and the load test's (loadtests.plan) tell one story."""
    s = load_scenario("every-key", scale=0.02)
    at_speed, compressed = build_plan(s, speed=K), build_plan(compress_scenario(s, K))
    assert (compressed.devices, compressed.arrivals) == (at_speed.devices, at_speed.arrivals)
    assert compressed.duration == pytest.approx(at_speed.duration)
    np.testing.assert_allclose(compressed.first_attempt_targets(), at_speed.first_attempt_targets(), rtol=1e-9)
    for d in range(0, compressed.devices, 7):
        got, want = compressed.actions(d), at_speed.actions(d)
        assert [a[1] for a in got] == [a[1] for a in want]
        np.testing.assert_allclose([a[0] for a in got], [a[0] for a in want], rtol=1e-9)


def test_the_compressed_quickstart_storm_starts_at_at_over_k_on_the_same_clients():
    s = load_scenario("quickstart", scale=0.1)
    fast = compress_scenario(s, K)
    out = simulate(fast, engine="des")
    ts, width = out.timeseries, fast.bin_width
    assert out.summary["duration_s"] == pytest.approx(s.duration / K)
    assert width == pytest.approx(s.resolution / K) and ts["t"][-1] < s.duration / K
    before = ts["t"] + width <= s.events[0].at / K
    assert ts["attempts"][before].sum() == 0 and ts["attempts"][~before].sum() > 0
    assert fast.client.build_policy() == s.client.build_policy() and fast.client.timeout == Constant(5.0)


# --- --capacity --------------------------------------------------------------------------------------

def test_capacity_values_are_read_and_validated_like_the_scenario():
    got = parse_capacity('workers=8, service_time={dist="lognormal", median="40ms", p99="300ms"},'
                         'queue_limit=inf,retry_after=2s')
    assert got == {"workers": 8, "service_time": Lognormal(median=0.04, p99=0.3), "queue_limit": math.inf,
                   "retry_after": 2.0}
    assert parse_capacity("service_time=50ms") == {"service_time": Constant(0.05)}


@pytest.mark.parametrize("text, message", [
    ("workrs=8", "unknown key 'workrs'; did you mean 'workers'?"),
    ("workers", "expected KEY=VALUE"),
    ("workers=0", "workers: must be >= 1"),
    ("workers=many", "--capacity workers"),
    ("service_time=5 minutes", "--capacity service_time"),
    ("rate_limit=5", "--capacity rate_limit: Input should be a valid dictionary"),   # a table, not a number
    ("rate_limit.rat=20", "unknown key 'rate_limit.rat'; did you mean 'rate_limit.rate'?"),
    ("rate_limit.burst=0.5", "--capacity rate_limit.burst: Input should be greater than or equal to 1"),
    ("overload.kne=4", "did you mean 'overload.knee'?"),
])
def test_capacity_errors_name_the_key(text, message):
    with pytest.raises(ValueError, match="--capacity") as err:
        parse_capacity(text)
    assert message in str(err.value)


def test_the_twin_runs_the_compressed_scenario_on_the_real_servers_capacity():
    s = load_scenario("quickstart", scale=0.1)
    runs = simulated_twin(s, speed=K, capacity=parse_capacity("workers=3,service_time=20ms"), replications=2, seed=5)
    again = simulated_twin(s, speed=K, capacity={"workers": 3, "service_time": "20ms"}, replications=2, seed=5)
    twin = runs[0].runs[0].scenario
    assert (twin.server.workers, twin.server.service_time, twin.server.queue_limit) == (3, Constant(0.02), 20)
    assert twin.events[0].at == s.events[0].at / K and twin.duration == s.duration / K
    seeds = [o.summary["seed"] for o in runs]
    assert len(set(seeds)) == 2 and seeds == [o.summary["seed"] for o in again]
    assert [o.summary["attempts"] for o in runs] == [o.summary["attempts"] for o in again]


# --- divergence on series whose answer is known --------------------------------------------------------

N, BINS, WIDTH = 100, 40, 5.0


def _step(at_bin: int, clients: int = N) -> dict[str, np.ndarray]:
    """Everyone offline, then everyone online from bin `at_bin`."""
    online = np.where(np.arange(BINS) >= at_bin, clients, 0).astype(float)
    zero = np.zeros(BINS)
    return {"t": np.arange(BINS) * WIDTH, "online": online, "connecting": zero, "offline": clients - online,
            "gave_up": zero, "attempts": online / 10, "successes": online / 20, "rejected": zero, "timeouts": zero}


def _summary(p90: float | None, amplification: float = 2.0) -> dict:
    return {"clients": N, "recovery_s": {"p90": p90, "p99": None}, "amplification": amplification,
            "lowest_online_share": 0.5}


def _moving_average(x: list[float], bins: int) -> list[float]:
    """A second, plain computation of the centred moving average (fewer bins at the edges)."""
    h = bins // 2
    return [sum(x[max(0, i - h):i + h + 1]) / len(x[max(0, i - h):i + h + 1]) for i in range(len(x))]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9])
@pytest.mark.parametrize("bins", [1, 3, 5])
def test_smooth_is_the_centred_moving_average_even_for_series_shorter_than_the_window(n, bins):
    # a 3-second load test has fewer bins than the window: it once crashed the report
    x = np.random.default_rng(n * 10 + bins).uniform(0.0, 1.0, n)
    assert smooth(x, bins).tolist() == pytest.approx(_moving_average(list(x), bins))


@pytest.mark.parametrize("shift, bins", [(2, 3), (1, 3), (2, 1), (5, 3), (3, 5)])
def test_a_shifted_step_has_the_gap_the_moving_average_predicts(shift, bins):
    measured, simulated = _step(10), _step(10 + shift)
    out = divergence(measured, [simulated, simulated], _summary(50.0), [_summary(50.0)] * 2, smooth_bins=bins)
    # A step smoothed over `bins` bins is a ramp of `bins` bins: two ramps `shift` bins apart
    # differ by at most min(shift, bins) / bins.
    assert out["online_share"]["max_gap"] == pytest.approx(min(shift, bins) / bins)
    m = _moving_average(list(measured["online"] / N), bins)
    s = _moving_average(list(simulated["online"] / N), bins)
    gaps = [abs(a - b) for a, b in zip(m, s)]
    assert out["online_share"]["max_gap_at_s"] == gaps.index(max(gaps)) * WIDTH
    assert out["online_share"]["ok"] is (min(shift, bins) / bins <= SHARE_TOLERANCE)
    assert out["verdict"]["ok"] is out["online_share"]["ok"]


def test_the_simulated_side_is_the_mean_of_the_replications():
    # replications stepping 2 bins early and 2 late average to a half-step around the measured one
    out = divergence(_step(10), [_step(8), _step(12)], _summary(50.0), [_summary(40.0), _summary(60.0)],
                     smooth_bins=1)
    assert out["online_share"]["max_gap"] == pytest.approx(0.5)
    assert out["recovery_p90_s"]["simulated"] == 50.0 and out["recovery_p90_s"]["relative_difference"] == 0.0
    assert out["totals"]["attempts"]["simulated"] == pytest.approx(np.mean([_step(8)["attempts"].sum(),
                                                                            _step(12)["attempts"].sum()]))


@pytest.mark.parametrize("measured, simulated, ok", [
    (115.0, 100.0, True), (80.5, 100.0, True), (125.0, 100.0, False), (79.0, 100.0, False),
    (None, None, True),            # neither recovered within the run: they agree
    (None, 100.0, False), (100.0, None, False),
    (WIDTH, 0.0, True),            # a short recovery: one bin of slack
    (2 * WIDTH, 0.0, False),
])
def test_recovery_p90_is_within_20_percent_or_one_bin(measured, simulated, ok):
    out = divergence(_step(10), [_step(10)], _summary(measured), [_summary(simulated)])
    assert RECOVERY_TOLERANCE == 0.2
    assert out["recovery_p90_s"]["ok"] is ok and out["verdict"]["ok"] is ok


def test_bins_that_do_not_line_up_are_an_error():
    slow = {k: v for k, v in _step(10).items()}
    slow["t"] = slow["t"] * 2
    with pytest.raises(ValueError, match="bins differ"):
        divergence(slow, [_step(10)], _summary(1.0), [_summary(1.0)])


def test_a_shorter_measurement_is_compared_over_the_bins_it_has():
    short = {k: v[:25] for k, v in _step(10).items()}
    out = divergence(short, [_step(10)], _summary(1.0), [_summary(1.0)])
    assert out["bins_compared"] == 25 and out["online_share"]["max_gap"] == 0.0


# --- the report: a twin against itself, and against a shifted copy ----------------------------------------

@pytest.fixture(scope="module")
def storm():
    """quickstart at --scale 0.2 --speed 10; 'measured' is one more des run with a seed of its own."""
    s = load_scenario("quickstart", scale=0.2)
    twin = simulated_twin(s, speed=10, replications=3)
    measured = simulate(compress_scenario(s, 10).model_copy(update={"seed": 4242}), engine="des")
    return s, twin, measured


def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"{name} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_run_of_the_same_model_agrees_within_the_tolerances(storm, tmp_path):
    s, twin, measured = storm
    paths = write_versus_report(tmp_path, s, speed=10, measured_summary=measured.summary,
                                measured_ts=measured.timeseries, simulated=twin, title="quickstart against itself",
                                notes=["measured: a simulated run with seed 4242"])
    assert sorted(p.name for p in paths) == ["report.html", "versus.json", "versus.png"]
    out = _strict_json(tmp_path / "versus.json")
    assert out["verdict"]["ok"], out["verdict"]["text"]
    assert out["recovery_p90_s"]["measured"] > 0 and out["bins_compared"] == len(measured.timeseries["t"])
    page = (tmp_path / "report.html").read_text()
    assert "agrees with the simulation" in page and "--speed 10" in page and "seed 4242" in page
    assert "data:image/png;base64," in page and (tmp_path / "versus.png").stat().st_size > 10_000


def test_a_storm_measured_late_diverges(storm, tmp_path):
    s, twin, measured = storm
    late = {k: v if k == "t" else np.concatenate([np.full(6, v[0]), v[:-6]]) for k, v in measured.timeseries.items()}
    write_versus_report(tmp_path, s, speed=10, measured_summary=measured.summary, measured_ts=late,
                        simulated=twin, title="quickstart, measured 18 s late")
    out = _strict_json(tmp_path / "versus.json")
    assert not out["verdict"]["ok"] and not out["online_share"]["ok"]
    assert out["online_share"]["max_gap"] > SHARE_TOLERANCE
    assert "diverge" in (tmp_path / "report.html").read_text()


def test_the_figure_has_four_panels_on_the_load_tests_clock(storm):
    s, twin, measured = storm
    series = [o.timeseries for o in twin]
    div = divergence(measured.timeseries, series, measured.summary, [o.summary for o in twin])
    fig = versus_figure(versus_curves(measured.timeseries, div), [versus_curves(ts, div) for ts in series],
                        twin[0].runs[0].scenario, div, "t")
    axes = fig.axes
    assert len(axes) == 4 and "real time" in axes[-1].get_xlabel()
    assert axes[-1].get_xlim()[1] == pytest.approx(s.duration / 10)      # seconds: a 6-minute load test
    labels = axes[0].get_legend_handles_labels()[1]
    assert any("measured" in x for x in labels) and any("mean of 3" in x for x in labels)
    assert [line.get_xdata()[0] for line in axes[0].lines if line.get_gid() == "event:reboot"] == \
        [s.events[0].at / 10]


def test_a_scenario_parsed_from_text_compresses_too():
    s = parse_scenario('name = "t"\nduration = "1h"\n[server]\nworkers = 1\nservice_time = "50ms"\n'
                       '[[events]]\nat = "10m"\nkind = "surge"\nduration = "5m"\nfactor = 3\n'
                       '[population]\nlogin_rate = 0.5\n')
    fast = compress_scenario(s, 60)
    assert (fast.duration, fast.events[0].at, fast.events[0].duration) == (60.0, 10.0, 5.0)
    assert fast.population.login_rate == 30.0 and fast.resolution is None and fast.bin_width == 0.06


def test_the_twin_of_a_load_test_cut_short_ends_where_it_ended():
    s = load_scenario("quickstart", scale=0.1)
    whole = simulated_twin(s, speed=K, replications=2)
    width = s.resolution / K
    cut = simulated_twin(s, speed=K, replications=2, until=40 * width)      # a bin edge, inside the storm
    for a, b in zip(whole, cut):                                              # the same seeds: the same path
        assert b.summary["duration_s"] == pytest.approx(40 * width)
        assert b.summary["attempts"] == a.timeseries["attempts"][:40].sum() > 0
        np.testing.assert_array_equal(b.timeseries["online"], a.timeseries["online"][:40])



# --- --capacity: any [server] key, a calibration file, and where each of the twin's keys came from ---------

CALIBRATED = """# loginstorm calibrate quickstart --host http://127.0.0.1:8080
[server]
workers = 1
service_time = "22.9ms"
queue_limit = "inf"
retry_after = "0s"
cancel_on_timeout = false

[server.rate_limit]
rate = 20.0
burst = 11.0
retry_after = "1s"

[provenance]
workers = { source = "measured", confidence = "high", note = "throughput flat from 2 concurrent logins on" }
service_time = { source = "measured", confidence = "high", note = "" }
queue_limit = { source = "measured", confidence = "medium", note = "no refusal with 40 logins in flight" }
"rate_limit.rate" = { source = "measured", confidence = "high", note = "" }
cancel_on_timeout = { source = "assumed", confidence = "low", note = "a client cannot see it" }

[calibration]
behaviour = "rate-limited"
warnings = ["the client, not the server, was the limit at 2,900 logins/s"]
"""


def test_capacity_takes_nested_keys_dotted():
    assert parse_capacity("rate_limit.rate=20,rate_limit.burst=11,rate_limit.retry_after=1s,overload.knee=4") == \
        {"rate_limit.rate": 20.0, "rate_limit.burst": 11.0, "rate_limit.retry_after": 1.0, "overload.knee": 4.0}
    assert parse_capacity("rate_limit={rate=20, burst=11}")["rate_limit"] == RateLimit(rate=20.0, burst=11.0)
    assert parse_capacity("discipline=lifo,drop_expired=true") == {"discipline": "lifo", "drop_expired": True}


def test_keys_given_by_hand_are_the_real_servers_and_the_rest_the_scaled_scenarios():
    s = load_scenario("quickstart", scale=0.2)           # 2 workers x 0.2 -> 1 worker (>= 1), queue 200 -> 40
    server, sources = twin_server(s, read_capacity("rate_limit.rate=20,rate_limit.burst=11,service_time=23ms"))
    assert server.rate_limit == RateLimit(rate=20.0, burst=11.0) and server.service_time == Constant(0.023)
    assert (server.workers, server.queue_limit) == (s.server.workers, s.server.queue_limit) == (1, 40)
    assert sources["rate_limit.rate"][0] == sources["service_time"][0] == "given by hand (--capacity)"
    assert sources["workers"][0] == sources["queue_limit"][0] == "the scenario (scaled by --scale 0.2)"
    assert sources["retry_after"][0].startswith("the scenario (not a count")
    assert sources["rate_limit.retry_after"][0].startswith("the scenario")     # the model's 0: kept from the scenario
    with pytest.raises(ValueError, match=r"--capacity rate_limit.rate: Field required"):
        twin_server(s, read_capacity("rate_limit.burst=11"))          # the scenario has no rate limit to complete


def test_a_scaled_scenarios_rate_limit_is_replaced_not_scaled():
    base = load_scenario("quickstart").model_copy(update={"server": load_scenario("quickstart").server.model_copy(
        update={"rate_limit": RateLimit(rate=100.0, burst=50.0)})})
    s = scale_scenario(base, 0.02)
    assert s.server.rate_limit == RateLimit(rate=2.0, burst=1.0)     # --scale multiplies what the scenario says
    server, sources = twin_server(s, read_capacity("rate_limit.rate=20"))
    assert server.rate_limit.rate == 20.0 and server.rate_limit.burst == 1.0   # the real rate; the rest scaled
    assert sources["rate_limit.burst"][0] == "the scenario (scaled by --scale 0.02)"


def test_a_calibration_file_is_the_twins_whole_server_table(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text(CALIBRATED)
    capacity = read_capacity(str(path))
    s = load_scenario("quickstart", scale=0.2)
    server, sources = twin_server(s, capacity)
    assert server == Server.model_validate(tomllib.loads(CALIBRATED)["server"])
    assert server.queue_limit == math.inf and server.workers == 1       # not the scenario's 40 nor its scaling
    assert sources["workers"][0] == "measured by calibrate (confidence high)"
    assert sources["queue_limit"][0] == "measured by calibrate (confidence medium)"
    assert sources["cancel_on_timeout"] == ("assumed by calibrate (confidence low)", "a client cannot see it")
    assert sources["retry_after"][0] == "given in server.toml (no provenance)"
    assert sources["discipline"][0] == sources["overload"][0] == "default"
    assert capacity.warnings == ("the client, not the server, was the limit at 2,900 logins/s",)
    rows = {r["key"]: r for r in server_table(server, sources)}
    assert rows["rate_limit.burst"]["value"] == "11" and rows["queue_limit"]["value"] == "inf"
    assert rows["service_time"]["value"] == "22.9ms" and rows["discipline"]["value"] == "fifo"


@pytest.mark.parametrize("text, message", [
    (None, "no such file"),
    ("workers = ", "not a TOML file"),
    ("[servr]\nworkers = 1\n", "no [server] table"),
    ("[server]\nworkrs = 1\nservice_time = '1ms'\n", "[server]: unknown key 'workrs'; did you mean 'workers'?"),
    ("[server]\nworkers = 'many'\nservice_time = '1ms'\n", "[server] workers: Input should be a valid integer"),
    ("[server]\nworkers = 1\n", "[server] service_time: Field required"),
    ("[server]\nworkers = 1\nservice_time = '1ms'\n[server.rate_limit]\nrat = 3\n",
     "unknown key 'rate_limit.rat'; did you mean 'rate_limit.rate'?"),
], ids=["missing", "not-toml", "no-server", "unknown-key", "bad-value", "incomplete", "nested-key"])
def test_a_bad_capacity_file_names_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "server.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_capacity(str(path))
    assert str(err.value).startswith(f"--capacity {path}") and message in str(err.value), str(err.value)


# --- the verdict on the mechanism: synthetic storms whose answer is known -------------------------------

EVENT_BIN = 10


def _storm(*, clients=N, touched=N, back_at=20, stay=0.0, attempts=100.0, split=(1.0, 0.0, 0.0, 0.0),
           startup=False) -> dict[str, np.ndarray]:
    """`touched` devices go offline at bin EVENT_BIN and come back at `back_at` (a share `stay` never
    does); `attempts` per bin from the event on, split into (logins, refusals, timeouts, errors)."""
    bins = np.arange(BINS)
    down = np.where((bins >= EVENT_BIN) & (bins < back_at), touched, np.where(bins >= back_at, stay * touched, 0))
    online = clients - down
    if startup:                                  # the load test's devices still starting up before the event
        online = np.where(bins < EVENT_BIN // 2, 0.0, online)
    zero = np.zeros(BINS)
    a = np.where(bins >= EVENT_BIN, attempts, 0.0)
    cols = dict(zip(("successes", "rejected", "timeouts", "errors"), (a * share for share in split)))
    return {"t": bins * WIDTH, "online": online.astype(float), "connecting": zero, "offline": clients - online,
            "gave_up": zero, "attempts": a, **cols}


def _mech(p90=30.0, amplification=2.0, p50=1.0, p95=4.0, **extra) -> dict:
    return {"clients": N, "recovery_s": {"p90": p90}, "amplification": amplification, "lowest_online_share": 0.5,
            "login_time_s": {"p50": p50, "p95": p95}, **extra}


START = EVENT_BIN * WIDTH


def test_the_same_mechanism_agrees_on_every_measure():
    out = divergence(_storm(), [_storm(), _storm(stay=0.05)], _mech(), [_mech(), _mech(p90=33.0)], start_s=START)
    assert out["verdict"]["ok"], out["verdict"]["text"]
    assert [m["name"] for m in out["measures"]] == [
        "online share of the touched devices", "recovery p90", "share logins", "share refusals", "share timeouts",
        "share errors", "attempts per episode", "login time p50", "login time p95", "time to first success"]
    assert all(m["ok"] and m["reason"] for m in out["measures"])


def test_refusals_where_the_server_let_clients_time_out_diverge():
    # the gunicorn run: 3,924 attempts = 12 logins + 3,881 timeouts (+ 31 in flight); the twin refused
    measured = _storm(stay=0.9, attempts=3924 / 30, split=(12 / 3924, 0, 3881 / 3924, 0))
    twin = _storm(stay=0.9, attempts=3924 / 30, split=(12 / 3924, 3886 / 3924, 26 / 3924, 0))
    out = divergence(measured, [twin], _mech(p90=None), [_mech(p90=None)], start_s=START)
    by = {m["name"]: m for m in out["measures"]}
    assert by["online share of the touched devices"]["ok"] and by["recovery p90"]["ok"]   # the old verdict agreed
    assert not by["share refusals"]["ok"] and not by["share timeouts"]["ok"]
    assert by["share refusals"]["measured_count"] == 0 and by["share refusals"]["simulated_count"] == \
        pytest.approx(3886)
    assert not out["verdict"]["ok"] and "share refusals (0.0 % measured, 99.0 % simulated)" in out["verdict"]["text"]


@pytest.mark.parametrize("refused, ok", [(30, False), (5, True), (0, True)])
def test_an_outcome_on_one_side_only_diverges_once_it_is_not_a_stray(refused, ok):
    # 3,000 attempts: 30 refusals are 1 point (well within 10) but a mechanism the twin never shows; 5 are strays
    measured = _storm(attempts=100.0, split=(1 - refused / 3000, refused / 3000, 0, 0))
    out = divergence(measured, [_storm()], _mech(), [_mech()], start_s=START)
    refusals = next(m for m in out["measures"] if m["name"] == "share refusals")
    assert refusals["gap"] <= SPLIT_TOLERANCE and refusals["only_one_side"] is (not ok)
    assert refusals["ok"] is ok and out["verdict"]["ok"] is ok


def test_never_recovered_on_both_sides_agrees_only_if_the_curves_agree():
    same = divergence(_storm(stay=0.8), [_storm(stay=0.8)], _mech(p90=None), [_mech(p90=None)], start_s=START)
    assert same["recovery_p90_s"]["ok"] and same["verdict"]["ok"]
    apart = divergence(_storm(stay=0.8), [_storm(stay=0.3)], _mech(p90=None), [_mech(p90=None)], start_s=START)
    assert not apart["online_share"]["ok"] and not apart["recovery_p90_s"]["ok"]
    assert "recovery p90 (never measured, never simulated)" in apart["verdict"]["text"]


def test_the_online_share_is_of_the_devices_the_storm_touched():
    # 1,000 devices, 60 touched; the twin brings them back 10 bins later: 6 points of the whole population,
    # the whole of the touched devices
    late = divergence(_storm(clients=1000, touched=60), [_storm(clients=1000, touched=60, back_at=30)],
                      _mech(touched=60), [_mech()], start_s=START)
    assert late["touched"] == 60 and late["online_share"]["max_gap"] == pytest.approx(1.0)
    assert not late["online_share"]["ok"]
    diluted = online_share(_storm(clients=1000, touched=60), 1000) - \
        online_share(_storm(clients=1000, touched=60, back_at=30), 1000)
    assert np.abs(diluted).max() == pytest.approx(0.06) and 0.06 < SHARE_TOLERANCE   # the old definition agreed


def test_the_start_up_is_left_out():
    measured, twin = _storm(startup=True), _storm()
    out = divergence(measured, [twin], _mech(), [_mech()], start_s=START)
    assert out["verdict"]["ok"] and out["from_s"] == START and out["online_share"]["max_gap"] == 0.0
    whole = divergence(measured, [twin], _mech(), [_mech()], start_s=0.0)
    assert whole["online_share"]["max_gap_at_s"] == 0.0 and not whole["online_share"]["ok"]


@pytest.mark.parametrize("measured, replications, ok", [
    (2.3, [2.0, 2.0], True), (2.6, [2.0, 2.0], False),    # 20 % when the replications agree
    (3.0, [1.0, 3.0], True),                               # 2 x CV (71 %) when they scatter
])
def test_attempts_per_episode_are_within_20_percent_or_twice_the_replications_cv(measured, replications, ok):
    out = divergence(_storm(), [_storm()] * 2, _mech(amplification=measured),
                     [_mech(amplification=a) for a in replications], start_s=START)
    amp = next(m for m in out["measures"] if m["name"] == "attempts per episode")
    assert amp["ok"] is ok and out["verdict"]["ok"] is ok
    assert amp["tolerance"] == pytest.approx(max(RELATIVE_TOLERANCE, 2 * np.std(replications, ddof=1) /
                                                 np.mean(replications)))


def test_login_time_and_first_success_are_compared():
    slow = divergence(_storm(), [_storm()], _mech(p50=3.0), [_mech(p50=1.0)], start_s=START)
    assert [m["name"] for m in slow["measures"] if not m["ok"]] == ["login time p50"]
    # the twin lets nobody in for 6 bins after the event (attempts all refused), the server at once
    held = _storm(split=(0.0, 1.0, 0.0, 0.0))
    held["successes"] = np.where(np.arange(BINS) >= EVENT_BIN + 6, 100.0, 0.0)
    late = divergence(_storm(), [held], _mech(), [_mech()], start_s=START)
    first = next(m for m in late["measures"] if m["name"] == "time to first success")
    assert (first["measured"], first["simulated"], first["ok"]) == (0.0, 6 * WIDTH, False)


# --- counts that add up ------------------------------------------------------------------------------------

def test_measured_attempts_are_the_answered_ones_plus_those_in_flight_at_the_end():
    s = load_scenario("quickstart", scale=0.001)           # 5 devices; the reboot at 5 min
    at = s.events[0].at
    states = [(0.0, d, "", "online") for d in range(5)] + [(at + 1, d, "online", "connecting") for d in range(3)]
    attempts = [(0, 1, 1, at + 1, 0.5, "ok"), (1, 1, 1, at + 1, 5.0, "timeout"), (1, 1, 2, at + 7, 0.1, "rejected"),
                (2, 1, 1, at + 1, 0.2, "error"), (2, 1, 2, at + 2, 0.2, "failed"),
                (1, 1, 3, at + 9, 30.0, "ok"),               # answered after the end: in flight
                (2, 1, 3, at + 9.5, 0.1, "timeout"),          # ends after the end too
                (1, 1, 4, at + 20, 0.1, "ok")]                # starts after the end: not an attempt of this run
    run = measured_run(s, at + 9.55, attempts, states)
    c = run.summary
    assert (c["attempts"], c["successes"], c["rejected"], c["timeouts"], c["errors"], c["in_flight"]) == \
        (7, 1, 1, 1, 2, 2)
    assert c["attempts"] == c["successes"] + c["rejected"] + c["timeouts"] + c["errors"] + c["in_flight"]
    assert c["touched"] == 3 and c["peak_in_flight"] == 3
    assert counts_identity(c) == {"attempts": 7, "successes": 1, "rejected": 1, "timeouts": 1, "errors": 2,
                                  "in_flight": 2}


def test_the_twins_in_flight_is_what_its_answers_leave():
    s = load_scenario("quickstart", scale=0.1)
    cut = simulated_twin(s, speed=K, replications=1, until=s.events[0].at / K + 6.0)[0].summary
    c = counts_identity(cut)
    assert c["in_flight"] == cut["attempts"] - cut["logins"] - cut["rejected"] - cut["timeouts"] - cut["errors"]
    assert c["in_flight"] >= 0 and cut["attempts"] > 0


# --- an assumed key that decides the outcome, and the report ---------------------------------------------

def test_an_assumed_queue_limit_that_decides_the_outcome_is_warned_about(storm, tmp_path):
    s, twin, measured = storm                  # the twin's queue limit (40) comes from the scenario, scaled
    write_versus_report(tmp_path, s, speed=10, measured_summary=measured.summary, measured_ts=measured.timeseries,
                        simulated=twin, title="t")
    out = _strict_json(tmp_path / "versus.json")
    decides = {d["key"]: d for d in out["assumptions_that_decide"]}
    assert "queue_limit" in decides, out["assumptions_that_decide"]
    text = decides["queue_limit"]["text"]
    assert text.startswith("assumed key queue_limit = 40 (the scenario (scaled by --scale 0.2)) decides the "
                           "outcome: with inf the twin ")
    refused = sum(o.summary["rejected"] for o in twin[:1])      # the first replication: the one tried again
    assert f"refuses 0 instead of {refused:,.0f}" in text and refused > 0
    page = (tmp_path / "report.html").read_text()
    assert "assumed key queue_limit = 40" in page


def test_a_key_given_by_hand_is_not_questioned_and_the_report_says_where_each_came_from(tmp_path):
    s = load_scenario("quickstart", scale=0.2)
    capacity = read_capacity("queue_limit=40,retry_after=5s")
    server, _ = twin_server(s, capacity)
    twin = simulated_twin(s, speed=10, capacity=server, replications=2)
    measured = simulate(compress_scenario(s, 10).model_copy(update={"seed": 77}), engine="des")
    write_versus_report(tmp_path, s, speed=10, measured_summary=measured.summary, measured_ts=measured.timeseries,
                        simulated=twin, title="t", capacity=capacity)
    out = _strict_json(tmp_path / "versus.json")
    assert not {"queue_limit", "retry_after"} & {d["key"] for d in out["assumptions_that_decide"]}
    sources = {r["key"]: r["source"] for r in out["server"]}
    assert sources["queue_limit"] == "given by hand (--capacity)" and sources["workers"].startswith("the scenario")
    assert out["scale"] == 0.2 and len(out["measures"]) == 10
    page = (tmp_path / "report.html").read_text()
    assert "Capacity from" not in page and "<h2>The twin's server</h2>" in page
    assert "unscaled" in page and "+ in flight at the end" in page and "given by hand (--capacity)" in page


# --- `loginstorm loadtest --capacity FILE` from logs: the command's path, no request sent -----------------

SMALL = """
name = "small"
duration = "20s"
resolution = "1s"
[population]
clients = 20
[client]
timeout = "2s"
policy = "none"
[server]
workers = 4
service_time = "10ms"
queue_limit = 3
retry_after = "1s"
[[events]]
at = "5s"
kind = "reboot"
fraction = 1.0
downtime = "1s"
[target]
host = "http://127.0.0.1:1"
flow = "json"
path = "/api/login"
"""


def _logs(folder: Path) -> Path:
    """Twenty devices reboot at 5 s and log in at once; one attempt is still out when the run ends at 20 s."""
    folder.mkdir()
    states = ["t_s,device,from,to"] + [f"0.0,{d},,online" for d in range(20)]
    attempts = ["device,episode,attempt,start_s,seconds,outcome,status,retry_after_s,wait_s,message"]
    for d in range(20):
        t = 5.0 + 0.01 * d
        states += [f"{t},{d},online,offline", f"{t + 1},{d},offline,connecting", f"{t + 1.05},{d},connecting,online"]
        attempts.append(f"{d},1,1,{t + 1},0.05,ok,200,,0,")
    attempts.append("19,2,1,19.5,3.0,timeout,0,,0,")
    (folder / "states.csv").write_text("\n".join(states) + "\n")
    (folder / "attempts.csv").write_text("\n".join(attempts) + "\n")
    return folder


def _loadtest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL)
    return subprocess.run([sys.executable, "-m", "sim.cli", "loadtest", str(scenario), "--host", "http://127.0.0.1:1",
                           "--out", str(tmp_path / "out"), "-q", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)


def test_a_bad_capacity_file_stops_the_command_before_anything_is_done(tmp_path):
    (tmp_path / "server.toml").write_text("[server]\nworkers = 1\nservice_tme = '20ms'\n")
    done = _loadtest(tmp_path, "--from-logs", str(_logs(tmp_path / "logs")), "--capacity",
                     str(tmp_path / "server.toml"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--capacity {tmp_path / 'server.toml'}: [server]: unknown key 'service_tme'; did you mean " \
           f"'service_time'?" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_calibration_file_makes_the_twin_and_the_counts_add_up(tmp_path):
    (tmp_path / "server.toml").write_text(CALIBRATED.replace("[server.rate_limit]\nrate = 20.0", "[server.rate_limit]"
                                                             "\nrate = 200.0"))
    done = _loadtest(tmp_path, "--from-logs", str(_logs(tmp_path / "logs")), "--capacity",
                     str(tmp_path / "server.toml"))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["attempts"], summary["successes"], summary["timeouts"], summary["in_flight"]) == (21, 20, 0, 1)
    assert summary["touched"] == 20
    out = _strict_json(tmp_path / "out" / "versus.json")
    sources = {r["key"]: (r["value"], r["source"]) for r in out["server"]}
    assert sources["workers"] == ("1", "measured by calibrate (confidence high)")     # not the scenario's 4
    assert sources["queue_limit"] == ("inf", "measured by calibrate (confidence medium)")   # nor its 3
    assert out["counts"]["measured"]["in_flight"] == 1 and out["touched"] == 20 and out["from_s"] == 5.0
    assert "calibrate: the client, not the server, was the limit at 2,900 logins/s" in out["warnings"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "measured by calibrate (confidence high)" in page and "+ in flight at the end" in page


def test_a_login_time_quantile_of_few_logins_is_allowed_its_own_sampling_error():
    """The p95 of n login times scatters from run to run; with few logins the tolerance widens by
    2 x its relative standard error, checked here against a simulation of that scatter."""
    rng = np.random.default_rng(5)
    n, q = 120, 0.95
    p95s = np.quantile(rng.exponential(1.0, size=(4000, n)), q, axis=1)    # exponential tail: the bound's case
    assert np.std(p95s) / np.mean(p95s) == pytest.approx(quantile_error(q, n), rel=0.25)
    sims = [_mech(p95=6.2)] * 3
    few = divergence(_storm(), [_storm()] * 3, _mech(p95=4.9, logins=n), sims, start_s=START)        # -21 %
    many = divergence(_storm(), [_storm()] * 3, _mech(p95=4.9, logins=100_000), sims, start_s=START)
    p95 = {name: next(m for m in out["measures"] if m["name"] == "login time p95") for name, out in
           (("few", few), ("many", many))}
    assert p95["few"]["ok"] and p95["few"]["tolerance"] == pytest.approx(2 * quantile_error(q, n))
    assert not p95["many"]["ok"] and p95["many"]["tolerance"] == RELATIVE_TOLERANCE
