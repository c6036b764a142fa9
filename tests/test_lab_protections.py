"""The lab's adaptive protections and session resumption over real HTTP on 127.0.0.1.

The lab serves `[server.concurrency]`, `[server.codel]`, `retry_after_from = "queue"` and
`[server.resume]` by calling `sim.protections`; these tests never call those kernels: each
expectation is computed here, from the configuration and the rule as its source states it
(Netflix's AIMDLimit, folly's CoDel, the queue's drain time, RFC 6749's refresh grant). Every lab
is started and stopped by its PID (tests/lab_process.py); the load test runs `loginstorm
loadtest` in its own process, as tests/test_loadtest_limiters.py does.
"""

from __future__ import annotations

import base64
import csv
import http.client
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from lab_process import ROOT, running_lab
from loadtests.plan import DROP, PURGE, REBOOT, build_plan
from sim.config import parse_scenario
from test_lab import args, call, in_parallel, sets, wait_for
from test_locust_devices import attempts, stats, write

M = "loginstorm_lab_"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
WRONG = {"Authorization": "Basic " + base64.b64encode(b"user00001:wrong").decode()}   # served, then 401


def lab_args(**server) -> list[str]:
    """`--set server.key=value` options for `loginstorm lab`."""
    return args(sets(**server))


# -- (a) the concurrency limit: early 503s, and the limit moving by the AIMD rule --------------------

def aimd(limit: int, rtt: float, inflight: int, *, backoff: float, timeout: float, lo: int, hi: int) -> int:
    """Netflix concurrency-limits AIMDLimit, restated: a sample slower than `timeout` multiplies the
    limit by `backoff` (whole number, rounded down); else when inflight x 2 >= limit it grows by 1."""
    if rtt > timeout:
        limit = int(limit * backoff)
    elif inflight * 2 >= limit:
        limit += 1
    return min(hi, max(lo, limit))


def burst_limit(limit: int, n: int, workers: int, service: float, **rule) -> tuple[int, int]:
    """n requests at once against the limit: int(limit) get in, the rest are refused at once. The
    admitted ones are served `workers` at a time; the i-th to leave its worker left after (i //
    workers + 1) services, with admitted - i still in the lab (counting it). (admitted, the new limit)."""
    admitted = min(limit, n)
    for i in range(admitted):
        limit = aimd(limit, (i // workers + 1) * service, admitted - i, **rule)
    return admitted, limit


def test_beyond_an_aimd_limit_the_lab_answers_503_at_once_and_the_limit_moves():
    workers, service, n = 2, 0.3, 10
    rule = {"backoff": 0.5, "timeout": 0.75, "lo": 2, "hi": 10}
    initial = 4
    concurrency = (f'{{kind="aimd",initial={initial},min={rule["lo"]},max={rule["hi"]},backoff={rule["backoff"]},'
                   f'timeout="{rule["timeout"]}s"}}')
    with running_lab("quickstart", *lab_args(workers=workers, service_time=f"{service}s", queue_limit="inf",
                                             retry_after="1s", concurrency=concurrency), "--users", "2") as lab:
        assert "concurrency=aimd" in lab.stdout()
        assert lab.metrics_json()["concurrency_limit"] == initial
        limit, refused_so_far = initial, 0
        seen = []
        for _ in range(2):
            replies = in_parallel([lambda: call(lab, "GET", "/basic", headers=WRONG)] * n)
            assert max(r.sent for r in replies) - min(r.sent for r in replies) < service / 2   # a burst indeed
            admitted, limit = burst_limit(limit, n, workers, service, **rule)
            refused = [r for r in replies if r.status == 503]
            assert sorted(r.status for r in replies) == [401] * admitted + [503] * (n - admitted)
            # early: answered before any service could have ended, with the busy tier's Retry-After
            assert max(r.done - r.sent for r in refused) < service / 2
            assert {r.headers.get("Retry-After") for r in refused} == {"1"}
            assert all(r.json() == {"error": "temporarily_unavailable"} for r in refused)
            refused_so_far += len(refused)
            m = lab.metrics_json()
            seen.append(m["concurrency_limit"])
            assert m["concurrency_limit"] == limit
            assert m["rejected_total"]["concurrency_limit"] == refused_so_far
            assert m["rejected_total"]["queue_full"] == 0 and m["busy_workers_max"] == workers
        text = lab.metrics()
    # the rule at work: the first burst raised the limit (4 -> 6), the second's slow samples cut it (6 -> 2)
    assert seen == [6, 2]
    assert text[M + "concurrency_limit"] == 2
    assert text[M + 'rejected_total{reason="concurrency_limit"}'] == refused_so_far == (n - 4) + (n - 6)


# -- (b) CoDel: shed requests waited only briefly; without it the waits grow --------------------------

def storm(lab, rate: float, seconds: float, timeout: float) -> list[tuple[object, float, float]]:
    """`rate` requests/s for `seconds`, each on its own connection (opened beforehand): (status or
    "timeout", seconds to the answer, when it was sent) per request, in sending order."""
    n = int(rate * seconds)
    out: list = [None] * n
    begin = time.monotonic() + 0.3

    def one(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=timeout)
        try:
            conn.connect()
            time.sleep(max(0.0, begin + i / rate - time.monotonic()))
            sent = time.monotonic()
            try:
                conn.request("GET", "/basic", headers=WRONG)
                response = conn.getresponse()
                response.read()
                out[i] = (response.status, time.monotonic() - sent, sent)
            except TimeoutError:
                out[i] = ("timeout", time.monotonic() - sent, sent)
        finally:
            conn.close()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def watch(lab, key: str, stop: threading.Event, seen: list) -> None:
    while not stop.is_set():
        seen.append(lab.metrics_json()[key])
        time.sleep(0.05)


def inversions(served: list[tuple[object, float, float]], margin: float) -> int:
    """Pairs answered out of their sending order by more than `margin` seconds."""
    return sum(1 for a in served for b in served if a[2] < b[2] and a[2] + a[1] > b[2] + b[1] + margin)


def test_codel_sheds_after_short_waits_while_without_it_the_waits_grow():
    """Three times the capacity for 1.5 s (2 workers, 100 ms each: 20/s; 60/s offered). With CoDel
    (target 50 ms, interval 200 ms, FIFO), a worker that takes a request waiting over 2 x target
    while overloaded sheds it: the queue never holds more than about one service's arrivals
    beyond 2 x target, so a shed request waited about 2 x target + a service (median), never more
    than two intervals and a service. Without CoDel the queue grows by 40 a second and the waits
    with it, up to the client's timeout. With adaptive LIFO the newest are served first: answers
    overtake earlier requests by more than a service, which FIFO never does."""
    workers, service, target, interval, rate, seconds, timeout = 2, 0.1, 0.05, 0.2, 60, 1.5, 1.5
    base = dict(workers=workers, service_time=f"{service}s", queue_limit="inf")
    codel = f'{{target="{target}s",interval="{interval}s",adaptive_lifo=LIFO}}'
    runs = {}
    for name, extra in (("codel", {"codel": codel.replace("LIFO", "false")}), ("none", {}),
                        ("lifo", {"codel": codel.replace("LIFO", "true")})):
        with running_lab("quickstart", *lab_args(**base, **extra), "--users", "2") as lab:
            stop, flags = threading.Event(), []
            watcher = threading.Thread(target=watch, args=(lab, "codel_overloaded", stop, flags))
            watcher.start()
            try:
                answers = storm(lab, rate, seconds, timeout)
            finally:
                stop.set()
                watcher.join()
            runs[name] = (answers, lab.metrics_json(), lab.metrics(), flags)

    answers, m, text, flags = runs["codel"]
    shed = [a for a in answers if a[0] == 503]
    served = [a for a in answers if a[0] == 401]
    assert len(shed) + len(served) == len(answers)             # every request answered, none timed out
    assert m["rejected_total"]["codel"] == len(shed) == text[M + 'rejected_total{reason="codel"}']
    assert len(served) <= workers / service * (seconds + 0.5)  # the workers' capacity, no more
    assert len(shed) >= len(answers) / 2                       # 2/3 of the offered load is beyond it
    waits = [a[1] for a in shed]
    assert statistics.median(waits) <= 2 * target + service + 0.05
    assert max(waits) <= 2 * interval + service + 0.1
    assert 1 in flags and set(flags) <= {0, 1}                 # /metrics.json showed it overloaded
    assert M + "codel_overloaded" in text
    assert inversions(served, service / 2) == 0                # FIFO: answers in sending order

    answers, m, text, flags = runs["none"]
    assert m["rejected_total"]["codel"] == 0 and set(flags) == {None}
    assert M + "codel_overloaded" not in text and M + "concurrency_limit" not in text   # off: no sample
    late = [a for a in answers if a[2] >= answers[0][2] + seconds * 0.75]
    # by then ~ (rate - capacity) x 1.1 s = 45 queued: over 2 s of waiting, or the client gave up
    assert min(a[1] for a in late) > 1.0
    assert statistics.median(a[1] for a in late) > 5 * (2 * target + service)
    assert any(a[0] == "timeout" for a in answers)

    answers, m, _, _ = runs["lifo"]
    served = [a for a in answers if a[0] == 401]
    assert m["rejected_total"]["codel"] > 0
    assert inversions(served, service) > 0                     # newest first while overloaded


# -- (c) Retry-After from the queue --------------------------------------------------------------------

@pytest.mark.parametrize("queue_limit, top", [(9, 32), (9, 2), (0, 32)])
def test_retry_after_from_the_queue_is_its_drain_time(queue_limit, top):
    """retry_after_from = "queue": a refusal for a full queue says how long the workers need to
    drain it: ceil(queued x mean service / workers) whole seconds, clamped to [1, retry_after_max]."""
    workers, service = 2, 0.5
    expected = str(min(top, max(1, math.ceil(queue_limit * service / workers))))
    assert expected == {(9, 32): "3", (9, 2): "2", (0, 32): "1"}[(queue_limit, top)]
    with running_lab("quickstart", *lab_args(workers=workers, service_time=f"{service}s", queue_limit=queue_limit,
                                             retry_after="7s", retry_after_from="queue", retry_after_max=f"{top}s"),
                     "--users", "2") as lab:
        assert "retry_after_from=queue" in lab.stdout()
        fill = [threading.Thread(target=lambda: _quietly(lambda: call(lab, "GET", "/basic", headers=WRONG)))
                for _ in range(workers + queue_limit)]
        for t in fill:
            t.start()
        m = wait_for(lab, lambda m: m["busy_workers"] == workers and m["queue_depth"] == queue_limit,
                     read=lab.metrics_json)
        assert (m["busy_workers"], m["queue_depth"]) == (workers, queue_limit)
        probes = [call(lab, "GET", "/basic", headers=WRONG) for _ in range(3)]
        m = lab.metrics_json()
        lab.stop()
        for t in fill:
            t.join(timeout=10)
    assert [p.status for p in probes] == [503] * 3
    assert [p.headers.get("Retry-After") for p in probes] == [expected] * 3      # not the fixed 7 s
    assert m["rejected_total"]["queue_full"] == 3


def _quietly(job) -> None:
    try:
        job()
    except OSError:  # the lab was stopped under it
        pass


# -- (d) a refresh-token resumption ----------------------------------------------------------------

def token(lab, **fields) -> tuple[int, dict, float]:
    reply = call(lab, "POST", "/oauth/token", urlencode(fields), FORM)
    return reply.status, reply.json(), reply.done - reply.sent


def users_of(path: Path) -> list[tuple[str, str]]:
    with path.open() as handle:
        return [(r["username"], r["password"]) for r in csv.DictReader(handle)]


def test_a_refresh_grant_is_a_cheap_counted_resumption(tmp_path):
    """The password grant answers a refresh token; the refresh grant (RFC 6749 section 6) is served
    with [server.resume].service_time (10 ms against 300 ms), answers new tokens, and revokes the
    token it used (rotation). A token from another client, an expired one (client.resume_window:
    its lifetime on the lab) or a purged one gets 400 invalid_grant. /metrics counts them all."""
    service, resume, window = 0.3, 0.01, 2.0
    users = tmp_path / "users.csv"
    with running_lab("quickstart", *lab_args(workers=1, service_time=f"{service}s"),
                     "--set", f'server.resume={{service_time="{resume}s"}}', "--set", f"client.resume_window={window}s",
                     "--write-credentials", str(users), "--users", "3", "--serve") as lab:
        (alice, pw_a), (bob, pw_b), (carol, pw_c) = users_of(users)
        assert json.loads(lab.get("/server.json"))["refresh_ttl"] == window
        full = [token(lab, grant_type="password", username=alice, password=pw_a) for _ in range(3)]
        assert all(status == 200 and {"access_token", "refresh_token"} <= set(body) for status, body, _ in full)
        refreshed = [token(lab, grant_type="refresh_token", refresh_token=body["refresh_token"])
                     for _, body, _ in full]
        assert [status for status, _, _ in refreshed] == [200] * 3
        # measurably cheaper: every resumption beat every full login by far
        assert max(t for _, _, t in refreshed) < service / 2 <= min(t for _, _, t in full) - service / 2
        assert all(body["refresh_token"] != old["refresh_token"] for (_, body, _), (_, old, _) in zip(refreshed, full))
        new = refreshed[0][1]
        me = call(lab, "GET", "/me", headers={"Authorization": f"Bearer {new['access_token']}"})
        assert me.json() == {"user": alice}
        reused = token(lab, grant_type="refresh_token", refresh_token=full[0][1]["refresh_token"])
        assert reused[:2] == (400, {"error": "invalid_grant"})                     # rotated: used once
        # bound to its client: bob logged in as his own confidential client, a public refresh fails
        status, bobs, _ = token(lab, grant_type="password", username=bob, password=pw_b, client_id=bob,
                                client_secret=pw_b)
        assert status == 200
        assert token(lab, grant_type="refresh_token", refresh_token=bobs["refresh_token"])[:2] == \
            (400, {"error": "invalid_grant"})
        assert token(lab, grant_type="refresh_token", refresh_token=bobs["refresh_token"], client_id=bob,
                     client_secret=pw_b)[0] == 200
        issued = time.monotonic()                    # every refresh token so far was issued before this
        # the client_credentials grant issues none (RFC 6749 4.4.3)
        assert "refresh_token" not in token(lab, grant_type="client_credentials", client_id=bob, client_secret=pw_b)[1]
        # expired: the lab honours a token for client.resume_window
        time.sleep(max(0.0, issued + window + 0.2 - time.monotonic()))
        assert token(lab, grant_type="refresh_token", refresh_token=refreshed[1][1]["refresh_token"])[:2] == \
            (400, {"error": "invalid_grant"})
        # purged: half of the 4 live tokens, picked at random
        live = [token(lab, grant_type="password", username=carol, password=pw_c)[1]["refresh_token"] for _ in range(4)]
        purge = call(lab, "POST", "/admin/purge", "fraction=0.5", FORM)
        assert purge.status == 200 and purge.json() == {"revoked": 2, "fraction": 0.5}
        after = [token(lab, grant_type="refresh_token", refresh_token=t)[0] for t in live]
        assert sorted(after) == [200, 200, 400, 400]
        assert call(lab, "POST", "/admin/purge", "fraction=2", FORM).status == 400
        m = lab.metrics_json()
        lab.stop()
        output = lab.stdout() + lab.stderr()
    refresh_sent = 3 + 1 + 2 + 1 + 4                 # the rotated, reused, foreign/own, expired, purged ones
    refresh_ok = 3 + 1 + 2
    assert m["resumptions_total"] == refresh_sent and m["resumed_total"] == refresh_ok
    assert m["purged_total"] == 2
    assert m["logins_total"] == {"success": 3 + 1 + 1 + 4 + refresh_ok, "failure": refresh_sent - refresh_ok,
                                 "fault": 0}
    # the work: 3 + 1 + 4 password grants and one client_credentials grant at 300 ms, the rest at 10 ms
    assert m["busy_seconds_total"] == pytest.approx(9 * service + refresh_sent * resume, abs=0.15)
    for secret in [pw_a, pw_b, pw_c, *live, new["refresh_token"], new["access_token"]]:
        assert secret not in output


def test_in_cpu_mode_a_resumption_hashes_no_password(tmp_path):
    """cpu mode: a full login is the PBKDF2 hash on a worker thread; a refresh grant looks its token
    up and hashes nothing, and [server.resume].service_time (here 1 s) is not slept either."""
    users = tmp_path / "users.csv"
    with running_lab("quickstart", *lab_args(workers=1), "--mode", "cpu", "--hash-iterations", "400000",
                     "--set", 'server.resume={service_time="1s"}', "--set", "client.resume_window=60s",
                     "--write-credentials", str(users), "--users", "1", "--serve") as lab:
        ((user, password),) = users_of(users)
        full = [token(lab, grant_type="password", username=user, password=password) for _ in range(3)]
        refresh, seconds = full[-1][1]["refresh_token"], []
        for _ in range(3):
            status, body, took = token(lab, grant_type="refresh_token", refresh_token=refresh)
            assert status == 200
            refresh = body["refresh_token"]
            seconds.append(took)
        m, stderr = lab.metrics_json(), lab.stderr()
    assert [status for status, _, _ in full] == [200] * 3
    assert max(seconds) < min(took for _, _, took in full) / 3 and max(seconds) < 0.5
    assert (m["resumptions_total"], m["resumed_total"]) == (3, 3)
    assert "[server.resume].service_time applies in sleep mode only" in stderr


# -- (e) a load test with resume_window: resumptions in the attempt log and the outputs --------------

RESUME = """
name = "resume"
duration = "5s"
seed = 4
[population]
clients = 8
[client]
timeout = "3s"
resume_window = "60s"
policy = { name = "constant", base = "0.2s" }
[server]
workers = 2
service_time = "100ms"
[server.resume]
service_time = "5ms"
[[events]]
at = "1.5s"
kind = "disconnect"
[[events]]
at = "2.5s"
kind = "token-purge"
fraction = 0.5
[[events]]
at = "3s"
kind = "disconnect"
[[events]]
at = "4.5s"
kind = "reboot"
fraction = 0.5
"""


def expected_resumes(plan, device: int) -> list[bool]:
    """Per episode of a device online at the start: is its login a resumption? It holds a token
    from its warm-up; a dropped session keeps it, a purge or a reboot loses it, every login renews it."""
    holds, out = True, []
    for _, kind, _ in plan.actions(device):
        if kind == PURGE:
            holds = False
        elif kind in (DROP, REBOOT):
            holds = holds and kind == DROP
            out.append(holds)
            holds = True
    return out


def test_a_load_test_with_a_resume_window_sends_and_counts_resumptions(tmp_path):
    scenario = write(tmp_path / "resume.toml", RESUME)
    s = parse_scenario(RESUME)
    n, purged = s.population.clients, round(s.events[1].fraction * s.population.clients)
    plan = build_plan(s)                                # the devices' script, as the load test builds it
    assert plan.server_side == ()                       # the purge is the devices' to play
    users, out = tmp_path / "users.csv", tmp_path / "out"
    with running_lab(str(scenario), "--write-credentials", str(users), "--users", str(n), "--serve") as lab:
        done = subprocess.run([sys.executable, "-m", "sim.cli", "loadtest", str(scenario), "--host", lab.url,
                               "--out", str(out), "--credentials", str(users), "--replications", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        m = lab.metrics_json()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    rows = attempts(out / "attempts.csv")
    assert all(r["outcome"] == "ok" for r in rows)
    for device in range(n):
        mine = sorted((r for r in rows if r["device"] == device), key=lambda r: r["episode"])
        assert [r["resume"] == "1" for r in mine] == expected_resumes(plan, device), device
    resumed = [r for r in rows if r["resume"] == "1"]
    # every device resumes after the first disconnect; after the purge only those it spared
    assert len(resumed) == n + (n - purged) == 12
    # a resumption is served in [server.resume]'s 5 ms: the first disconnect's 8, on 2 workers, all
    # within 4 x 5 ms (plus the HTTP round trips); a full login takes its 100 ms at least
    assert max(r["seconds"] for r in rows if r["episode"] == 1) < 0.1
    assert min(r["seconds"] for r in rows if r["resume"] == "0") >= 0.1
    # the lab saw them as resumptions, plus one warm-up login per device online at the start
    assert m["resumptions_total"] == m["resumed_total"] == len(resumed)
    assert m["requests_total"]["/oauth/token"] == len(rows) + n
    assert int(stats(out / "locust")["login warm-up"]["Request Count"]) == n
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["resumptions"], summary["resumed"], summary["attempts"]) == (12, 12, len(rows))
    assert f"resumptions {len(resumed)} (refresh-token grants), {len(resumed)} of them resumed" in done.stdout
    versus = json.loads((out / "versus.json").read_text())
    assert versus["totals"]["resumptions"] == {"measured": 12.0, "simulated": 12.0, "relative_difference": 0.0}
    assert versus["totals"]["resumed"]["simulated"] == 12.0
