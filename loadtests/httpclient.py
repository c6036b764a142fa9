"""The calibration's HTTP client: one persistent connection per client, no gevent.

Plain `http.client` (the `loginstorm calibrate` process is not monkey-patched), used by the
closed-loop steps (`loadtests.calibrate`) and the open-loop probes (`loadtests.probe`).

    conn = Connection("http://127.0.0.1:8080", timeout=10.0)
    outcome, requests = attempt(conn, storm.flow(0))
"""

from __future__ import annotations

import http.client
import ssl
import statistics
import time
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from loadtests.flows import Flow, Outcome, Reply, Step

__all__ = ["Connection", "attempt", "round_trip", "RTT_PATH", "RTT_PROBES"]

RTT_PATH, RTT_PROBES = "/healthz", 20
_NO_ANSWER = Reply(0, {}, "")


class Connection:
    """One client's persistent HTTP(S) connection, carrying the cookies it was given.

    A step that fails on a kept-alive connection (the server may close one while idle) goes
    once more on a new connection, as HTTP clients do; a failure on a new one, or a timeout,
    is the answer: status 0.
    """

    def __init__(self, host: str, timeout: float, verify_tls: bool = True):
        url = urlsplit(host)
        if url.scheme == "https":
            context = ssl.create_default_context()
            if not verify_tls:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            self.http = http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout, context=context)
        else:
            self.http = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        self.cookies: dict[str, str] = {}
        self.fresh = True
        self.timed_out = False      # the last step ended in a timeout

    def send(self, step: Step) -> Reply:
        for _ in range(2):
            fresh = self.fresh
            try:
                reply = self._exchange(step)
            except TimeoutError:
                self.timed_out = True
                self.close()
                return _NO_ANSWER
            except (OSError, http.client.HTTPException):
                self.close()
                if fresh:
                    return _NO_ANSWER
                continue
            self.fresh = False
            return reply
        return _NO_ANSWER

    def close(self) -> None:
        """Hang up; the next step opens a new connection (http.client reconnects by itself)."""
        self.http.close()
        self.fresh = True

    def _exchange(self, step: Step) -> Reply:
        headers = dict(step.headers)
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        body = step.body.encode("utf-8") if step.body is not None else None
        self.http.request(step.method, step.path, body=body, headers=headers)
        response = self.http.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        for line in response.headers.get_all("Set-Cookie") or ():
            jar = SimpleCookie()
            try:
                jar.load(line)
            except CookieError:
                continue
            self.cookies.update({name: morsel.value for name, morsel in jar.items()})
        return Reply(response.status, response.headers, text)


def attempt(conn: Connection, flow: Flow) -> tuple[Outcome, int]:
    """One login attempt through the flow's steps: its outcome and how many requests it made."""
    steps, sent = flow(), 0
    try:
        step = next(steps)
        while True:
            reply = conn.send(step)
            sent += 1
            step = steps.send(reply)
    except StopIteration as done:
        return done.value, sent


def round_trip(host: str, timeout: float = 10.0, verify_tls: bool = True, path: str = RTT_PATH,
               probes: int = RTT_PROBES) -> float:
    """Median time of a cheap GET on a warm connection (any HTTP answer counts): the network round
    trip plus the server's HTTP overhead, which a login pays on top of its service; 0 if none."""
    conn = Connection(host, timeout, verify_tls)
    conn.send(Step("GET", path))   # opens the connection
    times = []
    for _ in range(probes):
        t0 = time.perf_counter()
        if conn.send(Step("GET", path)).status:
            times.append(time.perf_counter() - t0)
    conn.close()
    return statistics.median(times) if times else 0.0
