"""The lab auth server over real HTTP on 127.0.0.1: endpoints, the admission model, hang-ups, secrets.

The endpoint tests share one lab process (tests/lab_process.py); every other test starts its own,
configured with `--set`, and derives what it expects from that configuration (the scenario loaded
here with the same overrides), never from a recorded run.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import http.client
import json
import math
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from typer.testing import CliRunner

from lab_process import ROOT, running_lab
from sim.cli import app
from sim.config import load_scenario
from sim.scenario import Server

USERS = {"alice": "pw-alice-9Qx", "bob@lab": "p:ss w%rd&=+"}   # a colon, a space, %, &, =, + in a password
CLIENT_ID, CLIENT_SECRET = "lab-client", "cl13nt:S3cret/+"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    text: str
    sent: float                      # time.monotonic() when the request went out
    done: float                      # ... and when the answer was in

    def json(self):
        return json.loads(self.text)


def call(lab, method: str, path: str, body: str | None = None, headers: dict | None = None,
         timeout: float = 10.0) -> Reply:
    """One request on its own connection (closed afterwards: a timeout is a hang-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=timeout)
    sent = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        text = response.read().decode()
        return Reply(response.status, response.headers, text, sent, time.monotonic())
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def oauth_basic(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 2.3.1: id and secret form-urlencoded, then HTTP Basic."""
    return basic(quote(client_id, safe=""), quote(secret, safe=""))


def token_login(lab, username: str, password: str) -> Reply:
    return call(lab, "POST", "/api/login", json.dumps({"username": username, "password": password}),
                {"Content-Type": "application/json"})


def in_parallel(jobs, starts: list[float] | None = None) -> list:
    """Run callables in threads, released together (or each `starts[i]` s later); their results in order."""
    results: list = [None] * len(jobs)
    gate = threading.Barrier(len(jobs))

    def run(i, job):
        gate.wait()
        time.sleep(starts[i] if starts else 0.0)
        try:
            results[i] = job()
        except Exception as exc:  # noqa: BLE001 - a timeout is a result here
            results[i] = exc
    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def wait_for(lab, predicate, limit: float = 5.0, read=None) -> dict:
    """Poll /metrics (or `read`, e.g. `lab.metrics_json`) until `predicate(metrics)` holds; returns the
    metrics (the test asserts)."""
    deadline = time.monotonic() + limit
    while True:
        metrics = (read or lab.metrics)()
        if predicate(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.05)


def sets(**server) -> list[str]:
    """`server.key=value` overrides, as `load_scenario` takes them."""
    return [f"server.{key}={value}" for key, value in server.items()]


def args(overrides: list[str]) -> list[str]:
    """The same overrides on the command line."""
    return [word for item in overrides for word in ("--set", item)]


def expected_header(seconds: float) -> str | None:
    """Retry-After as the lab documents it: whole seconds rounded up, a decimal below 1 s, none for 0."""
    if seconds == 0:
        return None
    return str(math.ceil(seconds)) if seconds >= 1 else f"{seconds:g}"


def users_file(path: Path, users: dict[str, str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["username", "password"])
        writer.writerows(users.items())
    return path


M = "loginstorm_lab_"


# -- the endpoints --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    users = users_file(tmp_path_factory.mktemp("lab") / "users.csv", USERS)
    env = {"LOGINSTORM_CLIENT_ID": CLIENT_ID, "LOGINSTORM_CLIENT_SECRET": CLIENT_SECRET}
    with running_lab("--credentials", str(users), *args(sets(service_time="1ms", workers=4)), env=env) as lab:
        yield lab


def me(lab, **headers) -> Reply:
    return call(lab, "GET", "/me", headers=headers)


@pytest.mark.parametrize("user", list(USERS))
def test_oauth_password_grant(lab, user):
    form = {"grant_type": "password", "username": user, "password": USERS[user]}
    ok = call(lab, "POST", "/oauth/token", urlencode(form), FORM)
    assert ok.status == 200, ok.text
    body = ok.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0 and len(body["access_token"]) >= 32
    assert ok.headers["Cache-Control"] == "no-store"
    assert me(lab, Authorization=f"Bearer {body['access_token']}").json() == {"user": user}
    bad = call(lab, "POST", "/oauth/token", urlencode({**form, "password": USERS[user] + "x"}), FORM)
    assert (bad.status, bad.json()) == (400, {"error": "invalid_grant"})
    assert USERS[user] not in bad.text


def test_oauth_password_grant_checks_client_auth_when_given(lab):
    form = {"grant_type": "password", "username": "alice", "password": USERS["alice"]}
    ok = call(lab, "POST", "/oauth/token", urlencode(form), {**FORM, **oauth_basic(CLIENT_ID, CLIENT_SECRET)})
    assert ok.status == 200
    bad = call(lab, "POST", "/oauth/token", urlencode(form), {**FORM, **oauth_basic(CLIENT_ID, "nope")})
    assert (bad.status, bad.json()) == (401, {"error": "invalid_client"})
    assert bad.headers["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.parametrize("client", [(CLIENT_ID, CLIENT_SECRET), ("bob@lab", USERS["bob@lab"])],
                         ids=["configured-client", "user-as-client"])
@pytest.mark.parametrize("how", ["basic", "body"])
def test_oauth_client_credentials(lab, client, how):
    client_id, secret = client
    form, headers = {"grant_type": "client_credentials"}, dict(FORM)
    if how == "basic":
        headers.update(oauth_basic(client_id, secret))
        wrong = {**FORM, **oauth_basic(client_id, secret + "x")}
        wrong_form = form
    else:
        form.update(client_id=client_id, client_secret=secret)
        wrong, wrong_form = FORM, {**form, "client_secret": secret + "x"}
    ok = call(lab, "POST", "/oauth/token", urlencode(form), headers)
    assert ok.status == 200, ok.text
    assert me(lab, Authorization=f"Bearer {ok.json()['access_token']}").json() == {"user": client_id}
    bad = call(lab, "POST", "/oauth/token", urlencode(wrong_form), wrong)
    assert (bad.status, bad.json()) == (401, {"error": "invalid_client"})
    assert "WWW-Authenticate" in bad.headers


@pytest.mark.parametrize("form, headers, status, error", [
    ({"grant_type": "client_credentials"}, {}, 401, "invalid_client"),                       # no client auth
    ({"grant_type": "authorization_code", "code": "x"}, {}, 400, "unsupported_grant_type"),
    ({"username": "alice"}, {}, 400, "invalid_request"),                                    # no grant_type
    ({"grant_type": "password", "username": "alice"}, {}, 400, "invalid_request"),          # no password
    ({"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
     oauth_basic(CLIENT_ID, CLIENT_SECRET), 400, "invalid_request"),                         # two methods
])
def test_oauth_errors(lab, form, headers, status, error):
    reply = call(lab, "POST", "/oauth/token", urlencode(form), {**FORM, **headers})
    assert (reply.status, reply.json()) == (status, {"error": error})


def login_page(lab) -> tuple[str, str]:
    """GET /login: (the lab_csrf cookie, the csrf_token field of the form)."""
    page = call(lab, "GET", "/login")
    assert page.status == 200 and 'name="username"' in page.text and 'name="password"' in page.text
    cookie = SimpleCookie(page.headers["Set-Cookie"])["lab_csrf"].value
    field = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return cookie, field


def test_form_login_with_csrf_sets_a_session(lab):
    cookie, field = login_page(lab)
    assert cookie == field
    form = {"username": "alice", "password": USERS["alice"], "csrf_token": field}
    ok = call(lab, "POST", "/login", urlencode(form), {**FORM, "Cookie": f"lab_csrf={cookie}"})
    assert ok.status == 200 and "Welcome alice" in ok.text
    session = SimpleCookie(ok.headers["Set-Cookie"])["lab_session"]
    assert session["httponly"]
    assert me(lab, Cookie=f"lab_session={session.value}").json() == {"user": "alice"}
    bad = call(lab, "POST", "/login", urlencode({**form, "password": "guess"}),
               {**FORM, "Cookie": f"lab_csrf={cookie}"})
    assert bad.status == 401 and 'name="password"' in bad.text and "guess" not in bad.text


@pytest.mark.parametrize("cookie_value, field_value",
                         [(None, "from-page"), ("from-page", None), ("from-page", "other")],
                         ids=["no-cookie", "no-field", "mismatch"])
def test_form_login_without_matching_csrf_is_403(lab, cookie_value, field_value):
    cookie, field = login_page(lab)
    form = {"username": "alice", "password": USERS["alice"]}
    if field_value is not None:
        form["csrf_token"] = field if field_value == "from-page" else field_value
    headers = dict(FORM)
    if cookie_value is not None:
        headers["Cookie"] = f"lab_csrf={cookie}"
    assert call(lab, "POST", "/login", urlencode(form), headers).status == 403


def test_json_login(lab):
    ok = token_login(lab, "bob@lab", USERS["bob@lab"])
    assert ok.status == 200
    assert me(lab, Authorization=f"Bearer {ok.json()['access_token']}").json() == {"user": "bob@lab"}
    bad = token_login(lab, "bob@lab", "guess")
    assert (bad.status, bad.json()) == (401, {"error": "invalid_credentials"})
    unknown = token_login(lab, "mallory", USERS["bob@lab"])
    assert unknown.status == 401
    for body in ("{not json", json.dumps(["alice"]), json.dumps({"username": "alice"})):
        assert call(lab, "POST", "/api/login", body, {"Content-Type": "application/json"}).status == 400


def test_basic_login(lab):
    ok = call(lab, "GET", "/basic", headers=basic("bob@lab", USERS["bob@lab"]))   # RFC 7617: a colon may follow
    assert ok.status == 200
    assert me(lab, Authorization=f"Bearer {ok.json()['access_token']}").json() == {"user": "bob@lab"}
    for headers in (basic("bob@lab", "guess"), {}):
        bad = call(lab, "GET", "/basic", headers=headers)
        assert bad.status == 401 and bad.headers["WWW-Authenticate"].startswith("Basic realm=")


def test_me_without_credentials_is_401(lab):
    assert me(lab).status == 401
    assert me(lab, Authorization="Bearer not-a-token").status == 401
    assert me(lab, Cookie="lab_session=not-a-session").status == 401


def test_every_login_request_is_accounted_for(lab):
    """requests = answered before admission + rejected + completed + cancelled, once all are answered."""
    token_login(lab, "alice", USERS["alice"])
    m = lab.metrics()
    requests = sum(v for k, v in m.items() if k.startswith(M + "requests_total"))
    assert requests > 0
    assert requests == (m[M + "invalid_total"] + sum(v for k, v in m.items() if k.startswith(M + "rejected_total"))
                        + m[M + "completed_total"] + m[M + "cancelled_total"])
    assert m[M + "completed_total"] == sum(v for k, v in m.items() if k.startswith(M + "logins_total"))
    assert m[M + "queue_depth"] == 0 and m[M + "busy_workers"] == 0
    assert m[M + "busy_workers_max"] <= m[M + "workers"]


# -- the admission model --------------------------------------------------------------------------

def test_concurrency_never_exceeds_workers_and_scale_applies():
    overrides = sets(workers=4, service_time="0.2s")
    s = load_scenario("quickstart", sets=overrides, scale=0.5)       # --scale as `simulate` applies it
    workers, service, n = s.server.workers, s.server.service_time.mean, 10
    with running_lab(*args(overrides), "--scale", "0.5", "--users", "3") as lab:
        assert f"workers={workers}," in lab.stdout()
        started = time.monotonic()
        replies = in_parallel([lambda: call(lab, "GET", "/basic", headers=basic("user00001", "x"))] * n)
        wall = time.monotonic() - started
        m = lab.metrics()
    assert all(isinstance(r, Reply) and r.status == 401 for r in replies)      # served, wrong password
    assert m[M + "busy_workers_max"] == workers == 2
    assert m[M + "completed_total"] == n
    assert wall >= math.ceil(n / workers) * service - 0.05
    # from the clients' clocks alone: a service takes `service`, so answers less than that apart
    # were in service together; never more than `workers` of them
    done = sorted(r.done for r in replies)
    assert all(b - a > 0.75 * service for a, b in zip(done, done[workers:]))
    assert m[M + "busy_seconds_total"] == pytest.approx(n * service, rel=0.25)


@pytest.mark.parametrize("retry_after", ["2.5s", "500ms", "0s"])
def test_full_queue_refuses_with_retry_after(retry_after):
    overrides = sets(workers=1, queue_limit=2, service_time="0.3s", retry_after=retry_after)
    server = load_scenario("quickstart", sets=overrides).server
    n = 6
    with running_lab(*args(overrides), "--users", "2") as lab:
        replies = in_parallel([lambda: call(lab, "GET", "/basic", headers=basic("user00001", "x"))] * n)
        m = lab.metrics()
    served = [r for r in replies if r.status == 401]
    refused = [r for r in replies if r.status == 503]
    assert len(served) == server.workers + server.queue_limit          # 1 in service + 2 queued
    assert len(refused) == n - len(served)
    assert {r.headers.get("Retry-After") for r in refused} == {expected_header(server.retry_after)}
    assert all(r.json() == {"error": "temporarily_unavailable"} for r in refused)
    assert m[M + 'rejected_total{reason="queue_full"}'] == len(refused)
    assert m[M + 'rejected_total{reason="rate_limit"}'] == 0


def test_rate_limit_refuses_with_429(tmp_path):
    overrides = ['server.rate_limit={rate = 2, burst = 2, retry_after = "2s"}', *sets(service_time="1ms")]
    rl = load_scenario("quickstart", sets=overrides).server.rate_limit
    n = 5
    with running_lab(*args(overrides), "--credentials", str(users_file(tmp_path / "u.csv", USERS))) as lab:
        started = time.monotonic()
        replies = in_parallel([lambda: token_login(lab, "alice", USERS["alice"])] * n)
        spread = time.monotonic() - started
        m = lab.metrics()
    ok = [r for r in replies if r.status == 200]
    limited = [r for r in replies if r.status == 429]
    assert len(ok) == min(n, int(rl.bucket + rl.rate * spread))      # the full bucket, plus any refill
    assert len(limited) == n - len(ok)
    assert {r.headers.get("Retry-After") for r in limited} == {expected_header(rl.retry_after)} == {"2"}
    assert m[M + 'rejected_total{reason="rate_limit"}'] == len(limited)
    assert m[M + 'logins_total{result="success"}'] == len(ok)


@pytest.mark.parametrize("discipline", ["fifo", "lifo"])
def test_discipline_sets_the_order_of_service(discipline):
    overrides = sets(workers=1, service_time="0.3s", discipline=discipline)
    with running_lab(*args(overrides), "--users", "1") as lab:
        names = ["A", "B", "C", "D"]   # A goes into service; B, C, D queue in this order, 50 ms apart
        replies = in_parallel([lambda name=name: call(lab, "GET", f"/basic?{name}", headers=basic("user00001", "x"))
                               for name in names], starts=[0.0, 0.05, 0.1, 0.15])
    assert all(r.status == 401 for r in replies)
    served = [name for _, name in sorted(zip((r.done for r in replies), names))]
    queued = names[1:]
    assert served == ["A"] + (queued if discipline == "fifo" else queued[::-1])


# -- hang-ups and wasted work ---------------------------------------------------------------------

def hang_up_after(lab, seconds: float):
    """A client that gives up after `seconds` and closes its connection."""
    def job():
        try:
            return call(lab, "GET", "/basic", headers=basic("user00001", "x"), timeout=seconds)
        except (socket.timeout, TimeoutError):
            return "timeout"
    return job


def patient(lab):
    return lambda: call(lab, "GET", "/basic", headers=basic("user00001", "x"))


def test_service_for_a_client_that_hung_up_is_wasted():
    overrides = sets(workers=2, service_time="1s")
    service = load_scenario("quickstart", sets=overrides).server.service_time.mean
    with running_lab(*args(overrides), "--users", "1") as lab:
        replies = in_parallel([hang_up_after(lab, 0.2), patient(lab)])
        m = wait_for(lab, lambda m: m[M + "completed_total"] >= 2)
    assert replies[0] == "timeout" and replies[1].status == 401
    assert m[M + "completed_total"] == 2                    # without cancel_on_timeout both are served ...
    assert m[M + "wasted_total"] == 1                       # ... but one answer had nobody to read it
    assert m[M + "wasted_seconds_total"] == pytest.approx(service, rel=0.2)
    assert m[M + "cancelled_total"] == 0


def test_cancel_on_timeout_drops_queued_and_stops_served_requests():
    overrides = sets(workers=1, service_time="1s", cancel_on_timeout="true")
    service = load_scenario("quickstart", sets=overrides).server.service_time.mean
    # A is served and hangs up at 0.8 s; B queues at 0.1 s and hangs up at 0.3 s, while A is still
    # in service; the queue is looked at in between; C arrives at 1 s. Without cancel_on_timeout
    # B would stay queued until A's service ends, and C would wait for A and B (~2 s).
    starts, patience, look = [0.0, 0.1, 1.0], [0.8, 0.2, None], 0.55
    with running_lab(*args(overrides), "--users", "1") as lab:
        jobs = [hang_up_after(lab, patience[0]), hang_up_after(lab, patience[1]), patient(lab), lab.metrics]
        a, b, c, between = in_parallel(jobs, starts=[*starts, look])
        m = wait_for(lab, lambda m: m[M + "completed_total"] >= 1 and m[M + "busy_workers"] == 0)
    assert a == b == "timeout" and c.status == 401
    assert (between[M + "queue_depth"], between[M + "busy_workers"]) == (0, 1)   # B gone, A still served
    assert between[M + "cancelled_total"] == 1
    assert m[M + "cancelled_total"] == 2                    # B left the queue, A's service stopped
    assert m[M + "completed_total"] == 1                    # only C: B never reached a worker
    assert m[M + "wasted_total"] == 1                       # A: worker time spent for nobody
    assert m[M + "wasted_seconds_total"] == pytest.approx(patience[0], abs=0.15)
    assert m[M + "busy_seconds_total"] == pytest.approx(patience[0] + service, abs=0.25)
    assert c.done - c.sent < service + 0.5                   # the worker was free when C came


# -- credentials, modes and the command line ------------------------------------------------------

def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtests.lab", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


def test_write_credentials_makes_a_private_file_and_shows_no_password(tmp_path):
    path, n = tmp_path / "users.csv", 7
    done = run_cli("--write-credentials", str(path), "--users", str(n))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {n} users to {path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["username", "password"] and len(rows) == n + 1
    assert len({r[0] for r in rows[1:]}) == n and all(len(r[1]) >= 12 for r in rows[1:])
    assert not any(r[1] in done.stdout + done.stderr for r in rows[1:])


def test_write_credentials_then_serve_leaks_no_secret(tmp_path):
    path = tmp_path / "users.csv"
    with running_lab("--write-credentials", str(path), "--users", "3", "--serve", "--access-log",
                     *args(sets(service_time="1ms"))) as lab:
        assert lab.stdout().startswith("loginstorm lab listening on http://127.0.0.1:")
        with path.open(newline="") as handle:
            (user, password), *others = list(csv.reader(handle))[1:]
        ok = call(lab, "GET", "/basic", headers=basic(user, password))
        token = ok.json()["access_token"]
        assert me(lab, Authorization=f"Bearer {token}").status == 200
        assert token_login(lab, user, password + "-wrong").status == 401
        lab.stop()
        output = lab.stdout() + lab.stderr()
    assert ok.status == 200 and len(others) == 2
    assert "GET /basic" in output                              # the access log is on ...
    for secret in (password, token, basic(user, password)["Authorization"].split()[1]):
        assert secret not in output                            # ... and holds no secret


def test_cpu_mode_hashes_on_worker_threads(tmp_path):
    iterations, n = 100_000, 4
    overrides = sets(workers=1, service_time="1ms")     # unused in cpu mode: the hash is the service
    with running_lab(*args(overrides), "--mode", "cpu", "--hash-iterations", str(iterations),
                     "--credentials", str(users_file(tmp_path / "u.csv", USERS))) as lab:
        assert "mode=cpu" in lab.stdout()
        started = time.monotonic()
        replies = in_parallel([lambda: token_login(lab, "alice", USERS["alice"])] * n)
        wall = time.monotonic() - started
        m = lab.metrics()
    assert [r.status for r in replies] == [200] * n
    assert m[M + "busy_workers_max"] == 1 and m[M + "completed_total"] == n
    started = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"x", b"0123456789abcdef", iterations)
    one_hash = time.perf_counter() - started
    assert m[M + "busy_seconds_total"] >= 0.5 * n * one_hash     # each login did the hash itself ...
    assert wall >= 0.5 * n * one_hash                            # ... one at a time


def test_p2p_scenario_runs_with_a_note():
    s = load_scenario("every-key")
    assert s.server.p2p is not None and s.server.workers >= 1
    with running_lab("every-key", "--users", "1") as lab:
        assert call(lab, "GET", "/healthz").status == 200
        lab.stop()
        assert "ignored: [server.p2p]" in lab.stderr()
        assert f"workers={s.server.workers}," in lab.stdout()


runner = CliRunner()


def test_invalid_scenario_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    text = (ROOT / "scenarios" / "quickstart.toml").read_text()
    bad.write_text(text.replace("[server]\n", "[server]\nworkrs = 3\n"))
    result = runner.invoke(app, ["lab", str(bad)])
    assert result.exit_code == 2
    assert result.stdout == ""
    problem, hint = result.stderr.strip().splitlines()  # the problem, then where the format is written down
    assert problem.startswith(f"{bad}: server.workrs: unknown key") and "docs/model.md section 2" in hint
    done = run_cli("no-such-scenario.toml")                            # the module entry point too
    assert done.returncode == 2 and done.stderr.strip() == "no-such-scenario.toml: no such file"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("options, message", [
    (["--mode", "gpu"], "--mode must be sleep or cpu"),
    (["--credentials", "a.csv", "--write-credentials", "b.csv"], "exclude each other"),
    (["--serve"], "--serve goes with --write-credentials"),
    (["--credentials", "no/such/users.csv"], "no/such/users.csv: no such file"),
    (["--set", "server.workers=0"], "server.workers"),
])
def test_bad_options_exit_2(options, message):
    result = runner.invoke(app, ["lab", *options])
    assert result.exit_code == 2 and message in result.stderr
    lines = result.stderr.strip().splitlines()  # one line, and for a scenario's problem where its format is
    assert len(lines) == 1 or len(lines) == 2 and "docs/model.md section 2" in lines[1]


def test_server_json_publishes_the_served_table():
    overrides = sets(workers=6, service_time='{dist="uniform",low="10ms",high="30ms"}', queue_limit=7)
    s = load_scenario("quickstart", sets=overrides, scale=0.5)
    with running_lab(*args(overrides), "--scale", "0.5", "--users", "3") as lab:
        published = json.loads(call(lab, "GET", "/server.json").text)
    assert published["mode"] == "sleep"
    assert Server.model_validate(published["server"]) == s.server and s.server.workers == 3
