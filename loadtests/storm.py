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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from loadtests.credentials import Account, Accounts, CredentialsError, Secret, load_accounts, resolve
from loadtests.flows import Flow, build_flow
from loadtests.plan import Plan, build_plan
from sim.config import ScenarioError, load_scenario, parse_target
from sim.policies import Policy, make_policy
from sim.scenario import Scenario, Target

__all__ = ["StormOptions", "Storm", "load_storm", "LAB_TARGET", "host_allowed", "host_error", "target_host",
           "StormError"]

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

    def flow(self, device: int) -> Flow:
        account = self.accounts.for_device(device) if self.accounts is not None else None
        return build_flow(self.target, account, self.client)

    @property
    def timeout(self):
        return self.scenario.client.timeout


def load_storm(options: StormOptions, plan: bool = True, accounts: bool = True) -> Storm:
    """Read and check everything up front, so that a mistake stops the run before any request.

    `plan=False` skips the devices' plan (`Storm.plan` is None): for a caller that needs only the
    target and the accounts, such as `calibrate`. `accounts=False` skips the credentials
    (`Storm.accounts` and `Storm.client` are None): for a caller that sends nothing, such as
    `loadtest --from-logs`.
    """
    if options.policy:
        try:
            make_policy(options.policy)      # a bad name is --policy's fault, not a --set's
        except ValueError as exc:
            raise StormError(f"--policy: {exc}") from None
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
    return Storm(scenario, build_plan(scenario, options.speed) if plan else None, scenario.client.build_policy(),
                 target, users, client)


def _target(scenario: Scenario, path: str | None) -> Target:
    if path is None:
        return scenario.target or LAB_TARGET
    try:
        return parse_target(Path(path).read_text(encoding="utf-8"), path)
    except OSError as exc:
        raise StormError(f"{path}: cannot read the target file ({exc.strerror})") from None
    except ScenarioError as exc:
        raise StormError(str(exc)) from None


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
        return Accounts(load_accounts(csv_path)), client
    username = resolve(target.username, "target.username", environ)
    if username is not None:
        password = resolve(target.password, "target.password", environ) or ""
        return Accounts([Account(username, Secret(password))]), client
    if target.flow == "oauth2-client-credentials" and client is not None:
        return None, client
    raise StormError(f"the {target.flow} flow needs credentials: give --credentials users.csv "
                     "(username,password rows; `loginstorm lab --write-credentials users.csv --users N` "
                     "makes one for the lab server) or target.username and target.password")


def target_host(host: str | None, storm: Storm, required: bool = True) -> str:
    """--host if given (without a trailing slash), else the host of the target: the `--target` file's
    or the scenario's `[target]`. Without either, --host is `required` (else the lab's default).

        >>> storm = load_storm(StormOptions("quickstart", sets=('target={host="http://127.0.0.1:9000", flow="json"}',)),
        ...                    plan=False, accounts=False)
        >>> target_host(None, storm), target_host("http://127.0.0.1:8080/", storm)
        ('http://127.0.0.1:9000', 'http://127.0.0.1:8080')
    """
    if host:
        return host.rstrip("/")
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


def host_error(host: str, allowed: list[str]) -> str | None:
    """Why load may not be sent to `host` (None if it may): not an http(s) URL, or not allowed.

        >>> host_error("127.0.0.1:8089", [])
        "--host '127.0.0.1:8089': give a URL with its scheme, such as http://127.0.0.1:8089"
        >>> host_error("http://127.0.0.1:8089", []) is None
        True
        >>> host_error("user:secret@auth.example.com", [])
        "--host must not carry user:password@ (nor any '@'): give the accounts with --credentials"
    """
    url = urlsplit(host)
    if "@" in host:            # never repeat what may be a user:password, with or without a scheme
        return "--host must not carry user:password@ (nor any '@'): give the accounts with --credentials"
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"--host {host!r}: give a URL with its scheme, such as http://{host.split('://')[-1]}"
    if not host_allowed(host, allowed):
        return (f"{host} is not on the scenario's target.allowed_hosts (loopback is always allowed); "
                "add its host name there to load-test it")
    return None
