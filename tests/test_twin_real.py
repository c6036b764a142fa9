"""The twin of a real server: `loginstorm loadtest --capacity FILE` against Django under gunicorn.

One sync worker (tests/realservers.py), whose configuration is known: 1 worker, a login costs
what the harness timed, and it never refuses (a request waits in the listen backlog until the
worker takes it, even after its client gave up). A short storm is replayed against it twice
from one command each: with the right [server] table the new verdict agrees; with a wrong one
(a queue limit of 5 that refuses, which this server does not have) it diverges on the split of
outcomes. The tables are written here as `loginstorm calibrate --out` writes them. Bounded
traffic: 60 devices, a 16-second story. Skips, with the reason, where the server cannot be
installed (LOGINSTORM_INSTALL_SERVERS=0: never install).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import realservers as rs

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 60_000          # PBKDF2-SHA256: about 20 ms a login on this project's machines

STORM = """
name = "twin-real"
description = "60 devices reboot within 0.5 s and log in again against one gunicorn worker"
duration = "16s"
resolution = "1s"
seed = 3
[population]
clients = 60
[client]
timeout = "1.5s"
policy = {policy}
[server]                       # the scenario's own guess, which --capacity FILE replaces
workers = 4
service_time = "5ms"
queue_limit = 20
retry_after = "5s"
[[events]]
at = "4s"
kind = "reboot"
fraction = 1.0
spread = {{ dist = "uniform", low = "0s", high = "0.5s" }}
downtime = "0.5s"
"""


def server_toml(workers: int, service_s: float, queue_limit: str, note: str) -> str:
    """A [server] table with its [provenance], in the format of `loginstorm calibrate --out`."""
    limit = '"inf"' if queue_limit == "inf" else queue_limit
    return (f'[server]\nworkers = {workers}\nservice_time = "{service_s * 1000:.2f}ms"\nqueue_limit = {limit}\n'
            f'retry_after = "1s"\ncancel_on_timeout = false\ndiscipline = "fifo"\n\n[provenance]\n'
            f'workers = {{ source = "measured", confidence = "high", note = "{note}" }}\n'
            f'service_time = {{ source = "measured", confidence = "high", note = "{note}" }}\n'
            f'queue_limit = {{ source = "measured", confidence = "medium", note = "{note}" }}\n'
            f'cancel_on_timeout = {{ source = "assumed", confidence = "low", note = "gunicorn finishes abandoned '
            f'requests" }}\n\n[calibration]\nbehaviour = "queues"\nwarnings = []\n')


@pytest.fixture(scope="module")
def django_one_worker(tmp_path_factory):
    try:
        with rs.running_django(tmp_path_factory.mktemp("django1"), workers=1, iterations=ITERATIONS, users=16,
                               samples=9) as server:
            yield server
    except rs.Unavailable as exc:
        pytest.skip(f"no Django auth server: {exc}")


def _drained(server, quick_s: float = 0.3, limit_s: float = 120.0) -> None:
    """Until /healthz answers within `quick_s`: the worker has finished the requests abandoned by the
    previous storm's clients (it never drops them), so the next storm meets an idle server."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        start = time.monotonic()
        rs.request(server.url, "GET", server.health_path, timeout=limit_s)
        if time.monotonic() - start < quick_s:
            return
    pytest.fail(f"the server was still busy {limit_s:.0f} s after the storm")


def _run(server, scenario: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "sim.cli", "loadtest", str(scenario), "--host", server.url,
                           "--out", str(out), "--credentials", str(server.credentials), "-q", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **server.env()})
    assert done.returncode == 0, done.stderr[-3000:]
    for secret in server.env().values():
        assert secret not in done.stdout + done.stderr
    return done


def _storm(server, tmp_path: Path, policy: str) -> tuple[Path, Path]:
    """The storm against the real server, once; its logs are measured again beside each twin."""
    _drained(server)
    scenario = tmp_path / "storm.toml"
    scenario.write_text(STORM.format(policy=policy) + server.target_toml("oauth2-password"))
    _run(server, scenario, tmp_path / "storm", "--capacity", "none")
    return scenario, tmp_path / "storm"


def _busy_service_time(logs: Path) -> float:
    """The worker's time per request during the storm: from the first attempt to the last login, over the
    requests it had to work through by then (the logins, and the attempts abandoned before the last login
    was sent: it never drops them, and its listen backlog is first come, first served)."""
    rows = list(csv.DictReader((logs / "attempts.csv").open()))
    ok = [r for r in rows if r["outcome"] == "ok"]
    last = max(ok, key=lambda r: float(r["start_s"]) + float(r["seconds"]))
    worked = len(ok) + sum(r["outcome"] == "timeout" and float(r["start_s"]) < float(last["start_s"]) for r in rows)
    first = min(float(r["start_s"]) for r in rows)
    return (float(last["start_s"]) + float(last["seconds"]) - first) / worked


def _twin(server, scenario: Path, logs: Path, capacity: Path, out: Path) -> dict:
    _run(server, scenario, out, "--from-logs", str(logs), "--capacity", str(capacity), "--replications", "3")
    return json.loads((out / "versus.json").read_text())


def _beyond(result: dict) -> list[str]:
    return [f"{m['name']}: {m['measured']} vs {m['simulated']}" for m in result["measures"] if not m["ok"]]


@pytest.mark.parametrize("policy", ['"none"', '{ name = "full-jitter", base = "0.5s", cap = "4s" }'],
                         ids=["none", "full-jitter"])
def test_the_twin_of_the_real_server_agrees_and_a_wrong_model_diverges(django_one_worker, tmp_path, policy):
    server = django_one_worker
    scenario, logs = _storm(server, tmp_path, policy)
    # One worker that queues without refusing is the harness's configuration. The time per login is the one the
    # storm itself shows: the harness's sequential timing understates it by 1.5-2x on two cores shared with the
    # load generator (the case calibrate must measure under load; issue 17, item 2).
    service = _busy_service_time(logs)
    assert 0.5 * server.cost_min_s["oauth2-password"] < service < 6 * server.cost_min_s["oauth2-password"]
    right = tmp_path / "right.toml"
    right.write_text(server_toml(1, service, "inf", "the harness's configuration"))
    agreed = _twin(server, scenario, logs, right, tmp_path / "right")
    sources = {r["key"]: r["source"] for r in agreed["server"]}
    assert sources["workers"] == "measured by calibrate (confidence high)"
    assert agreed["counts"]["measured"]["rejected"] == 0          # this server never refuses
    assert agreed["verdict"]["ok"], (agreed["verdict"]["text"], _beyond(agreed))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(server_toml(1, service, "5", "a queue limit this server does not have"))
    diverged = _twin(server, scenario, logs, wrong, tmp_path / "wrong")
    assert not diverged["verdict"]["ok"], diverged["verdict"]["text"]
    assert "share refusals" in diverged["verdict"]["beyond"], _beyond(diverged)
