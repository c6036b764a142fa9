"""95 % CIs of non-negative quantities never go below zero, shares stay in [0, 1], and a tie
that only few replications make (every run of one variant beat every run of the other) says so.

The expected intervals are computed here from closed forms, not from `sim.runner`'s table: the
Student t quantile t(p, 1) is the Cauchy quantile tan(pi (p - 1/2)), and
t(p, 2) = (2p - 1) / sqrt(2 p (1 - p)).
"""

from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pytest
from typer.testing import CliRunner

import sim.cli
from sim.compare import VariantResult, closing_line, rank, runs_apart, table_rows, tied
from sim.overrides import Variant
from sim.runner import combine

T975 = {1: math.tan(math.pi * 0.475), 2: 0.95 / math.sqrt(2 * 0.975 * 0.025)}


def plain_t(values: list[float]) -> tuple[float, float]:
    """The textbook t-interval of the mean, for R = 2 or 3."""
    mean = statistics.fmean(values)
    half = T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def interval(field: str, values: list[float]) -> tuple[float, float, float]:
    """combine()'s mean and 95 % CI of one field over runs that hold only it (and `metastable`)."""
    combined = combine([{field: v, "metastable": False} for v in values])
    low, high = combined["ci95"][field]
    return low, combined[field], high


# --- the interval -------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [[1.0, 100.0], [0.0, 40.0], [3.0, 5.0, 400.0], [1785.0, 20.0]])
def test_non_negative_quantity_interval_is_the_t_interval_cut_at_zero(values):
    t_low, t_high = plain_t(values)
    assert t_low < 0  # the plain t-interval would go below zero: these samples test the cut
    low, mean, high = interval("amplification", values)
    assert low == 0.0 and high == pytest.approx(t_high, rel=1e-3)  # sim's t table has 4 digits
    assert low <= mean <= high and mean == pytest.approx(statistics.fmean(values))


def test_an_interval_inside_the_range_is_the_plain_t_interval():
    values = [100.0, 110.0, 130.0]
    low, mean, high = interval("recovery_p99", values)
    assert (low, high) == pytest.approx(plain_t(values), rel=1e-3)
    assert high - mean == pytest.approx(mean - low)  # still centred on the mean


@pytest.mark.parametrize("field, values", [
    ("wasted_work_fraction", [0.90, 0.99]),
    ("lowest_online_share", [0.01, 0.5]),
    ("wasted_work_fraction", [0.0, 1.0, 1.0]),
])
def test_shares_stay_between_zero_and_one(field, values):
    t_low, t_high = plain_t(values)
    assert t_low < 0 or t_high > 1
    low, mean, high = interval(field, values)
    assert 0.0 <= low <= mean <= high <= 1.0
    assert low == pytest.approx(max(t_low, 0.0), rel=1e-3, abs=1e-12)
    assert high == pytest.approx(min(t_high, 1.0), rel=1e-3)


def test_nested_shares_stay_below_one():
    runs = [{"steady": {"utilization": u, "p_wait": u}, "metastable": False} for u in (0.9, 0.999)]
    ci = combine(runs)["ci95"]["steady"]
    assert ci["utilization"][1] == 1.0 and ci["p_wait"][1] == 1.0


def test_a_quantity_seen_below_zero_keeps_the_plain_t_interval():
    values = [-5.0, 5.0]
    low, _, high = interval("drift", values)
    assert (low, high) == pytest.approx(plain_t(values), rel=1e-3)


def test_one_replication_has_no_interval():
    assert interval("amplification", [3.0])[::2] == (-math.inf, math.inf)


@pytest.mark.parametrize("replications", [2, 3])
def test_the_cut_keeps_the_t_intervals_coverage_of_a_skewed_mean(replications):
    """Exponential service-like samples (mean 1): the cut interval holds the true mean exactly as
    often as the plain t-interval does, and about 95 % of the time."""
    rng = np.random.default_rng(18)
    hits = plain_hits = 0
    trials = 2000
    for _ in range(trials):
        values = list(rng.exponential(1.0, replications))
        low, _, high = interval("recovery_p99", values)
        t_low, t_high = plain_t(values)
        assert low >= 0
        hits += low <= 1.0 <= high
        plain_hits += t_low <= 1.0 <= t_high
    assert hits == plain_hits
    assert 0.85 < hits / trials < 0.99


# --- ties that more replications would likely break ---------------------------------------------

def result(name: str, recovery: list[float | None], amplification: list[float]) -> VariantResult:
    runs = [{"recovery_s": {"p90": r, "p99": r}, "amplification": a, "metastable": r is None,
             "peak_offered_rps": 100.0, "wasted_work_fraction": 0.5} for r, a in zip(recovery, amplification)]
    return VariantResult(Variant(name, ()), combine(runs), {})


def test_five_times_slower_in_both_runs_is_tied_at_two_replications_but_says_to_run_more():
    ranked = rank([result("a", [500, 560], [5, 5]), result("b", [100, 110], [3, 3])])
    assert [r.name for r in ranked] == ["b", "a"] and tied(*ranked)  # t(1) = 12.7: the CIs overlap
    assert runs_apart(*ranked) is ranked[0]
    assert closing_line(ranked) == (
        "no winner: both variants are tied (95 % CIs of the time back to 99 % online overlap); tied at R = 2, "
        "but every run of b beat every run of a: run --replications 5 or more to separate them")
    headers, rows = table_rows(ranked)
    assert rows[0][headers.index("tied with")] == "a (runs apart from a: --replications 5 would likely separate them)"


def test_overlapping_runs_at_ten_replications_give_no_hint():
    slow = [100, 190, 120, 180, 140, 160, 130, 170, 150, 150]
    quick = [95, 185, 115, 175, 135, 155, 125, 165, 145, 145]
    ranked = rank([result("slow", slow, [4] * 10), result("quick", quick, [4] * 10)])
    assert tied(*ranked) and runs_apart(*ranked) is None
    assert closing_line(ranked) == ("no winner: both variants are tied "
                                    "(95 % CIs of the time back to 99 % online overlap)")
    headers, rows = table_rows(ranked)
    assert rows[0][headers.index("tied with")] == "slow"


@pytest.mark.parametrize("replications, hint", [(5, True), (6, False)])
def test_the_hint_stops_above_five_replications(replications, hint):
    """Runs apart (max 400 < min 401) with CIs that still overlap, thanks to one outlier each."""
    quick = [100.0] * (replications - 1) + [400.0]
    slow = [401.0] * (replications - 1) + [1500.0]
    ranked = rank([result("slow", slow, [4] * replications), result("quick", quick, [4] * replications)])
    assert tied(*ranked) and (runs_apart(*ranked) is not None) == hint
    assert ("tied at R =" in closing_line(ranked)) == hint
    if hint:
        assert "every run of quick beat every run of slow: run --replications 10 or more" in closing_line(ranked)


def test_never_recovered_ties_name_the_variant_with_fewer_attempts_in_every_run():
    # `half` ranks first (it recovered in one run); `never` made fewer attempts per episode in every run
    ranked = rank([result("never", [None, None], [100, 150]), result("half", [None, 50], [400, 410])])
    assert [r.name for r in ranked] == ["half", "never"] and tied(*ranked)
    assert closing_line(ranked).endswith("tied at R = 2, but every run of never beat every run of half: "
                                         "run --replications 5 or more to separate them")


def test_one_replication_keeps_its_own_advice():
    ranked = rank([result("a", [100], [3]), result("b", [900], [30])])
    assert closing_line(ranked).endswith("one replication per variant has no confidence interval: run 3 or more")


def test_a_cut_interval_is_shown_as_low_and_high_not_plus_minus():
    ranked = rank([result("wide", [10, 300], [2, 2])])
    headers, rows = table_rows(ranked)
    cell = rows[0][headers.index("recovery 99 %")]
    assert cell.startswith("2m35s [0s, ") and "±" not in cell


# --- end to end -------------------------------------------------------------------------------

NON_NEGATIVE_LOWS = ("recovery_p99_low", "amplification_low")


def test_compare_with_two_replications_writes_no_negative_lows(tmp_path):
    result = CliRunner().invoke(sim.cli.app, [
        "compare", "quickstart", "--replications", "2", "--policy", "none", "--policy", "full-jitter",
        "--until", "10m", "--jobs", "1", "--out", str(tmp_path), "--scale", "0.05"])
    assert result.exit_code == 0, result.output
    with (tmp_path / "compare.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    lows = [name for name in rows[0] if name.endswith("_low")]
    assert set(lows) == set(NON_NEGATIVE_LOWS)  # every low column is of a non-negative quantity
    assert all(float(row[name]) >= 0 for row in rows for name in lows if row[name])
    data = json.loads((tmp_path / "compare.json").read_text())
    for variant in data["variants"]:
        assert all(low is None or low >= 0 for low in _lows(variant["summary"]["ci95"]))


def _lows(ci: dict) -> list[float | None]:
    out: list[float | None] = []
    for value in ci.values():
        out += _lows(value) if isinstance(value, dict) else [value[0]] if isinstance(value, list) else []
    return out
