"""Everything a device needs to play its part, built once per process from the load test's options.

Gevent-free: the locustfile builds a `Storm` from its command-line options; tests and
`loginstorm loadtest` can build the same object directly.

    >>> load_storm(StormOptions(scenario="quickstart", scale=0.01))   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    loadtests.storm.StormError: the oauth2-password flow needs credentials: give --credentials users.csv ...
    >>> storm = load_storm(StormOptions(scenario="quickstart", scale=0.01, sets=(
    ...     'target={host="http://127.0.0.1:8080", flow="basic", username="u", password="${PW}"}',),
    ...     environ={"PW": "secret"}))
    >>> storm.plan.devices, storm.policy.name, storm.target.flow, storm.flow(0)
    (50, 'exponential', 'basic', ...)
    >>> storm.limiter is None
    True
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import numpy as np

from loadtests.credentials import Account, Accounts, CredentialsError, Secret, load_accounts, resolve
from loadtests.flows import Flow, build_flow
from loadtests.plan import Plan, build_plan
from sim.config import ScenarioError, load_scenario, parse_target, read_toml_text
from sim.limiters import Limiter, group_of
from sim.policies import Policy, make_policy
from sim.presets import PRESETS
from sim.scenario import Scenario, Target

__all__ = ["StormOptions", "Storm", "load_storm", "LAB_TARGET", "host_allowed", "host_error", "check_host",
           "target_host", "mask", "StormError"]

#: the target when neither the scenario nor --target names one: the lab server's OAuth2 password grant
LAB_TARGET = Target(host="http://127.0.0.1:8080", flow="oauth2-password", path="/oauth/token",
                    client_auth="body", heartbeat=None)
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class StormError(ValueError):
    """The load test cannot start: a bad scenario, target or credentials (message is secret-free)."""


@dataclass(frozen=True)
class StormOptions:
    scenario: str
    sets: tuple[str, ...] = ()
    scale: float = 1.0
    speed: float = 1.0
    policy: str | None = None
    credentials: str | None = None     # a CSV path; overrides [target] credentials
    target: str | None = None          # a TOML file holding a [target] table
    seed: int | None = None
    environ: dict[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Storm:
    scenario: Scenario
    plan: Plan | None
    policy: Policy
    target: Target
    accounts: Accounts | None = field(repr=False)
    client: tuple[str, Secret] | None = field(repr=False)
    #: the client's retry limiter or circuit breaker (`[client.limiter]`, or a preset's), None without one
    limiter: Limiter | None = None
    #: a shared limiter's state, one row per group, for the devices of THIS process (each Locust
    #: process builds its own Storm: in a distributed run every worker holds its own copy)
    limiter_states: np.ndarray | None = field(default=None, repr=False, compare=False)

    def limiter_row(self, device: int) -> np.ndarray:
        """The shared limiter row device `device` uses (its group's: `sim.limiters.group_of`)."""
        return self.limiter_states[group_of(device, len(self.limiter_states), False)]

    def flow(self, device: int) -> Flow:
        account = self.accounts.for_device(device) if self.accounts is not None else None
        return build_flow(self.target, account, self.client)

    @property
    def timeout(self):
        return self.scenario.client.timeout

    def masked(self, text: str, device: int | None) -> str:
        """`text` with the secrets a device holds (its password, the client secret) masked: `mask`."""
        account = self.accounts.for_device(device) if self.accounts is not None and device is not None else None
        pairs = [(account.username, account.password)] if account is not None else []
        return mask(text, pairs + ([self.client] if self.client is not None else []))


def mask(text: str, pairs: list[tuple[str, Secret]]) -> str:
    """`text` with each (name, secret) pair's secret shown as `***`: as given, URL-encoded,
    JSON-escaped, and inside an HTTP Basic `name:secret`.

        >>> mask("sent dTpwJjE= and p%261 for u", [("u", Secret("p&1"))])
        'sent *** and *** for u'
    """
    for name, secret in pairs:
        value = secret.reveal()
        if value:
            forms = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1],
                     base64.b64encode(f"{name}:{value}".encode()).decode()}
            for form in sorted(forms, key=len, reverse=True):
                text = text.replace(form, "***")
    return text


def load_storm(options: StormOptions, plan: bool = True, accounts: bool = True) -> Storm:
    """Read and check everything up front, so that a mistake stops the run before any request.

    `plan=False` skips the devices' plan (`Storm.plan` is None): for a caller that needs only the
    target and the accounts, such as `calibrate`. `accounts=False` skips the credentials
    (`Storm.accounts` and `Storm.client` are None): for a caller that sends nothing, such as
    `loadtest --from-logs`.
    """
    if options.policy and options.policy not in PRESETS:    # a preset brings its limiter too
        try:
            make_policy(options.policy)      # a bad name is --policy's fault, not a --set's
        except ValueError as exc:
            raise StormError(f"--policy: {exc} (or a preset: {', '.join(PRESETS)})") from None
    sets = tuple(options.sets) + ((f"client.policy.name={options.policy}",) if options.policy else ())
    try:
        scenario = load_scenario(options.scenario, sets=sets, scale=options.scale, seed=options.seed)
    except ScenarioError as exc:
        raise StormError(str(exc)) from None
    target = _target(scenario, options.target)
    if not options.speed > 0 or math.isinf(options.speed):
        raise StormError(f"--speed must be a positive number, got {options.speed}")
    try:
        users, client = _credentials(target, scenario, options) if accounts else (None, None)
    except CredentialsError as exc:
        raise StormError(str(exc)) from None
    built = build_plan(scenario, options.speed) if plan else None
    limiter = scenario.client.build_limiter()
    states = None
    if limiter is not None and not limiter.per_device and built is not None:
        # shared: one row per group, as many groups as the engines make (from the population;
        # newcomers join group id mod groups)
        states = limiter.new_states(limiter.groups_for(scenario.population.clients))
    return Storm(scenario, built, scenario.client.build_policy(), target, users, client, limiter, states)


def _target(scenario: Scenario, path: str | None) -> Target:
    if path is None:
        return scenario.target or LAB_TARGET
    try:
        return parse_target(read_toml_text(path), path)
    except OSError as exc:
        raise StormError(f"--target {path}: cannot read the file ({exc.strerror})") from None
    except ScenarioError as exc:
        raise StormError(f"--target {exc}") from None


def _credentials(target: Target, scenario: Scenario, options: StormOptions):
    environ = options.environ
    client = None
    client_id = resolve(target.client_id, "target.client_id", environ)
    if client_id is not None:
        secret = resolve(target.client_secret, "target.client_secret", environ)
        client = (client_id, Secret(secret or ""))
    csv_path = options.credentials
    if csv_path is None and target.credentials is not None:
        base = Path(scenario.source).parent if scenario.source else Path.cwd()
        csv_path = str(base / target.credentials) if not Path(target.credentials).is_absolute() else target.credentials
    if csv_path is not None:
        return Accounts(_accounts(csv_path, "--credentials" if options.credentials else "target.credentials")), client
    username = resolve(target.username, "target.username", environ)
    if username is not None:
        password = resolve(target.password, "target.password", environ) or ""
        return Accounts([Account(username, Secret(password))]), client
    if target.flow == "oauth2-client-credentials" and client is not None:
        return None, client
    raise StormError(f"the {target.flow} flow needs credentials: give --credentials users.csv "
                     "(username,password rows; `loginstorm lab --write-credentials users.csv --users N` "
                     "makes one for the lab server) or target.username and target.password")


def _accounts(path: str, where: str) -> list[Account]:
    """The rows of a credentials CSV; errors name where its path came from (the option or the key)."""
    try:
        return load_accounts(path)
    except CredentialsError as exc:
        raise StormError(f"{where} {exc}") from None
    except OSError as exc:
        raise StormError(f"{where} {path}: cannot read the file ({exc.strerror})") from None


def target_host(host: str | None, storm: Storm, required: bool = True) -> str:
    """--host if given (as given: `check_host` checks it and drops a trailing slash), else the host
    of the target: the `--target` file's or the scenario's `[target]`. Without either, --host is
    `required` (else the lab's default).

        >>> storm = load_storm(StormOptions("quickstart", sets=('target={host="http://127.0.0.1:9000", flow="json"}',)),
        ...                    plan=False, accounts=False)
        >>> target_host(None, storm), target_host("http://127.0.0.1:8080/", storm)
        ('http://127.0.0.1:9000', 'http://127.0.0.1:8080/')
    """
    if host:
        return host
    if storm.target is LAB_TARGET and required:
        raise StormError("--host: give the endpoint's URL, e.g. --host http://127.0.0.1:8080 (neither --target "
                         "nor the scenario has a [target] table with a host)")
    return storm.target.host


def host_allowed(host: str, allowed: list[str]) -> bool:
    """A loopback host always; any other only if its name is on `allowed_hosts`.

        >>> host_allowed("http://127.0.0.1:8080", []), host_allowed("https://auth.example.com", [])
        (True, False)
    """
    name = urlsplit(host).hostname or ""
    return name in LOOPBACK or name in {urlsplit(a).hostname if "//" in a else a for a in allowed}


def host_error(host: str, allowed: list[str], where: str = "--host") -> str | None:
    """Why load may not be sent to `host` (None if it may): `check_host`'s message.

        >>> host_error("127.0.0.1:8089", [])
        "--host '127.0.0.1:8089': give a URL with its scheme, such as http://127.0.0.1:8089"
        >>> host_error("http://127.0.0.1:8089", []) is None
        True
        >>> host_error("user:secret@auth.example.com", [])   # doctest: +ELLIPSIS
        "--host '***@auth.example.com': no user:password@ (nor any '@') in the URL: give the accounts with ..."
    """
    try:
        check_host(host, allowed, where)
    except StormError as exc:
        return str(exc)
    return None


def check_host(host: str, allowed: list[str], where: str = "--host") -> str:
    """The base URL `scheme://host[:port]` load may be sent to; else StormError naming `where` (the
    option `--host` or the key `target.host`) and showing the value, never a user:password@.

    One check for `loadtest`, `calibrate` and the Locust processes: http or https, a host (an IPv6
    address in brackets), a port from 1 to 65535, no path beyond "/", no query, and loopback or on
    `allowed` (the target's allowed_hosts).

        >>> check_host("http://[::1]:8080/", [])
        'http://[::1]:8080'
        >>> check_host("http://h:0", [])
        Traceback (most recent call last):
        loadtests.storm.StormError: --host 'http://h:0': the port must be a whole number from 1 to 65535, got '0'
    """
    if "@" in host:            # never repeat what may be a user:password, with or without a scheme
        raise StormError(f"{where} {_redacted(host)!r}: no user:password@ (nor any '@') in the URL: give the "
                         "accounts with --credentials")
    problem = _url_problem(host)
    if problem:
        raise StormError(f"{where} {host!r}: {problem}")
    url = urlsplit(host)
    if not host_allowed(host, allowed):
        raise StormError(f"{where} {host!r}: {url.hostname} is not on the target's allowed_hosts (that is, not on "
                         "the scenario's target.allowed_hosts nor on the --target file's; loopback always is): "
                         "add its host name there to load-test it")
    return f"{url.scheme}://{url.netloc}"


def _url_problem(host: str) -> str | None:
    """What is wrong with `host` as a base URL (it holds no '@'), None if nothing."""
    if any(c.isspace() for c in host):
        return "a URL holds no spaces"
    if "://" not in host or host.startswith("://"):
        return f"give a URL with its scheme, such as http://{host.split('://')[-1] or '127.0.0.1:8080'}"
    scheme, rest = host.split("://", 1)
    if scheme.lower() not in ("http", "https"):
        return f"{scheme}:// is not supported; use http:// or https://"
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    name, port = _host_and_port(netloc)
    if name is None:
        return f"an IPv6 address goes in brackets, whole and well-formed, such as {scheme}://[::1]:8080"
    if not name:
        return f"no host after {scheme}://; give one, such as {scheme}://127.0.0.1:8080"
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return f"the port must be a whole number from 1 to 65535, got {port!r}"
    if urlsplit(host).path not in ("", "/") or "?" in rest or "#" in rest:
        return (f"give the base URL only, with no path, query or fragment, such as {scheme}://{netloc} "
                "(the login's path is target.path)")
    return None


def _host_and_port(netloc: str) -> tuple[str | None, str | None]:
    """(host, port text or None) of a URL's `host[:port]`; host None for a malformed IPv6 address."""
    if netloc.startswith("["):
        inside, bracket, after = netloc[1:].partition("]")
        if not bracket or (after and not after.startswith(":")) or not _ipv6(inside):
            return None, None
        return inside, after[1:] if after else None
    if netloc.count(":") > 1 or "[" in netloc or "]" in netloc:   # an IPv6 address without its brackets
        return None, None
    name, colon, port = netloc.partition(":")
    return name, port if colon else None


def _ipv6(text: str) -> bool:
    try:
        urlsplit(f"http://[{text}]/")           # the standard library's own check of a bracketed host
    except ValueError:
        return False
    return ":" in text or text.lower().startswith("v")


def _redacted(host: str) -> str:
    """`host` with everything between its scheme and its last '@' shown as `***`."""
    head, sep, rest = host.partition("://") if "://" in host.split("@")[0] else ("", "", host)
    return f"{head}{sep}***@{rest.rpartition('@')[2]}"
