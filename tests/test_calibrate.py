"""`loginstorm calibrate`: the fit against its own model, then against the lab on 127.0.0.1.

The lab serves a scenario's `[server]` table; each test derives the truth it expects (workers,
mean service time) from that scenario, loaded here, never from a recorded run. The lab's
service time is the configured sleep plus its own overhead (a few ms of hashing and hand-offs),
which the 15 % tolerance of the issue absorbs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lab_process import ROOT, running_lab
from loadtests.calibrate import StepResult, concurrency_levels, fit
from loadtests.credentials import load_accounts
from loadtests.versus import parse_capacity
from sim.config import load_scenario

TOLERANCE = 0.15


def cli() -> typer.Typer:
    """The application `loginstorm` runs, with `calibrate` registered."""
    from sim.cli import app
    return app


def scenario_file(tmp_path: Path, workers: int, service_time: str, target: str = "") -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(f'name = "calibrate-lab"\nduration = "1h"\n{target}\n'
                    f"[server]\nworkers = {workers}\nservice_time = {service_time}\nqueue_limit = 100000\n")
    return path


# --- the fit against the model it fits ----------------------------------------------------

def model_steps(workers: int, service: float, rtt: float, levels: list[int], seconds: float = 3.0) -> list[StepResult]:
    """Steps exactly as X(c) = min(c / (S + r), W / S) says, latency by Little's law (R = c / X)."""
    steps = []
    for c in levels:
        x = min(c / (service + rtt), workers / service)
        n = round(x * seconds)
        steps.append(StepResult(c, seconds, n, n, 0, 0, 0, c / x, c / x, c / x, 1.0))
    return steps


@pytest.mark.parametrize("workers, service", [(1, 0.2), (3, 0.05), (4, 0.05), (8, 0.02), (13, 0.1), (40, 0.01)])
def test_the_fit_recovers_the_model_it_fits(workers, service):
    rtt = 0.002
    calibration = fit(model_steps(workers, service, rtt, concurrency_levels(64)), rtt)
    assert calibration.workers == workers
    assert calibration.service_time_s == pytest.approx(service, rel=0.01)
    assert calibration.capacity_rps == pytest.approx(workers / service, rel=0.01)
    assert calibration.saturated


def test_a_target_that_never_saturates_gives_a_lower_bound():
    calibration = fit(model_steps(100, 0.05, 0.0, concurrency_levels(16)))
    assert (calibration.workers, calibration.saturated) == (16, False)
    assert calibration.service_time_s == pytest.approx(0.05, rel=0.01)


def test_the_capacity_option_is_what_loadtest_reads():
    calibration = fit(model_steps(4, 0.0503, 0.0, concurrency_levels(32)))
    capacity = parse_capacity(calibration.capacity_option())     # `loginstorm loadtest --capacity`'s parser
    assert capacity["workers"] == 4
    assert capacity["service_time"].mean == pytest.approx(calibration.service_time_s, rel=0.001)


def test_the_module_does_not_import_gevent():
    """The typer CLI imports it, and that process is not monkey-patched."""
    code = "import sys, loadtests.calibrate; assert 'gevent' not in sys.modules, 'gevent imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- nothing is sent to a host that is not allowed ------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve or connect is recorded and fails."""
    tried = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("the test allows no network here")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tried


@pytest.mark.parametrize("host, says", [
    ("http://example.invalid", "example.invalid is not on the target's allowed_hosts"),
    ("https://auth.example.com:8443", "auth.example.com is not on the target's allowed_hosts"),
    ("http://user:hunter2@127.0.0.1:9", "no user:password@"),
    ("http://127.0.0.1:9/oauth/token", "no path"),
])
def test_a_host_that_is_not_allowed_exits_2_before_sending_anything(tmp_path, no_network, host, says):
    users = tmp_path / "users.csv"
    users.write_text("username,password\nalice,pw-alice-9Qx\n")
    result = CliRunner().invoke(cli(), ["calibrate", "quickstart", "--host", host, "--credentials", str(users)])
    assert result.exit_code == 2, result.output
    assert says in result.stderr
    assert no_network == []
    assert "hunter2" not in result.output and "pw-alice-9Qx" not in result.output


# --- against the lab ------------------------------------------------------------------------

@pytest.mark.parametrize("workers, service_time", [
    (4, '{ dist = "uniform", low = "20ms", high = "80ms" }'),
    (2, '"100ms"'),
])
def test_calibrate_recovers_the_lab_workers_and_mean_service_time(tmp_path, workers, service_time):
    path = scenario_file(tmp_path, workers, service_time)
    truth = load_scenario(path).server
    users = tmp_path / "users.csv"
    with running_lab(str(path), "--write-credentials", str(users), "--users", "50", "--serve") as lab:
        result = CliRunner().invoke(cli(), ["calibrate", str(path), "--host", lab.url, "--credentials", str(users),
                                            "--step-seconds", "2", "--warmup", "0.5", "--json"])
        served = lab.metrics_json()
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)
    assert calibration["workers"] == pytest.approx(truth.workers, rel=TOLERANCE)
    assert calibration["service_time_s"] == pytest.approx(truth.service_time.mean, rel=TOLERANCE)
    assert calibration["saturated"]
    capacity = parse_capacity(calibration["capacity"])
    assert capacity["workers"] == calibration["workers"]
    assert capacity["service_time"].mean == pytest.approx(calibration["service_time_s"], rel=0.001)
    # the run: a progress line per step, the last ones flat, every attempt a login the lab served
    steps = calibration["steps"]
    assert [s["concurrency"] for s in steps] == concurrency_levels(64)[:len(steps)]
    assert result.stderr.count("logins/s") >= len(steps)
    assert steps[-1]["throughput_rps"] <= 1.1 * max(s["throughput_rps"] for s in steps[:-1])
    assert all(s["failed"] == s["errors"] == s["rejected"] == 0 for s in steps)
    assert served["logins_total"]["failure"] == 0 and served["busy_workers_max"] == truth.workers
    assert "--capacity workers=" in result.stderr
    for account in load_accounts(users):
        assert account.password.reveal() not in result.output


@pytest.mark.slow
def test_calibrate_recovers_an_exponential_service_time(tmp_path):
    """The issue's example: 4 workers, exponential service (CV 1): longer steps for enough logins."""
    path = scenario_file(tmp_path, 4, '{ dist = "exponential", mean = "50ms" }')
    truth = load_scenario(path).server
    users = tmp_path / "users.csv"
    with running_lab(str(path), "--write-credentials", str(users), "--users", "50", "--serve") as lab:
        result = CliRunner().invoke(cli(), ["calibrate", str(path), "--host", lab.url, "--credentials", str(users),
                                            "--step-seconds", "8", "--warmup", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)
    assert calibration["workers"] == pytest.approx(truth.workers, rel=TOLERANCE)
    assert calibration["service_time_s"] == pytest.approx(truth.service_time.mean, rel=TOLERANCE)


def test_the_target_max_rps_caps_the_steps_and_leaves_a_lower_bound(tmp_path):
    """2 workers of 100 ms serve 20 logins/s; with max_rps = 15 the second step is held back."""
    max_rps = 15
    path = scenario_file(tmp_path, 2, '"100ms"', target='target = { host = "http://127.0.0.1:8080", '
                         'flow = "oauth2-password", path = "/oauth/token", client_auth = "body", '
                         f'max_rps = {max_rps} }}')
    users = tmp_path / "users.csv"
    with running_lab(str(path), "--write-credentials", str(users), "--users", "10", "--serve") as lab:
        result = CliRunner().invoke(cli(), ["calibrate", str(path), "--host", lab.url, "--credentials", str(users),
                                            "--step-seconds", "1", "--warmup", "0.3", "--json"])
        served = lab.metrics_json()["requests_total"]["/oauth/token"]
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)
    steps = calibration["steps"]
    assert [(s["concurrency"], s["capped"]) for s in steps] == [(1, False), (2, True)]
    assert steps[1]["attempts"] <= max_rps * 1.0 + 1
    assert served <= max_rps * (2 * 1.3) + 2 * 3          # two steps of warm-up + window, a little slack
    assert (calibration["workers"], calibration["saturated"]) == (1, False)   # a lower bound: 1 step left
    assert calibration["service_time_s"] == pytest.approx(0.1, rel=TOLERANCE)
    assert "max_rps held back the step with 2 clients" in result.stderr
