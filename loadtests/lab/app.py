"""The lab's HTTP face: five ways to log in, a heartbeat, health and metrics (Starlette).

Login endpoints (each request passes the admission model, docs/model.md section 3):
- `POST /oauth/token` — OAuth 2.0 (RFC 6749): `client_credentials` and `password` grants; client
  authentication by HTTP Basic (id and secret form-urlencoded first, section 2.3.1) or by
  `client_id`/`client_secret` in the body; errors as in section 5.2.
- `POST /login` — HTML form with a double-submit CSRF token (`GET /login` gives the form and
  the `lab_csrf` cookie; it is cheap, not a login); success sets the `lab_session` cookie.
- `POST /api/login` — JSON `{"username": ..., "password": ...}`.
- `GET /basic` — HTTP Basic (RFC 7617).

Cheap endpoints: `GET /me` (bearer token or session cookie: the heartbeat), `GET /healthz`,
`GET /metrics` (Prometheus text), `GET /metrics.json` and `GET /server.json` (the served `[server]` table).

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
import json
import secrets
import time
from collections.abc import Callable
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
GRANTS = ("client_credentials", "password")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}   # RFC 6749 5.1
BASIC_CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
CLIENT_DISCONNECTED = 499             # never reaches anyone: the client is gone (nginx's code)
MAX_BODY = 64 * 1024


class TokenStore:
    """Random tokens (bearer tokens, session ids) -> who they belong to, forgotten after `ttl`.

        >>> store = TokenStore()
        >>> store.lookup(store.issue("alice"))
        'alice'
    """

    def __init__(self, ttl: float = TOKEN_TTL, limit: int = 1_000_000, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.limit, self.clock = ttl, limit, clock
        self._items: dict[str, tuple[str, float]] = {}   # insertion order = expiry order

    def issue(self, subject: str) -> str:
        now = self.clock()
        for _ in range(2):  # forget the oldest while stale or over the limit: amortised O(1)
            oldest = next(iter(self._items), None)
            if oldest is None or (self._items[oldest][1] > now and len(self._items) < self.limit):
                break
            del self._items[oldest]
        token = secrets.token_urlsafe(24)
        self._items[token] = (subject, now + self.ttl)
        return token

    def lookup(self, token: str | None) -> str | None:
        item = self._items.get(token) if token else None
        return item[0] if item is not None and item[1] > self.clock() else None


class LabApp:
    """The handlers, over one admission model, the user store and the issued tokens."""

    def __init__(self, admission: Admission, users: UserStore, clients: UserStore | None = None,
                 config: dict | None = None):
        """`clients`: the confidential client from LOGINSTORM_CLIENT_ID/SECRET, if both were set;
        `config`: what GET /server.json publishes (the mode and the served `[server]` table)."""
        self.admission, self.users, self.clients = admission, users, clients
        self.config = config or {}
        self.metrics = admission.metrics
        self.tokens, self.sessions = TokenStore(), TokenStore()

    def verify_client(self, client_id: str, secret: str) -> bool:
        """The configured client, else any user as its own client (each device its own OAuth client)."""
        if self.clients is not None and client_id in self.clients:
            return self.clients.verify(client_id, secret)
        return self.users.verify(client_id, secret)

    def invalid(self, response: Response) -> Response:
        """Answered before admission: malformed, no credentials, or a failed CSRF check."""
        self.metrics.invalid += 1
        return response

    def token_body(self, subject: str) -> dict[str, object]:
        return {"access_token": self.tokens.issue(subject), "token_type": "Bearer", "expires_in": TOKEN_TTL}

    # --- POST /oauth/token ----------------------------------------------------------------

    async def oauth_token(self, request: Request) -> Response:
        self.metrics.requests["/oauth/token"] += 1
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

        def check() -> Verdict:
            if client is not None and not self.verify_client(*client):
                return Verdict(False, error="invalid_client")
            if grant == "client_credentials":
                return Verdict(True, client[0])
            if self.users.verify(username, password):
                return Verdict(True, username)
            return Verdict(False, error="invalid_grant")

        verdict = await self.admission.handle(check, request.receive)
        if not isinstance(verdict, Verdict):
            return _unserved(verdict)
        if verdict.ok:
            return JSONResponse(self.token_body(verdict.subject), headers=NO_STORE)
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
    ], max_body_size=MAX_BODY)


# --- parsing ----------------------------------------------------------------------------------

async def _body(request: Request) -> bytes | None:
    """The request body; None when the client hung up while sending it."""
    try:
        return await request.body()
    except ClientDisconnect:
        return None


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
