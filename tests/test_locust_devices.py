"""The device users against the lab server: real HTTP on 127.0.0.1, Locust run as `locust -f`.

Locust monkey-patches the interpreter with gevent, so every load test runs in a subprocess;
the lab server is another, stopped by its PID (tests/lab_process.py).
"""

from __future__ import annotations

import base64
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lab_process import running_lab
from loadtests.plan import build_plan
from sim.config import parse_scenario
from sim.policies import make_policy
from theory import ks_1samp, ks_2samp

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def run_locust(scenario: Path, host: str, *args: str, env: dict | None = None, timeout: float = 90):
    """Run the locustfile headless; returns the finished process (stdout and stderr captured)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--scenario", str(scenario),
           "--host", host, "--exit-code-on-error", "0", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def attempts(path: Path) -> list[dict]:
    rows = []
    for file in sorted(path.parent.glob(f"{path.stem}*{path.suffix}")):
        with file.open() as handle:
            rows += [dict(r, device=int(r["device"]), episode=int(r["episode"]), attempt=int(r["attempt"]),
                          start_s=float(r["start_s"]), seconds=float(r["seconds"]), status=int(r["status"]))
                     for r in csv.DictReader(handle)]
    return rows


def stats(prefix: Path) -> dict[str, dict]:
    with open(f"{prefix}_stats.csv") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def gaps(rows: list[dict]) -> list[tuple[int, float, float]]:
    """(retry number, observed gap from the end of an attempt to the start of the next, intended wait)."""
    by_episode: dict[tuple, list[dict]] = {}
    for r in rows:
        by_episode.setdefault((r["device"], r["episode"]), []).append(r)
    out = []
    for seq in by_episode.values():
        seq.sort(key=lambda r: r["attempt"])
        for a, b in zip(seq, seq[1:]):
            out.append((a["attempt"] - 1, b["start_s"] - a["start_s"] - a["seconds"], float(a["wait_s"])))
    return out


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- one storm, many checks: arrivals, policy parity, stats and the server's own counts ------------

STORM = """
name = "ks-storm"
duration = "30s"
seed = 3
[population]
clients = 300
[client]
timeout = "5s"
policy = { name = "full-jitter", base = "0.5s", cap = "2s" }
[server]
workers = 8
service_time = "2ms"
rate_limit = { rate = 50, burst = 10 }
[[events]]
at = "1s"
kind = "reboot"
fraction = 1.0
spread = { dist = "uniform", low = "0s", high = "4s" }
"""


@pytest.fixture(scope="module")
def storm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("storm")
    scenario = write(tmp / "storm.toml", STORM)
    users = tmp / "users.csv"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "300", "--serve") as lab:
        done = run_locust(scenario, lab.url, "--credentials", str(users), "-t", "11s",
                          "--attempt-log", str(tmp / "attempts.csv"), "--csv", str(tmp / "locust"))
        metrics = lab.metrics()
    assert done.returncode == 0, done.stderr[-2000:]
    return {"rows": attempts(tmp / "attempts.csv"), "stats": stats(tmp / "locust"), "metrics": metrics,
            "scenario": parse_scenario(STORM), "stderr": done.stderr}


def test_first_attempts_follow_the_wave_not_spawn_batches(storm):
    firsts = np.array([r["start_s"] for r in storm["rows"] if r["attempt"] == 1 and r["episode"] == 1])
    assert len(firsts) == 300
    def wave(x):                                                # at 1 s + U(0, 4 s) from the scenario
        return np.clip((x - 1.0) / 4.0, 0.0, 1.0)
    _, p = ks_1samp(firsts, wave)
    assert p > 0.01
    _, p_batched = ks_1samp(np.floor(firsts), wave)             # the control: Locust's per-second batches
    assert p_batched < 1e-3


def test_retry_delays_follow_the_policy_from_sim(storm):
    """The waits the devices drew follow sim's policy; the sleeps they then took are those waits.

    The draws are tested apart from the sleeps, so a loaded machine's late wake-ups cannot fail
    the distribution check, and against 50 reference draws per retry, so the reference's own noise
    does not either: the test then fails by chance once in 1,000 runs (alpha 1e-3). Its power is
    shown by two near misses that it must reject: equal jitter, and full jitter one retry late.
    """
    observed = gaps(storm["rows"])
    assert len(observed) >= 100, "the storm should make the devices retry"
    retries = np.repeat([n for n, _, _ in observed], 50)
    gap = np.array([g for _, g, _ in observed])
    intended = np.array([w for _, _, w in observed])
    rng = np.random.default_rng(11)
    policy = storm["scenario"].client.build_policy()
    _, p = ks_2samp(intended, policy.delays(retries, rng))
    assert p > 1e-3
    for near_miss in (make_policy("equal-jitter", base=0.5, cap=2.0).delays(retries, rng),
                      policy.delays(retries + 1, rng)):
        _, p_control = ks_2samp(intended, near_miss)
        assert p_control < 1e-6
    assert np.all(gap >= intended - 0.005) and np.median(gap - intended) < 0.02   # sleeps are faithful


def test_locust_stats_and_the_servers_counts_match_the_devices(storm):
    rows, s, m = storm["rows"], storm["stats"], storm["metrics"]
    ok = [r for r in rows if r["outcome"] == "ok"]
    limited = [r for r in rows if r["status"] == 429]
    assert len(ok) == 300                                           # every device got back online
    assert int(s["login attempt"]["Request Count"]) == len(rows)
    assert int(s["login attempt"]["Failure Count"]) == len(rows) - len(ok)
    assert int(s["login episode"]["Request Count"]) == 300 and int(s["login episode"]["Failure Count"]) == 0
    assert m['loginstorm_lab_rejected_total{reason="rate_limit"}'] == len(limited) > 0
    assert m['loginstorm_lab_logins_total{result="success"}'] == len(ok)
    assert "Traceback" not in storm["stderr"]


# -- Retry-After and the client timeout -------------------------------------------------------------

def test_retry_after_is_honoured(tmp_path):
    scenario = write(tmp_path / "ra.toml", """
name = "retry-after"
duration = "20s"
[population]
clients = 3
[client]
timeout = "5s"
policy = "none"
[server]
workers = 2
service_time = "1ms"
rate_limit = { rate = 1, burst = 1, retry_after = "2s" }
[[events]]
at = "0.5s"
kind = "reboot"
""")
    users = tmp_path / "users.csv"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "3", "--serve") as lab:
        done = run_locust(scenario, lab.url, "--credentials", str(users), "-t", "6s",
                          "--attempt-log", str(tmp_path / "a.csv"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = attempts(tmp_path / "a.csv")
    observed = gaps(rows)
    assert sum(r["status"] == 429 for r in rows) >= 2 and len(observed) >= 2
    for _, gap, wait in observed:                    # policy "none" alone would retry at once
        assert wait == 2.0 and 2.0 - 0.005 <= gap < 2.3


def test_client_timeout_cuts_the_attempt_and_the_server_sees_the_hang_up(tmp_path):
    scenario = write(tmp_path / "slow.toml", """
name = "slow-server"
duration = "20s"
[population]
clients = 4
[client]
timeout = "0.5s"
policy = { name = "constant", base = "10s" }
[server]
workers = 4
service_time = "2s"
[[events]]
at = "0.5s"
kind = "reboot"
""")
    users = tmp_path / "users.csv"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "4", "--serve") as lab:
        started = time.monotonic()
        done = run_locust(scenario, lab.url, "--credentials", str(users), "-t", "2s",
                          "--attempt-log", str(tmp_path / "a.csv"), "--csv", str(tmp_path / "l"))
        while lab.metrics()["loginstorm_lab_completed_total"] < 4 and time.monotonic() - started < 30:
            time.sleep(0.2)
        metrics = lab.metrics()
    assert done.returncode == 0, done.stderr[-2000:]
    rows = attempts(tmp_path / "a.csv")
    assert len(rows) == 4 and all(r["outcome"] == "timeout" for r in rows)
    assert all(0.5 <= r["seconds"] < 0.7 for r in rows)            # client.timeout, not Locust's 60 s
    assert metrics["loginstorm_lab_wasted_total"] == 4              # served for clients that had hung up
    with open(tmp_path / "l_failures.csv") as handle:
        assert [(r["Name"], r["Occurrences"]) for r in csv.DictReader(handle)] == [("login attempt", "4")]


# -- every flow against the lab, a wrong password, secrets ------------------------------------------

FLOW_TARGETS = {
    "oauth2-client-credentials": 'flow = "oauth2-client-credentials"\npath = "/oauth/token"\nclient_id = "${LS_ID}"\n'
                                 'client_secret = "${LS_SECRET}"\nclient_auth = "basic"',
    "oauth2-password": 'flow = "oauth2-password"\npath = "/oauth/token"\nclient_id = "${LS_ID}"\n'
                       'client_secret = "${LS_SECRET}"\nclient_auth = "body"',
    "form": 'flow = "form"\npath = "/login"\nfields = { csrf = "csrf_token" }\nsuccess = { status = [200] }\n'
            'heartbeat = { path = "/me", every = "0.4s" }',
    "json": 'flow = "json"\npath = "/api/login"\nheartbeat = { path = "/me", every = "0.4s" }',
    "basic": 'flow = "basic"\npath = "/basic"',
}
CLIENT_SECRET = "cl13nt-S3CRET-value"
PASSWORD = "pw-Known-7f3a9"


def flow_scenario(tmp_path: Path, flow: str, clients: int = 5, policy: str = '"none"') -> Path:
    return write(tmp_path / f"{flow}.toml", f"""
name = "flow-{flow}"
duration = "20s"
[population]
clients = {clients}
[client]
timeout = "2s"
policy = {policy}
[server]
workers = 4
service_time = "1ms"
[[events]]
at = "0.2s"
kind = "reboot"
[target]
host = "http://127.0.0.1:1"
{FLOW_TARGETS[flow]}
""")


def known_users(tmp_path: Path, n: int, password: str = PASSWORD) -> Path:
    path = tmp_path / "users.csv"
    path.write_text("username,password\n" + "".join(f"user{i}@lab,{password}\n" for i in range(n)))
    return path


@pytest.mark.parametrize("flow", list(FLOW_TARGETS))
def test_each_flow_logs_in_against_the_lab(tmp_path, flow):
    env = {"LOGINSTORM_CLIENT_ID": "ls-client", "LOGINSTORM_CLIENT_SECRET": CLIENT_SECRET,
           "LS_ID": "ls-client", "LS_SECRET": CLIENT_SECRET}
    users = known_users(tmp_path, 5)
    scenario = flow_scenario(tmp_path, flow)
    with running_lab(str(scenario), "--credentials", str(users), env=env) as lab:
        done = run_locust(scenario, lab.url, "--credentials", str(users), "-t", "2s", "--csv", str(tmp_path / "l"),
                          env=env)
        metrics = lab.metrics()
    assert done.returncode == 0, done.stderr[-2000:]
    s = stats(tmp_path / "l")
    assert (s["login attempt"]["Request Count"], s["login attempt"]["Failure Count"]) == ("5", "0")
    assert s["login episode"]["Request Count"] == "5"
    assert metrics['loginstorm_lab_logins_total{result="success"}'] == 5
    if "heartbeat" in FLOW_TARGETS[flow]:
        assert int(s["heartbeat"]["Request Count"]) >= 5 and s["heartbeat"]["Failure Count"] == "0"


def test_a_wrong_password_is_a_failed_attempt_not_a_crash(tmp_path):
    lab_users = known_users(tmp_path, 3)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("username,password\n" + "".join(f"user{i}@lab,not-{PASSWORD}\n" for i in range(3)))
    scenario = flow_scenario(tmp_path, "json", clients=3, policy='{ name = "constant", base = "0.3s" }')
    with running_lab(str(scenario), "--credentials", str(lab_users)) as lab:
        done = run_locust(scenario, lab.url, "--credentials", str(wrong), "-t", "2s", "--csv", str(tmp_path / "l"),
                         "--keep-going")  # every attempt fails on purpose: no misconfiguration stop
    s = stats(tmp_path / "l")
    attempts_made = int(s["login attempt"]["Request Count"])
    assert attempts_made >= 3 * 3 and s["login attempt"]["Failure Count"] == str(attempts_made)  # all retried
    with open(tmp_path / "l_failures.csv") as handle:
        assert {r["Error"] for r in csv.DictReader(handle)} == {"LoginFailure('HTTP 401')"}
    with open(tmp_path / "l_exceptions.csv") as handle:
        assert list(csv.DictReader(handle)) == []
    assert "Traceback" not in done.stderr


def test_no_secret_reaches_any_output(tmp_path):
    env = {"LOGINSTORM_CLIENT_ID": "ls-client", "LOGINSTORM_CLIENT_SECRET": CLIENT_SECRET,
           "LS_ID": "ls-client", "LS_SECRET": CLIENT_SECRET}
    users = known_users(tmp_path, 40)
    scenario = flow_scenario(tmp_path, "oauth2-password", clients=40, policy='{ name = "constant", base = "0.2s" }')
    text = scenario.read_text().replace("service_time = \"1ms\"", "service_time = \"1ms\"\nqueue_limit = 1\n"
                                        "retry_after = \"1s\"\nrate_limit = { rate = 20, burst = 5 }")
    scenario.write_text(text.replace("workers = 4", "workers = 1"))
    out = tmp_path / "out"
    out.mkdir()
    with running_lab(str(scenario), "--credentials", str(users), env=env) as lab:
        done = run_locust(scenario, lab.url, "--credentials", str(users), "-t", "3s", "--csv", str(out / "l"),
                          "--html", str(out / "report.html"), "--json-file", str(out / "stats"),
                          "--attempt-log", str(out / "attempts.csv"), "--logfile", str(out / "locust.log"),
                          "--loglevel", "DEBUG", env=env)
    rows = attempts(out / "attempts.csv")
    assert {r["outcome"] for r in rows} >= {"ok", "rejected"}          # failures were reported too
    basic = base64.b64encode(f"ls-client:{CLIENT_SECRET}".encode()).decode()
    outputs = [done.stdout, done.stderr] + [p.read_text(errors="replace") for p in out.iterdir()]
    assert len(outputs) >= 8
    for text in outputs:
        for secret in (PASSWORD, CLIENT_SECRET, basic):
            assert secret not in text


# -- distributed: every device played exactly once --------------------------------------------------

def test_processes_split_the_devices_without_overlap(tmp_path):
    scenario = write(tmp_path / "d.toml", STORM.replace("clients = 300", "clients = 120"))
    users = tmp_path / "users.csv"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "120", "--serve") as lab:
        done = run_locust(scenario, lab.url, "--credentials", str(users), "--processes", "2", "-t", "8s",
                          "--attempt-log", str(tmp_path / "a.csv"))
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(tmp_path.glob("a.w*.csv"))
    assert len(files) == 2 and all(len(attempts(f)) > 0 for f in files)
    firsts = [r["device"] for r in attempts(tmp_path / "a.csv") if r["attempt"] == 1 and r["episode"] == 1]
    plan = build_plan(parse_scenario(scenario.read_text()))
    assert sorted(firsts) == [d for d in range(plan.devices) if plan.actions(d)]


# -- keep-alive: a connection the server closed while idle is not a failed attempt -------------------

def test_a_connection_closed_while_idle_is_reopened_not_reported(tmp_path):
    """uvicorn closes a connection after 5 s idle; Retry-After 5 s sends the retries right then
    (a race the client loses about one time in ten): a retry must not become a connection error."""
    users = known_users(tmp_path, 40)
    scenario = flow_scenario(tmp_path, "json", clients=40)
    scenario.write_text(scenario.read_text().replace(
        'service_time = "1ms"', 'service_time = "1ms"\nrate_limit = { rate = 0.1, burst = 1, retry_after = "5s" }'))
    with running_lab(str(scenario), "--credentials", str(users)) as lab:
        done = run_locust(scenario, lab.url, "--credentials", str(users), "-t", "8s",
                          "--attempt-log", str(tmp_path / "a.csv"))
        metrics = lab.metrics()
    assert done.returncode == 0, done.stderr[-2000:]
    rows = attempts(tmp_path / "a.csv")
    retries = [r for r in rows if r["attempt"] == 2]
    assert len(retries) >= 35 and {r["status"] for r in retries} == {429}
    assert metrics['loginstorm_lab_requests_total{endpoint="/api/login"}'] == len(rows)


# -- the web UI: started from the browser's form, the shape plays the storm --------------------------

def test_the_web_ui_runs_the_storm(tmp_path):
    import json
    import socket
    import urllib.request

    scenario = write(tmp_path / "web.toml", STORM.replace("clients = 300", "clients = 40"))
    users = tmp_path / "users.csv"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        web = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", "40", "--serve") as lab:
        ui = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--scenario", str(scenario),
                               "--credentials", str(users), "--host", lab.url, "--web-host", "127.0.0.1",
                               "--web-port", web.rsplit(":", 1)[1]], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        try:
            deadline, started = time.monotonic() + 30, None
            while started is None and time.monotonic() < deadline:
                try:
                    request = urllib.request.Request(f"{web}/swarm", data=b"user_count=1&spawn_rate=1", method="POST")
                    started = json.load(urllib.request.urlopen(request, timeout=5))
                except OSError:
                    time.sleep(0.3)
            assert started and started["success"], started
            episodes = {}
            while time.monotonic() < deadline:
                s = json.load(urllib.request.urlopen(f"{web}/stats/requests", timeout=5))
                episodes = {r["name"]: r for r in s["stats"]}.get("login episode", {})
                if episodes.get("num_requests") == 40:
                    break
                time.sleep(0.5)
            assert s["user_count"] == 40 and episodes.get("num_requests") == 40
            assert lab.metrics()['loginstorm_lab_logins_total{result="success"}'] == 40
        finally:
            ui.terminate()
            _, stderr = ui.communicate(timeout=20)
    assert "Traceback" not in stderr
