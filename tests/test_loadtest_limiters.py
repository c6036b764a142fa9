"""The client's limiters in a load test, and the lab's fault injection: real HTTP on 127.0.0.1.

Every expectation is computed here from the configuration (the breaker's and the quota's
parameters, the fault rate), never taken from a recorded run. The lab is started and stopped by
its PID (tests/lab_process.py); the devices run in Locust's own process (`locust -f`, or
`loginstorm loadtest`), as in tests/test_locust_devices.py.
"""

from __future__ import annotations

import http.client
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab_process import running_lab
from loadtests.measure import measured_run, read_logs
from sim.config import compress_scenario, parse_scenario
from test_locust_devices import attempts, run_locust, stats, write

ROOT = Path(__file__).resolve().parent.parent
M = "loginstorm_lab_"
TOKEN = M + 'requests_total{endpoint="/oauth/token"}'


def sent(rows: list[dict]) -> list[dict]:
    """The attempt-log rows that were requests (not the limiter's own rows)."""
    return [r for r in rows if r["outcome"] not in ("short_circuited", "suppressed")]


# -- a tripped breaker stops the requests the lab sees ----------------------------------------------

BREAKER = """
name = "breaker"
duration = "30s"
seed = 5
[population]
clients = {devices}
[client]
timeout = "2s"
policy = {{ name = "constant", base = "0.3s" }}
[client.limiter]
kind = "breaker"
scope = "{scope}"
window_type = "count"
window = 4
min_calls = 4
threshold = 0.5
open_for = "60s"
half_open_calls = 1
[server]
workers = 4
service_time = "1ms"
fault_rate = 1.0
fault_when = "fast"
[[events]]
at = "0.2s"
kind = "reboot"
[[events]]
at = "2.6s"
kind = "reboot"
"""


@pytest.mark.parametrize("scope, devices", [("shared", 8), ("device", 2)])
def test_a_tripped_breaker_stops_the_requests_the_lab_sees(tmp_path, scope, devices):
    """Every login fails (fault_rate 1, answered at once), so a breaker opens at its min_calls-th
    result and, with open_for far beyond the run, lets nothing through again. --max-rps 5 spaces
    the sends 200 ms apart, so no call is still in flight when a shared breaker opens: the lab
    sees min_calls requests from the whole process (shared). A per-device breaker is each
    device's own, and a reboot restarts the app with a closed one: min_calls per device per
    reboot. (The second reboot reaches devices that are still connecting because the load test's
    plan picks a later event's devices by their planned state, in which every login succeeded.)"""
    scenario = write(tmp_path / "breaker.toml", BREAKER.format(devices=devices, scope=scope))
    s = parse_scenario(scenario.read_text())
    lim, reboots = s.client.build_limiter(), len(s.events)
    assert lim.window >= lim.min_calls and lim.threshold <= 1.0 and lim.open_for > 30
    per_breaker = int(lim.min_calls)              # all failures: it opens at the min_calls-th result
    expected = per_breaker if scope == "shared" else per_breaker * devices * reboots
    users = tmp_path / "users.csv"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", str(devices), "--serve") as lab:
        done = run_locust(scenario, lab.url, "--credentials", str(users), "-t", "7s", "--max-rps", "5",
                          "--attempt-log", str(tmp_path / "a.csv"), "--csv", str(tmp_path / "l"))
        m = lab.metrics()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    rows = attempts(tmp_path / "a.csv")
    requests, short = sent(rows), [r for r in rows if r["outcome"] == "short_circuited"]
    # the lab's own count: what the breaker's parameters predict, and every request a fault
    assert m[TOKEN] == expected == len(requests)
    assert m[M + 'faults_total{when="fast"}'] == expected and m[M + "completed_total"] == 0
    assert {r["status"] for r in requests} == {500}
    # ... while the devices kept calling: short-circuited, locally, for seconds after the last request
    last_sent = max(r["start_s"] + r["seconds"] for r in requests)
    assert len(short) >= 3 * devices
    assert max(r["start_s"] for r in short) > last_sent + 2.0
    assert all(r["seconds"] == 0 and r["status"] == 0 and r["wait_s"] for r in short)   # the policy's delay follows
    if scope == "shared":                          # nothing sent once it was open, reboot or not
        assert min(r["start_s"] for r in short) >= last_sent
        assert {r["episode"] for r in short} == {1, 2}
    else:
        for d in range(devices):
            for episode in range(1, reboots + 1):
                mine = [r for r in requests if r["device"] == d and r["episode"] == episode]
                assert len(mine) == per_breaker
                assert all(r["start_s"] >= max(x["start_s"] for x in mine) for r in short
                           if r["device"] == d and r["episode"] == episode)
    # Locust: the short-circuited calls apart from the attempts, as failures of 0 ms
    s = stats(tmp_path / "l")
    assert int(s["login attempt"]["Request Count"]) == expected
    assert int(s["login short-circuited"]["Request Count"]) == len(short) == int(s["login short-circuited"]
                                                                                 ["Failure Count"])
    assert float(s["login short-circuited"]["Max Response Time"]) == 0


# -- a quota stops the retries after the expected number --------------------------------------------

QUOTA = """
name = "quota"
duration = "3s"
seed = 2
[population]
clients = 1
[client]
timeout = "2s"
max_attempts = 10
policy = {{ name = "constant", base = "0.1s" }}
[client.limiter]
kind = "quota"
capacity = {capacity}
cost = {cost}
[server]
workers = 2
service_time = "1ms"
[[events]]
at = "0.2s"
kind = "reboot"
"""


def test_a_quota_stops_the_retries_and_the_outputs_count_the_suppression(tmp_path):
    """One device, every request failing (the lab's own fault_rate 1): each retry costs `cost`
    of the `capacity`, so the episode sends 1 + floor(capacity / cost) requests, then the quota
    denies the next retry and the episode ends (max_attempts would allow more). `loginstorm
    loadtest` counts the suppression apart from the attempts, and so does its twin, which takes
    the lab's [server] table (the fault rate is the lab's, not in the scenario)."""
    capacity, cost = 10.0, 3.0
    scenario = write(tmp_path / "quota.toml", QUOTA.format(capacity=capacity, cost=cost))
    s = parse_scenario(scenario.read_text())
    per_episode = 1 + math.floor(capacity / cost)
    assert per_episode < s.client.max_attempts and s.server.fault_rate == 0
    users, out = tmp_path / "users.csv", tmp_path / "out"
    with running_lab(str(scenario), "--set", "server.fault_rate=1.0", "--write-credentials", str(users),
                     "--users", "1", "--serve") as lab:
        done = subprocess.run([sys.executable, "-m", "sim.cli", "loadtest", str(scenario), "--host", lab.url,
                               "--out", str(out), "--credentials", str(users), "--replications", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        m = lab.metrics()
    assert done.returncode == 3, done.stderr[-2000:]              # no login succeeded: outputs written
    assert "Traceback" not in done.stderr
    assert m[TOKEN] == per_episode == m[M + 'faults_total{when="fast"}']
    rows = attempts(out / "attempts.csv")
    assert [(r["episode"], r["attempt"], r["outcome"]) for r in rows] == \
        [(1, n, "error") for n in range(1, per_episode + 1)] + [(1, per_episode + 1, "suppressed")]
    # Locust: the suppression is its own entry, and the episode a give-up
    s_ = stats(out / "locust")
    assert int(s_["login attempt"]["Request Count"]) == per_episode
    assert int(s_["login suppressed"]["Request Count"]) == 1
    assert int(s_["login episode"]["Failure Count"]) == 1
    # the outputs: summary.json, the closing lines, versus.json (measured and simulated)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["attempts"], summary["suppressed"], summary["short_circuited"]) == (per_episode, 1, 0)
    assert summary["policy"] == "constant" and summary["limiter"].startswith("quota 10 tokens")
    assert "0 calls short-circuited (not sent), 1 retry suppressed" in done.stdout
    versus = json.loads((out / "versus.json").read_text())
    assert versus["totals"]["suppressed"] == {"measured": 1.0, "simulated": 1.0, "relative_difference": 0.0}
    assert versus["totals"]["attempts"] == {"measured": per_episode, "simulated": per_episode,
                                            "relative_difference": 0.0}
    table = {row["key"]: row for row in versus["server"]}
    assert table["fault_rate"]["value"] == "1" and table["fault_rate"]["source"] == "the lab's own table"
    assert table["fault_when"]["value"] == "fast"
    # the attempt log replayed into the simulator's records: the same counts
    logged, states = read_logs(out / "attempts.csv", out / "states.csv")
    run = measured_run(compress_scenario(s, 1.0), s.duration, [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in logged],
                       states)
    assert (run.summary["attempts"], run.summary["suppressed"]) == (per_episode, 1)
    assert sum(run.timeseries["suppressed"]) == 1


# -- the lab's fault injection -----------------------------------------------------------------------

def _lab_args(**server) -> list[str]:
    return [w for key, value in server.items() for w in ("--set", f"server.{key}={value}")]


def _get(conn: http.client.HTTPConnection) -> tuple[int, str]:
    conn.request("GET", "/basic", headers={"Authorization": "Basic dXNlcjAwMDAxOng="})   # user00001:x
    response = conn.getresponse()
    return response.status, response.read().decode()


def test_the_fault_share_is_the_fault_rate():
    """fault_rate 0.5: the 500s among n requests are Binomial(n, 0.5); 4.5 standard deviations
    either side (fails by chance about once in 150,000 runs). Every other request is served."""
    n, rate = 400, 0.5
    with running_lab("quickstart", *_lab_args(workers=2, service_time="1ms", fault_rate=rate), "--users", "2") as lab:
        conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=10)
        try:
            answers = [_get(conn) for _ in range(n)]
        finally:
            conn.close()
        m = lab.metrics_json()
    faults = [body for status, body in answers if status == 500]
    assert set(faults) <= {'{"error":"server_error"}'}
    assert {status for status, _ in answers} == {401, 500}       # a wrong password, served; or a fault
    sigma = math.sqrt(n * rate * (1 - rate))
    assert abs(len(faults) - n * rate) <= 4.5 * sigma, len(faults)
    assert m["faults_total"] == {"fast": len(faults), "after-service": 0}
    assert m["completed_total"] == n - len(faults) == m["logins_total"]["failure"]


def _parallel(lab, k: int) -> tuple[list[tuple[int, float]], float]:
    """k requests at once, each on its own connection: (status, seconds) each, and the wall time."""
    results: list = [None] * k
    gate = threading.Barrier(k)

    def one(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=10)
        gate.wait()
        t0 = time.monotonic()
        try:
            results[i] = (_get(conn)[0], time.monotonic() - t0)
        finally:
            conn.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.monotonic() - started


@pytest.mark.parametrize("when", ["fast", "after-service"])
def test_a_fast_fault_takes_no_worker_an_after_service_fault_does(when):
    service, k = 0.25, 4
    with running_lab("quickstart", *_lab_args(workers=1, service_time=f"{service}s", fault_rate=1.0, fault_when=when),
                     "--users", "2") as lab:
        assert f"fault_rate=1 {when}" in lab.stdout()
        results, wall = _parallel(lab, k)
        m = lab.metrics_json()
    assert [status for status, _ in results] == [500] * k
    assert m["faults_total"][when] == k
    if when == "fast":             # at once, no worker: far quicker than one service
        assert max(seconds for _, seconds in results) < service
        assert m["completed_total"] == 0 and m["busy_workers_max"] == 0
    else:                          # one worker serves them one after another, checks, then answers 500
        assert wall >= k * service - 0.05
        assert m["completed_total"] == k == m["logins_total"]["fault"]
        assert m["logins_total"]["success"] == m["logins_total"]["failure"] == 0
        assert m["busy_seconds_total"] == pytest.approx(k * service, rel=0.25)
