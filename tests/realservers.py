"""Real, third-party auth servers on 127.0.0.1 for tests: started and stopped by PID.

Two kinds of server whose capacity is known from their configuration, not from loginstorm:

* **worker-bound** (`running_django`): Django + django-oauth-toolkit under gunicorn with
  `workers` sync workers. Logins hash the password with PBKDF2-SHA256 at a chosen iteration
  count (a hasher subclass setting `iterations`), so one login costs a known, modest CPU time.
  Endpoints: the OAuth2 token endpoint `/o/token/` (password and client_credentials grants),
  Django's form login `/accounts/login/` (LoginView, CSRF field `csrfmiddlewaretoken` and cookie
  `csrftoken`; success: 302 to `/welcome/`), and `/healthz`. Such a server never refuses: beyond
  capacity, connections wait in the listen backlog until the client gives up.
* **rate-limited** (`running_nginx`): nginx with `limit_req rate=R burst=B nodelay` in front of
  HTTP Basic auth (`auth_basic`, an htpasswd file of `{SSHA}` hashes) and a static JSON token
  body at `/token`; beyond the burst it answers `status` (429 with `Retry-After: 1`, or 503).

    with running_django(tmp_path, workers=2, iterations=20_000) as server:
        server.url, server.token_path, server.credentials      # CSV of username,password rows
        server.workers, server.cost_per_login_s                 # the known configuration
        server.target_toml("oauth2-password")                   # a [target] table for loginstorm
        server.env()                                            # LOGINSTORM_CLIENT_SECRET for it

What the servers need is installed on first use unless LOGINSTORM_INSTALL_SERVERS=0: the Python
packages of PY_REQUIREMENTS with this interpreter's pip, nginx with apt-get (as root). What cannot
be found or installed raises `Unavailable`, whose message is the reason a test skips with; a
server that is there but fails to set up or start raises `ServerError`, a failure.

Each server runs in its own session (process group) and is stopped by that group's id: SIGTERM,
then SIGKILL after STOP_S; never anything found by name. Secrets (user passwords, the OAuth2
client secrets, Django's SECRET_KEY) live only in files under the server's tmp dir (mode 0600)
and in fields that `repr` leaves out; no log line or message holds one.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import http.client
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from loadtests.credentials import Account, Secret

__all__ = ["Unavailable", "ServerError", "ServerProcess", "DjangoServer", "NginxServer", "running_django",
           "running_nginx", "target_toml", "ensure_python_packages", "find_nginx", "free_port", "wait_http", "request",
           "basic_auth", "wrong_password", "form_login", "token_login", "PY_REQUIREMENTS", "APT_PACKAGE", "INSTALL_ENV"]

INSTALL_ENV = "LOGINSTORM_INSTALL_SERVERS"      # "0": never install; skip when something is missing
#: what the worker-bound server needs (the lines to add to pyproject's test extras)
PY_REQUIREMENTS = ("django>=5.2,<6", "django-oauth-toolkit>=3.0,<4", "gunicorn>=23")
_PY_MODULES = ("django", "oauth2_provider", "gunicorn")
APT_PACKAGE = "nginx"                           # Debian's; in bookworm nginx-light is a transitional package
INSTALL_TIMEOUT_S = 600.0
STARTUP_S = 30.0
STOP_S = 10.0
_PROJECT = "lsproj"


class Unavailable(RuntimeError):
    """A server cannot be found or installed here (the message is the skip reason)."""


class ServerError(RuntimeError):
    """A server that is installed failed to set up or to start: a test failure, not a skip."""


# --- finding and installing ----------------------------------------------------------------------

def _may_install() -> bool:
    return os.environ.get(INSTALL_ENV, "1") != "0"


def _missing_modules() -> list[str]:
    importlib.invalidate_caches()
    return [name for name in _PY_MODULES if importlib.util.find_spec(name) is None]


def ensure_python_packages() -> None:
    """Django, django-oauth-toolkit and gunicorn importable by this interpreter (pip-installed if not)."""
    missing = _missing_modules()
    if not missing:
        return
    if not _may_install():
        raise Unavailable(f"{', '.join(missing)} not installed and {INSTALL_ENV}=0")
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *PY_REQUIREMENTS],
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"pip install {' '.join(PY_REQUIREMENTS)} failed: {exc}") from None
    missing = _missing_modules()
    if done.returncode or missing:
        raise Unavailable(f"pip install {' '.join(PY_REQUIREMENTS)} failed (exit {done.returncode}): "
                          f"{done.stderr.strip()[-300:]}")


def find_nginx() -> str:
    """The nginx binary (apt-get installed, as root, if there is none)."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found:
        return found
    if not _may_install():
        raise Unavailable(f"nginx not installed and {INSTALL_ENV}=0")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("nginx not installed, and apt-get is not available to root here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", APT_PACKAGE]
    try:
        done = subprocess.run(install, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
        if done.returncode:   # an empty or stale package list: update it once and try again
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=INSTALL_TIMEOUT_S, env=env)
            done = subprocess.run(install, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"apt-get install {APT_PACKAGE} failed: {exc}") from None
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        raise Unavailable(f"apt-get install {APT_PACKAGE} failed (exit {done.returncode}): "
                          f"{done.stderr.strip()[-300:]}")
    return found


# --- processes -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A server started in a session of its own; `stop` signals that process group by its id."""

    name: str
    proc: subprocess.Popen = field(repr=False)
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, name: str, argv: list[str], log: Path, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> ServerProcess:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        return cls(name, proc, log)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL if it is still there after STOP_S; the leader is reaped."""
        pgid = self.proc.pid                       # start_new_session: the group's id is the leader's pid
        if self.proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_S)
        # workers the leader left behind still carry its group id (a group id is not reused while
        # the group has members): kill them too
        _signal_group(pgid, signal.SIGKILL)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the test process dies, even by SIGKILL, so a
    server outlives no test run (its master then stops its workers)."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def request(url: str, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None,
            timeout: float = 10.0) -> tuple[int, dict[str, str], str]:
    """One request on a new connection: (status, headers with lower-case names, text)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body.encode() if body is not None else None, headers=headers or {})
        response = conn.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text
    finally:
        conn.close()


def wait_http(url: str, path: str, server: ServerProcess, timeout: float = STARTUP_S) -> None:
    """Until `path` answers (any HTTP status); ServerError if the server dies or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerError(f"{server.name} exited with {server.proc.returncode} at start: {server.log_tail()}")
        try:
            request(url, "GET", path, timeout=2.0)
            return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"{server.name} did not answer {path} within {timeout:.0f} s: {server.log_tail()}")


def _private(path: Path, text: str) -> Path:
    """Write a file only its owner can read (it may hold secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return path


def _write_credentials(path: Path, accounts: list[Account]) -> Path:
    """The `--credentials` CSV of loginstorm (loadtests/credentials.py): header username,password."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["username", "password"])
        writer.writerows((a.username, a.password.reveal()) for a in accounts)
    return path


def _reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def basic_auth(username: str, password: str | Secret) -> str:
    return "Basic " + base64.b64encode(f"{username}:{_reveal(password)}".encode()).decode("ascii")


def wrong_password(account: Account) -> Account:
    """The same user with a password that is not theirs."""
    return Account(account.username, Secret(account.password.reveal() + "x"))


def _new_accounts(users: int) -> list[Account]:
    return [Account(f"user{i:04d}", Secret(secrets.token_urlsafe(12))) for i in range(users)]


# --- the worker-bound server: Django + django-oauth-toolkit under gunicorn ------------------------

_SETTINGS = '''\
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = {secret_key!r}
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "{project}.urls"
WSGI_APPLICATION = "{project}.wsgi.application"
TEMPLATES = [{{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [BASE_DIR / "templates"],
    "APP_DIRS": False,
    "OPTIONS": {{"context_processors": ["django.template.context_processors.request",
                                        "django.contrib.auth.context_processors.auth"]}},
}}]
# sqlite shared by the workers: WAL, immediate write transactions and a long busy timeout, so
# that concurrent logins (last_login, access tokens) wait for the lock rather than fail
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": BASE_DIR / "db.sqlite3",
    "OPTIONS": {{"timeout": 30, "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"}},
}}}}
# the tables straight from the models (migrate --run-syncdb): 1 s instead of 5 s of migrations
MIGRATION_MODULES = {{app: None for app in ("auth", "contenttypes", "sessions", "oauth2_provider")}}
# one PBKDF2 per password check, at a known iteration count
PASSWORD_HASHERS = ["{project}.hashers.FixedPBKDF2PasswordHasher"]
AUTH_PASSWORD_VALIDATORS = []
# the session in a signed cookie: a form login writes only last_login to the database
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/welcome/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
OAUTH2_PROVIDER = {{"ACCESS_TOKEN_EXPIRE_SECONDS": 3600, "PKCE_REQUIRED": False}}
LOGGING = {{"version": 1, "disable_existing_loggers": False,
           "handlers": {{"console": {{"class": "logging.StreamHandler"}}}},
           "root": {{"handlers": ["console"], "level": "WARNING"}},
           "loggers": {{"django.security": {{"level": "ERROR"}}, "django.request": {{"level": "ERROR"}}}}}}
'''

_HASHERS = '''\
from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FixedPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's pbkdf2_sha256 at a fixed iteration count (stored hashes need no upgrade)."""

    iterations = {iterations}
'''

_URLS = '''\
from django.contrib.auth import views as auth_views
from django.http import HttpResponse
from django.urls import include, path


def healthz(request):
    return HttpResponse("ok\\n", content_type="text/plain")


def welcome(request):
    who = request.user.get_username() if request.user.is_authenticated else "nobody"
    return HttpResponse(f"welcome {{who}}\\n", content_type="text/plain")


urlpatterns = [
    path("healthz", healthz),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("welcome/", welcome, name="welcome"),
]
'''

_WSGI = '''\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{project}.settings")
application = get_wsgi_application()
'''

_LOGIN_HTML = '''\
<!doctype html>
<html><head><title>Log in</title></head>
<body>
{% if form.errors %}<p class="error">Your username and password didn't match.</p>{% endif %}
<form method="post" action="{% url 'login' %}">
{% csrf_token %}
{{ form.username.label_tag }} {{ form.username }}
{{ form.password.label_tag }} {{ form.password }}
<input type="submit" value="Log in">
<input type="hidden" name="next" value="{{ next }}">
</form>
</body></html>
'''

# run once in a subprocess (the test process never imports Django): migrate, create the users and
# the OAuth2 applications read from stdin, time the hasher; prints one JSON line without secrets
_SETUP = '''\
import json
import os
import statistics
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{project}.settings")
import django

django.setup()
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import get_hasher, make_password
from django.core.management import call_command
from oauth2_provider.models import get_application_model

spec = json.load(sys.stdin)
call_command("migrate", verbosity=0, interactive=False, run_syncdb=True)
User = get_user_model()
User.objects.bulk_create([User(username=name, password=make_password(password)) for name, password in spec["users"]])
owner = User.objects.get(username=spec["users"][0][0])
Application = get_application_model()
for app in spec["applications"]:
    Application.objects.create(name=app["name"], user=owner, client_id=app["client_id"],
                               client_secret=app["client_secret"], client_type="confidential",
                               authorization_grant_type=app["grant"], hash_client_secret=app["hash_client_secret"])
hasher = get_hasher()
encoded = hasher.encode("not-a-user-password", hasher.salt())
times = []
for _ in range(spec["hash_samples"]):
    t0 = time.perf_counter()
    hasher.verify("not-a-user-password", encoded)
    times.append(time.perf_counter() - t0)
print(json.dumps({{"hash_s": statistics.median(times), "hash_min_s": min(times),
                  "iterations": hasher.iterations, "algorithm": hasher.algorithm}}))
'''


@dataclass
class DjangoServer:
    """A running Django + django-oauth-toolkit under gunicorn, and what is known about it."""

    url: str
    workers: int
    iterations: int                       # PBKDF2-SHA256 iterations of one password check
    hash_s: float                         # one password check, timed in-process (same venv, same machine): median
    hash_min_s: float                     # ... and the fastest of those samples
    cost_per_login_s: dict[str, float]    # median of sequential logins at concurrency 1, by flow, nothing subtracted
    cost_min_s: dict[str, float]          # the fastest of those (the least disturbed by other load on the machine)
    credentials: Path                     # username,password CSV
    client_id: str                        # OAuth2 client of the password grant
    cc_client_id: str                     # OAuth2 client of the client_credentials grant
    hash_client_secret: bool              # True: the client secret is PBKDF2-hashed too (a 2nd hash per login)
    server: ServerProcess
    dir: Path
    token_path: str = "/o/token/"
    form_path: str = "/accounts/login/"
    success_path: str = "/welcome/"
    health_path: str = "/healthz"
    client_secret: str = field(default="", repr=False)
    cc_client_secret: str = field(default="", repr=False)
    accounts: list[Account] = field(default_factory=list, repr=False)    # the rows of `credentials`

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def client(self) -> tuple[str, Secret]:
        return self.client_id, Secret(self.client_secret)

    @property
    def cc_client(self) -> tuple[str, Secret]:
        return self.cc_client_id, Secret(self.cc_client_secret)

    @property
    def capacity_rps(self) -> float:
        """workers / (cost of a password-grant login): what a fit should find (CPU allowing)."""
        return self.workers / self.cost_per_login_s["oauth2-password"]

    def env(self) -> dict[str, str]:
        """The environment variables the target tables refer to (to merge into a subprocess's env)."""
        return {"LOGINSTORM_CLIENT_SECRET": self.client_secret, "LOGINSTORM_CC_CLIENT_SECRET": self.cc_client_secret}

    def target_toml(self, flow: str = "oauth2-password") -> str:
        return target_toml(self, flow)


def _django_spec(accounts: list[Account], apps: list[dict], hash_samples: int) -> str:
    apps = [{k: _reveal(v) for k, v in app.items()} for app in apps]       # the client secrets
    return json.dumps({"users": [(a.username, a.password.reveal()) for a in accounts], "applications": apps,
                       "hash_samples": hash_samples})


def write_django_project(root: Path, iterations: int) -> Path:
    """The project's files under root/site: settings (a fresh SECRET_KEY), urls, hasher, wsgi, template."""
    site = root / "site"
    package = site / _PROJECT
    (site / "templates" / "registration").mkdir(parents=True, exist_ok=True)
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    _private(package / "settings.py", _SETTINGS.format(secret_key=secrets.token_urlsafe(40), project=_PROJECT))
    (package / "hashers.py").write_text(_HASHERS.format(iterations=int(iterations)))
    (package / "urls.py").write_text(_URLS.format())
    (package / "wsgi.py").write_text(_WSGI.format(project=_PROJECT))
    (site / "setup_site.py").write_text(_SETUP.format(project=_PROJECT))
    (site / "templates" / "registration" / "login.html").write_text(_LOGIN_HTML)
    return site


def token_login(url: str, path: str, client: tuple[str, str | Secret], grant: str = "password",
                account: Account | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    """POST the token endpoint (client id and secret in HTTP Basic): (status, JSON body or {})."""
    fields = {"grant_type": grant}
    if account is not None:
        fields.update(username=account.username, password=account.password.reveal())
    status, _, text = request(url, "POST", path, urlencode(fields), {
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
        "Authorization": basic_auth(*client)}, timeout)
    try:
        body = json.loads(text)
    except ValueError:
        body = {}
    return status, body if isinstance(body, dict) else {}


def form_login(url: str, path: str, account: Account, timeout: float = 10.0
               ) -> tuple[int, dict[str, str], str]:
    """GET the login form, POST it back with its CSRF token and cookie: the POST's (status, headers, text)."""
    from loadtests.flows import find_input     # the parser loginstorm's form flow uses

    status, headers, page = request(url, "GET", path, timeout=timeout)
    if status != 200:
        return status, headers, page
    cookie = headers.get("set-cookie", "").split(";")[0]           # csrftoken=...
    token = find_input(page, "csrfmiddlewaretoken") or ""
    body = urlencode({"username": account.username, "password": account.password.reveal(),
                      "csrfmiddlewaretoken": token})
    return request(url, "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                             "Cookie": cookie}, timeout)


def _times(action, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return times


def _gunicorn_quiet_options() -> list[str]:
    """`--no-control-socket` where gunicorn has one (newer releases open a control socket file)."""
    try:
        shown = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["--no-control-socket"] if "--no-control-socket" in shown else []


@contextlib.contextmanager
def running_django(root: Path, workers: int = 2, iterations: int = 20_000, users: int = 16,
                   hash_client_secret: bool = False, samples: int = 15, hash_samples: int = 25, backlog: int = 2048
                   ) -> Iterator[DjangoServer]:
    """Generate the project under `root`, migrate, create `users` users and two OAuth2 clients,
    start gunicorn (`workers` sync workers) on a free 127.0.0.1 port, time `samples` sequential
    logins per flow; stop the server by its process group on exit.

    `hash_client_secret=False` (not DOT's default) keeps one PBKDF2 per password-grant login:
    with True the client secret is checked with the same hasher, a second hash per attempt.
    """
    ensure_python_packages()
    root.mkdir(parents=True, exist_ok=True)
    site = write_django_project(root, iterations)
    accounts = _new_accounts(users)
    client = ("loginstorm-password", Secret(secrets.token_urlsafe(24)))
    cc_client = ("loginstorm-cc", Secret(secrets.token_urlsafe(24)))
    apps = [{"name": "loginstorm password grant", "client_id": client[0], "client_secret": client[1],
             "grant": "password", "hash_client_secret": hash_client_secret},
            {"name": "loginstorm client credentials", "client_id": cc_client[0], "client_secret": cc_client[1],
             "grant": "client-credentials", "hash_client_secret": hash_client_secret}]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": f"{_PROJECT}.settings", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run([sys.executable, "setup_site.py"], cwd=site, env=env, capture_output=True, text=True,
                              input=_django_spec(accounts, apps, hash_samples), timeout=120)
    except subprocess.TimeoutExpired:
        raise ServerError("the Django site's setup (migrate, users) took over 120 s") from None
    if done.returncode:
        raise ServerError(f"the Django site's setup failed: {done.stderr.strip()[-600:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    credentials = _write_credentials(root / "users.csv", accounts)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "sync",
            "--bind", f"127.0.0.1:{port}", "--backlog", str(backlog), "--timeout", "60", "--graceful-timeout", "3",
            *_gunicorn_quiet_options(), "--error-logfile", "-", "--log-level", "warning",
            f"{_PROJECT}.wsgi:application"]
    server = ServerProcess.start("gunicorn", argv, root / "gunicorn.log", cwd=site, env=env)
    try:
        wait_http(url, "/healthz", server)
        for _ in range(2 * workers):            # every worker imports its views before the timing
            request(url, "GET", "/accounts/login/")
            token_login(url, "/o/token/", client, account=accounts[0])
        times = {
            "oauth2-password": _times(lambda: token_login(url, "/o/token/", client, account=accounts[1]), samples),
            "oauth2-client-credentials": _times(
                lambda: token_login(url, "/o/token/", cc_client, "client_credentials"), samples),
            "form": _times(lambda: form_login(url, "/accounts/login/", accounts[2]), samples),
            "healthz": _times(lambda: request(url, "GET", "/healthz"), samples),
        }
        yield DjangoServer(url=url, workers=workers, iterations=measured["iterations"], hash_s=measured["hash_s"],
                           hash_min_s=measured["hash_min_s"],
                           cost_per_login_s={flow: statistics.median(t) for flow, t in times.items()},
                           cost_min_s={flow: min(t) for flow, t in times.items()}, credentials=credentials,
                           client_id=client[0], cc_client_id=cc_client[0], hash_client_secret=hash_client_secret,
                           server=server, dir=root,
                           client_secret=client[1].reveal(), cc_client_secret=cc_client[1].reveal(),
                           accounts=accounts)
    finally:
        server.stop()


# --- the rate-limited server: nginx limit_req + auth_basic ---------------------------------------

_NGINX_CONF = '''\
daemon off;
master_process on;
worker_processes 1;
{user}pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    types {{ application/json json; }}
    # one bucket for all clients: every test client is 127.0.0.1, so per address is the same
    limit_req_zone $binary_remote_addr zone=login:1m rate={rate}r/s;
    limit_req_status {status};
    limit_req_log_level info;
    # Retry-After on the limited answers only ($status is known when the headers go out;
    # add_header skips an empty value)
    map $status $retry_after {{ {status} "{retry_after}"; default ""; }}
    server {{
        listen 127.0.0.1:{port};
        server_name loginstorm-nginx;
        location = /healthz {{ default_type text/plain; return 200 "ok\\n"; }}
        location = /token {{
            limit_req zone=login burst={burst} nodelay;
            auth_basic "loginstorm";
            auth_basic_user_file {dir}/htpasswd;
            add_header Retry-After $retry_after always;
            # the static module answers in the content phase, after limit_req (preaccess) and
            # auth_basic (access); a `return` would answer in the rewrite phase, before both
            default_type application/json;
            alias {dir}/token.json;
        }}
    }}
}}
'''


@dataclass
class NginxServer:
    """A running nginx rate limiter in front of HTTP Basic auth, and its configuration."""

    url: str
    rate: float                # r/s, limit_req_zone
    burst: int                 # limit_req burst (nodelay)
    status: int                # the answer beyond the burst: 429 (with Retry-After: 1) or 503
    credentials: Path
    server: ServerProcess
    dir: Path
    token_path: str = "/token"
    health_path: str = "/healthz"
    retry_after_s: float | None = 1.0   # the Retry-After of a limited answer; None: none sent
    accounts: list[Account] = field(default_factory=list, repr=False)    # the rows of `credentials`

    @property
    def pid(self) -> int:
        return self.server.pid

    def env(self) -> dict[str, str]:
        return {}

    def target_toml(self, flow: str = "basic") -> str:
        return target_toml(self, flow)


def ssha(password: str) -> str:
    """An RFC 2307 `{SSHA}` password hash, which nginx's auth_basic_user_file accepts."""
    salt = secrets.token_bytes(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode("ascii")


@contextlib.contextmanager
def running_nginx(root: Path, rate: float = 20, burst: int = 10, status: int = 429, retry_after: int | None = 1,
                  users: int = 16) -> Iterator[NginxServer]:
    """nginx on a free 127.0.0.1 port: /token limited to `rate` r/s with `burst` (nodelay), then
    `status` with `Retry-After: retry_after` (None: no Retry-After, as nginx answers by default);
    HTTP Basic against `users` accounts; stopped by its process group on exit."""
    nginx = find_nginx()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    accounts = _new_accounts(users)
    _private(root / "htpasswd", "".join(f"{a.username}:{ssha(a.password.reveal())}\n" for a in accounts))
    (root / "token.json").write_text(json.dumps({"access_token": secrets.token_hex(16), "token_type": "bearer",
                                                 "expires_in": 3600}) + "\n")
    credentials = _write_credentials(root / "users.csv", accounts)
    port = free_port()
    # as root, nginx's workers would switch to nobody, who cannot read a 0700 tmp dir
    user = "user root root;\n" if os.geteuid() == 0 else ""
    rate_text = f"{rate:g}"
    conf = _NGINX_CONF.format(dir=root, port=port, rate=rate_text, burst=int(burst), status=int(status), user=user,
                              retry_after="" if retry_after is None else int(retry_after))
    (root / "nginx.conf").write_text(conf)
    checked = subprocess.run([nginx, "-t", "-q", "-p", str(root), "-c", str(root / "nginx.conf"), "-e",
                              str(root / "error.log")], capture_output=True, text=True, timeout=30)
    if checked.returncode:
        raise ServerError(f"nginx rejected the configuration: {checked.stderr.strip()[-600:]}")
    argv = [nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")]
    server = ServerProcess.start("nginx", argv, root / "nginx.out", cwd=root)
    try:
        wait_http(f"http://127.0.0.1:{port}", "/healthz", server)
        yield NginxServer(url=f"http://127.0.0.1:{port}", rate=float(rate), burst=int(burst), status=int(status),
                          credentials=credentials, server=server, dir=root,
                          retry_after_s=None if retry_after is None else float(retry_after), accounts=accounts)
    finally:
        server.stop()


# --- loginstorm's [target] tables for these servers ---------------------------------------------

def target_toml(server: DjangoServer | NginxServer, flow: str) -> str:
    """The `[target]` table (scenarios/every-key.toml) with which loginstorm logs in to `server`.

    Secrets are `${VAR}` references (see `server.env()`); the accounts come with `--credentials`.
    """
    lines = ["[target]", f'host = "{server.url}"', f'flow = "{flow}"']
    if isinstance(server, NginxServer):
        if flow != "basic":
            raise ValueError(f"nginx serves the basic flow only, not {flow!r}")
        lines += [f'path = "{server.token_path}"', 'success = { status = [200], json_field = "access_token" }']
    elif flow == "oauth2-password":
        lines += [f'path = "{server.token_path}"', f'client_id = "{server.client_id}"',
                  'client_secret = "${LOGINSTORM_CLIENT_SECRET}"', 'client_auth = "basic"',
                  'success = { status = [200], json_field = "access_token" }']
    elif flow == "oauth2-client-credentials":
        lines += [f'path = "{server.token_path}"', f'client_id = "{server.cc_client_id}"',
                  'client_secret = "${LOGINSTORM_CC_CLIENT_SECRET}"', 'client_auth = "basic"',
                  'success = { status = [200], json_field = "access_token" }']
    elif flow == "form":
        # LoginView answers a good login with 302 to LOGIN_REDIRECT_URL, a bad one with 200 and the form
        lines += [f'path = "{server.form_path}"',
                  'fields = { username = "username", password = "password", csrf = "csrfmiddlewaretoken" }',
                  "success = { status = [302] }"]
    else:
        raise ValueError(f"no {flow!r} flow on the Django server")
    return "\n".join(lines) + "\n"
