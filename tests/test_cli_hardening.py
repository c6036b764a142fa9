"""The CLI's promises to a new user (issue 18): a bug is exit 1 with one line, every option error
names its option, help shows no Python type names, --quiet changes only what is printed, the
output folder is checked before the run and a finished run is never lost, long runs without a
terminal print progress lines, and the closing lines say only what happened."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sim.cli import app

runner = CliRunner()
QUICK = ["--until", "6m", "--scale", "0.1", "--engine", "des"]


def invoke(*args: str, **kwargs):
    return runner.invoke(app, list(args), **kwargs)


# --- exit codes --------------------------------------------------------------------------

def test_a_value_error_inside_a_run_is_a_bug_exit_1_with_one_line_and_a_hint(monkeypatch, tmp_path):
    import sim.cli.simulate as command

    def broken(*args, **kwargs):
        raise ValueError("maximum supported dimension for an ndarray is 32")

    monkeypatch.setattr(command, "run_simulation", broken)
    result = invoke("simulate", "quickstart", *QUICK, "--out", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "internal error, ValueError: maximum supported dimension" in result.stderr
    assert "--debug" in result.stderr and "Traceback" not in result.output
    debug = invoke("--debug", "simulate", "quickstart", *QUICK, "--out", str(tmp_path))
    assert isinstance(debug.exception, ValueError)  # --debug: the exception itself, for its traceback


def test_bad_input_before_the_runs_stays_exit_2_and_a_bug_after_them_is_exit_1(monkeypatch, tmp_path):
    import sim.compare as library

    bad = invoke("compare", "quickstart", "--variant", "a=server.workers=2", "--variant", "a=server.workers=3",
                 "--out", str(tmp_path))
    assert bad.exit_code == 2 and "variant names must differ" in bad.stderr

    def broken_runs(*args, **kwargs):
        raise ValueError("broken inside the runs")

    monkeypatch.setattr(library, "_run_all", broken_runs)
    result = invoke("compare", "quickstart", "--policy", "none", "--replications", "1", *QUICK, "--jobs", "1",
                    "--out", str(tmp_path))
    assert result.exit_code == 1 and "internal error, ValueError: broken inside the runs" in result.stderr


# --- messages ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, option", [
    (["simulate", "quickstart", "--until", "-5m"], "--until"),
    (["simulate", "quickstart", "--until", "0s"], "--until"),
    (["compare", "quickstart", "--policy", "none", "--until", "soon"], "--until"),
    (["compare", "quickstart", "--policy", "none", "--base", "fast"], "--base"),
    (["compare", "quickstart", "--policy", "none", "--cap", "-1m"], "--cap"),
    (["policies", "--base", "x"], "--base"),
    (["policies", "--cap", "-5m"], "--cap"),
    (["policies", "--base", "0s"], "--base"),
    (["policies", "--base", "10s", "--cap", "1s"], "--cap"),
    (["sweep", "quickstart", "--grid", "server.workers=2", "--until", "-1s"], "--until"),
    (["threshold", "quickstart", "--vary", "server.workers", "--lo", "1", "--hi", "4", "--recovery-limit", "x"],
     "--recovery-limit"),
])
def test_every_option_error_names_its_option(argv, option):
    result = invoke(*argv)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["", "validate", "simulate", "compare", "sweep", "threshold", "policies", "lab",
                                     "loadtest", "calibrate"])
def test_help_shows_no_python_type_names(command):
    result = invoke(*([command] if command else []), "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("<bool>", "<path>", "<str>", "<int>", "<float>", "list[", "{scenario}", "{files}"):
        assert name not in result.stdout, (command, name)


def test_one_worker_and_one_client_are_singular():
    result = invoke("validate", "quickstart", "--set", "server.workers=1", "--set", "population.clients=1")
    assert result.exit_code == 0 and "quickstart: 1 client, 1 worker (" in result.stdout, result.stdout


def test_one_variant_and_one_replication_are_singular(tmp_path):
    result = invoke("compare", "quickstart", "--policy", "none", "--replications", "1", *QUICK, "--jobs", "1",
                    "--out", str(tmp_path), env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "1 variant, 1 replication each" in result.stdout
    assert not re.search(r"\b1 (variants|replications|workers)\b", result.output)


# --- closing lines: stdout, one time format, only what happened -----------------------------

def test_closing_lines_go_to_stdout_and_json_keeps_stdout_machine_readable(tmp_path):
    plain = invoke("simulate", "quickstart", *QUICK, "--out", str(tmp_path / "a"))
    assert plain.exit_code == 0 and "logins in" in plain.stdout and "logins in" not in plain.stderr
    as_json = invoke("simulate", "quickstart", *QUICK, "--out", str(tmp_path / "b"), "--json")
    assert json.loads(as_json.stdout)["scenario"] == "quickstart"
    assert "logins in" in as_json.stderr


def test_one_time_format_in_the_closing_lines(tmp_path):
    result = invoke("simulate", "quickstart", "--until", "20m", "--engine", "des", "--out", str(tmp_path))
    times = re.findall(r"\d+ (?:min|s|h)\b", result.stdout)
    assert result.exit_code == 0 and not times, times  # 5m22s, never "5 min 22 s"
    assert re.search(r"back to 90 % online: \d+m[\d.]+s after the first event", result.stdout)


@pytest.mark.parametrize("sets, said", [
    (["--until", "1ms"], "no event fired before the end of the run"),
    (["--set", "population.clients=0", "--until", "10m"], "no clients"),
    (["--set", "events=[]", "--until", "10m"], "the scenario has no events"),
])
def test_no_recovery_figure_when_nothing_happened(tmp_path, sets, said):
    result = invoke("simulate", "quickstart", "--engine", "des", *sets, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert said in result.stdout and "back to 90 % online" not in result.stdout


# --- --quiet changes only what is printed ---------------------------------------------------

def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_quiet_sweep_writes_the_same_files(tmp_path):
    argv = ["sweep", "quickstart", "--grid", "server.workers=2,3", "--replications", "1", *QUICK, "--jobs", "1"]
    loud = invoke(*argv, "--out", str(tmp_path / "loud"))
    quiet = invoke(*argv, "--out", str(tmp_path / "quiet"), "--quiet")
    assert loud.exit_code == 0 and quiet.exit_code == 0, loud.output + quiet.output
    assert "sweep.html" in _files(tmp_path / "loud")
    assert _files(tmp_path / "quiet") == _files(tmp_path / "loud")
    assert quiet.stdout == ""


def test_quiet_simulate_and_compare_write_the_same_files(tmp_path):
    for command, extra in (("simulate", []), ("compare", ["--policy", "none", "--replications", "1", "--jobs", "1"])):
        loud = invoke(command, "quickstart", *extra, *QUICK, "--out", str(tmp_path / f"{command}-loud"))
        quiet = invoke(command, "quickstart", *extra, *QUICK, "--out", str(tmp_path / f"{command}-quiet"), "-q")
        assert loud.exit_code == 0 and quiet.exit_code == 0
        assert _files(tmp_path / f"{command}-quiet") == _files(tmp_path / f"{command}-loud")


# --- the output folder ---------------------------------------------------------------------

@pytest.mark.parametrize("command", ["simulate", "compare", "sweep"])
@pytest.mark.parametrize("case", ["a file", "/dev/null", "below a file", "empty"])
def test_a_bad_out_is_refused_before_the_run(tmp_path, monkeypatch, command, case):
    import sim.batch

    def no_runs(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(sim.batch, "executor", no_runs)
    monkeypatch.setattr("sim.runner.run_engine", no_runs)
    file = tmp_path / "taken.txt"
    file.write_text("mine\n")
    out = {"a file": str(file), "/dev/null": "/dev/null", "below a file": str(file / "sub"), "empty": ""}[case]
    extra = {"simulate": [], "compare": ["--policy", "none"], "sweep": ["--grid", "server.workers=2"]}[command]
    result = invoke(command, "quickstart", *extra, *QUICK, "--out", out)
    assert result.exit_code == 2, result.output
    assert "--out" in result.stderr and "Traceback" not in result.output
    assert file.read_text() == "mine\n"


def test_a_finished_run_is_written_to_a_fallback_folder_when_the_folder_fails_at_the_end(tmp_path, monkeypatch):
    import sim.cli.simulate as command

    real = command.write_outputs
    calls = []

    def full_disk_once(outcome, folder):
        calls.append(folder)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(outcome, folder)

    monkeypatch.setattr(command, "write_outputs", full_disk_once)
    result = invoke("simulate", "quickstart", *QUICK, "--out", str(tmp_path / "wanted"))
    assert result.exit_code == 0, result.output
    fallback = calls[1]
    assert fallback != tmp_path / "wanted" and f"the outputs go to {fallback} instead" in result.stderr
    assert json.loads((fallback / "summary.json").read_text())["scenario"] == "quickstart"


# --- progress without a terminal ------------------------------------------------------------

def test_progress_lines_on_stderr_when_not_a_terminal_and_none_when_quiet(tmp_path, monkeypatch):
    from sim.cli import console

    monkeypatch.setattr(console.Ticker, "__init__", _every_call)
    loud = invoke("simulate", "quickstart", "--engine", "des", "--until", "20m", "--out", str(tmp_path))
    lines = [line for line in loud.stderr.splitlines() if line.startswith("simulating quickstart:")]
    assert lines and re.search(r"of 20m simulated, [\d,]+ events/s", lines[-1]), loud.stderr
    quiet = invoke("simulate", "quickstart", "--engine", "des", "--until", "20m", "--out", str(tmp_path), "-q")
    assert quiet.stderr == "" and quiet.stdout == ""
    runs = invoke("compare", "quickstart", "--policy", "none", "--replications", "2", *QUICK, "--jobs", "1",
                  "--out", str(tmp_path / "c"))
    assert re.search(r"comparing 1 variant: 2/2 runs", runs.stderr), runs.stderr


def _every_call(self, what: str, every: float = 10.0) -> None:
    self.what, self.every = what, 0.0
    self.start = self.last = 0.0


# --- the resource estimate before every run -------------------------------------------------

@pytest.mark.parametrize("argv, key", [
    (["simulate", "quickstart", "--set", "population.clients=1000000000000"], "population.clients"),
    (["simulate", "quickstart", "--scale", "1e9"], "--scale"),
    (["simulate", "quickstart", "--set", "duration=30d", "--set", "resolution=1ms"], "resolution"),
    (["simulate", "quickstart", "--set", "duration=1e300"], "duration"),
    (["simulate", "quickstart", "--set", "population.login_rate=1e12"], "population.login_rate"),
    (["validate", "quickstart", "--set", "population.login_rate=1e12"], "population.login_rate"),
    (["compare", "quickstart", "--policy", "none", "--scale", "1e9"], "population.clients"),
    (["sweep", "quickstart", "--grid", "server.workers=1:10:100000000"], "--grid server.workers"),
    (["sweep", "quickstart", "--grid", "population.clients=1000,1000000000000"], "population.clients"),
    (["sweep", "quickstart", "--grid", "server.workers=1:400:400", "--grid", "server.queue_limit=1:400:400"],
     "480,000 runs"),
    (["threshold", "quickstart", "--vary", "population.clients", "--lo", "1000", "--hi", "1000000000000"],
     "population.clients"),
])
def test_a_run_too_large_for_the_machine_is_refused_at_once_naming_its_key(argv, key, tmp_path, monkeypatch):
    import sim.batch

    def no_runs(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(sim.batch, "executor", no_runs)
    monkeypatch.setattr("sim.runner.run_engine", no_runs)
    out = ["--out", str(tmp_path / "out")] if argv[0] in ("simulate", "compare", "sweep") else []
    result = invoke(*argv, *out)
    assert result.exit_code == 2, result.output
    assert key in result.stderr and "--no-limits" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or argv[0] == "sweep" and not any((tmp_path / "out").iterdir())


def test_validate_prints_the_estimate_and_no_limits_lets_a_refused_run_go(tmp_path, monkeypatch):
    result = invoke("validate", "quickstart")
    assert result.exit_code == 0 and re.search(r"needs ~[\d.]+ [MG]B, ~[\d.]+ k attempts, ~[\d.]+ s on the des",
                                               result.stdout), result.stdout
    import sim.cli.guard as guard

    monkeypatch.setattr(guard, "check", lambda estimate: ["server.workers = 2 needs a whole planet"])
    refused = invoke("simulate", "quickstart", *QUICK, "--out", str(tmp_path / "a"))
    assert refused.exit_code == 2 and "a whole planet" in refused.stderr
    forced = invoke("simulate", "quickstart", *QUICK, "--out", str(tmp_path / "b"), "--no-limits")
    assert forced.exit_code == 0 and "--no-limits: going on although server.workers" in forced.stderr
    assert (tmp_path / "b" / "summary.json").exists()


@pytest.mark.parametrize("argv", [["validate", "x" * 300], ["validate", "a/" + "x" * 300 + ".toml"],
                                  ["simulate", "quickstart", "--until", "1m", "--out", "x" * 300]])
def test_a_path_too_long_for_the_system_is_bad_input_not_a_bug(argv):
    result = invoke(*argv)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert max(len(line) for line in result.stderr.splitlines()) < 300  # the path shown by its ends


@pytest.mark.parametrize("rows", [b"device,episode\nx,1\n", b"\xe9\xe9\n", b"device,episode,attempt,start_s\n1,1,1,\n"])
def test_from_logs_with_rows_no_device_wrote_is_bad_input(tmp_path, rows):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "attempts.csv").write_bytes(rows)
    (logs / "states.csv").write_text("t_s,device,from,to\n")
    result = invoke("loadtest", "quickstart", "--from-logs", str(logs), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert f"{logs / 'attempts.csv'}: line" in result.stderr and "Traceback" not in result.output
