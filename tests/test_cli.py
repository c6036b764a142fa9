"""The CLI through Typer's runner: exit codes, messages on stderr, no tracebacks, --set/--scale."""

from __future__ import annotations

import json
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
    assert len(lines) == len(paths)
    assert all(": ok  " in line for line in lines)


def test_validate_by_shipped_name():
    result = invoke("validate", "quickstart")
    assert result.exit_code == 0 and "quickstart: 20,000 clients" in result.stdout


def test_typo_gives_one_line_with_suggestion_and_exit_2(tmp_path):
    text = (shipped_scenarios()[0].read_text()).replace("[server]\n", "[server]\nworkrs = 3\n", 1)
    bad = tmp_path / "typo.toml"
    bad.write_text(text)
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip() == f"{bad}: server.workrs: unknown key 'workrs'; did you mean 'workers'? " \
                                    "(valid keys: workers, service_time, queue_limit, discipline, drop_expired, " \
                                    "cancel_on_timeout, reject_cost, retry_after, rate_limit, overload, p2p)"
    assert "Traceback" not in result.output


def test_some_bad_some_good_files_exit_2_and_report_both(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nduration = "1h"\n')
    result = invoke("validate", "quickstart", str(bad))
    assert result.exit_code == 2
    assert "quickstart: ok" in result.stdout and "server: missing required key" in result.stderr


def test_missing_file_exit_2():
    result = invoke("validate", "does/not/exist.toml")
    assert result.exit_code == 2 and "does/not/exist.toml: no such file" in result.stderr


def test_set_and_scale_change_the_resolved_scenario():
    result = invoke("validate", "quickstart", "--set", "server.workers=80", "--set",
                    "client.policy.name=full-jitter", "--scale", "0.5", "--show")
    assert result.exit_code == 0, result.output
    summary, _, dumped = result.stdout.partition("\n")
    assert "10,000 clients" in summary and "40 workers" in summary and "full-jitter" in summary
    resolved = json.loads(dumped)
    assert resolved["server"]["workers"] == 40
    assert resolved["population"]["clients"] == 10_000
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
