"""A misconfigured target is loud: the misconfiguration stop, the exit status of a run without a
login, the host taken from the target file, and the form flow's redirect (issue 17, items 6 and 8).

Real HTTP on 127.0.0.1 only: the lab (tests/lab_process.py), nginx and Django under gunicorn
(tests/realservers.py), each started and stopped by its PID; the command runs as its own process.
Populations are small and runs a few seconds long.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab_process import running_lab
from loadtests.attemptlog import MISCONFIGURED, misconfiguration
from realservers import Unavailable, running_django, running_nginx, target_toml, wrong_password

ROOT = Path(__file__).resolve().parent.parent
NO_LOGIN = 3            # loginstorm loadtest's exit status when no login succeeded

SCENARIO = """
name = "loud"
duration = "{duration}s"
[population]
clients = {clients}
online_at_start = 0.0
offline = "0s"
session = "inf"
[client]
timeout = "5s"
policy = {{ name = "constant", base = "{base}" }}
[server]
workers = 50
service_time = "1ms"
"""

TARGET = """
[target]
host = "{host}"
flow = "json"
path = "{path}"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def loadtest(scenario: Path, out: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 180) -> tuple[subprocess.CompletedProcess, float]:
    """The command as a user runs it, and how long it took (seconds)."""
    import os

    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sim.cli", "loadtest", str(scenario), "--out", str(out),
                           "--capacity", "none", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return done, time.monotonic() - t0


def wrong_users(path: Path, n: int) -> Path:
    path.write_text("username,password\n" + "".join(f"nobody{i},wrong\n" for i in range(n)))
    return path


def rows(out: Path) -> list[dict]:
    with (out / "attempts.csv").open() as handle:
        return list(csv.DictReader(handle))


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def assert_outputs_written(out: Path) -> None:
    for name in ("summary.json", "timeseries.csv", "report.html", "attempts.csv", "locust_stats.csv"):
        assert (out / name).exists(), name


# -- the rule itself -------------------------------------------------------------------------------

@pytest.mark.parametrize("statuses, needed, hints", [
    ([404] * 20, 20, ["the path is wrong? (target.path '/p')"]),
    ([401] * 19 + [403], 20, ["credentials or flow wrong? (--credentials, target.flow 'json', client id/secret)"]),
    ([404] * 3 + [401] * 2, 5, ["the path is wrong?", "credentials or flow wrong?"]),
    ([401] * 19, 20, None),                     # not enough attempts finished yet
    ([401] * 19 + [200], 20, None),             # one login went through
    ([401] * 19 + [429], 20, None),             # refused: the server is busy, not misconfigured
    ([401] * 19 + [503], 20, None),
    ([401] * 19 + [0], 20, None),               # a timeout or a connection error: no answer
    ([500] * 20, 20, None),
])
def test_the_misconfiguration_rule_fires_only_when_every_first_attempt_says_wrong_request(statuses, needed, hints):
    reason = misconfiguration(statuses, needed, "/p", "json")
    if hints is None:
        assert reason is None
        return
    assert reason.startswith(MISCONFIGURED) and f"the first {len(statuses)} attempts" in reason
    assert all(hint in reason for hint in hints) and "--keep-going" in reason


# -- the stop, against real servers ------------------------------------------------------------------

def test_a_wrong_path_stops_the_run_at_once_with_the_path_hint(tmp_path):
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=60, clients=10, base="0.2s"))
    users = wrong_users(tmp_path / "u.csv", 10)
    with running_lab(str(scenario), "--users", "3") as lab:
        target = write(tmp_path / "t.toml", TARGET.format(host=lab.url, path="/api/nope"))
        done, took = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials", str(users))
    assert done.returncode == NO_LOGIN, done.stderr[-2000:]
    assert "stopped early: misconfigured target: the first 10 attempts all failed with HTTP 404" in done.stderr
    assert "the path is wrong? (target.path '/api/nope')" in done.stderr and "Traceback" not in done.stderr
    s = summary(tmp_path / "out")
    assert s["stopped"].startswith(MISCONFIGURED) and s["logins"] == 0 and s["duration_s"] < 10
    assert took < 40                                              # a 60 s story, Locust's start-up included
    assert {r["status"] for r in rows(tmp_path / "out")} == {"404"}
    assert_outputs_written(tmp_path / "out")


def test_wrong_credentials_stop_the_run_against_the_lab(tmp_path):
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=60, clients=30, base="0.2s"))
    users = wrong_users(tmp_path / "u.csv", 30)
    with running_lab(str(scenario), "--users", "3") as lab:
        target = write(tmp_path / "t.toml", TARGET.format(host=lab.url, path="/api/login"))
        done, took = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials", str(users))
    assert done.returncode == NO_LOGIN, done.stderr[-2000:]
    assert "the first 20 attempts all failed with HTTP 401" in done.stderr      # 20 of 30 devices decide
    assert "credentials or flow wrong? (--credentials, target.flow 'json', client id/secret)" in done.stderr
    assert "path is wrong" not in done.stderr
    assert summary(tmp_path / "out")["duration_s"] < 10 and took < 40
    for row in rows(tmp_path / "out"):
        assert "wrong" not in row["message"] and "nobody" not in row["message"]     # no account in the log


def test_wrong_passwords_stop_the_run_against_nginx_with_the_host_from_the_target_file(tmp_path):
    """A third-party server (nginx auth_basic behind limit_req), its host taken from --target: no --host."""
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=60, clients=5, base="0.5s"))
    try:
        with running_nginx(tmp_path / "nginx", rate=50, burst=20) as server:
            users = tmp_path / "wrong.csv"
            users.write_text("username,password\n" + "".join(
                f"{a.username},{wrong_password(a).password.reveal()}\n" for a in server.accounts[:5]))
            target = write(tmp_path / "t.toml", target_toml(server, "basic"))
            done, took = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials", str(users))
    except Unavailable as exc:
        pytest.skip(str(exc))
    assert done.returncode == NO_LOGIN, done.stderr[-2000:]
    assert "the first 5 attempts all failed with HTTP 401 (5): credentials or flow wrong?" in done.stderr
    s = summary(tmp_path / "out")
    assert s["target"] == server.url and s["duration_s"] < 10 and took < 40


def test_keep_going_runs_on_and_a_run_without_a_login_still_exits_non_zero_with_its_outputs(tmp_path):
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=60, clients=10, base="0.5s"))
    users = wrong_users(tmp_path / "u.csv", 10)
    with running_lab(str(scenario), "--users", "3") as lab:
        target = write(tmp_path / "t.toml", TARGET.format(host=lab.url, path="/api/login"))
        done, _ = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials", str(users),
                           "--keep-going", "--run-time", "4s")
    assert done.returncode == NO_LOGIN, done.stderr[-2000:]
    assert "misconfigured" not in done.stderr and "stopped early" not in done.stderr
    assert "no login succeeded in" in done.stderr
    s = summary(tmp_path / "out")
    assert s["stopped"] is None and s["duration_s"] == 4.0 and s["logins"] == 0 and s["attempts"] >= 40
    assert_outputs_written(tmp_path / "out")


def test_a_busy_server_is_not_a_misconfigured_one(tmp_path):
    """Refusals (503 from a full queue) are the storm, not a mistake: the run goes on to its end."""
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=4, clients=30, base="0.2s").replace(
        'workers = 50\nservice_time = "1ms"', 'workers = 1\nservice_time = "200ms"\nqueue_limit = 1'))
    users = tmp_path / "users.csv"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "30", "--serve") as lab:
        target = write(tmp_path / "t.toml", TARGET.format(host=lab.url, path="/api/login"))
        done, _ = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials", str(users))
    assert done.returncode == 0, done.stderr[-2000:]
    statuses = [r["status"] for r in rows(tmp_path / "out")]
    assert "503" in statuses and "200" in statuses
    assert summary(tmp_path / "out")["stopped"] is None


# -- the host from the target ---------------------------------------------------------------------------

def test_without_host_and_without_target_the_command_says_what_to_give(tmp_path):
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=5, clients=2, base="0.5s"))
    users = wrong_users(tmp_path / "u.csv", 2)
    done, _ = loadtest(scenario, tmp_path / "out", "--credentials", str(users), timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--host: give the endpoint's URL" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_target_file_host_is_checked_like_host(tmp_path):
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=5, clients=2, base="0.5s"))
    users = wrong_users(tmp_path / "u.csv", 2)
    target = write(tmp_path / "t.toml", TARGET.format(host="http://auth.example.com", path="/api/login"))
    done, _ = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials", str(users), timeout=60)
    assert done.returncode == 2 and "not on the scenario's target.allowed_hosts" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_explicit_host_wins_over_the_target_files(tmp_path):
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=3, clients=4, base="0.5s"))
    users = tmp_path / "users.csv"
    target = write(tmp_path / "t.toml", TARGET.format(host="http://127.0.0.1:1", path="/api/login"))  # port 1: none
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "4", "--serve") as lab:
        done, _ = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials", str(users),
                           "--host", lab.url + "/")
        served = lab.metrics()['loginstorm_lab_logins_total{result="success"}']
    assert done.returncode == 0, done.stderr[-2000:]
    s = summary(tmp_path / "out")
    assert s["target"] == lab.url and s["logins"] == served == 4


# -- the form flow and its redirect (Django's LoginView) ------------------------------------------------

@pytest.fixture(scope="module")
def django_server(tmp_path_factory):
    try:
        with running_django(tmp_path_factory.mktemp("django"), workers=1, iterations=2_000, users=4,
                            samples=2, hash_samples=2) as server:
            yield server
    except Unavailable as exc:
        pytest.skip(str(exc))


def test_the_form_flow_logs_in_through_djangos_redirect(tmp_path, django_server):
    """success = { status = [302] }: LoginView's redirect to the next page is the login (not followed)."""
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=3, clients=4, base="0.5s"))
    target = write(tmp_path / "t.toml", target_toml(django_server, "form"))
    done, _ = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials",
                       str(django_server.credentials))
    assert done.returncode == 0, done.stderr[-2000:]
    ok = [r for r in rows(tmp_path / "out") if r["outcome"] == "ok"]
    assert len(ok) == 4 and {r["status"] for r in ok} == {"302"}
    s = summary(tmp_path / "out")
    assert s["logins"] == 4 and s["target"] == django_server.url


def test_a_redirect_the_target_does_not_list_as_success_is_a_failure_that_says_so(tmp_path, django_server):
    scenario = write(tmp_path / "s.toml", SCENARIO.format(duration=3, clients=4, base="0.5s"))
    target = write(tmp_path / "t.toml", target_toml(django_server, "form").replace(
        "success = { status = [302] }", "success = { status = [200] }"))
    done, _ = loadtest(scenario, tmp_path / "out", "--target", str(target), "--credentials",
                       str(django_server.credentials))
    assert done.returncode == NO_LOGIN, done.stderr[-2000:]
    attempts = rows(tmp_path / "out")
    assert attempts and all(r["outcome"] == "failed" and r["status"] == "302" for r in attempts)
    assert {r["message"] for r in attempts} == {
        "HTTP 302: a redirect, not followed; a success only if target.success.status lists 302"}
    assert summary(tmp_path / "out")["stopped"] is None              # a redirect is not a misconfiguration stop
