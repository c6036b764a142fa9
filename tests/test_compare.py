"""`compare`: variants from the command line, ranking with CIs, stories where the winner is known.

The storms here are small (hundreds of clients, minutes of simulated time) so that every run
takes well under a few seconds; the policies' ordering on them follows from reasoning, not
from golden numbers.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
from typer.testing import CliRunner

from sim.cli import app
from sim.compare import (
    CSV_FIELDS, VariantResult, build_variants, closing_line, compare, rank, table_rows, tied, to_json,
)
from sim.config import ScenarioError, load_scenario
from sim.overrides import Variant, parse_variant
from sim.policies import policy_names
from sim.runner import combine, simulate

# One reboot wave of every client at once against a tier that serves 50 logins/s: the queue
# (FIFO, unlimited, no cancel) soon holds more than a 1 s timeout's worth of work, so workers
# serve requests whose clients already left (wasted work) and the timed-out clients retry.
# `none` retries at once and keeps the queue full of dead requests for good (metastable);
# plain `exponential` sends each cohort back at the same instants (1 s, 2 s, 4 s, ... after its
# timeout), so every retry wave meets a queue it fills itself; `full-jitter` spreads the same
# retries uniformly below that envelope and drains the queue soonest (Brooker, "Exponential
# Backoff And Jitter", AWS Architecture Blog, 2015).
STORM = """
name = "storm"
duration = "8m"
seed = 7
resolution = "10s"
warmup = "6m"

[population]
clients = 400

[client]
timeout = "1s"
policy = { name = "exponential", base = "1s", cap = "1m" }

[server]
workers = 1
service_time = "20ms"

[[events]]
at = "30s"
kind = "reboot"
fraction = 1.0
spread = { dist = "uniform", low = "0s", high = "2s" }
downtime = "10s"
"""

# A tier with ~200 logins/s and a reboot of half the clients spread over a minute (~2 logins/s):
# nobody waits anywhere near the 5 s timeout, so the policy never acts.
CALM = """
name = "calm"
duration = "5m"
seed = 3
resolution = "10s"

[population]
clients = 200

[client]
timeout = "5s"
policy = { name = "exponential", base = "1s", cap = "1m" }

[server]
workers = 4
service_time = { dist = "exponential", mean = "20ms" }

[[events]]
at = "30s"
kind = "reboot"
fraction = 0.5
spread = { dist = "uniform", low = "0s", high = "60s" }
downtime = { dist = "uniform", low = "5s", high = "15s" }
"""

runner = CliRunner()


@pytest.fixture
def storm(tmp_path):
    path = tmp_path / "storm.toml"
    path.write_text(STORM)
    return path


@pytest.fixture
def calm(tmp_path):
    path = tmp_path / "calm.toml"
    path.write_text(CALM)
    return path


# --- variants from the command line ---------------------------------------------------------

def test_policies_all_shared_base_and_cap():
    variants = build_variants(["all"], [], base="2s", cap="5m")
    assert [v.name for v in variants] == policy_names()
    assert variants[0].sets == ("client.policy.name=none", "client.policy.base=2s", "client.policy.cap=5m")


def test_policy_lists_keep_order_and_drop_repeats():
    variants = build_variants(["full-jitter", "none,full-jitter", " exponential "], [])
    assert [v.name for v in variants] == ["full-jitter", "none", "exponential"]


def test_policies_cross_variants():
    variants = build_variants(["none", "full-jitter"], ["fifo=server.discipline=fifo", "lifo=server.discipline=lifo"])
    assert [v.name for v in variants] == ["none+fifo", "none+lifo", "full-jitter+fifo", "full-jitter+lifo"]
    assert variants[3].sets == ("client.policy.name=full-jitter", "server.discipline=lifo")


def test_variant_spec_splits_on_commas_outside_brackets_and_quotes():
    v = parse_variant('slow = server.workers=2, client.connect_delay={dist="uniform",low=0,high=5},'
                      'name="a,b"')
    assert v == Variant("slow", ("server.workers=2", 'client.connect_delay={dist="uniform",low=0,high=5}',
                                 'name="a,b"'))
    assert parse_variant("as-is=") == Variant("as-is", ())


@pytest.mark.parametrize("policies, specs, message", [
    ([], [], "nothing to compare"),
    (["fulljitter"], [], "unknown policy 'fulljitter'; did you mean 'full-jitter'?"),
    ([], ["lifo"], "--variant: expected NAME=KEY=VALUE"),
    ([], ["=server.workers=3"], "--variant: expected NAME=KEY=VALUE"),
    ([], ["x=server.workers"], "--variant x: expected KEY=VALUE such as server.workers=8, got 'server.workers'"),
    ([], ["a=server.workers=3", "a=server.workers=4"], "variant names must differ; given twice: a"),
])
def test_bad_requests_say_what_is_wrong(policies, specs, message):
    with pytest.raises(ValueError) as info:
        build_variants(policies, specs)
    assert message in str(info.value)


def test_bad_override_fails_before_running_and_names_the_variant(storm):
    variants = build_variants([], ["ok=server.workers=2", "typo=server.discipline=lilo"])
    with pytest.raises(ScenarioError) as info:
        compare(storm, variants, replications=2)
    assert "(variant typo)" in info.value.source
    assert "did you mean 'lifo'?" in str(info.value)


# --- ranking and what it says ------------------------------------------------------------------

def _result(name: str, recovery: list[float | None], amplification: list[float]) -> VariantResult:
    runs = [{"recovery_s": {"p90": r, "p99": r}, "amplification": a, "metastable": r is None,
             "peak_offered_rps": 100.0, "wasted_work_fraction": 0.5} for r, a in zip(recovery, amplification)]
    return VariantResult(Variant(name, ()), combine(runs), {})


def test_separate_cis_give_a_winner_and_by_how_much():
    ranked = rank([_result("slow", [300, 310, 320], [5, 5, 5]), _result("fast", [100, 101, 102], [4, 4.1, 4.2])])
    assert [r.name for r in ranked] == ["fast", "slow"] and [r.rank for r in ranked] == [1, 2]
    assert not tied(*ranked) and ranked[0].tied_with == []
    assert closing_line(ranked) == ("best: fast — back to 99 % online 1m41s after the first event; "
                                    "3.1x faster than slow (next); 4.1 vs 5 attempts per episode")


def test_overlapping_cis_are_a_tie_not_a_win():
    ranked = rank([_result("a", [100, 150, 200], [3, 3, 3]), _result("b", [140, 160, 180], [9, 9, 9])])
    assert tied(*ranked) and ranked[0].tied_with == [ranked[1].name]
    assert closing_line(ranked).startswith("no winner: both variants are tied (95 % CIs of the time back to "
                                           "99 % online overlap)")


def test_tied_leaders_are_named_and_only_a_variant_behind_all_of_them_is_called_behind():
    ranked = rank([_result("d", [900, 910, 920], [9, 9, 9]), _result("a", [100, 101, 102], [3, 3, 3]),
                   _result("b", [80, 130, 180], [3, 3, 3]), _result("c", [170, 171, 172], [3, 3, 3])])
    assert [r.name for r in ranked] == ["a", "b", "c", "d"]
    assert ranked[0].tied_with == ["b"] and ranked[1].tied_with == ["a", "c"]  # a beats c; b overlaps both
    assert closing_line(ranked) == ("no single winner: a and b are tied (95 % CIs of the time back to 99 % online "
                                    "overlap); both clearly ahead of d (back to 99 % online 15m10s after the "
                                    "first event)")


def test_a_run_that_never_recovered_sorts_last_and_says_so():
    # The unlucky variant was fastest whenever it recovered; one replication that never did is worse.
    ranked = rank([_result("unlucky", [10, None, 12], [2, 2, 2]), _result("steady", [300, 310, 320], [5, 5, 5])])
    assert [r.name for r in ranked] == ["steady", "unlucky"] and not tied(*ranked)
    headers, rows = table_rows(ranked)
    assert rows[1][headers.index("recovery 99 %")] == "never in 1/3 runs"
    assert "unlucky (next) was not back to 99 % online in 1 of 3 runs" in closing_line(ranked)


def test_never_recovered_ones_rank_by_share_then_amplification():
    ranked = rank([_result("none", [None] * 3, [360, 365, 370]), _result("constant", [None] * 3, [100, 101, 102]),
                   _result("half", [None, 50, 60], [400, 400, 400])])
    assert [r.name for r in ranked] == ["half", "constant", "none"]
    assert not tied(ranked[1], ranked[2])  # amplification CIs far apart


def test_one_replication_has_no_ci_so_no_winner():
    ranked = rank([_result("a", [100], [3]), _result("b", [900], [30])])
    assert [r.name for r in ranked] == ["a", "b"] and tied(*ranked)
    assert closing_line(ranked) == ("no winner: both variants are tied (95 % CIs of the time back to 99 % online "
                                    "overlap); one replication per variant has no confidence interval: run 3 or more")


# --- stories --------------------------------------------------------------------------------------

def test_storm_full_jitter_beats_no_backoff_and_plain_exponential(storm):
    variants = build_variants(["none", "exponential", "full-jitter"], [], base="1s", cap="1m")
    ranked = compare(storm, variants, replications=3, jobs=2).results
    by_name = {r.name: r for r in ranked}
    assert ranked[0].name == "full-jitter"
    assert not tied(by_name["full-jitter"], by_name["exponential"])
    assert not tied(by_name["full-jitter"], by_name["none"])
    # no backoff keeps the queue full of dead requests: never back, in any replication
    assert ranked[-1].name == "none" and by_name["none"].recovered_runs() == 0
    assert by_name["none"].summary["metastable_share"] == 1.0
    assert by_name["exponential"].recovered  # plain exponential does recover, only later
    assert closing_line(ranked).startswith("best: full-jitter — back to 99 % online")
    assert "faster than exponential (next)" in closing_line(ranked)


def test_calm_scenario_every_policy_ties(calm):
    variants = build_variants(["none", "exponential", "full-jitter", "decorrelated-jitter"], [])
    ranked = compare(calm, variants, replications=3, jobs=1).results
    assert all(r.summary["timeouts"] == 0 and r.summary["amplification"] == 1 for r in ranked)
    assert all(len(r.tied_with) == len(ranked) - 1 for r in ranked)
    assert closing_line(ranked).startswith("no winner: all 4 variants are tied")


def test_each_variant_runs_the_seeds_simulate_would(storm):
    """Common random numbers: replication k of every variant is `simulate`'s replication k."""
    comparison = compare(storm, build_variants(["full-jitter"], []), replications=3, jobs=1)
    alone = simulate(load_scenario(storm, sets=["client.policy.name=full-jitter"]), replications=3)
    assert _without_wallclock(comparison.results[0].summary["runs"]) == \
        _without_wallclock([r.summary for r in alone.runs])


# --- the command --------------------------------------------------------------------------------

def test_cli_writes_the_files_in_ranked_order_and_parallel_equals_serial(storm, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", str(storm), "--policy", "exponential", "--policy", "full-jitter",
                                 "--base", "1s", "--cap", "1m", "--replications", "3", "--jobs", "2",
                                 "--out", str(out)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in ("compare.json", "compare.csv", "compare.png", "compare.svg", "compare.html"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "compare.json").read_text())
    order = [v["name"] for v in data["variants"]]
    assert order == ["full-jitter", "exponential"] and [v["rank"] for v in data["variants"]] == [1, 2]
    table_lines = [line for line in result.stdout.splitlines() if "jitter" in line or "exponential" in line]
    assert [("full-jitter" if "full-jitter" in line else "exponential") for line in table_lines[:2]] == order
    assert data["closing"] in " ".join(result.stdout.split())
    with (out / "compare.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_FIELDS) and [row["variant"] for row in rows] == order
    p99 = [float(row["recovery_p99_s"]) for row in rows]
    assert p99 == sorted(p99) and all(math.isfinite(x) for x in p99)
    html = (out / "compare.html").read_text()
    assert data["closing"].split(";")[0] in html and 'href="compare.json"' in html and "base64," in html
    serial = compare(storm, build_variants(["exponential", "full-jitter"], [], "1s", "1m"), replications=3, jobs=1)
    assert _without_wallclock(to_json(serial)) == _without_wallclock(data)


@pytest.mark.parametrize("args, message", [
    ([], "nothing to compare"),
    (["--policy", "fulljitter"], "did you mean 'full-jitter'?"),
    (["--variant", "nonsense"], "expected NAME=KEY=VALUE"),
    (["--variant", "typo=server.discipline=lilo"], "(variant typo): server.discipline"),
    (["--policies", "none", "--base", "soon"], "expected a duration"),
])
def test_cli_bad_input_exits_2_with_a_message(storm, args, message):
    result = runner.invoke(app, ["compare", str(storm), *args], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def _without_wallclock(value):
    if isinstance(value, dict):
        return {k: _without_wallclock(v) for k, v in value.items() if k != "wallclock_s"}
    if isinstance(value, list):
        return [_without_wallclock(v) for v in value]
    return value


def test_engine_choice_reaches_every_run():
    variants = build_variants(["none,full-jitter"], [])
    fast = compare("quickstart", variants, until=600.0, replications=2, jobs=1, engine="fast")
    des = compare("quickstart", variants, until=600.0, replications=2, jobs=1, engine="des")
    assert {r.summary["engine"] for r in fast.results} == {"fast"}
    assert {r.summary["engine"] for r in des.results} == {"des"}
    assert [r.variant.name for r in fast.results] == [r.variant.name for r in des.results]  # the same ranking
