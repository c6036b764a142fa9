"""A load test against its simulated twin: `--speed` compression, the divergence and its verdict, the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loadtests.plan import build_plan
from loadtests.versus import (RECOVERY_TOLERANCE, SHARE_TOLERANCE, divergence, parse_capacity, simulated_twin,
                              smooth, versus_curves, write_versus_report)
from sim.config import compress_scenario, load_scenario, parse_scenario
from sim.distributions import Constant, Empirical, Exponential, Lognormal, Normal, Uniform
from sim.plots import versus_figure
from sim.runner import simulate
from sim.waves import wave_times

K = 8.0


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
    ("rate_limit=5", "unknown key 'rate_limit'"),
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

