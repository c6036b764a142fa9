"""Limiters and presets through the command line: policies, simulate, compare and sweep (des engine)."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from sim.cli import app
from sim.presets import PRESETS

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def invoke(*args: str):
    return runner.invoke(app, list(args), env=WIDE)


def test_policies_lists_presets_with_their_sources_and_the_limiters():
    result = invoke("policies")
    assert result.exit_code == 0, result.output
    for name, preset in PRESETS.items():
        assert name in result.stdout
        commit = preset.sources[0].split("@")[1][:12] if "@" in preset.sources[0] else preset.sources[0]
        assert commit in result.stdout
    for kind in ("quota", "throttle", "budget", "adaptive", "breaker"):
        assert f"│ {kind} " in result.stdout
    assert "capacity 500, cost 5, timeout_cost 10" in result.stdout


def test_simulate_counts_what_a_shared_quota_denied(tmp_path):
    out = tmp_path / "run"
    result = invoke("simulate", "quickstart", "--engine", "des", "--until", "20m", "--out", str(out),
                    "--set", "client.policy=aws-sdk-standard", "--set", "client.limiter.scope=shared")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suppressed"] > 0 and summary["short_circuited"] == 0
    assert f"denied {summary['suppressed']:,} retries" in result.stdout
    with (out / "timeseries.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sum(int(r["suppressed"]) for r in rows) == summary["suppressed"]
    # a denied retry ends its episode: every one is a give-up
    assert summary["gave_up"] >= summary["suppressed"]
    assert "aws-sdk-standard = full-jitter" in (out / "report.html").read_text()


def test_a_per_device_quota_does_not_bind_on_one_login_each(tmp_path):
    """AWS's quota starts at 500 tokens per client: 3 attempts (10 tokens at most) never drain it."""
    out = tmp_path / "run"
    result = invoke("simulate", "quickstart", "--engine", "des", "--until", "20m", "--out", str(out),
                    "--set", "client.policy=aws-sdk-standard")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suppressed"] == 0 and "limiter bound" not in result.stdout


def test_compare_ranks_presets_and_limiter_variants(tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", "quickstart", "--engine", "des", "--until", "15m", "--replications", "2",
                    "--out", str(out), "--variant", "fj=client.policy.name=full-jitter",
                    "--variant", "fj+breaker=client.policy.name=full-jitter,client.limiter.kind=breaker,"
                                 "client.limiter.scope=shared,client.limiter.min_calls=20,client.limiter.window=20",
                    "--variant", "aws=client.policy.name=aws-sdk-standard")
    assert result.exit_code == 0, result.output
    assert "retries denied / calls refused locally" in result.stdout
    with (out / "compare.csv").open() as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    assert float(rows["fj+breaker"]["short_circuited"]) > 0
    assert float(rows["fj"]["short_circuited"]) == 0 and float(rows["fj"]["suppressed"]) == 0


def test_compare_takes_presets_by_name_and_all_of_them(tmp_path):
    from sim.overrides import policy_list
    assert policy_list(["presets,full-jitter"]) == list(PRESETS) + ["full-jitter"]
    out = tmp_path / "cmp"
    result = invoke("compare", "quickstart", "--policies", "presets", "--engine", "des", "--until", "6m",
                    "--replications", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    ranked = json.loads((out / "compare.json").read_text())
    assert sorted(v["name"] for v in ranked["variants"]) == sorted(PRESETS)


def test_unknown_preset_in_policies_is_exit_2_with_a_suggestion():
    result = invoke("compare", "quickstart", "--policies", "aws-sdk-standart", "--engine", "des")
    assert result.exit_code == 2
    assert "did you mean 'aws-sdk-standard'" in result.output


def test_sweep_takes_a_limiter_grid_and_presets(tmp_path):
    out = tmp_path / "sw"
    result = invoke("sweep", "quickstart", "--engine", "des", "--until", "10m", "--out", str(out),
                    "--grid", "client.limiter.percent=5,50", "--set", "client.limiter.kind=budget",
                    "--set", "client.limiter.scope=shared", "--policies", "full-jitter", "--quiet")
    assert result.exit_code == 0, result.output
    with (out / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    attempts = {float(r["client.limiter.percent"]): float(r["attempts"]) for r in rows}
    denied = {float(r["client.limiter.percent"]): float(r["suppressed"]) for r in rows}
    assert attempts[5.0] < attempts[50.0]       # a smaller budget lets fewer retries through
    assert denied[5.0] > 0 and denied[50.0] > 0


def test_bad_limiter_key_is_exit_2_naming_it():
    result = invoke("simulate", "quickstart", "--engine", "des", "--set", "client.limiter.kind=quota",
                    "--set", "client.limiter.window=3")
    assert result.exit_code == 2
    assert "client.limiter.window" in result.output and "takes no 'window'" in result.output
