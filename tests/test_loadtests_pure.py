"""The gevent-free half of loadtests/: flows, credentials, the storm's plan, the options check, and
the load test's options on their way from the command line to Locust and back."""

from __future__ import annotations

import argparse
import base64
import email.utils
import json
import time
from collections import deque
from pathlib import Path
from urllib.parse import parse_qs, unquote

import numpy as np
import pytest

from loadtests.attemptlog import recent_rates
from loadtests.credentials import Account, Accounts, CredentialsError, Secret, load_accounts, resolve
from loadtests.flows import (ERROR, FAILED, OK, REJECTED, Reply, build_flow, find_input, judge,
                             parse_retry_after)
from loadtests.options import OPTIONS, add_locust_options, locust_argv, storm_options
from loadtests.plan import DROP, LOGIN, REBOOT, build_plan
from loadtests.storm import LAB_TARGET, StormError, StormOptions, host_allowed, load_storm
from sim.config import load_scenario, parse_scenario
from sim.scenario import Target

PASSWORD, SECRET = "pa:ss w&rd=1", "s3cr%t:x"
ACCOUNT = Account("alice@example.com", Secret(PASSWORD))


def run_flow(flow, replies):
    """Drive a flow with canned replies; return the steps it sent and its outcome."""
    steps, gen = [], flow()
    step = next(gen)
    try:
        for reply in replies:
            steps.append(step)
            step = gen.send(reply)
    except StopIteration as done:
        return steps, done.value
    raise AssertionError("the flow wanted more steps than replies given")


def ok_json(**body):
    return Reply(200, {"Content-Type": "application/json"}, json.dumps(body))


# -- Retry-After and judging -----------------------------------------------------------------------

def test_retry_after_forms():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1.0)


@pytest.mark.parametrize("status, kind", [(200, OK), (429, REJECTED), (503, REJECTED), (500, ERROR),
                                          (401, FAILED), (400, FAILED), (0, ERROR)])
def test_judge_kinds(status, kind):
    reply = Reply(status, {"retry-after": "3"}, json.dumps({"access_token": "t"}))
    outcome = judge(reply, [200], "access_token")
    assert outcome.kind == kind
    if kind == REJECTED:
        assert outcome.retry_after == 3.0 and outcome.message == f"HTTP {status}"


def test_judge_needs_the_json_field():
    assert judge(ok_json(token_type="Bearer"), [200], "access_token").kind == FAILED
    assert judge(Reply(200, {}, "<html>"), [200], "access_token").message == "the body is not JSON"
    good = judge(ok_json(access_token="abc"), [200], "access_token")
    assert good.ok and good.token == "abc" and "abc" not in repr(good)


def test_judge_keeps_a_bearer_token_it_was_not_asked_for():
    assert judge(ok_json(access_token="abc"), [200], None).token == "abc"       # for the heartbeat
    assert judge(ok_json(access_token="abc", user="u"), [200], "user").token == "abc"
    assert judge(Reply(200, {}, "<html>{"), [200], None).token is None
    assert judge(Reply(200, {}, "{not json"), [200], None).ok


# -- flows ------------------------------------------------------------------------------------------

def target(**kw):
    return Target.model_validate({"host": "http://127.0.0.1:1", **kw})


def test_client_credentials_basic_header_is_rfc6749_encoded():
    t = target(flow="oauth2-client-credentials", path="/oauth/token", client_auth="basic")
    steps, outcome = run_flow(build_flow(t, None, ("my client", Secret(SECRET))), [ok_json(access_token="x")])
    (step,) = steps
    assert step.method == "POST" and step.path == "/oauth/token"
    assert parse_qs(step.body) == {"grant_type": ["client_credentials"]}
    user, _, secret = base64.b64decode(step.headers["Authorization"].split()[1]).decode().partition(":")
    assert (unquote(user), unquote(secret)) == ("my client", SECRET)    # form-encoded, then base64
    assert outcome.ok


def test_password_grant_with_client_in_the_body():
    t = target(flow="oauth2-password", path="/token", client_auth="body")
    steps, _ = run_flow(build_flow(t, ACCOUNT, ("cid", Secret(SECRET))), [ok_json(access_token="x")])
    fields = parse_qs(steps[0].body)
    assert fields == {"grant_type": ["password"], "username": [ACCOUNT.username], "password": [PASSWORD],
                      "client_id": ["cid"], "client_secret": [SECRET]}
    assert "Authorization" not in steps[0].headers


def test_client_credentials_without_a_client_uses_the_devices_account():
    t = target(flow="oauth2-client-credentials", client_auth="body")
    steps, _ = run_flow(build_flow(t, ACCOUNT), [ok_json(access_token="x")])
    assert parse_qs(steps[0].body)["client_secret"] == [PASSWORD]


def test_form_flow_reads_the_csrf_token_and_posts_it():
    t = target(flow="form", path="/login", fields={"csrf": "csrf_token"}, success={"status": [200]})
    page = Reply(200, {}, '<form><input name="username"><input type=hidden name=csrf_token value="T0k-1"></form>')
    steps, outcome = run_flow(build_flow(t, ACCOUNT), [page, Reply(200, {}, "Welcome")])
    assert [s.method for s in steps] == ["GET", "POST"]
    assert parse_qs(steps[1].body) == {"username": [ACCOUNT.username], "password": [PASSWORD],
                                       "csrf_token": ["T0k-1"]}
    assert outcome.ok


def test_form_flow_without_the_csrf_field_fails_cleanly():
    t = target(flow="form", path="/login", fields={"csrf": "csrf_token"})
    _, outcome = run_flow(build_flow(t, ACCOUNT), [Reply(200, {}, "<form></form>")])
    assert outcome.kind == FAILED and "CSRF" in outcome.message
    _, outcome = run_flow(build_flow(t, ACCOUNT), [Reply(503, {"Retry-After": "4"}, "")])
    assert outcome.kind == REJECTED and outcome.retry_after == 4.0     # the form page itself refused


def test_json_and_basic_flows():
    t = target(flow="json", path="/api/login", fields={"username": "user", "password": "pw"})
    steps, _ = run_flow(build_flow(t, ACCOUNT), [ok_json()])
    assert json.loads(steps[0].body) == {"user": ACCOUNT.username, "pw": PASSWORD}
    t = target(flow="basic", path="/basic")
    steps, outcome = run_flow(build_flow(t, ACCOUNT), [Reply(401, {}, "")])
    assert base64.b64decode(steps[0].headers["Authorization"][6:]).decode() == f"{ACCOUNT.username}:{PASSWORD}"
    assert outcome.kind == FAILED and outcome.message == "HTTP 401"


def test_find_input_attribute_orders():
    assert find_input("<INPUT value='v' NAME='c'>", "c") == "v"
    assert find_input('<input name="other" value="x">', "c") is None


def test_no_secret_in_reprs():
    t = target(flow="oauth2-password", client_auth="basic")
    steps, _ = run_flow(build_flow(t, ACCOUNT, ("cid", Secret(SECRET))), [ok_json(access_token="x")])
    text = repr(steps) + repr(ACCOUNT) + str(ACCOUNT.password)
    assert PASSWORD not in text and SECRET not in text and "***" in text


# -- credentials ----------------------------------------------------------------------------------

def test_accounts_wrap_round(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text("username,password\nu1,p1\nu2,p2\nu3,p3\n")
    accounts = Accounts(load_accounts(path))
    assert [accounts.for_device(d).username for d in range(7)] == ["u1", "u2", "u3", "u1", "u2", "u3", "u1"]


@pytest.mark.parametrize("text, expected", [("user,pass\nu,topsecret\n", "header"),
                                            ("username,password\n", "no credential rows"),
                                            ("username,password\n,topsecret\n", ":2: a row needs")])
def test_bad_credentials_files(tmp_path, text, expected):
    path = tmp_path / "users.csv"
    path.write_text(text)
    with pytest.raises(CredentialsError) as err:
        load_accounts(path)
    assert expected in str(err.value) and "topsecret" not in str(err.value)


def test_env_references():
    assert resolve("${X_PW}", "target.password", {"X_PW": "v"}) == "v"
    with pytest.raises(CredentialsError, match=r"\$\{X_PW\}, which is not set"):
        resolve("${X_PW}", "target.password", {})


# -- the plan ---------------------------------------------------------------------------------------

STORY = """
name = "plan-test"
duration = "1h"
seed = 7
[population]
clients = 2000
online_at_start = 0.75
[client]
timeout = "5s"
[server]
workers = 2
service_time = "40ms"
[[events]]
at = "5m"
kind = "reboot"
fraction = 0.4
spread = { dist = "uniform", low = "0s", high = "30s" }
downtime = "45s"
[[events]]
at = "20m"
kind = "login"
fraction = 0.5
spread = "1m"
[[events]]
at = "30m"
kind = "disconnect"
fraction = 0.1
[[events]]
at = "40m"
kind = "capacity"
factor = 2.0
"""


def test_plan_follows_the_events_rules():
    s = parse_scenario(STORY)
    plan = build_plan(s)
    online = int(round(0.75 * 2000))
    assert plan.devices == 2000 and plan.online_at_start.sum() == online
    rows = [(d, *a) for d in range(plan.devices) for a in plan.actions(d)]
    reboots = [r for r in rows if r[2] == REBOOT]
    assert len(reboots) == round(0.4 * online)                                # exactly round(f x eligible)
    assert all(plan.online_at_start[d] for d, *_ in reboots)                  # only ONLINE devices
    assert all(300 <= t <= 330 and arg == 45 for _, t, _, arg in reboots)
    logins = [r for r in rows if r[2] == LOGIN]
    assert len(logins) == round(0.5 * (2000 - online))                        # OFFLINE ones, not rebooting
    assert not any(plan.online_at_start[d] for d, *_ in logins)
    drops = [r for r in rows if r[2] == DROP]
    eligible = online + len(logins)              # by 30m every rebooted device is back, newcomers joined
    assert len(drops) == round(0.1 * eligible) and all(t == 1800 for _, t, *_ in drops)
    assert plan.server_side == ("capacity",)
    again = build_plan(parse_scenario(STORY))
    assert all(plan.actions(d) == again.actions(d) for d in range(plan.devices))


def test_speed_divides_the_story_times_only():
    s = parse_scenario(STORY)
    slow, fast = build_plan(s), build_plan(s, speed=10)
    assert fast.duration == pytest.approx(slow.duration / 10)
    for d in range(plan_devices := slow.devices):
        a, b = slow.actions(d), fast.actions(d)
        assert [k for _, k, _ in a] == [k for _, k, _ in b]
        assert [x / 10 for t, _, arg in a for x in (t, arg)] == pytest.approx([x for t, _, arg in b for x in (t, arg)])
    assert plan_devices == fast.devices


def test_login_rate_arrivals_are_poisson():
    text = STORY.replace("online_at_start = 0.75", "online_at_start = 0.75\nlogin_rate = 0.5")
    counts = [build_plan(parse_scenario(text, seed=seed)).arrivals for seed in range(30)]
    # Poisson(rate x duration): mean 1800, sd 42.4; the mean of 30 runs has sd 7.7
    assert np.mean(counts) == pytest.approx(0.5 * 3600, abs=4 * 7.75)
    assert np.std(counts) == pytest.approx(np.sqrt(1800), rel=0.4)


# -- options ----------------------------------------------------------------------------------------

def test_host_allowed():
    assert host_allowed("http://localhost:8080", [])
    assert host_allowed("https://auth.staging.example.com", ["auth.staging.example.com"])
    assert not host_allowed("https://auth.example.org", ["auth.staging.example.com"])
    assert not host_allowed("https://127.0.0.1.example.org", [])


def test_storm_needs_credentials_and_names_the_fix(tmp_path):
    with pytest.raises(StormError, match="--credentials users.csv"):
        load_storm(StormOptions("quickstart", scale=0.01, environ={}))
    users = tmp_path / "u.csv"
    users.write_text("username,password\nu,p\n")
    storm = load_storm(StormOptions("quickstart", scale=0.01, policy="full-jitter", speed=5, credentials=str(users)))
    assert storm.target == LAB_TARGET and storm.policy.name == "full-jitter"
    assert storm.plan.duration == pytest.approx(load_scenario("quickstart").duration / 5)


def test_storm_target_file(tmp_path):
    path = tmp_path / "target.toml"
    path.write_text('[target]\nhost = "http://127.0.0.1:9"\nflow = "basic"\npath = "/basic"\n'
                    'username = "${LS_USER}"\npassword = "${LS_PW}"\n')
    storm = load_storm(StormOptions("quickstart", scale=0.01, target=str(path),
                                    environ={"LS_USER": "bob", "LS_PW": PASSWORD}))
    assert storm.target.flow == "basic" and storm.accounts.for_device(3).username == "bob"
    path.write_text('[target]\nhost = "http://127.0.0.1:9"\nflow = "basic"\npassword = "plain"\n')
    with pytest.raises(StormError) as err:
        load_storm(StormOptions("quickstart", scale=0.01, target=str(path)))
    assert "plain" not in str(err.value)


def test_the_progress_rates_cover_the_last_ten_seconds_and_fall_to_zero_when_attempts_stop():
    rng = np.random.default_rng(5)
    t = np.cumsum(rng.uniform(0.5, 1.5, 60))                       # the watcher's ~1 s samples
    attempts = np.cumsum(rng.integers(0, 40, 60))
    attempts[40:] = attempts[39]                                    # the storm is over
    failures = np.minimum(attempts, np.cumsum(rng.integers(0, 15, 60)))
    failures[40:] = failures[39]
    samples = deque([(0.0, 0, 0)])
    times, n, f = np.r_[0.0, t], np.r_[0, attempts], np.r_[0, failures]
    for k in range(1, 61):
        samples.append((times[k], n[k], f[k]))
        rate, fail_rate = recent_rates(samples)
        i = max([0] + [j for j in range(k) if times[j] <= times[k] - 10.0])   # the newest sample 10 s back
        assert rate == pytest.approx((n[k] - n[i]) / (times[k] - times[i]))
        assert fail_rate == pytest.approx((f[k] - f[i]) / (times[k] - times[i]))
    assert rate == 0.0 and fail_rate == 0.0



# --- the load test's options: declared once (loadtests/options.py), generated everywhere ---------

def _locust_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_locust_options(parser)
    return parser


@pytest.mark.parametrize("storm", [
    StormOptions("quickstart"),
    StormOptions("scenarios/skype-2007.toml", sets=("server.workers=3", 'target={host="h", flow="basic"}'),
                 scale=0.25, speed=10.0, policy="full-jitter", credentials="users.csv", target="t.toml", seed=0),
])
def test_a_storm_comes_back_whole_from_locusts_command_line(storm):
    assert storm_options(_locust_parser().parse_args(locust_argv(storm, None))) == storm


def test_locust_gets_the_stop_rules_in_seconds_and_only_when_given():
    from loadtests.command import LoadtestOptions
    run = LoadtestOptions(StormOptions("quickstart"), "http://127.0.0.1:8080", Path("out"), max_rps=5,
                          stop_after=90.0, stop_on_p99=2.5)
    parsed = _locust_parser().parse_args(locust_argv(run.storm, run, attempt_log="a.csv", progress=True))
    assert (parsed.max_rps, parsed.stop_after, parsed.stop_on_p99, parsed.stop_on_error_rate) == (5.0, 90.0, 2.5, 0.0)
    assert (parsed.attempt_log, parsed.state_log, parsed.progress) == ("a.csv", "", True)
    assert "--stop-on-error-rate" not in locust_argv(run.storm, run)
    assert parsed.keep_going is False and "--keep-going" not in locust_argv(run.storm, run)


def test_keep_going_reaches_locust_only_when_given():
    from dataclasses import replace

    from loadtests.command import LoadtestOptions
    run = LoadtestOptions(StormOptions("quickstart"), None, Path("out"), keep_going=True)
    argv = locust_argv(run.storm, run)
    assert argv.count("--keep-going") == 1 and _locust_parser().parse_args(argv).keep_going is True
    assert "--keep-going" not in locust_argv(run.storm, replace(run, keep_going=False))


def test_loginstorm_loadtest_and_locust_take_the_declared_options():
    from typer.main import get_command

    from sim.cli import app
    typer_flags = {flag for p in get_command(app).get_command(None, "loadtest").params for flag in p.opts}
    locust_flags = {flag for action in _locust_parser()._actions for flag in action.option_strings}
    assert {o.flag for o in OPTIONS if o.cli and o.flag} <= typer_flags
    assert {o.locust for o in OPTIONS if o.locust} <= locust_flags
    # the names the README's distributed recipe uses
    assert {"--scenario", "--set", "--scale", "--speed", "--policy", "--credentials", "--target", "--storm-seed",
            "--attempt-log", "--state-log", "--progress", "--max-rps", "--stop-after"} <= locust_flags
