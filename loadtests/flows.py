"""The login flows of docs/model.md section 7 as step generators, free of gevent and of Locust.

A flow yields the `Step`s (HTTP requests) of one login attempt and receives each `Reply`; it
returns the attempt's `Outcome`. The device user runs the steps over its HTTP session and
enforces the client timeout around the whole attempt, so a flow never sees a timeout::

    flow = build_flow(target, account)          # target: sim.scenario.Target
    steps = flow()
    step = next(steps)
    ...                                         # send it, then steps.send(reply)

Failure messages are fixed strings ("HTTP 401", "no access_token in the body"): Locust groups
errors by message, and no message can carry a secret or a token.

Session resumption (docs/model.md section 3.4, `client.resume_window`): a flow with
`flow.refreshes` True (only `oauth2-password`) takes the refresh token a device holds,
`flow(refresh=token)`, and sends the OAuth 2.0 refresh-token grant (RFC 6749 section 6:
`grant_type=refresh_token&refresh_token=...`, with the same client authentication as its
password grant) to the same `target.path` instead of the password; its `Outcome.refresh` is
the `refresh_token` the answer carried (a full login's or a resumption's: servers rotate
them). The other flows have no refresh mechanism: `oauth2-client-credentials` gets no refresh
token (RFC 6749 section 4.4.3), and the form, JSON and Basic logins send the password every time,
so on them every login is a full one (`flow.refreshes` False; a refresh argument is ignored).

Redirects are not followed: an answer is judged by its own status. A login that answers with a
redirect (Django's LoginView: 302 to the next page; many form logins do the same) is a success
when `[target].success.status` lists that status (`success = { status = [302] }`); otherwise it
is a failure whose message says so ("HTTP 302: a redirect, not followed; ...").
"""

from __future__ import annotations

import base64
import email.utils
import json
import math
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from loadtests.credentials import Account, Secret

__all__ = ["Step", "Reply", "Outcome", "Flow", "build_flow", "judge", "parse_retry_after", "FLOWS",
           "OK", "REJECTED", "FAILED", "ERROR", "TIMEOUT"]

# The kinds of outcome, in the simulator's vocabulary (timeseries columns of docs/model.md section 5).
OK, REJECTED, FAILED, ERROR, TIMEOUT = "ok", "rejected", "failed", "error", "timeout"
#: answers that say "not now" (counted as `rejected`, like the simulator's refusals)
REJECT_STATUS = frozenset({429, 503})


@dataclass(frozen=True)
class Step:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)   # may hold credentials
    body: str | None = field(default=None, repr=False)                     # may hold credentials


@dataclass(frozen=True)
class Reply:
    """What came back: status 0 means no HTTP answer (connection refused, reset, ...)."""

    status: int
    headers: Mapping[str, str]
    text: str

    def header(self, name: str) -> str | None:
        """`headers` is the HTTP client's case-insensitive mapping, or a dict keyed as sent or in lower case."""
        value = self.headers.get(name)
        return value if value is not None else self.headers.get(name.lower())


@dataclass(frozen=True)
class Outcome:
    kind: str                        # OK | REJECTED | FAILED | ERROR | TIMEOUT
    message: str = ""                # fixed text, safe to log
    status: int = 0
    retry_after: float | None = None
    token: str | None = field(default=None, repr=False)   # bearer token for the heartbeat
    refresh: str | None = field(default=None, repr=False)  # the answer's refresh_token (RFC 6749 section 6)

    @property
    def ok(self) -> bool:
        return self.kind == OK


#: `flow()` a full login; `flow(refresh=token)` a resumption where `flow.refreshes` is True
Flow = Callable[..., Generator[Step, Reply, Outcome]]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds (RFC 9110 section 10.2.3), a
    decimal (nonstandard, sent by the lab server below 1 s) or an HTTP-date; None if absent or
    unreadable.

        >>> parse_retry_after("2"), parse_retry_after("0.5"), parse_retry_after("soon")
        (2.0, 0.5, None)
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def judge(reply: Reply, status: tuple[int, ...] | list[int], json_field: str | None) -> Outcome:
    """Success = an expected status and, if asked, the JSON field present and non-empty."""
    retry_after = parse_retry_after(reply.header("Retry-After"))
    if reply.status == 0:
        return Outcome(ERROR, "connection error")
    if reply.status not in status:
        kind = REJECTED if reply.status in REJECT_STATUS else (ERROR if reply.status >= 500 else FAILED)
        return Outcome(kind, _unexpected(reply.status), reply.status, retry_after)
    access, refresh = _tokens(reply.text)
    if json_field is None:     # no field required; an `access_token` that came anyway is the heartbeat's
        return Outcome(OK, "", reply.status, retry_after, access, refresh)
    try:
        body = json.loads(reply.text)
    except ValueError:
        return Outcome(FAILED, "the body is not JSON", reply.status)
    value = body.get(json_field) if isinstance(body, dict) else None
    if not value:
        return Outcome(FAILED, f"no {json_field} in the body", reply.status)
    return Outcome(OK, "", reply.status, retry_after, access, refresh)


def _unexpected(status: int) -> str:
    """The message of a status that is not a success: a fixed text (no Location, which may hold a token).

        >>> _unexpected(401), _unexpected(302)
        ('HTTP 401', 'HTTP 302: a redirect, not followed; a success only if target.success.status lists 302')
    """
    if 300 <= status < 400:
        return f"HTTP {status}: a redirect, not followed; a success only if target.success.status lists {status}"
    return f"HTTP {status}"


def _tokens(text: str) -> tuple[str | None, str | None]:
    """The `access_token` and `refresh_token` of a JSON object body, each if there is one.

        >>> _tokens('{"access_token": "a", "refresh_token": "r"}'), _tokens("<html>")
        (('a', 'r'), (None, None))
    """
    if not text.lstrip().startswith("{"):
        return None, None
    try:
        body = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    access, refresh = body.get("access_token"), body.get("refresh_token")
    return (str(access) if access else None), (refresh if isinstance(refresh, str) and refresh else None)


def _basic(user: str, password: str) -> str:
    """HTTP Basic credentials; OAuth2 clients form-urlencode id and secret first (RFC 6749 2.3.1)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


_FORM = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


def _oauth2(target, account: Account | None, client: tuple[str, Secret] | None, grant: str) -> Flow:
    fields = {"grant_type": grant}
    headers = dict(_FORM)
    if grant == "password":
        fields.update(username=account.username, password=account.password.reveal())
    if client is not None:
        client_id, secret = client
        if target.client_auth == "basic":
            headers["Authorization"] = _basic(quote(client_id, safe=""), quote(secret.reveal(), safe=""))
        else:
            fields.update(client_id=client_id, client_secret=secret.reveal())
    step = Step("POST", target.path, headers, urlencode(fields))
    auth = {k: v for k, v in fields.items() if k in ("client_id", "client_secret")}

    def flow(refresh: str | None = None):
        if refresh is not None and grant == "password":
            reply = yield Step("POST", target.path, headers,
                               urlencode({"grant_type": "refresh_token", "refresh_token": refresh, **auth}))
        else:
            reply = yield step
        return judge(reply, target.success.status, target.success.json_field)
    flow.refreshes = grant == "password"
    return flow


_INPUT = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r"""(\w[\w-]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")


def find_input(html: str, name: str) -> str | None:
    """The value of the form field `name` (a hidden CSRF input) in an HTML page, or None.

        >>> find_input('<input type="hidden" name="csrf" value="abc">', "csrf")
        'abc'
    """
    for tag in _INPUT.findall(html):
        attrs = {m.group(1).lower(): next(g for g in m.groups()[1:] if g is not None) for m in _ATTR.finditer(tag)}
        if attrs.get("name") == name:
            return attrs.get("value", "")
    return None


def _form(target, account: Account) -> Flow:
    names = target.fields

    def flow(refresh: str | None = None):
        page = yield Step("GET", target.path, {"Accept": "text/html"})
        if page.status != 200:
            return judge(page, (200,), None)
        fields = {names.username: account.username, names.password: account.password.reveal()}
        if names.csrf:
            token = find_input(page.text, names.csrf)
            if token is None:
                return Outcome(FAILED, "no CSRF field in the login form", page.status)
            fields[names.csrf] = token
        reply = yield Step("POST", target.path, _FORM, urlencode(fields))
        return judge(reply, target.success.status, target.success.json_field)
    flow.refreshes = False
    return flow


def _json(target, account: Account) -> Flow:
    body = json.dumps({target.fields.username: account.username, target.fields.password: account.password.reveal()})
    step = Step("POST", target.path, {"Content-Type": "application/json", "Accept": "application/json"}, body)

    def flow(refresh: str | None = None):
        reply = yield step
        return judge(reply, target.success.status, target.success.json_field)
    flow.refreshes = False
    return flow


def _basic_flow(target, account: Account) -> Flow:
    step = Step("GET", target.path, {"Authorization": _basic(account.username, account.password.reveal())})

    def flow(refresh: str | None = None):
        reply = yield step
        return judge(reply, target.success.status, target.success.json_field)
    flow.refreshes = False
    return flow


FLOWS = ("oauth2-client-credentials", "oauth2-password", "form", "json", "basic")


def build_flow(target, account: Account | None, client: tuple[str, Secret] | None = None) -> Flow:
    """The flow `target.flow` for one device. `client` is the OAuth2 client (id, secret): for
    client_credentials without one, the device's own account is its client."""
    name = target.flow
    if name == "oauth2-client-credentials":
        if client is None:
            client = (account.username, account.password)
        return _oauth2(target, None, client, "client_credentials")
    if name == "oauth2-password":
        return _oauth2(target, account, client, "password")
    if name == "form":
        return _form(target, account)
    if name == "json":
        return _json(target, account)
    if name == "basic":
        return _basic_flow(target, account)
    raise ValueError(f"unknown flow {name!r}; expected one of {', '.join(FLOWS)}")
