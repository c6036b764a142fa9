"""The lab's HTTP face: five ways to log in, a heartbeat, health and metrics (Starlette).

Login endpoints (each request passes the admission model, docs/model.md section 3):
- `POST /oauth/token` — OAuth 2.0 (RFC 6749): `client_credentials`, `password` and `refresh_token`
  grants; client authentication by HTTP Basic (id and secret form-urlencoded first, section
  2.3.1) or by `client_id`/`client_secret` in the body; errors as in section 5.2.
- `POST /login` — HTML form with a double-submit CSRF token (`GET /login` gives the form and
  the `lab_csrf` cookie; it is cheap, not a login); success sets the `lab_session` cookie.
- `POST /api/login` — JSON `{"username": ..., "password": ...}`.
- `GET /basic` — HTTP Basic (RFC 7617).

Session resumption (docs/model.md section 3.4) is the OAuth 2.0 refresh-token grant (RFC 6749
section 6): every successful `password` grant answers with a `refresh_token` beside the access
token, valid for the refresh lifetime (`loginstorm lab` takes the scenario's
`client.resume_window`, else an hour). `grant_type=refresh_token&refresh_token=...` (with the
same client authentication the token was issued to, if any) is a resumption: the admission
model serves it as one (`[server.resume].service_time` in sleep mode; no password hash in cpu
mode) and, if the token is known, unexpired when the request arrived and bound to this client,
answers new tokens. Refresh tokens rotate: a used one is revoked, the answer carries the next
one. An unknown, used, expired, revoked or foreign token gets 400 `invalid_grant` (after its
service, like a wrong password). The `client_credentials` grant issues no refresh token (RFC 6749
section 4.4.3), and the form, JSON and Basic logins have no refresh mechanism: on those every
login is a full one.

Cheap endpoints: `GET /me` (bearer token or session cookie: the heartbeat), `GET /healthz`,
`GET /metrics` (Prometheus text), `GET /metrics.json` and `GET /server.json` (the served `[server]` table).
`POST /admin/purge` (optional form field `fraction`, default 1) revokes that share of the live
refresh tokens, picked at random (seeded): the scenario's `token-purge` event played by the
server. It answers only a client on a loopback address (403 otherwise) and is no login.

A request that is malformed, carries no credentials or fails the CSRF check is answered before
admission (it costs no worker, like a real server's input validation). An injected fault
(`server.fault_rate`, `fault_when`) is answered 500 `{"error": "server_error"}` on every login
endpoint. Tokens and session ids are `secrets.token_urlsafe(24)`; no password, secret or token
is ever logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import ipaddress
import json
import math
import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from loadtests.lab.admission import FAULT, Admission, Refusal, Verdict
from loadtests.lab.metrics import prometheus_text
from loadtests.lab.users import UserStore

__all__ = ["LabApp", "TokenStore", "build_app", "REALM"]

REALM = "loginstorm-lab"
TOKEN_TTL = 3600                      # seconds: `expires_in` of every token and session
CSRF_COOKIE, SESSION_COOKIE = "lab_csrf", "lab_session"
GRANTS = ("client_credentials", "password", "refresh_token")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}   # RFC 6749 5.1
BASIC_CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
CLIENT_DISCONNECTED = 499             # never reaches anyone: the client is gone (nginx's code)
MAX_BODY = 64 * 1024


class TokenStore:
    """Random tokens (bearer tokens, session ids, refresh tokens) -> what they stand for, forgotten after `ttl`.

        >>> store = TokenStore()
        >>> store.lookup(store.issue("alice"))
        'alice'
        >>> token = store.issue(("alice", None))
        >>> store.redeem(token, lambda held: held[1] is None), store.redeem(token, lambda held: True)
        (('alice', None), None)

    Safe to use from the event loop and the check pool at once (one lock).
    """

    def __init__(self, ttl: float = TOKEN_TTL, limit: int = 1_000_000, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.limit, self.clock = ttl, limit, clock
        self._items: dict[str, tuple[Any, float]] = {}   # insertion order = expiry order
        self._lock = threading.Lock()

    def issue(self, subject: Any) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = self.clock()
            for _ in range(2):  # forget the oldest while stale or over the limit: amortised O(1)
                oldest = next(iter(self._items), None)
                if oldest is None or (self._items[oldest][1] > now and len(self._items) < self.limit):
                    break
                del self._items[oldest]
            self._items[token] = (subject, now + self.ttl)
        return token

    def lookup(self, token: str | None, at: float | None = None) -> Any:
        """What the token stands for, if it is known and unexpired at `at` (default: now)."""
        item = self._items.get(token) if token else None
        return item[0] if item is not None and item[1] > (self.clock() if at is None else at) else None

    def redeem(self, token: str | None, accept: Callable[[Any], bool], at: float | None = None) -> Any:
        """A one-time use: what the token stands for, revoking it, if it is valid at `at` and
        `accept(what)`; else None (and the token stays as it was)."""
        with self._lock:
            held = self.lookup(token, at)
            if held is None or not accept(held):
                return None
            del self._items[token]
            return held

    def purge(self, fraction: float, rng: random.Random) -> int:
        """Revoke round(fraction x live tokens) of the live ones, picked by `rng`; how many."""
        with self._lock:
            now = self.clock()
            live = [token for token, (_, expiry) in self._items.items() if expiry > now]
            chosen = rng.sample(live, int(round(fraction * len(live))))
            for token in chosen:
                del self._items[token]
            return len(chosen)


class LabApp:
    """The handlers, over one admission model, the user store and the issued tokens."""

    def __init__(self, admission: Admission, users: UserStore, clients: UserStore | None = None,
                 config: dict | None = None, refresh_ttl: float = TOKEN_TTL, seed: int = 0):
        """`clients`: the confidential client from LOGINSTORM_CLIENT_ID/SECRET, if both were set;
        `config`: what GET /server.json publishes (the mode and the served `[server]` table);
        `refresh_ttl`: how long a refresh token stays valid (seconds); `seed`: the purge's picks."""
        self.admission, self.users, self.clients = admission, users, clients
        self.config = config or {}
        self.metrics = admission.metrics
        self.tokens, self.sessions = TokenStore(), TokenStore()
        # refresh token -> (subject, the client id it was issued to or None)
        self.refresh = TokenStore(ttl=refresh_ttl if math.isfinite(refresh_ttl) else 10 * 365 * 86400.0)
        self.refresh_ttl = refresh_ttl
        self.purge_rng = random.Random(seed)

    def verify_client(self, client_id: str, secret: str) -> bool:
        """The configured client, else any user as its own client (each device its own OAuth client)."""
        if self.clients is not None and client_id in self.clients:
            return self.clients.verify(client_id, secret)
        return self.users.verify(client_id, secret)

    def invalid(self, response: Response) -> Response:
        """Answered before admission: malformed, no credentials, or a failed CSRF check."""
        self.metrics.invalid += 1
        return response

    def token_body(self, subject: str, refresh: bool = False, client_id: str | None = None) -> dict[str, object]:
        """An access token response; with `refresh`, also a refresh token bound to `client_id`
        (None: a public client)."""
        body: dict[str, object] = {"access_token": self.tokens.issue(subject), "token_type": "Bearer",
                                   "expires_in": TOKEN_TTL}
        if refresh:
            body["refresh_token"] = self.refresh.issue((subject, client_id))
        return body

    # --- POST /oauth/token ----------------------------------------------------------------

    async def oauth_token(self, request: Request) -> Response:
        self.metrics.requests["/oauth/token"] += 1
        arrived = self.refresh.clock()       # a refresh token must be valid when the request arrives
        body = await _body(request)
        if body is None:
            return Response(status_code=CLIENT_DISCONNECTED)
        form = _form(body)
        if form is None or not form.get("grant_type"):
            return self.invalid(_oauth_error(400, "invalid_request"))
        grant = form["grant_type"]
        if grant not in GRANTS:
            return self.invalid(_oauth_error(400, "unsupported_grant_type"))
        client = _oauth_client(request.headers.get("authorization"), form)
        if isinstance(client, Response):
            return self.invalid(client)
        if grant == "client_credentials" and client is None:
            return self.invalid(_oauth_error(401, "invalid_client"))
        username, password = form.get("username"), form.get("password")
        if grant == "password" and (not username or password is None):
            return self.invalid(_oauth_error(400, "invalid_request"))
        refresh_token = form.get("refresh_token")
        if grant == "refresh_token" and not refresh_token:
            return self.invalid(_oauth_error(400, "invalid_request"))
        client_id = client[0] if client is not None else None

        def check() -> Verdict:
            if client is not None and not self.verify_client(*client):
                return Verdict(False, error="invalid_client")
            if grant == "client_credentials":
                return Verdict(True, client[0])
            if grant == "refresh_token":   # no password hash: the token is looked up (and rotated)
                held = self.refresh.redeem(refresh_token, lambda held: held[1] == client_id, at=arrived)
                return Verdict(True, held[0]) if held is not None else Verdict(False, error="invalid_grant")
            if self.users.verify(username, password):
                return Verdict(True, username)
            return Verdict(False, error="invalid_grant")

        verdict = await self.admission.handle(check, request.receive, resume=grant == "refresh_token")
        if not isinstance(verdict, Verdict):
            return _unserved(verdict)
        if verdict.ok:
            refresh = grant != "client_credentials"    # RFC 6749 4.4.3: no refresh token for that grant
            return JSONResponse(self.token_body(verdict.subject, refresh, client_id), headers=NO_STORE)
        return _oauth_error(401 if verdict.error == "invalid_client" else 400, verdict.error)

    # --- GET and POST /login --------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        csrf = secrets.token_urlsafe(24)
        response = HTMLResponse(_page("Log in", _login_form(csrf)), headers={"Cache-Control": "no-store"})
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        return response

    async def login_form(self, request: Request) -> Response:
        self.metrics.requests["/login"] += 1
        body = await _body(request)
        if body is None:
            return Response(status_code=CLIENT_DISCONNECTED)
        form = _form(body)
        if form is None:
            return self.invalid(HTMLResponse(_page("Bad request", "<p>Malformed form.</p>"), status_code=400))
        cookie, sent = request.cookies.get(CSRF_COOKIE, ""), form.get("csrf_token", "")
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            return self.invalid(HTMLResponse(_page("Forbidden", "<p>CSRF check failed: load the form again.</p>"),
                                             status_code=403))
        username, password = form.get("username"), form.get("password")
        if not username or password is None:
            return self.invalid(HTMLResponse(_page("Log in", _login_form(cookie)), status_code=400))
        verdict = await self.admission.handle(lambda: Verdict(self.users.verify(username, password), username),
                                              request.receive)
        if not isinstance(verdict, Verdict):
            return _unserved(verdict)
        if not verdict.ok:
            return HTMLResponse(_page("Log in", "<p>Wrong username or password.</p>" + _login_form(cookie)),
                                status_code=401)
        response = HTMLResponse(_page("Welcome", f"<p>Welcome {html.escape(username)}</p>"))
        response.set_cookie(SESSION_COOKIE, self.sessions.issue(username), max_age=TOKEN_TTL, httponly=True,
                            samesite="lax")
        return response

    # --- POST /api/login and GET /basic ---------------------------------------------------

    async def api_login(self, request: Request) -> Response:
        self.metrics.requests["/api/login"] += 1
        body = await _body(request)
        if body is None:
            return Response(status_code=CLIENT_DISCONNECTED)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        username = data.get("username") if isinstance(data, dict) else None
        password = data.get("password") if isinstance(data, dict) else None
        if not isinstance(username, str) or not username or not isinstance(password, str):
            return self.invalid(JSONResponse({"error": "invalid_request"}, status_code=400))
        return await self._login(request, username, password, JSONResponse({"error": "invalid_credentials"}, 401))

    async def basic(self, request: Request) -> Response:
        self.metrics.requests["/basic"] += 1
        pair = _basic_pair(request.headers.get("authorization"))
        if pair is None:
            return self.invalid(JSONResponse({"error": "invalid_credentials"}, 401, headers=BASIC_CHALLENGE))
        return await self._login(request, *pair,
                                 JSONResponse({"error": "invalid_credentials"}, 401, headers=BASIC_CHALLENGE))

    async def _login(self, request: Request, username: str, password: str, denied: Response) -> Response:
        verdict = await self.admission.handle(lambda: Verdict(self.users.verify(username, password), username),
                                              request.receive)
        if not isinstance(verdict, Verdict):
            return _unserved(verdict)
        return JSONResponse(self.token_body(username), headers=NO_STORE) if verdict.ok else denied

    # --- cheap endpoints ------------------------------------------------------------------

    async def me(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        subject = self.tokens.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if subject is None:
            subject = self.sessions.lookup(request.cookies.get(SESSION_COOKIE))
        if subject is None:
            return JSONResponse({"error": "invalid_token"}, 401,
                                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
        return JSONResponse({"user": subject}, headers={"Cache-Control": "no-store"})

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def admin_purge(self, request: Request) -> Response:
        """POST /admin/purge: revoke a share (`fraction`, default 1) of the live refresh tokens."""
        if not _loopback(request.client.host if request.client is not None else ""):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        body = await _body(request)
        form = _form(body) if body is not None else None
        try:
            fraction = float(form.get("fraction", "1")) if form is not None else math.nan
        except ValueError:
            fraction = math.nan
        if not 0.0 <= fraction <= 1.0:
            return JSONResponse({"error": "invalid_request", "error_description": "fraction: a number from 0 to 1"},
                                status_code=400)
        revoked = self.refresh.purge(fraction, self.purge_rng)
        self.metrics.purged += revoked
        return JSONResponse({"revoked": revoked, "fraction": fraction})

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(prometheus_text(self.admission.snapshot()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def metrics_json(self, request: Request) -> Response:
        return JSONResponse(self.admission.snapshot())

    async def server_json(self, request: Request) -> Response:
        """The served `[server]` table and the mode: `loginstorm loadtest` simulates this capacity."""
        return JSONResponse(self.config)


def build_app(lab: LabApp) -> Starlette:
    """The Starlette application serving `lab`'s handlers."""
    return Starlette(routes=[
        Route("/oauth/token", lab.oauth_token, methods=["POST"]),
        Route("/login", lab.login_page, methods=["GET"]),
        Route("/login", lab.login_form, methods=["POST"]),
        Route("/api/login", lab.api_login, methods=["POST"]),
        Route("/basic", lab.basic, methods=["GET"]),
        Route("/me", lab.me, methods=["GET"]),
        Route("/healthz", lab.healthz, methods=["GET"]),
        Route("/metrics", lab.metrics_text, methods=["GET"]),
        Route("/metrics.json", lab.metrics_json, methods=["GET"]),
        Route("/server.json", lab.server_json, methods=["GET"]),
        Route("/admin/purge", lab.admin_purge, methods=["POST"]),
    ], max_body_size=MAX_BODY)


# --- parsing ----------------------------------------------------------------------------------

async def _body(request: Request) -> bytes | None:
    """The request body; None when the client hung up while sending it."""
    try:
        return await request.body()
    except ClientDisconnect:
        return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _form(body: bytes) -> dict[str, str] | None:
    """An application/x-www-form-urlencoded body; None if malformed or a field repeats (RFC 6749 3.1)."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        return None
    if any(len(values) > 1 for values in fields.values()):
        return None
    return {key: values[0] for key, values in fields.items()}


def _basic_pair(header: str | None) -> tuple[str, str] | None:
    """(user, password) from `Authorization: Basic base64(user:password)`, else None."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def _oauth_client(header: str | None, form: dict[str, str]) -> tuple[str, str] | None | Response:
    """The client's (id, secret) from one authentication method, None without any, or the error."""
    in_body = "client_id" in form or "client_secret" in form
    if header:
        pair = _basic_pair(header)
        if pair is None:
            return _oauth_error(401, "invalid_client")
        if in_body:  # RFC 6749 2.3: a client MUST NOT use more than one method
            return _oauth_error(400, "invalid_request")
        return unquote_plus(pair[0]), unquote_plus(pair[1])
    if in_body:
        if not form.get("client_id"):
            return _oauth_error(401, "invalid_client")
        return form["client_id"], form.get("client_secret", "")
    return None


# --- answers ----------------------------------------------------------------------------------

def _oauth_error(status: int, error: str) -> JSONResponse:
    headers = dict(NO_STORE)
    if status == 401:
        headers.update(BASIC_CHALLENGE)
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _unserved(answer: object) -> Response:
    if isinstance(answer, Refusal):
        return JSONResponse({"error": "temporarily_unavailable"}, status_code=answer.status, headers=answer.headers)
    if answer is FAULT:                                 # fault injection (server.fault_rate)
        return JSONResponse({"error": "server_error"}, status_code=500)
    return Response(status_code=CLIENT_DISCONNECTED)   # cancelled: its client has hung up


def _login_form(csrf: str) -> str:
    return ('<form method="post" action="/login">'
            '<label>Username <input type="text" name="username" autocomplete="username"></label>'
            '<label>Password <input type="password" name="password" autocomplete="current-password"></label>'
            f'<input type="hidden" name="csrf_token" value="{html.escape(csrf)}">'
            '<button type="submit">Log in</button></form>')


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title} - loginstorm lab</title></head>'
            f"<body><h1>{title}</h1>{body}</body></html>")
