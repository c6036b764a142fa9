"""Real third-party auth servers on 127.0.0.1 (tests/realservers.py): they start, log in, refuse.

One Django + django-oauth-toolkit under gunicorn (worker-bound, PBKDF2 at a known iteration
count) and nginx rate limiters (limit_req + auth_basic) are started for this module and stopped
by their process groups. Each test sends a few dozen requests at most. Everything skips, with
the reason, where a server cannot be found or installed (LOGINSTORM_INSTALL_SERVERS=0: never
install). Deselect them all with `-k "not real_server"`.
"""

from __future__ import annotations

import os
import time
import tomllib

import pytest

import realservers as rs
from loadtests.calibrate import Connection
from loadtests.credentials import Account, Secret, resolve
from loadtests.flows import OK, REJECTED, build_flow
from sim.scenario import Target

WORKERS = 2
ITERATIONS = 40_000          # PBKDF2-SHA256: ~10 ms a password check on this project's 2-core machines
# the range a password check at ITERATIONS may take on any plausible CPU: 50 ns to 2 us an iteration
HASH_RANGE_S = (ITERATIONS * 50e-9, ITERATIONS * 2e-6)
RATE, BURST = 2, 3           # nginx: 2 r/s (a token each 500 ms), burst 3 nodelay -> 4 answers at once, then the limit


@pytest.fixture(scope="module")
def django_server(tmp_path_factory):
    try:
        with rs.running_django(tmp_path_factory.mktemp("django"), workers=WORKERS, iterations=ITERATIONS,
                               users=8, samples=9) as server:
            yield server
    except rs.Unavailable as exc:
        pytest.skip(f"no Django auth server: {exc}")


def _nginx(tmp_path_factory, status: int, retry_after: int | None):
    try:
        with rs.running_nginx(tmp_path_factory.mktemp(f"nginx{status}"), rate=RATE, burst=BURST, status=status,
                              retry_after=retry_after, users=4) as server:
            yield server
    except rs.Unavailable as exc:
        pytest.skip(f"no nginx: {exc}")


@pytest.fixture(scope="module")
def nginx_429(tmp_path_factory):
    yield from _nginx(tmp_path_factory, 429, 1)


@pytest.fixture(scope="module")
def nginx_503(tmp_path_factory):
    yield from _nginx(tmp_path_factory, 503, None)     # nginx's default answer, without Retry-After


# --- the worker-bound server ---------------------------------------------------------------------

def test_real_server_django_password_grant(django_server):
    account = django_server.accounts[0]
    status, body = rs.token_login(django_server.url, django_server.token_path, django_server.client, account=account)
    assert status == 200 and body.get("access_token") and body.get("token_type") == "Bearer"
    status, body = rs.token_login(django_server.url, django_server.token_path, django_server.client,
                                  account=rs.wrong_password(account))
    assert (status, body.get("error")) == (400, "invalid_grant")      # RFC 6749 5.2: a wrong password is 400
    status, body = rs.token_login(django_server.url, django_server.token_path,
                                  (django_server.client_id, "not-the-secret"), account=account)
    assert (status, body.get("error")) == (401, "invalid_client")


def test_real_server_django_client_credentials(django_server):
    status, body = rs.token_login(django_server.url, django_server.token_path, django_server.cc_client,
                                  "client_credentials")
    assert status == 200 and body.get("access_token")
    status, body = rs.token_login(django_server.url, django_server.token_path,
                                  (django_server.cc_client_id, "not-the-secret"), "client_credentials")
    assert (status, body.get("error")) == (401, "invalid_client")


def test_real_server_django_form_login(django_server):
    status, headers, _ = rs.form_login(django_server.url, django_server.form_path, django_server.accounts[1])
    assert status == 302 and headers["location"] == django_server.success_path
    assert "sessionid=" in headers.get("set-cookie", "")
    status, _, page = rs.form_login(django_server.url, django_server.form_path,
                                    rs.wrong_password(django_server.accounts[1]))
    assert status == 200 and "didn't match" in page          # LoginView shows the form again, with an error
    status, _, _ = rs.request(django_server.url, "POST", django_server.form_path, "username=u&password=p",
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403                                       # no CSRF token and cookie


def test_real_server_django_cost_per_login(django_server):
    """The configuration the server reports: workers, and a login's cost measured apart from loginstorm."""
    assert django_server.workers == WORKERS and django_server.iterations == ITERATIONS
    # the fastest samples, the least disturbed by whatever else runs on the machine (other test
    # workers, other sessions: the hasher's and the logins' samples are taken at different times,
    # so the bounds leave room for a machine that was busier during one than during the other)
    hash_s, least = django_server.hash_min_s, django_server.cost_min_s
    assert HASH_RANGE_S[0] <= hash_s <= HASH_RANGE_S[1], hash_s
    # a password-grant login is one password check plus Django's and the token's overhead; a
    # client_credentials one (the client secret is not hashed) has no password check
    assert 0.5 * hash_s <= least["oauth2-password"] <= 3 * hash_s + 0.05, (hash_s, least)
    assert 0.5 * hash_s <= least["form"] <= 3 * hash_s + 0.05, (hash_s, least)
    assert least["oauth2-client-credentials"] < least["oauth2-password"], least
    assert least["healthz"] < least["oauth2-password"], least
    assert django_server.capacity_rps == pytest.approx(WORKERS / django_server.cost_per_login_s["oauth2-password"])


# --- loginstorm's flows against the real servers ---------------------------------------------------

def _login_with_loginstorm(server, flow: str, account: Account):
    """One attempt of loginstorm's flow from the server's [target] table, over calibrate's client."""
    target = Target.model_validate(tomllib.loads(server.target_toml(flow))["target"])
    secret = resolve(target.client_secret, "target.client_secret", server.env())   # "${VAR}"
    client = (target.client_id, Secret(secret)) if target.client_id else None
    steps = build_flow(target, account, client)()
    conn = Connection(server.url, timeout=10.0)
    try:
        step = next(steps)
        while True:
            step = steps.send(conn.send(step))
    except StopIteration as done:
        return done.value
    finally:
        conn.close()


@pytest.mark.parametrize("flow", ["oauth2-password", "oauth2-client-credentials", "form"])
def test_real_server_django_loginstorm_flows(django_server, flow):
    good = _login_with_loginstorm(django_server, flow, django_server.accounts[2])
    assert good.kind == OK, good.message
    if flow != "oauth2-client-credentials":
        bad = _login_with_loginstorm(django_server, flow, rs.wrong_password(django_server.accounts[2]))
        assert bad.kind != OK and bad.message == ("HTTP 400" if flow == "oauth2-password" else "HTTP 200")
    assert "secret" not in repr(good) and django_server.client_secret not in repr(django_server)


# --- the rate-limited server ---------------------------------------------------------------------

def _basic_get(server, account: Account, path=None):
    return rs.request(server.url, "GET", path or server.token_path,
                      headers={"Authorization": rs.basic_auth(account.username, account.password)})


def test_real_server_nginx_basic_auth(nginx_429):
    time.sleep(1.0)                                           # a full bucket whatever ran before
    status, headers, body = _basic_get(nginx_429, nginx_429.accounts[0])
    assert status == 200 and '"access_token"' in body and "retry-after" not in headers
    status, headers, _ = _basic_get(nginx_429, rs.wrong_password(nginx_429.accounts[1]))
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="loginstorm"'
    status, _, _ = rs.request(nginx_429.url, "GET", nginx_429.token_path)
    assert status == 401


def _burst(server) -> list[tuple[int, dict[str, str]]]:
    """BURST + 3 requests back to back (well inside 1/RATE s) after the bucket has emptied."""
    time.sleep(BURST / RATE + 0.5)
    return [_basic_get(server, server.accounts[i % len(server.accounts)])[:2] for i in range(BURST + 3)]


def test_real_server_nginx_limits_beyond_the_burst(nginx_429):
    replies = _burst(nginx_429)
    statuses = [status for status, _ in replies]
    # nodelay: the request that finds the bucket empty and `burst` more pass at once, the rest are refused
    assert statuses[:BURST + 1] == [200] * (BURST + 1) and set(statuses[BURST + 1:]) == {429}, statuses
    assert all(headers.get("retry-after") == "1" for status, headers in replies if status == 429)
    assert all("retry-after" not in headers for status, headers in replies if status == 200)
    limited = _login_with_loginstorm(nginx_429, "basic", nginx_429.accounts[0])
    assert (limited.kind, limited.status, limited.retry_after) == (REJECTED, 429, 1.0)
    time.sleep(1.5 / RATE)                                    # one token back: loginstorm's flow logs in
    assert _login_with_loginstorm(nginx_429, "basic", nginx_429.accounts[0]).kind == OK


def test_real_server_nginx_503_variant(nginx_503):
    statuses = [status for status, _ in _burst(nginx_503)]
    assert statuses[:BURST + 1] == [200] * (BURST + 1) and set(statuses[BURST + 1:]) == {503}, statuses
    status, headers, _ = _basic_get(nginx_503, nginx_503.accounts[0])
    assert status == 503 and "retry-after" not in headers


def test_real_server_stopped_by_pid_leaves_nothing(tmp_path):
    try:
        with rs.running_nginx(tmp_path / "nginx", rate=RATE, burst=BURST, users=1) as server:
            pid = server.pid
            assert os.getpgid(pid) == pid                     # its own process group
            assert _basic_get(server, server.accounts[0], server.health_path)[0] == 200
    except rs.Unavailable as exc:
        pytest.skip(f"no nginx: {exc}")
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)                                     # neither the master nor a worker is left
