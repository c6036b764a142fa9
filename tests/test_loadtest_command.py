"""`loginstorm loadtest` against the lab server: safety rails, outputs, and agreement with the simulation.

Real HTTP on 127.0.0.1 only; the lab is started and stopped by its PID (tests/lab_process.py), and
the command runs as its own process, as a user runs it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lab_process import running_lab

ROOT = Path(__file__).resolve().parent.parent
NO_LOGIN = 3            # the exit status of a run in which no login succeeded (outputs written all the same)


def loadtest_command(scenario: Path, host: str, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sim.cli", "loadtest", str(scenario), "--host", host, "--out", str(out), *args]


def loadtest(scenario: Path, host: str, out: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(loadtest_command(scenario, host, out, *args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def attempt_starts(out: Path) -> np.ndarray:
    starts = []
    for file in sorted(out.glob("attempts*.csv")):
        with file.open() as handle:
            starts += [float(r["start_s"]) for r in csv.DictReader(handle)]
    return np.sort(np.array(starts))


LOOP = """
name = "loop"
duration = "{duration}s"
[population]
clients = {clients}
online_at_start = 0.0
offline = "0s"
[client]
timeout = "5s"
policy = "none"
[server]
workers = 50
service_time = "1ms"
[target]
host = "http://127.0.0.1:1"
allowed_hosts = ["auth.staging.example.com"]
flow = "json"
path = "/api/login"
"""


def wrong_users(path: Path, n: int) -> Path:
    """Accounts the lab does not know: every attempt fails with 401 and `none` retries at once (the
    runs that use them pass --keep-going, else the misconfiguration stop ends them, and exit 3)."""
    path.write_text("username,password\n" + "".join(f"nobody{i},wrong\n" for i in range(n)))
    return path


# -- safety rails -----------------------------------------------------------------------------------

@pytest.mark.parametrize("host, args, message", [
    (lambda url: url.replace("127.0.0.1", "0.0.0.0"), (),          # the same machine, but not a loopback name
     "not on the scenario's target.allowed_hosts"),
    (lambda url: url.removeprefix("http://"), (), "give a URL with its scheme, such as http://127.0.0.1:"),
    (lambda url: url, ("--capacity", "workers=x"), "--capacity workers: Input should be a valid integer"),
    (lambda url: url, ("--capacity", "wrokers=8"), "did you mean 'workers'?"),
    (lambda url: url, ("--policy", "fulljitter"), "--policy: unknown policy 'fulljitter'; did you mean 'full-jitter'?"),
], ids=["not-allowed", "no-scheme", "bad-capacity-value", "bad-capacity-key", "bad-policy"])
def test_a_bad_host_capacity_or_policy_is_refused_before_any_request(tmp_path, host, args, message):
    scenario = write(tmp_path / "loop.toml", LOOP.format(duration=10, clients=5))
    users = wrong_users(tmp_path / "u.csv", 5)
    with running_lab(str(scenario), "--users", "3") as lab:
        done = loadtest(scenario, host(lab.url), tmp_path / "out", "--credentials", str(users), *args, timeout=60)
        requests = {k: v for k, v in lab.metrics().items() if k.startswith("loginstorm_lab_requests_total")}
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr, done.stderr
    assert len(requests) == 4 and sum(requests.values()) == 0
    assert not (tmp_path / "out").exists()


def test_max_rps_holds_the_attempt_rate(tmp_path):
    scenario = write(tmp_path / "loop.toml", LOOP.format(duration=8, clients=60))
    users = wrong_users(tmp_path / "u.csv", 60)
    with running_lab(str(scenario), "--users", "3") as lab:
        done = loadtest(scenario, lab.url, tmp_path / "out", "--credentials", str(users), "--max-rps", "40",
                        "--capacity", "none", "-q", "--keep-going")
        served = lab.metrics()['loginstorm_lab_requests_total{endpoint="/api/login"}']
    assert done.returncode == NO_LOGIN, done.stderr[-2000:]
    starts = attempt_starts(tmp_path / "out")
    assert 0 <= served - len(starts) <= 60        # every logged attempt reached the lab (the stop cuts <= 1 each)
    window = starts[(starts >= 1.0) & (starts < 7.0)]
    rate = len(window) / 6.0
    assert 36 <= rate <= 44, rate                                    # 40/s within 10 %
    # the control: without the cap the same storm runs far faster
    with running_lab(str(scenario), "--users", "3") as lab:
        loadtest(scenario, lab.url, tmp_path / "free", "--credentials", str(users), "--run-time", "3s",
                 "--capacity", "none", "-q", "--keep-going")
    free = attempt_starts(tmp_path / "free")
    assert len(free[(free >= 1.0) & (free < 2.0)]) > 2 * 44


def test_an_error_rate_threshold_stops_the_run_and_still_reports(tmp_path):
    scenario = write(tmp_path / "loop.toml", LOOP.format(duration=60, clients=20).replace(
        'policy = "none"', 'policy = { name = "constant", base = "0.2s" }'))
    users = wrong_users(tmp_path / "u.csv", 20)
    with running_lab(str(scenario), "--users", "3") as lab:
        done = loadtest(scenario, lab.url, tmp_path / "out", "--credentials", str(users),
                        "--stop-on-error-rate", "0.5", "--stop-after", "3s", "--capacity", "none", "--keep-going")
    assert done.returncode == NO_LOGIN, done.stderr[-2000:]
    assert "stopped early: error rate 100%" in done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stopped"].startswith("error rate") and summary["duration_s"] < 15
    assert summary["attempts"] > 0 and summary["logins"] == 0
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "locust_stats.csv").exists()


def test_a_p99_threshold_stops_a_run_against_a_slow_server(tmp_path):
    scenario = write(tmp_path / "slow.toml", LOOP.format(duration=60, clients=8).replace(
        'service_time = "1ms"', 'service_time = "1.5s"').replace("workers = 50", "workers = 8"))
    users = tmp_path / "users.csv"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "8", "--serve") as lab:
        done = loadtest(scenario, lab.url, tmp_path / "out", "--credentials", str(users),
                        "--stop-on-p99", "1s", "--stop-after", "3s", "--capacity", "none")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped early: attempt p99" in done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["stopped"].startswith("attempt p99") and summary["duration_s"] < 15


# -- outputs and agreement with the simulation --------------------------------------------------------

STORM = """
name = "agree"
duration = "24s"
seed = 5
resolution = "2s"
[population]
clients = 400
session = "inf"
[client]
timeout = "3s"
connect_delay = {{ dist = "uniform", low = "0s", high = "0.5s" }}
policy = {policy}
[server]
workers = 4
service_time = {{ dist = "exponential", mean = "40ms" }}
queue_limit = 60
retry_after = "1s"
[[events]]
at = "4s"
kind = "reboot"
fraction = 0.6
spread = {{ dist = "uniform", low = "0s", high = "3s" }}
downtime = {{ dist = "uniform", low = "1s", high = "2s" }}
"""


def run_pair(tmp_path: Path, policy: str) -> tuple[dict, dict, dict]:
    scenario = write(tmp_path / f"{policy}.toml", STORM.format(policy=f'"{policy}"'))
    users = tmp_path / "users.csv"
    out = tmp_path / policy
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "400", "--serve") as lab:
        done = loadtest(scenario, lab.url, out, "--credentials", str(users), "--replications", "4", "-q")
        served = lab.metrics()
    assert done.returncode == 0, done.stderr[-2000:]
    return (json.loads((out / "summary.json").read_text()), json.loads((out / "versus.json").read_text()),
            served)


@pytest.mark.slow
def test_measured_and_simulated_storms_agree_and_rank_the_policies_alike(tmp_path):
    results = {policy: run_pair(tmp_path, policy) for policy in ("none", "full-jitter")}
    for policy, (summary, versus, served) in results.items():
        assert summary["logins"] == summary["episodes"] == 240, policy        # 60 % of 400 rebooted
        assert served['loginstorm_lab_logins_total{result="success"}'] == summary["logins"]
        assert versus["online_share"]["max_gap"] <= 0.1, (policy, versus["verdict"])
        assert versus["recovery_p90_s"]["ok"], (policy, versus["verdict"])
        assert versus["verdict"]["ok"], (policy, versus["verdict"])   # every measure of the mechanism agrees
    # the ranking: no backoff amplifies more than full jitter, measured and simulated alike
    measured = {p: r[1]["amplification"]["measured"] for p, r in results.items()}
    simulated = {p: r[1]["amplification"]["simulated"] for p, r in results.items()}
    assert (measured["none"] > measured["full-jitter"]) == (simulated["none"] > simulated["full-jitter"])


def _children(pid: int) -> list[int]:
    """The processes `pid` started (Linux /proc)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet (it no longer runs)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_stopped_command_stops_its_locust_and_still_reports(tmp_path, how):
    """Ctrl-C (SIGINT) and `kill` or `timeout` (SIGTERM) stop the run gracefully and still write
    the outputs; even SIGKILL, which nothing can catch, leaves no Locust sending load."""
    import os
    import signal
    import time

    scenario = write(tmp_path / "loop.toml", LOOP.format(duration=120, clients=10).replace(
        'policy = "none"', 'policy = { name = "constant", base = "0.5s" }'))
    users = wrong_users(tmp_path / "u.csv", 10)
    out = tmp_path / "out"
    locust = []
    with running_lab(str(scenario), "--users", "3") as lab:
        cmd = loadtest_command(scenario, lab.url, out, "--credentials", str(users), "--capacity", "none",
                               "--keep-going")
        # a background job (make test under nohup, some CI runners) inherits SIGINT ignored, and
        # Python then never raises KeyboardInterrupt: give the command Ctrl-C's default disposition
        # for Ctrl-C, and for the others a background job's (Locust must not inherit it)
        sigint = signal.SIG_DFL if how == "SIGINT" else signal.SIG_IGN
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
        try:
            deadline = time.monotonic() + 30

            def rows() -> int:      # attempts logged so far (the files start with a header)
                return sum(len(f.read_text().splitlines()) - 1 for f in out.glob("attempts*.csv"))
            while rows() < 5 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)
            locust = _children(proc.pid)
            assert len(locust) == 1
            proc.send_signal(getattr(signal, how))
            _, stderr = proc.communicate(timeout=60)
            deadline = time.monotonic() + 40                 # Locust's own graceful stop, after SIGKILL
            while not _gone(locust[0]) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _gone(locust[0]), f"Locust (pid {locust[0]}) still runs after the command got {how}"
        finally:
            if proc.poll() is None:
                proc.kill()
            for pid in locust:                                # a failed check must not leave load behind
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
        return
    assert proc.returncode == NO_LOGIN, stderr[-2000:]              # the wrong users never logged in
    assert "interrupted" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and 0 < summary["duration_s"] < 30 and summary["attempts"] >= 5
    assert (out / "report.html").exists() and (out / "locust_stats.csv").exists()
    assert "<html" in (out / "locust.html").read_text()[:2000].lower()


def _start_loadtest(scenario: Path, host: str, out: Path, users: Path, *args: str, ignore=()) -> subprocess.Popen:
    """The command in the background, with the signals in `ignore` ignored (as nohup ignores HUP)."""
    traps = "".join(f"trap '' {sig}; " for sig in ignore)      # sh, so that no Python runs between fork and exec
    cmd = loadtest_command(scenario, host, out, "--credentials", str(users), "--capacity", "none", *args)
    return subprocess.Popen(["sh", "-c", traps + 'exec "$@"', "sh", *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_stopped_before_the_storm_began_exits_130_and_writes_no_report(tmp_path):
    import signal
    import time

    scenario = write(tmp_path / "late.toml", LOOP.format(duration=60, clients=5).replace(    # online until 40 s
        "online_at_start = 0.0", "online_at_start = 1.0") + '[[events]]\nat = "40s"\nkind = "reboot"\nfraction = 1.0\n')
    users = wrong_users(tmp_path / "u.csv", 5)
    with running_lab(str(scenario), "--users", "3") as lab:
        proc = _start_loadtest(scenario, lab.url, tmp_path / "out", users)
        try:
            time.sleep(3)
            locust = _children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        served = lab.metrics()['loginstorm_lab_requests_total{endpoint="/api/login"}']
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted before the storm began" in stderr and "Traceback" not in stderr
    assert served == 0 and not (tmp_path / "out" / "summary.json").exists()
    assert all(_gone(pid) for pid in locust)


def test_nohup_keeps_sighup_ignored(tmp_path):
    import signal
    import time

    scenario = write(tmp_path / "loop.toml", LOOP.format(duration=6, clients=5).replace(
        'policy = "none"', 'policy = { name = "constant", base = "0.5s" }'))
    users = wrong_users(tmp_path / "u.csv", 5)
    out = tmp_path / "out"
    with running_lab(str(scenario), "--users", "3") as lab:
        proc = _start_loadtest(scenario, lab.url, out, users, "-q", "--keep-going", ignore=("HUP",))
        try:
            deadline = time.monotonic() + 30
            while not list(out.glob("attempts*.csv")) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1)
            proc.send_signal(signal.SIGHUP)                  # a closed terminal, under nohup
            _, stderr = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == NO_LOGIN, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is False and summary["duration_s"] == 6.0


def test_the_command_process_does_not_import_locust_or_gevent():
    """Locust monkey-patches the interpreter that imports it; the CLI must stay a plain process."""
    code = "import sys, sim.cli, loadtests.command, loadtests.versus, loadtests.measure; " \
           "print(sorted(m for m in ('gevent', 'locust') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_no_secret_reaches_any_file_of_the_command(tmp_path):
    import base64
    import os

    password, secret = "pw-Known-4d1c9", "cl13nt-S3CRET-loadtest"
    scenario = write(tmp_path / "s.toml", LOOP.format(duration=6, clients=10).replace(
        'flow = "json"\npath = "/api/login"',
        'flow = "oauth2-password"\npath = "/oauth/token"\nclient_id = "${LS_ID}"\nclient_secret = "${LS_SECRET}"'
        '\nclient_auth = "basic"').replace('policy = "none"', 'policy = { name = "constant", base = "0.5s" }'))
    users = tmp_path / "users.csv"
    users.write_text("username,password\n" + "".join(f"user{i},{password}\n" for i in range(10)))
    env = {"LOGINSTORM_CLIENT_ID": "ls", "LOGINSTORM_CLIENT_SECRET": secret, "LS_ID": "ls", "LS_SECRET": secret}
    out = tmp_path / "out"
    with running_lab(str(scenario), "--credentials", str(users), env=env) as lab:
        done = subprocess.run([sys.executable, "-m", "sim.cli", "loadtest", str(scenario), "--host", lab.url,
                               "--out", str(out), "--credentials", str(users), "--capacity", "lab"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
        served = lab.metrics()['loginstorm_lab_logins_total{result="success"}']
    assert done.returncode == 0, done.stderr[-2000:]
    assert served == 10                                               # the secrets were used, and worked
    texts = [done.stdout, done.stderr] + [p.read_text(errors="replace") for p in out.iterdir()]
    assert len(texts) >= 12
    basic = base64.b64encode(f"ls:{secret}".encode()).decode()
    for text in texts:
        for value in (password, secret, basic):
            assert value not in text


def test_from_logs_measures_a_run_made_elsewhere_the_same_way(tmp_path):
    scenario = write(tmp_path / "loop.toml", LOOP.format(duration=5, clients=10).replace(
        'policy = "none"', 'policy = { name = "constant", base = "0.5s" }'))
    users = wrong_users(tmp_path / "u.csv", 10)
    with running_lab(str(scenario), "--users", "3") as lab:
        done = loadtest(scenario, lab.url, tmp_path / "run", "--credentials", str(users), "--capacity", "none", "-q",
                        "--keep-going")
    assert done.returncode == NO_LOGIN, done.stderr[-2000:]
    again = loadtest(scenario, "http://127.0.0.1:1", tmp_path / "again", "--from-logs", str(tmp_path / "run"),
                     "--capacity", "none", "-q")   # port 1: nothing may be sent; no credentials needed
    assert again.returncode == NO_LOGIN, again.stderr[-2000:]
    first, second = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("run", "again"))
    assert first["attempts"] > 0 and {k: v for k, v in first.items() if k != "target"} == \
        {k: v for k, v in second.items() if k != "target"}
    assert (tmp_path / "run" / "timeseries.csv").read_text() == (tmp_path / "again" / "timeseries.csv").read_text()
    empty = loadtest(scenario, "http://127.0.0.1:1", tmp_path / "x", "--from-logs", str(tmp_path), "-q",
                     "--credentials", str(users))
    assert empty.returncode == 2 and "no attempts*.csv" in empty.stderr


def test_a_master_and_a_worker_as_the_readme_shows_then_from_logs_without_credentials(tmp_path):
    """The README's several-machines recipe on one: the worker's own --attempt-log and --state-log
    survive the master's options (Locust sends those to every worker at spawn), and --from-logs,
    which sends nothing, needs no credentials."""
    import socket

    scenario = write(tmp_path / "loop.toml", LOOP.format(duration=6, clients=10).replace(
        'policy = "none"', 'policy = { name = "constant", base = "0.5s" }'))
    users = wrong_users(tmp_path / "u.csv", 10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    locust = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
              "--scenario", str(scenario), "--credentials", str(users), "--keep-going"]
    with running_lab(str(scenario), "--users", "3") as lab:
        master = subprocess.Popen(locust + ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                                            "--expect-workers", "1", "--headless", "-t", "6s", "--host", lab.url,
                                            "--csv", str(tmp_path / "master" / "locust"), "--exit-code-on-error", "0"],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        worker = subprocess.Popen(locust + ["--worker", "--master-host", "127.0.0.1", "--master-port", port,
                                            "--attempt-log", str(tmp_path / "w" / "attempts.csv"),
                                            "--state-log", str(tmp_path / "w" / "states.csv")],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, master_err = master.communicate(timeout=90)
            _, worker_err = worker.communicate(timeout=30)
        finally:
            for proc in (master, worker):
                if proc.poll() is None:
                    proc.kill()
    assert master.returncode == 0 and worker.returncode == 0, (master_err[-1500:], worker_err[-1500:])
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["attempts.w0.csv", "states.w0.csv"]
    rows = list(csv.DictReader((tmp_path / "w" / "attempts.w0.csv").open()))
    assert {int(r["device"]) for r in rows if r["attempt"] == "1"} == set(range(10))
    measured = loadtest(scenario, "http://127.0.0.1:1", tmp_path / "out", "--from-logs", str(tmp_path / "w"),
                        "--capacity", "none", "-q")                  # port 1: nothing may be sent
    assert measured.returncode == NO_LOGIN, measured.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # an attempt the worker began after the story's 6 s (before the master's stop reached it) is not counted
    assert summary["attempts"] == sum(float(r["start_s"]) <= 6.0 for r in rows) and summary["devices"] == 10



# -- make demo-loadtest ------------------------------------------------------------------------------

def _demo(out: Path, run_time: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtests.demo", "--out", str(out), "--run-time", run_time,
                           "--scale", "0.02", "--speed", "60"], cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_the_load_test_demo_sets_both_policies_side_by_side(tmp_path):
    import html
    import re

    done = _demo(tmp_path, "10s")
    assert done.returncode == 0, done.stderr[-2000:]
    page = html.unescape((tmp_path / "index.html").read_text())
    cells = {row[0]: row for row in (re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", page))
             if row}
    assert set(cells) == {"none", "full-jitter"}
    for policy, row in cells.items():
        summary = json.loads((tmp_path / policy / "summary.json").read_text())
        versus = json.loads((tmp_path / policy / "versus.json").read_text())
        assert row[1] == f"{summary['attempts']:,}" and row[2] == f"{versus['amplification']['measured']:.2f}"
        assert f'href="{policy}/report.html"' in page and (tmp_path / policy / "report.html").exists()
    assert float(cells["none"][2]) > 10 * float(cells["full-jitter"][2])    # `none` hammers the refusing lab


def test_the_load_test_demo_cut_before_the_storm_says_n_a(tmp_path):
    done = _demo(tmp_path, "2s")                  # the reboot comes at 5 s (5 min at speed 60)
    assert done.returncode == 0, done.stderr[-2000:]
    page = (tmp_path / "index.html").read_text()
    assert page.count("<td>n/a</td>") >= 4 and "Traceback" not in done.stderr
