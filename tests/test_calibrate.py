"""`loginstorm calibrate`: the fit and the identification against their own models, then
against the lab on 127.0.0.1.

The identification's tests feed it probes generated here by an independent little queue and
token-bucket model (not by loadtests), so that a wrong reading fails them. The lab serves a
scenario's `[server]` table; each lab test derives the truth it expects (workers, mean service
time, queue limit, Retry-After) from that scenario, loaded here, never from a recorded run. The
lab's service time is the configured sleep plus its own overhead (a few ms of hashing and
hand-offs), which the 15 % tolerance of the issue absorbs. The real third-party servers are in
tests/test_calibrate_real.py.
"""

from __future__ import annotations

import heapq
import json
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lab_process import ROOT, running_lab
from loadtests.calibrate import Calibration, StepResult, concurrency_levels, fit, run_step
from loadtests.credentials import load_accounts
from loadtests.identify import (burst_from, identify, latency_grew, overload_from, rate_limited, refuses,
                                server_toml, sweep_stop)
from loadtests.probe import Attempt, BurstResult, summarize
from loadtests.storm import StormOptions, load_storm
from loadtests.capacity import parse_capacity
from sim.config import load_scenario
from sim.scenario import Server

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


# --- the identification against little models of a queue and a token bucket ---------------

def queue_probe(rate: float, seconds: float, workers: int, service: float, queue_limit: float = float("inf"),
                rtt: float = 0.001, retry_after: float | None = 2.0) -> list[Attempt]:
    """Open-loop arrivals every 1 / rate to W FIFO workers of constant service and a queue of
    `queue_limit`: an arrival that finds W + queue_limit in the system is refused (503) at once."""
    free = [0.0] * workers                 # when each worker is next free
    ends: list[float] = []                 # departures of the accepted, to count those in the system
    attempts = []
    for k in range(round(rate * seconds)):
        t = k / rate
        in_system = sum(1 for e in ends if e > t)
        if in_system >= workers + queue_limit:
            attempts.append(Attempt(t, t, t + rtt, "rejected", 503, retry_after, False, in_system + 1))
            continue
        begin = max(t, heapq.heappop(free))
        heapq.heappush(free, begin + service)
        ends.append(begin + service + rtt)
        attempts.append(Attempt(t, t, begin + service + rtt, "ok", 200, None, False, in_system + 1))
    return attempts


def bucket_probe(rate: float, seconds: float, bucket_rate: float, bucket: float, latency: float = 0.001,
                 status: int = 429, retry_after: float | None = 1.0) -> list[Attempt]:
    """Open-loop arrivals to a token bucket (full at t = 0) in front of an idle fast server."""
    tokens, last, attempts = bucket, 0.0, []
    for k in range(round(rate * seconds)):
        t = k / rate
        tokens, last = min(bucket, tokens + (t - last) * bucket_rate), t
        if tokens >= 1:
            tokens -= 1
            attempts.append(Attempt(t, t, t + latency, "ok", 200, None, False, 1))
        else:
            attempts.append(Attempt(t, t, t + latency, "rejected", status, retry_after, False, 1))
    return attempts


def closed_fit(workers: int, service: float, levels=(1, 2, 4, 8), rtt: float = 0.001) -> Calibration:
    return fit(model_steps(workers, service, rtt, list(levels)), rtt)


def test_a_token_bucket_is_read_as_a_rate_limit_with_its_rate_burst_status_and_retry_after():
    rate, bucket = 20.0, 11.0                         # nginx rate=20r/s burst=10 nodelay
    calibration = fit(model_steps(1, 1 / 11, 0.0002, [1, 2, 4]), 0.0002)   # what the closed loop saw: ~11/s
    calibration = Calibration(**{**calibration.__dict__, "steps": [
        StepResult(c, 3.0, 36, 33, 3, 0, 0, 0.0004, 0.0004, 0.0006, 1.0) for c in (1, 2, 4)]})
    probes = [summarize(r, 3.0, bucket_probe(r, 3.0, rate, bucket), 0.02) for r in (5.5, 11.0, 22.0, 44.0)]
    assert [refuses(p) for p in probes] == [False, False, False, True]    # 22/s does not empty 11 tokens in 3 s
    assert rate_limited(probes[-1], unloaded=0.0004)
    assert probes[-1].steady_accepted_rps == pytest.approx(rate, rel=0.05)
    burst = BurstResult(sent=40, accepted=11, refused=29, spread_s=0.012, pause_s=1.5, statuses={429: 29})
    ident = identify(calibration, probes, burst, loopback=False, max_rps=None, cores=2)
    assert ident.behaviour == "rate-limited" and ident.refusal_status == [429]
    limit = ident.server["rate_limit"]
    assert limit["rate"] == pytest.approx(rate, rel=0.05) and limit["burst"] == bucket
    assert limit["retry_after"] == "1s"
    assert ident.provenance["rate_limit.burst"].confidence == "high"
    # the fit read the limiter (S = 90 ms for a 0.4-ms login): workers is only a lower bound
    assert ident.provenance["workers"].confidence == "low" and ident.server["workers"] == 4


def test_without_a_burst_probe_the_bucket_comes_from_the_first_logins_of_the_over_rate_probe():
    probe = summarize(44.0, 3.0, bucket_probe(44.0, 3.0, 20.0, 11.0), 0.02)
    ident = identify(closed_fit(1, 0.0004), [probe], None, loopback=False, max_rps=None, cores=2)
    assert ident.server["rate_limit"]["burst"] == pytest.approx(11.0, rel=0.25)
    assert ident.provenance["rate_limit.burst"].confidence == "medium"


def test_burst_from_subtracts_the_whole_tokens_refilled_during_the_burst():
    assert burst_from(BurstResult(40, 11, 29, 0.012, 1.5), 20.0) == 11
    assert burst_from(BurstResult(40, 13, 27, 0.1, 1.5), 20.0) == 11
    assert burst_from(BurstResult(40, 40, 0, 0.01, 1.5), 20.0) is None      # nothing refused: a lower bound


def test_a_worker_bound_server_that_queues_is_read_as_queues_with_no_queue_limit():
    workers, service = 1, 0.05
    calibration = closed_fit(workers, service)
    probes = [summarize(r, 3.0, queue_probe(r, 3.0, workers, service), 0.02) for r in (10.0, 20.0, 40.0)]
    assert not any(refuses(p) for p in probes)
    assert not latency_grew(probes[0], 0.051) and latency_grew(probes[-1], 0.051)
    assert sweep_stop(probes[0], calibration.capacity_rps, 0.051, False) is None
    assert sweep_stop(probes[-1], calibration.capacity_rps, 0.051, False) == "queued"
    ident = identify(calibration, probes, None, loopback=True, max_rps=None, cores=2)
    assert ident.behaviour == "queues" and ident.server["queue_limit"] == "inf"
    assert ident.provenance["queue_limit"].source == "measured"
    assert ident.server["workers"] == workers and ident.refusal_status == []
    assert any("shared with the client's CPU" in w for w in ident.warnings)


@pytest.mark.parametrize("workers, queue_limit", [(1, 10), (4, 20)])
def test_a_full_queue_is_read_as_refuses_with_its_depth_and_retry_after(workers, queue_limit):
    service = 0.05
    calibration = closed_fit(workers, service, levels=(1, 2, 4, 8, 16))
    rate = 2 * workers / service
    probe = summarize(rate, 3.0, queue_probe(rate, 3.0, workers, service, queue_limit), 0.02)
    assert refuses(probe) and not rate_limited(probe, service)
    ident = identify(calibration, [probe], None, loopback=False, max_rps=None, cores=8)
    assert ident.behaviour == "refuses" and ident.refusal_status == [503]
    assert ident.server["queue_limit"] == queue_limit
    assert ident.server["retry_after"] == "2s"


def test_a_probe_the_client_could_not_offer_is_not_read_as_a_server_limit():
    probe = summarize(44.0, 3.0, bucket_probe(44.0, 3.0, 20.0, 11.0), cpu_share=0.95)
    assert sweep_stop(probe, 1000.0, 0.0004, True) == "client"
    ident = identify(closed_fit(1, 0.0004), [probe], None, loopback=False, max_rps=None, cores=2)
    assert ident.behaviour == "queues" and "rate_limit" not in ident.server
    assert any("the client, not the server, was the limit" in w for w in ident.warnings)
    # late starts count too: a probe that started only half its attempts on time
    late = [Attempt(a.slot, a.slot + (0.2 if i % 2 else 0.0), a.end + 0.2, a.kind, a.status, a.retry_after,
                    False, 1) for i, a in enumerate(queue_probe(20.0, 3.0, 4, 0.01))]
    assert summarize(20.0, 3.0, late, 0.1).achieved_rps == pytest.approx(10.0, rel=0.05)
    # and a closed-loop step that kept the client's core busy is named
    busy = closed_fit(4, 0.01)
    busy = Calibration(**{**busy.__dict__, "steps": [*busy.steps[:-1], StepResult(
        **{**busy.steps[-1].__dict__, "client_cpu_share": 0.93})]})
    ident = identify(busy, [], None, loopback=False, max_rps=None, cores=2)
    assert any("the client used 93% of a core in the step with 8 clients" in w for w in ident.warnings)


def test_the_sweep_stops_at_max_rps_and_says_a_limit_above_it_is_hidden():
    probe = summarize(10.0, 3.0, queue_probe(10.0, 3.0, 4, 0.01), 0.02, capped=True)
    assert sweep_stop(probe, 400.0, 0.011, False) == "max_rps"
    ident = identify(closed_fit(4, 0.01), [probe], None, loopback=False, max_rps=10.0, cores=2)
    assert any("max_rps (10/s) capped the probes" in w for w in ident.warnings)


def test_throughput_falling_beyond_the_knee_fills_overload():
    """X(c) = W / (S (1 + p (c - knee))) beyond the knee: the ratio of peak to last throughput gives p back."""
    workers, service, per_request = 2, 0.05, 0.05
    steps = []
    for c in (1, 2, 4, 8, 16):
        x = min(c / service, workers / (service * (1 + per_request * max(0, c - workers))))
        n = round(x * 3.0)
        steps.append(StepResult(c, 3.0, n, n, 0, 0, 0, c / x, c / x, c / x, 1.0))
    table, ratio = overload_from(steps, workers)
    assert table is not None and table["knee"] == workers
    assert table["per_request"] == pytest.approx(per_request, rel=0.05)
    flat = model_steps(workers, service, 0.0, [1, 2, 4, 8, 16])
    assert overload_from(flat, workers)[0] is None


def test_the_calibration_file_loads_into_the_simulators_server_and_names_every_key():
    rate = 40.0
    calibration = closed_fit(1, 0.05)
    probes = [summarize(rate, 3.0, queue_probe(rate, 3.0, 1, 0.05), 0.02)]
    for ident in (identify(calibration, probes, None, loopback=True, max_rps=None, cores=2),
                  identify(closed_fit(1, 0.0004), [summarize(44.0, 3.0, bucket_probe(44.0, 3.0, 20.0, 11.0), 0.02)],
                           BurstResult(40, 11, 29, 0.01, 1.5, {429: 29}), loopback=False, max_rps=None, cores=2)):
        text = server_toml(ident, "http://127.0.0.1:8080", "loginstorm calibrate x --host http://127.0.0.1:8080",
                           "2026-12-07 05:10 UTC")
        data = tomllib.loads(text)
        server = Server.model_validate(data["server"])
        keys = {k for k, v in data["server"].items() if not isinstance(v, dict)}
        keys |= {f"{k}.{n}" for k, v in data["server"].items() if isinstance(v, dict) for n in v}
        absent = {table for table in ("rate_limit", "overload", "concurrency", "codel", "resume")
                  if table not in data["server"]}
        assert keys | absent == set(data["provenance"])      # a table not found is marked measured or assumed too
        assert all(data["provenance"][table]["source"] in ("measured", "assumed") for table in absent)
        assert all(p["source"] in ("measured", "assumed") and p["confidence"] in ("high", "medium", "low")
                   for p in data["provenance"].values())
        assert data["calibration"]["behaviour"] == ident.behaviour
        assert data["calibration"]["warnings"] == ident.warnings
        assert server.cancel_on_timeout is False and server.discipline == "fifo"
        if ident.behaviour == "rate-limited":
            assert server.rate_limit.rate == pytest.approx(20.0, rel=0.05) and server.rate_limit.retry_after == 1.0
        else:
            assert server.queue_limit == float("inf") and server.workers == 1


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
                                            "--step-seconds", "2", "--warmup", "0.5", "--json",
                                            "--out", str(tmp_path / "server.toml")])
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
    # beyond the capacity the lab (queue_limit 100000) queues: the probes saw no refusal
    ident = calibration["identification"]
    assert ident["behaviour"] == "queues" and ident["server"]["queue_limit"] == "inf"
    assert any(p["offered_rps"] >= 1.3 * calibration["capacity_rps"] for p in calibration["probes"])
    written = tomllib.loads((tmp_path / "server.toml").read_text())
    assert Server.model_validate(written["server"]).workers == calibration["workers"]
    assert f"--capacity {tmp_path / 'server.toml'}" in result.stderr
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
                                            "--step-seconds", "6", "--warmup", "0.5", "--json", "--no-probes",
                                            "--out", str(tmp_path / "server.toml")])
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
        t0 = time.perf_counter()
        result = CliRunner().invoke(cli(), ["calibrate", str(path), "--host", lab.url, "--credentials", str(users),
                                            "--step-seconds", "1", "--warmup", "0.3", "--json",
                                            "--out", str(tmp_path / "server.toml")])
        elapsed = time.perf_counter() - t0
        served = lab.metrics_json()["requests_total"]["/oauth/token"]
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)
    steps = calibration["steps"]
    assert [(s["concurrency"], s["capped"]) for s in steps] == [(1, False), (2, True)]
    assert steps[1]["attempts"] <= max_rps * steps[1]["seconds"] + 1
    assert served <= max_rps * elapsed + 2 * 3          # never above max_rps, steps and probes alike
    assert all(p["offered_rps"] <= max_rps for p in calibration["probes"])
    assert any("max_rps" in w for w in calibration["identification"]["warnings"])
    assert (calibration["workers"], calibration["saturated"]) == (1, False)   # a lower bound: 1 step left
    assert calibration["service_time_s"] == pytest.approx(0.1, rel=TOLERANCE)
    assert "max_rps held back the step with 2 clients" in result.stderr


def test_calibrate_reads_a_full_lab_queue_as_refusals_with_its_depth_and_retry_after(tmp_path):
    """2 workers of 50 ms and a queue of 10: beyond 40 logins/s the lab answers 503 + Retry-After: 2."""
    path = scenario_file(tmp_path, 2, '"50ms"')
    path.write_text(path.read_text().replace("queue_limit = 100000", 'queue_limit = 10\nretry_after = "2s"'))
    truth = load_scenario(path).server
    users = tmp_path / "users.csv"
    with running_lab(str(path), "--write-credentials", str(users), "--users", "50", "--serve") as lab:
        args = ["calibrate", str(path), "--host", lab.url, "--credentials", str(users), "--step-seconds", "1.5",
                "--warmup", "0.3", "--json", "--max-concurrency", "8", "--out", str(tmp_path / "server.toml")]
        result = CliRunner().invoke(cli(), args)
        if result.exit_code == 0 and any("the client, not the server, was the limit" in w for w in
                                         json.loads(result.stdout)["identification"]["warnings"]):
            result = CliRunner().invoke(cli(), args)     # a busy machine held the client back: once more
    assert result.exit_code == 0, result.output
    ident = json.loads(result.stdout)["identification"]
    assert ident["behaviour"] == "refuses" and ident["refusal_status"] == [503]
    assert ident["server"]["workers"] == truth.workers
    assert ident["server"]["queue_limit"] == pytest.approx(truth.queue_limit, abs=3)
    assert ident["server"]["retry_after"] == "2s"
    server = Server.model_validate(tomllib.loads((tmp_path / "server.toml").read_text())["server"])
    assert server.retry_after == truth.retry_after


def test_a_step_on_a_slow_endpoint_is_lengthened_until_it_holds_enough_logins(tmp_path):
    """1 worker of 200 ms: 5 logins/s, so a 1-s step holds 5; asked for 12 it runs 3 s (and no longer)."""
    path = scenario_file(tmp_path, 1, '"200ms"')
    users = tmp_path / "users.csv"
    with running_lab(str(path), "--write-credentials", str(users), "--users", "5", "--serve") as lab:
        storm = load_storm(StormOptions(str(path), credentials=str(users)), plan=False)
        short = run_step(storm, lab.url, 1, 1.0, 0.2, 5.0)
        long = run_step(storm, lab.url, 1, 1.0, 0.2, 5.0, min_logins=12, max_seconds=6.0)
        capped = run_step(storm, lab.url, 1, 1.0, 0.2, 5.0, min_logins=100, max_seconds=2.0)
    assert short.seconds == pytest.approx(1.0) and short.successes <= 6
    assert long.seconds == pytest.approx(3.0) and long.successes >= 12
    assert capped.seconds == pytest.approx(2.0)
