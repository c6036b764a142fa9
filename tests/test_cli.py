"""The CLI through Typer's runner: exit codes, messages on stderr, no tracebacks, --set/--scale."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sim import __version__
from sim.cli import app
from sim.config import shipped_scenarios
from sim.policies import make_policy, policy_names

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_validate_all_shipped_scenarios():
    paths = [str(p) for p in shipped_scenarios()]
    result = invoke("validate", *paths)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 * len(paths)  # the scenario, then what it needs
    assert all(": ok  " in line for line in lines[::2])
    assert all(re.fullmatch(r"  needs ~[\d.]+ [kMGT]?B, ~[\d.]+( [kMG])? attempts, ~\S+ (s|min|h|d) on the (des|fast) "
                            r"engine", line) for line in lines[1::2]), lines[1::2]


def test_validate_by_shipped_name():
    result = invoke("validate", "quickstart")
    assert result.exit_code == 0 and "quickstart: 5,000 clients" in result.stdout


def test_typo_gives_one_line_with_suggestion_and_exit_2(tmp_path):
    text = (shipped_scenarios()[0].read_text()).replace("[server]\n", "[server]\nworkrs = 3\n", 1)
    bad = tmp_path / "typo.toml"
    bad.write_text(text)
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    assert result.stdout == ""
    problem, hint = result.stderr.strip().splitlines()
    assert problem == f"{bad}: server.workrs: unknown key 'workrs'; did you mean 'workers'? " \
                      "(valid keys: workers, service_time, queue_limit, discipline, drop_expired, " \
                      "cancel_on_timeout, reject_cost, retry_after, retry_after_from, retry_after_max, rate_limit, " \
                          "overload, concurrency, codel, resume, p2p, fault_rate, fault_when)"
    assert hint == "(every key of a scenario, its unit and default: docs/model.md section 2)"
    assert "Traceback" not in result.output


def test_some_bad_some_good_files_exit_2_and_report_both(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nduration = "1h"\n')
    result = invoke("validate", "quickstart", str(bad))
    assert result.exit_code == 2
    assert "quickstart: ok" in result.stdout and "server: missing required key" in result.stderr


TARGET = """[target]
host = "http://127.0.0.1:8000"
flow = "form"
path = "/accounts/login/"
fields = { username = "username", password = "password", csrf = "csrfmiddlewaretoken" }
success = { status = [302] }
"""


def test_validate_checks_a_standalone_target_file(tmp_path):
    good = tmp_path / "target.toml"
    good.write_text(TARGET)
    result = invoke("validate", str(good), "quickstart")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first == f"{good}: ok  target: form flow at http://127.0.0.1:8000/accounts/login/, success: HTTP 302"
    assert len(result.stdout.splitlines()) == 3  # the target in one line; quickstart and what it needs
    assert "quickstart: ok  quickstart: 5,000 clients" in result.stdout


@pytest.mark.parametrize("change, message", [
    (('flow = "form"', 'flow = "fomr"'), "target.flow: expected one of"),
    (("success = { status = [302] }", 'success = { status = ["302"] }'), "target.success.status.0: expected a whole"),
    (('path = "/accounts/login/"', 'path = "/accounts/login/"\nbogus = 1'), "target.bogus: unknown key 'bogus'"),
    (('path = "/accounts/login/"', 'path = "/accounts/login/"\npassword = "Hunter2-no-echo"'),
     "target.password: a secret may only be given as an environment reference"),
    (("http://127.0.0.1:8000", "http://auth.example.com"), "target.host: 'auth.example.com' is not in "
                                                            "target.allowed_hosts (empty); loopback is always allowed"),
    (("fields =", "[targett]\nfields ="), "targett: unknown key 'targett'; did you mean 'target'?"),  # a scenario
], ids=["flow", "status", "unknown-key", "secret", "host", "not-a-target-file"])
def test_validate_locates_a_target_files_problems_and_never_echoes_a_secret(tmp_path, change, message):
    bad = tmp_path / "target.toml"
    bad.write_text(TARGET.replace(*change))
    result = invoke("validate", str(bad))
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.output
    assert f"{bad}: {message}" in result.stderr, result.stderr
    assert "Hunter2" not in result.output


def test_missing_file_exit_2():
    result = invoke("validate", "does/not/exist.toml")
    assert result.exit_code == 2 and "does/not/exist.toml: no such file" in result.stderr


def test_set_and_scale_change_the_resolved_scenario():
    result = invoke("validate", "quickstart", "--set", "server.workers=80", "--set",
                    "client.policy.name=full-jitter", "--scale", "0.5", "--show")
    assert result.exit_code == 0, result.output
    summary, _, rest = result.stdout.partition("\n")
    needs, _, dumped = rest.partition("\n")
    assert needs.startswith("  needs ~")
    assert "2,500 clients" in summary and "40 workers" in summary and "full-jitter" in summary
    resolved = json.loads(dumped)
    assert resolved["server"]["workers"] == 40
    assert resolved["population"]["clients"] == 2_500
    assert resolved["client"]["policy"]["name"] == "full-jitter"


def test_bad_set_and_bad_scale_exit_2():
    result = invoke("validate", "quickstart", "--set", "server.discipline=lilo")
    assert result.exit_code == 2 and "did you mean 'lifo'?" in result.stderr and "(from --set)" in result.stderr
    result = invoke("validate", "quickstart", "--set", "nonsense")
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.stderr
    result = invoke("validate", "quickstart", "--scale", "0")
    assert result.exit_code == 2 and "--scale" in result.stderr


def test_scenarios_lists_every_shipped_file():
    result = invoke("scenarios")
    assert result.exit_code == 0
    for path in shipped_scenarios():
        assert path.stem in result.stdout


def test_policies_table_shows_every_policy_and_its_means():
    result = runner.invoke(app, ["policies", "--base", "1s", "--cap", "5m"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in policy_names():
        assert name in result.stdout
    # the exponential row shows its closed-form means, computed here independently
    row = [line for line in result.stdout.splitlines() if "│ exponential " in line][-1]
    cells = [c.strip() for c in row.split("│")[2:-1]]
    assert cells[:4] == ["1s", "2s", "4s", "8s"]
    assert make_policy("exponential", base=1, cap=300).mean_delay(8) == 256
    assert cells[8] == "4m16s" and cells[9] == "5m"  # 512 s capped at 5 minutes


def test_policies_bad_option_exit_2():
    result = invoke("policies", "--base", "soon")
    assert result.exit_code == 2 and "duration" in result.output
    result = invoke("policies", "--base", "10s", "--cap", "1s")
    assert result.exit_code == 2 and "cap" in result.stderr


def test_console_script_runs_in_a_subprocess():
    """The installed entry point, as a user runs it: no traceback, exit 2 on bad input."""
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "validate", "nope.toml"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nope.toml: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["validate", "scenarios", "policies", "simulate"])
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_the_load_test_commands_arrive_through_the_entry_point_after_the_simulators():
    """sim.cli names no load-test command: they come from `loginstorm.commands` (loadtests.cli)."""
    from typer.main import get_command
    assert get_command(app).list_commands(None) == ["validate", "scenarios", "policies", "simulate", "compare",
                                                   "sweep", "threshold", "lab", "loadtest", "calibrate"]


def test_the_load_test_commands_work_when_loadtests_is_imported_first():
    """loadtests.cli imports sim.cli, whose app adds loadtests.cli's commands: no import cycle either way."""
    code = "import loadtests.cli, sim.cli, typer.main; print(typer.main.get_command(sim.cli.app).list_commands(None))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "'loadtest'" in proc.stdout and "'calibrate'" in proc.stdout


def test_simulate_writes_summary_and_timeseries(tmp_path):
    out = tmp_path / "run"
    result = invoke("simulate", "quickstart", "--out", str(out), "--until", "20m", "--set", "population.clients=2000")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    from sim.metrics import SUMMARY_FIELDS, STEADY_FIELDS
    assert set(SUMMARY_FIELDS) <= set(summary) and set(STEADY_FIELDS) == set(summary["steady"])
    assert summary["duration_s"] == 1200 and summary["engine"] == "des" and summary["clients"] == 2000
    rows = (out / "timeseries.csv").read_text().splitlines()
    from sim.record import COLUMNS
    assert rows[0].split(",") == list(COLUMNS)
    assert len(rows) - 1 == 1200 / 30  # quickstart's resolution is 30 s
    assert sum(int(r.split(",")[5]) for r in rows[1:]) == summary["attempts"]
    assert f"wrote {out / 'summary.json'}" in result.stdout and "logins in" in result.stdout


def test_simulate_json_matches_file_and_seed_changes_it(tmp_path):
    args = ("simulate", "quickstart", "--until", "15m", "--set", "population.clients=1000", "--json", "-q")
    first = invoke(*args, "--out", str(tmp_path / "a"))
    again = invoke(*args, "--out", str(tmp_path / "b"))
    other = invoke(*args, "--out", str(tmp_path / "c"), "--seed", "99")
    assert first.exit_code == again.exit_code == other.exit_code == 0
    a, b, c = (json.loads(r.stdout) for r in (first, again, other))
    for d in (a, b, c):
        d.pop("wallclock_s")
    assert a == b and a != c
    assert first.stderr == ""  # --quiet
    assert (tmp_path / "a" / "timeseries.csv").read_text() == (tmp_path / "b" / "timeseries.csv").read_text()


def test_simulate_replications_give_means_and_intervals(tmp_path):
    result = invoke("simulate", "quickstart", "--until", "15m", "--set", "population.clients=1000",
                    "--replications", "4", "--json", "-q", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["replications"] == 4 and len(s["runs"]) == 4
    medians = [r["login_time_s"]["p50"] for r in s["runs"]]
    assert len(set(medians)) == 4, "replications must use different seeds"
    assert s["login_time_s"]["p50"] == pytest.approx(sum(medians) / 4)
    lo, hi = s["ci95"]["login_time_s"]["p50"]
    assert lo <= s["login_time_s"]["p50"] <= hi and hi > lo
    import statistics
    half = 3.182 * statistics.stdev(medians) / 2  # t(0.975, 3) * sd / sqrt(4)
    assert hi - s["login_time_s"]["p50"] == pytest.approx(half)
    assert s["clients"] == 1000 and s["scenario"] == "quickstart"  # equal in every run: kept as is


def test_simulate_every_key_with_supernodes(tmp_path):
    result = invoke("simulate", "every-key", "--until", "20m", "--out", str(tmp_path), "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["duration_s"] == 1200.0
    with (tmp_path / "timeseries.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # the supernode slots are part of the workers: workers - supernodes * slots is the dedicated tier
    assert float(rows[0]["supernodes"]) > 0


def test_simulate_skype_at_full_size_picks_fast_and_reports_its_warm_up_apart(tmp_path):
    """7 M clients: auto takes the fast engine and says so; the compiled code's load (or first
    compile) is a line of its own, and the run's wallclock_s leaves it out."""
    result = invoke("simulate", "skype-2007", "--until", "2m", "--out", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["engine"] == "fast" and summary["clients"] == 7_000_000
    assert "engine auto: fast for 7,000,000 clients" in result.stderr
    ready = re.search(r"fast engine ready in ([0-9.]+) s \((loaded from numba's cache|compiled)", result.stderr)
    assert ready and "not part of wallclock_s" in result.stderr
    from sim import fast
    assert (ready[2] == "compiled") == bool(fast.advance.stats.cache_misses)     # says which of the two it was


def test_simulate_until_past_the_end_says_where_the_run_ends(tmp_path):
    result = invoke("simulate", "quickstart", "--until", "2h", "--out", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert "--until 2h is past the scenario's duration: the run ends at 1h" in result.stderr
    assert json.loads(result.stdout)["duration_s"] == 3600


def test_simulate_bad_input_exit_2(tmp_path):
    assert invoke("simulate", "quickstart", "--until", "soon").exit_code == 2
    result = invoke("simulate", "quickstart", "--engine", "warp", "--out", str(tmp_path))
    assert result.exit_code == 2 and "unknown engine" in result.stderr
    result = invoke("simulate", "quickstart", "--set", "server.workers=-3")
    assert result.exit_code == 2 and "server.workers: must be >= 0" in result.stderr
