"""Figures of scenarios with many events: drawing time and file size do not grow with the number of
events, yet a handful of events is still marked and labelled one by one."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.plots import MAX_MARKS, STRIP_BINS, EventMark, compare_figure, key_marks, merged_bands, run_figure, save_figure

HEAD = """
name = "many-events"
duration = "1h"
resolution = "1m"
[population]
clients = 500
[client]
timeout = "2s"
policy = { name = "full-jitter", base = "1s", cap = "30s" }
[server]
workers = 2
service_time = { dist = "exponential", mean = "50ms" }
"""


def _scenario(events: list[str]):
    return parse_scenario(HEAD + "".join(f"[[events]]\n{e}\n" for e in events))


def _many(n: int):
    """`n` small reboots over the hour, an outage every 500th, and one reboot of 40 % in the middle."""
    ats = np.linspace(60, 3500, n)
    events = [f'at = {at:.3f}\nkind = "outage"\nduration = "10s"' if k % 500 == 499 else
              f'at = {at:.3f}\nkind = "reboot"\nfraction = {0.4 if k == n // 2 else 0.001 + 0.01 * (k % 7) / 7:.4f}'
              for k, at in enumerate(ats)]
    return _scenario(events)


def _series(s) -> dict[str, np.ndarray]:
    """A small made-up time series (the figure draws what it is given; no simulation needed)."""
    rng = np.random.default_rng(11)
    n = int(s.duration / s.bin_width)
    online = rng.uniform(300, 500, n)
    return {"t": np.arange(n) * s.bin_width, "online": online, "connecting": 500 - online,
            "gave_up": rng.uniform(0, 5, n), "attempts": rng.gamma(2, 300, n), "successes": rng.gamma(2, 100, n),
            "wasted": rng.gamma(1, 20, n), "queue": rng.gamma(1, 30, n), "busy": rng.uniform(0, 2, n),
            "workers": np.full(n, 2.0), "supernodes": np.zeros(n)}


def _draw(figure, s, stem) -> tuple[float, int]:
    """Seconds to draw and save PNG and SVG, and the SVG's size in bytes."""
    start = time.perf_counter()
    save_figure(figure(_series(s), s), stem)
    return time.perf_counter() - start, stem.with_suffix(".svg").stat().st_size


def _labels(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _event_lines(ax) -> list[str]:
    return [line.get_gid() for line in ax.get_lines() if str(line.get_gid()).startswith("event:")]


@pytest.fixture(scope="module")
def many():
    return _many(20_000)


@pytest.mark.parametrize("figure", [run_figure, lambda ts, s: compare_figure({"run": ts}, s)],
                         ids=["run", "compare"])
def test_twenty_thousand_events_draw_about_as_fast_and_small_as_three(many, figure, tmp_path):
    few = _scenario([f'at = "{m}m"\nkind = "reboot"\nfraction = 0.1' for m in (5, 20, 40)])
    few_seconds, few_svg = _draw(figure, few, tmp_path / "few")
    seconds, svg = _draw(figure, many, tmp_path / "many")
    # One artist per event took two minutes and 18 MB here; aggregated, the cost is the figure's own.
    assert seconds < max(5.0, 2 * few_seconds + 1.0), f"{seconds:.1f} s against {few_seconds:.1f} s for 3 events"
    assert svg < 2_000_000 and svg < few_svg + 500_000, f"{svg:,} bytes against {few_svg:,} for 3 events"


def test_many_events_are_counted_and_only_the_key_ones_labelled(many):
    fig = run_figure(_series(many), many)
    assert "20,000 events" in fig.axes[-1].get_xlabel()
    labels = _labels(fig.axes[0])
    assert labels[0].endswith("(first)") and labels[0].startswith("reboot")
    assert "reboot 40% (largest of 19,960)" in labels
    assert "outage 10s (largest of 40)" in labels
    for ax in fig.axes:
        assert len(_event_lines(ax)) <= 3                         # the first and the largest of each kind
        gids = [c.get_gid() for c in ax.collections]
        assert gids.count("events:strip") == 1 and gids.count("events:bands") == 1
    strip = next(c for c in fig.axes[0].collections if c.get_gid() == "events:strip")
    assert len(strip.get_paths()) == 2                            # grey (reboots) and red (outages)


def test_three_events_are_each_marked_and_labelled_as_before():
    s = _scenario(['at = "5m"\nkind = "reboot"\nfraction = 0.1',
                   'at = "20m"\nkind = "outage"\nduration = "2m"',
                   'at = "40m"\nkind = "admit"\nfraction = 0.2'])
    fig = run_figure(_series(s), s)
    assert _labels(fig.axes[0]) == ["reboot 10%", "outage 2m", "admit 20%"]
    for ax in fig.axes:
        assert _event_lines(ax) == ["event:reboot", "event:outage", "event:admit"]
        assert not any(str(c.get_gid()).startswith("events:") for c in ax.collections)
    assert "events" not in fig.axes[-1].get_xlabel()


@pytest.mark.parametrize("n, aggregated", [(MAX_MARKS, False), (MAX_MARKS + 1, True)])
def test_marks_are_aggregated_beyond_max_marks(n, aggregated):
    s = _scenario([f'at = {60 + 100 * k}\nkind = "reboot"\nfraction = 0.01' for k in range(n)])
    ax = run_figure(_series(s), s).axes[0]
    assert len(_event_lines(ax)) == (1 if aggregated else n)     # all reboots equal: the first is the largest
    assert (f"{n:,} events" in ax.figure.axes[-1].get_xlabel()) == aggregated


def test_key_marks_are_the_first_and_the_largest_of_each_kind():
    marks = [EventMark(0, 0, "reboot", "reboot 1%", 0.01), EventMark(10, 10, "reboot", "reboot 30%", 0.3),
             EventMark(20, 20, "reboot", "reboot 30%", 0.3), EventMark(30, 40, "outage", "outage 10s"),
             EventMark(50, 70, "outage", "outage 20s"), EventMark(80, 80, "failover", "failover x1")]
    assert [(m.start, m.label) for m in key_marks(marks)] == [
        (0, "reboot 1% (first)"), (50, "outage 20s (largest of 2)"), (80, "failover x1"),
        (10, "reboot 30% (largest of 3)")]


def test_bands_merge_so_their_number_is_bounded():
    outages = [EventMark(a, a + 5.0, "outage", "outage 5s") for a in np.linspace(0, 3600, 20_000)]
    gap = 3600 / STRIP_BINS
    bands = merged_bands(outages + [EventMark(100, 200, "surge", "surge")], gap)
    assert bands == [(0.0, 3605.0, "outage"), (100, 200, "surge")]
    apart = [EventMark(a, a + 1.0, "outage", "outage 1s") for a in np.arange(0, 3600, 2 * gap)]
    assert len(merged_bands(apart, gap)) == len(apart) <= STRIP_BINS
