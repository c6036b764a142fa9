"""Figures show the time series they are given; reports are self-contained and hold the numbers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.des import run
from sim.plots import capacity_series, compare_figure, run_figure, time_unit
from sim.runner import Outcome, write_outputs

TEXT = """
name = "plotted"
description = "A reboot wave and an outage, for the figure tests."
duration = "40m"
resolution = "1m"
seed = 3
[population]
clients = 400
[client]
timeout = "2s"
policy = { name = "full-jitter", base = "1s", cap = "30s" }
[server]
workers = 2
service_time = { dist = "exponential", mean = "50ms" }
queue_limit = 50
[[events]]
at = "5m"
kind = "reboot"
fraction = 0.5
spread = "20s"
waves = [{ offset = "0s", weight = 1 }, { offset = "10m", weight = 1 }]
[[events]]
at = "25m"
kind = "outage"
duration = "2m"
"""


@pytest.fixture(scope="module")
def result():
    return run(parse_scenario(TEXT))


def _line(ax, gid):
    return next(line for line in ax.get_lines() if line.get_gid() == gid)


def test_run_figure_plots_the_time_series(result):
    ts, s = result.timeseries, result.scenario
    fig = run_figure(ts, s)
    clients, load, work, queue = fig.axes
    unit, _ = time_unit(s.duration)
    for ax, gid, expected in [(clients, "online", ts["online"]), (clients, "connecting", ts["connecting"]),
                              (clients, "gave_up", ts["gave_up"]), (load, "offered", ts["attempts"] / 60.0),
                              (work, "goodput", ts["successes"] / 60.0), (work, "wasted", ts["wasted"] / 60.0),
                              (queue, "queue", ts["queue"]), (queue, "busy", ts["busy"])]:
        line = _line(ax, gid)
        np.testing.assert_allclose(line.get_xdata(), ts["t"] / unit)
        np.testing.assert_allclose(line.get_ydata(), expected)
    # capacity: 2 workers / 50 ms = 40/s, zero for the two outage minutes
    capacity = _line(load, "capacity").get_ydata()
    assert capacity[0] == pytest.approx(40.0)
    assert capacity[25] == capacity[26] == 0.0 and capacity[27] == pytest.approx(40.0)
    np.testing.assert_allclose(capacity, capacity_series(ts, s))


def test_event_markers_at_event_times_on_every_panel(result):
    fig = run_figure(result.timeseries, result.scenario)
    for ax in fig.axes:
        reboots = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == "event:reboot")
        outages = [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == "event:outage"]
        assert reboots == [5.0, 15.0]  # the two waves, in minutes
        assert outages == [25.0]


def test_compare_figure_overlays_variants_on_shared_axes(result):
    ts = result.timeseries
    other = dict(ts, online=ts["online"] * 0 + 400, connecting=ts["connecting"] * 0, gave_up=ts["gave_up"] * 0)
    fig = compare_figure({"a": ts, "b": other}, result.scenario)
    share, load = fig.axes
    wanting = ts["online"] + ts["connecting"] + ts["gave_up"]
    np.testing.assert_allclose(_line(share, "share:a").get_ydata(), 100 * ts["online"] / wanting)
    np.testing.assert_allclose(_line(share, "share:b").get_ydata(), 100.0)
    np.testing.assert_allclose(_line(load, "offered:b").get_ydata(), other["attempts"] / 60.0)
    assert share.get_shared_x_axes().joined(share, load)


def test_report_is_self_contained_and_holds_the_summary(result, tmp_path):
    written = write_outputs(Outcome(result.summary, result.timeseries, [result]), tmp_path)
    names = {p.name for p in written}
    assert {"summary.json", "timeseries.csv", "report.html", "storm.png", "storm.svg"} <= names
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page
    assert re.findall(r"(?:src|href)=\"(https?:|//)", page) == [] and "http://" not in page and "https://" not in page
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 1
    s = result.summary
    assert f"{s['attempts']:,}" in page and f"{s['logins']:,}" in page and f"{s['episodes']:,}" in page
    assert result.scenario.description in page
    assert 'href="summary.json"' in page and 'href="timeseries.csv"' in page
    p99 = s["recovery_s"]["p99"]
    sentence = ("99 % of the clients that want to be online were NOT back" if p99 is None
                else "99 % of clients were back online")
    assert sentence in page
    assert (tmp_path / "storm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_writes_mean_counts_with_separators_not_in_scientific_notation(result, tmp_path):
    # the mean over replications makes every count a float: 13,610.5 must not read 1.361e+04
    mean = {k: (v * 1000.5 if isinstance(v, int) and not isinstance(v, bool) and v > 0 else v)
            for k, v in result.summary.items()}
    write_outputs(Outcome(mean, result.timeseries, [result]), tmp_path)
    page = re.sub(r'src="data:[^"]*"', "", (tmp_path / "report.html").read_text())      # not the figure's bytes
    assert re.findall(r"\d\.\d+e[+-]?\d+", page) == []
    assert f"{round(mean['attempts']):,}" in page and mean["attempts"] >= 1000


def test_report_of_replications_shows_each_means_confidence_interval(tmp_path):
    from sim.config import load_scenario
    from sim.runner import simulate
    from theory import t_quantile

    outcome = simulate(load_scenario("quickstart", scale=0.5), replications=4)
    write_outputs(outcome, tmp_path)
    page = re.sub(r'src="data:[^"]*"', "", (tmp_path / "report.html").read_text())
    assert "<th>mean of 4 runs</th><th>95 % CI</th>" in page
    attempts = np.array([run["attempts"] for run in outcome.summary["runs"]], dtype=float)
    half = t_quantile(0.975, 3) * attempts.std(ddof=1) / 2.0                        # independent: t * s / sqrt(n)
    assert attempts.std() > 0
    row = re.search(r"<tr><td>attempts</td><td[^>]*>([\d,]+)</td><td[^>]*>([\d,]+) to ([\d,]+)</td>", page)
    mean, low, high = (float(g.replace(",", "")) for g in row.groups())
    assert mean == round(attempts.mean())
    assert low == pytest.approx(attempts.mean() - half, abs=0.51) and high == pytest.approx(attempts.mean() + half,
                                                                                           abs=0.51)


def test_compare_figure_draws_one_capacity_line_per_distinct_capacity(result):
    ts = result.timeseries
    doubled = result.scenario.model_copy(update={"server": result.scenario.server.model_copy(update={"workers": 4})})
    twice = dict(ts, workers=ts["workers"] * 2)
    fig = compare_figure({"a": ts, "b": twice, "c": ts}, result.scenario,
                         scenarios={"a": result.scenario, "b": doubled, "c": result.scenario})
    load = fig.axes[1]
    capacity_lines = [line for line in load.get_lines() if (line.get_gid() or "").startswith("capacity")]
    assert sorted(line.get_gid() for line in capacity_lines) == ["capacity:a", "capacity:b"]
    np.testing.assert_allclose(_line(load, "capacity:a").get_ydata(), capacity_series(ts, result.scenario))
    np.testing.assert_allclose(_line(load, "capacity:b").get_ydata(), 2 * capacity_series(ts, result.scenario))
    assert "a, c" in _line(load, "capacity:a").get_label()


def test_report_counts_supernode_slots_among_the_workers(tmp_path):
    """With [server.p2p] the workers row names the dedicated workers and the slots, whose sum
    makes the capacity it states: 3 + round(0.02 x 1 000) x 2 = 43 workers at 0.125 s."""
    text = ('name = "p2p-report"\nduration = "2m"\nresolution = "1m"\n[population]\nclients = 1000\n'
            '[server]\nworkers = 3\nservice_time = "125ms"\n'
            '[server.p2p]\nsupernode_ratio = 0.02\nchildren = 100\nslots = 2\n')
    r = run(parse_scenario(text, "test_plots"))
    write_outputs(Outcome(r.summary, r.timeseries, [r]), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert f"3 + 40 supernode slots (~{43 / 0.125:,.1f} logins/s)" in page
