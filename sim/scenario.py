"""The scenario file of docs/model.md section 2 as validated, immutable objects.

Every key of the format lives here once, with its type, default and bounds. Loading a file
(TOML, overrides, readable errors, `--scale`) is `sim.config`'s job; this module only says
what a valid scenario is.

    >>> from sim.config import load_scenario
    >>> s = load_scenario("scenarios/quickstart.toml")
    >>> s.server.workers, s.client.build_policy().name
    (2, 'exponential')
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

import numpy as np

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from sim.distributions import Constant, Distribution, parse_distribution
from sim.limiters import Limiter
from sim.policies import POLICIES, Policy, make_policy
from sim.presets import PRESETS
from sim.protections import LIMIT_DEFAULTS, LIMIT_KEYS, codel_params, codel_row, limit_params, limit_row
from sim.suggest import did_you_mean
from sim.units import parse_duration

__all__ = [
    "Scenario", "Population", "Client", "PolicySpec", "LimiterSpec", "Server", "RateLimit", "Overload", "P2P",
    "ConcurrencyLimit", "CoDel", "Resume", "TokenPurge",
    "Wave", "Event", "EVENT_KINDS", "Target", "P2PChange", "table_of",
]

INF = math.inf


def _as_value_error(parse):
    """Pydantic reports ValueErrors with their location; a TypeError would escape it."""

    def convert(value: Any) -> Any:
        try:
            return parse(value)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    return convert


def _count_or_inf(value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "unlimited"):
        return INF
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a whole number or \"inf\", got {value!r}")
    if value < 0 or (not math.isinf(value) and value != int(value)):
        raise ValueError(f"expected a whole number >= 0 or \"inf\", got {value!r}")
    return float(value)


_PRESET_KEY = "\0preset"  # how Client hands a preset's name to PolicySpec (no file can write it)


def _policy_table(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


#: seconds, from a number or a string with a unit (`"250ms"`, `"5m"`, `"inf"`)
Duration = Annotated[float, BeforeValidator(_as_value_error(parse_duration))]
#: a distribution table, or a bare duration meaning a constant
Dist = Annotated[Distribution, BeforeValidator(_as_value_error(parse_distribution))]
#: a whole number or "inf" (kept as a float so that inf compares naturally)
CountOrInf = Annotated[float, BeforeValidator(_count_or_inf)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
ZERO = Constant(0.0)
FOREVER = Constant(INF)


class _Table(BaseModel):
    """A TOML table: unknown keys are errors, values are immutable, no silent coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True)


class Population(_Table):
    clients: Annotated[int, Field(ge=0)] = 0
    online_at_start: Fraction = 1.0
    login_rate: NonNegative = 0.0
    session: Dist = FOREVER
    offline: Dist = FOREVER


class PolicySpec(_Table):
    """`policy = {name = "exponential", base = "1s", cap = "5m"}` or just `policy = "full-jitter"`.

    A preset's name (`sim.presets`) is expanded by `Client` into its formula; `preset` then keeps
    the name, for display (None: a formula written out).
    """

    name: str = "none"
    base: Duration | None = None
    cap: Duration | None = None
    multiplier: Annotated[float, Field(gt=0.0)] | None = None

    _preset: str | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_preset(cls, data: Any, handler: Any) -> PolicySpec:
        preset = None
        if isinstance(data, dict) and _PRESET_KEY in data:
            data = dict(data)
            preset = data.pop(_PRESET_KEY)
        spec = handler(data)
        if preset is not None:
            spec._preset = preset
        return spec

    @property
    def preset(self) -> str | None:
        return self._preset

    @model_validator(mode="after")
    def _known_policy(self) -> PolicySpec:
        if self.name not in POLICIES:
            known = list(POLICIES) + list(PRESETS)
            raise ValueError(f"name: unknown policy {self.name!r}{did_you_mean(str(self.name), known)} "
                             f"(formulas: {', '.join(POLICIES)}; presets: {', '.join(PRESETS)})")
        try:
            self.build()
        except ValueError as exc:  # "cap: must be >= base" names its key; an unknown name does not
            text = str(exc)
            raise ValueError(text if ": " in text.split(" ")[0] + " " else f"name: {text}") from None
        return self

    def params(self) -> dict[str, float]:
        return {k: v for k in ("base", "cap", "multiplier") if (v := getattr(self, k)) is not None}

    def build(self, max_attempts: int = 0) -> Policy:
        return make_policy(self.name, max_attempts=max_attempts, **self.params())


def _number_or_duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


#: a number, or a duration string (a breaker's time window, a budget's ttl)
NumberOrDuration = Annotated[float, BeforeValidator(_as_value_error(_number_or_duration))]


class LimiterSpec(_Table):
    """`[client.limiter]`: a retry limiter or circuit breaker (docs/model.md section 4.7).

    The checks and defaults are `sim.limiters.Limiter`'s; this table only types the keys.
    """

    kind: Literal["quota", "throttle", "budget", "adaptive", "breaker"]
    scope: Literal["device", "shared"] = "device"
    groups: Annotated[int, Field(ge=1)] | None = None
    group_size: Annotated[int, Field(ge=1)] | None = None
    capacity: float | None = None
    cost: float | None = None
    timeout_cost: float | None = None
    increment: float | None = None
    max_tokens: float | None = None
    token_ratio: float | None = None
    ttl: NumberOrDuration | None = None
    min_per_sec: float | None = None
    percent: float | None = None
    k: float | None = None
    window: NumberOrDuration | None = None
    min_requests: float | None = None
    window_type: Literal["count", "time"] | None = None
    threshold: float | None = None
    min_calls: float | None = None
    open_for: NumberOrDuration | None = None
    half_open_calls: float | None = None

    @model_validator(mode="after")
    def _checked(self) -> LimiterSpec:
        built = self.build()  # a ValueError names its key
        for key in Limiter.KEYS[self.kind]:  # the kind's defaults, filled in (as `validate --show` prints them)
            if getattr(self, key) is None:
                object.__setattr__(self, key, getattr(built, key))
        return self

    def build(self) -> Limiter:
        return Limiter(**{name: getattr(self, name) for name in type(self).model_fields
                          if getattr(self, name) is not None or name == "kind"})


class Client(_Table):
    timeout: Dist = FOREVER
    connect_delay: Dist = ZERO
    max_attempts: Annotated[int, Field(ge=0)] = 0
    give_up_after: Duration = INF
    relaunch: Dist = FOREVER
    honor_retry_after: bool = True
    rtt: Duration = 0.010
    policy: Annotated[PolicySpec, BeforeValidator(_policy_table)] = PolicySpec()
    limiter: LimiterSpec | None = None
    # docs/model.md section 3.4: a client that logged in less than this long ago still holds a
    # valid session or refresh token, and its next login is a cheap resumption (0: never)
    resume_window: Duration = 0.0

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """`policy = "aws-sdk-standard"`: the preset's formula, max_attempts, give_up_after and limiter
        (docs/model.md section 4.8). The preset wins over those keys in the file, so that compare's
        `--policies` gives each library its own behaviour; a `[client.limiter]` of the preset's kind
        is merged over the preset's (to share an AWS quota, say), one of another kind replaces it."""
        if not isinstance(data, dict):
            return data
        policy = data.get("policy")
        name = policy if isinstance(policy, str) else policy.get("name") if isinstance(policy, dict) else None
        if not isinstance(name, str) or name not in PRESETS:
            return data
        keys = PRESETS[name].client_keys()
        out = dict(data)
        out["policy"] = {**keys["policy"], _PRESET_KEY: name}
        out["max_attempts"] = keys["max_attempts"]
        if "give_up_after" in keys:
            out["give_up_after"] = keys["give_up_after"]
        own = data.get("limiter")
        if "limiter" in keys:
            if own is None:
                out["limiter"] = keys["limiter"]
            elif isinstance(own, dict) and own.get("kind", keys["limiter"]["kind"]) == keys["limiter"]["kind"]:
                out["limiter"] = {**keys["limiter"], **own}
        return out

    @model_validator(mode="after")
    def _no_spinning(self) -> Client:
        lim = self.limiter
        if lim is not None and lim.kind in ("adaptive", "breaker") and self.policy.name == "none":
            raise ValueError(f"policy: a {lim.kind} limiter refuses calls locally at once; with policy \"none\" "
                             "the device would retry at the same instant for ever: choose a policy with a delay")
        return self

    def build_policy(self) -> Policy:
        """The policy object both engines and the Locust users call, with `max_attempts`."""
        return self.policy.build(self.max_attempts)

    def build_limiter(self) -> Limiter | None:
        """The limiter both engines and the Locust users apply (`sim.limiters`), or None."""
        return None if self.limiter is None else self.limiter.build()


class RateLimit(_Table):
    """Token bucket in front of the queue: an attempt without a token gets 429 + Retry-After."""

    rate: Annotated[float, Field(gt=0.0)]
    burst: Annotated[float, Field(ge=1.0)] | None = None  # default: rate
    retry_after: Duration = 0.0

    @property
    def bucket(self) -> float:
        return self.rate if self.burst is None else self.burst


class Overload(_Table):
    """Thrashing: service time x (1 + per_request * max(0, in_system - knee))."""

    knee: NonNegative
    per_request: NonNegative


class ConcurrencyLimit(_Table):
    """`[server.concurrency]`: an adaptive concurrency limit (docs/model.md section 3.3, `sim.protections`).

    Requests beyond the limit (queued + in service) are refused at once with 503; the limit
    follows the latency of the requests that leave their workers. Unset keys take the kind's
    defaults (Netflix concurrency-limits), filled in so that `validate --show` prints them.
    """

    kind: Literal["aimd", "gradient"]
    initial: Annotated[float, Field(ge=1.0)] | None = None
    min: Annotated[float, Field(ge=1.0)] | None = None
    max: Annotated[float, Field(ge=1.0)] | None = None
    backoff: Annotated[float, Field(ge=0.5, lt=1.0)] | None = None
    timeout: Annotated[float, BeforeValidator(_as_value_error(parse_duration)), Field(gt=0.0)] | None = None
    smoothing: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    queue_size: NonNegative | None = None
    long_window: Annotated[float, Field(ge=1.0)] | None = None
    tolerance: Annotated[float, Field(ge=1.0)] | None = None

    @model_validator(mode="after")
    def _filled(self) -> ConcurrencyLimit:
        own = LIMIT_KEYS[self.kind]
        for name in type(self).model_fields:
            if name == "kind":
                continue
            if name not in own and getattr(self, name) is not None:
                other = next(k for k, keys in LIMIT_KEYS.items() if name in keys)
                raise ValueError(f"{name}: a key of kind \"{other}\", not of kind \"{self.kind}\" "
                                 f"(its keys: {', '.join(own)})")
            if name in own and getattr(self, name) is None:
                object.__setattr__(self, name, float(LIMIT_DEFAULTS[self.kind][name]))
        for name in ("initial", "min", "max", "long_window"):
            value = getattr(self, name)
            if value is not None and value != int(value):
                raise ValueError(f"{name}: expected a whole number, got {value!r}")
        if not self.min <= self.initial <= self.max:
            raise ValueError(f"initial: must lie between min ({self.min:g}) and max ({self.max:g}), "
                             f"got {self.initial:g}")
        return self

    def keys(self) -> dict[str, float]:
        """The kind's keys and values (for `sim.protections.limit_params`)."""
        return {name: getattr(self, name) for name in LIMIT_KEYS[self.kind]}

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """(prm, a fresh row) for `sim.protections`' limit kernels: what both engines and the lab start from."""
        keys = self.keys()
        return limit_params(self.kind, **keys), limit_row(self.kind, **keys)


class CoDel(_Table):
    """`[server.codel]`: controlled-delay queue timeouts and adaptive LIFO (docs/model.md section 3.3).

    Facebook's server-queue CoDel (folly/wangle `Codel`): when the shortest wait over the last
    `interval` exceeded `target`, requests that waited more than 2 x target are shed with 503,
    and with `adaptive_lifo` the queue is served newest first until the queue drains again.
    """

    target: Annotated[float, BeforeValidator(_as_value_error(parse_duration)), Field(gt=0.0)] = 0.005
    interval: Annotated[float, BeforeValidator(_as_value_error(parse_duration)), Field(gt=0.0)] = 0.100
    adaptive_lifo: bool = True

    @model_validator(mode="after")
    def _interval_longer(self) -> CoDel:
        if self.interval <= self.target:  # folly's Codel::setOptions refuses it too
            raise ValueError(f"interval: must be longer than target ({self.target:g} s), got {self.interval:g} s")
        return self

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """(prm, a fresh row) for `sim.protections.codel_shed`: what both engines and the lab start from."""
        return codel_params(self.target, self.interval), codel_row()


class Resume(_Table):
    """`[server.resume]`: what a resumption costs (docs/model.md section 3.4): a client holding a
    valid token (`client.resume_window`) resumes its session instead of a full login."""

    service_time: Dist


class P2P(_Table):
    """Skype-style supernodes: online clients carry login capacity and homes (docs/model.md section 3.2)."""

    supernode_ratio: Annotated[float, Field(gt=0.0, le=1.0)]
    children: Annotated[int, Field(ge=1)]
    slots: Annotated[int, Field(ge=0)]
    promotion_delay: Duration = 0.0
    promotion_rate: Fraction = 1.0
    overload_shutdown: NonNegative = INF
    shutdown_rate: Fraction = 0.0


class Server(_Table):
    workers: Annotated[int, Field(ge=0)]
    service_time: Dist
    queue_limit: CountOrInf = INF
    discipline: Literal["fifo", "lifo"] = "fifo"
    drop_expired: bool = False
    cancel_on_timeout: bool = False
    reject_cost: Duration = 0.0
    retry_after: Duration = 0.0
    # docs/model.md section 3.3: "fixed" sends `retry_after`; "queue" computes it from the queue
    # (the time the workers need to drain it, whole seconds, 1 s to retry_after_max)
    retry_after_from: Literal["fixed", "queue"] = "fixed"
    retry_after_max: Annotated[float, BeforeValidator(_as_value_error(parse_duration)), Field(ge=1.0)] = 32.0
    rate_limit: RateLimit | None = None
    overload: Overload | None = None
    concurrency: ConcurrencyLimit | None = None
    codel: CoDel | None = None
    resume: Resume | None = None
    p2p: P2P | None = None
    # fault injection (docs/model.md section 3): this share of the requests that reach the queue
    # fails whatever the load, at once ("fast") or after its service ("after-service")
    fault_rate: Fraction = 0.0
    fault_when: Literal["fast", "after-service"] = "fast"


class Wave(_Table):
    """A per-time-zone copy of an event's spread: `offset` after `at`, this share of the clients."""

    offset: Duration = 0.0
    weight: Annotated[float, Field(gt=0.0)]


class _Event(_Table):
    at: Duration

    def end(self) -> float:
        """When the event's own effect ends, not counting per-client draws (for `metastable`)."""
        return self.at + getattr(self, "duration", 0.0) + getattr(self, "ramp", 0.0)


class _ClientWave(_Event):
    """An event that picks clients, each at `at` + wave offset + a spread draw."""

    fraction: Fraction = 1.0
    spread: Dist = ZERO
    waves: Annotated[list[Wave], Field(min_length=1)] | None = None

    def wave_table(self) -> tuple[tuple[float, float], ...]:
        """(offset, probability) pairs; the weights are normalised to sum to 1."""
        if not self.waves:
            return ((0.0, 1.0),)
        total = sum(w.weight for w in self.waves)
        return tuple((w.offset, w.weight / total) for w in self.waves)


class _OnlineWave(_ClientWave):
    # With [server.p2p]: the share of supernodes hit, `fraction` then being that of the other
    # online clients (Patch Tuesday hit the always-on supernode PCs harder). None: supernodes
    # are picked like everyone else.
    supernode_fraction: Fraction | None = None


class Reboot(_OnlineWave):
    """`fraction` of ONLINE clients go offline at at + spread, boot for `downtime`, then log in."""

    kind: Literal["reboot"]
    downtime: Dist = ZERO


class Disconnect(_OnlineWave):
    """`fraction` of ONLINE clients lose their session and start an episode."""

    kind: Literal["disconnect"]


class Login(_ClientWave):
    """`fraction` of OFFLINE clients want to log in (morning ramp, launch day)."""

    kind: Literal["login"]


class Outage(_Event):
    """The login tier is down for `duration`: refused at once, or blackholed (attempts time out)."""

    kind: Literal["outage"]
    duration: Duration
    mode: Literal["refuse", "blackhole"] = "refuse"
    drop_sessions: bool = False


class Capacity(_Event):
    """From `at`, workers become `factor` x the configured workers, linearly over `ramp`."""

    kind: Literal["capacity"]
    factor: NonNegative
    ramp: Duration = 0.0


class Admit(_Event):
    """Operator gate: only `fraction` of clients (by id) may log in; others get 503 + Retry-After."""

    kind: Literal["admit"]
    fraction: Fraction
    retry_after: Duration = 0.0


class Partition(_Event):
    """A failing back end: attempts of `fraction` of clients hang for `hang` with prob. `failure`."""

    kind: Literal["partition"]
    duration: Duration
    fraction: Fraction = 1.0
    failure: Fraction = 1.0
    hang: Duration
    isolate_at: Duration | None = None


class TokenPurge(_Event):
    """The sessions and refresh tokens of `fraction` of the clients are revoked: their next logins
    are full logins (docs/model.md section 3.4); an online client stays online."""

    kind: Literal["token-purge"]
    fraction: Fraction = 1.0


class Surge(_Event):
    """For `duration`, `login_rate` is multiplied by `factor` (organic spike)."""

    kind: Literal["surge"]
    duration: Duration
    factor: NonNegative


class Failover(_Event):
    """The primary dies: sessions drop, clients find the standby after `propagation`."""

    kind: Literal["failover"]
    propagation: Dist = ZERO
    factor: NonNegative


class P2PChange(_Event):
    """From `at`, the [server.p2p] rules change: a fix deployed, parameters tuned (an extension,
    docs/model.md section 8).

    Each key given replaces the block's value; a key left out stays as it was.
    """

    kind: Literal["p2p-rules"]
    promotion_delay: Duration | None = None
    promotion_rate: Fraction | None = None
    overload_shutdown: NonNegative | None = None
    shutdown_rate: Fraction | None = None

    def changes(self) -> dict[str, float]:
        return {k: v for k in ("promotion_delay", "promotion_rate", "overload_shutdown", "shutdown_rate")
                if (v := getattr(self, k)) is not None}


Event = Annotated[
    Union[Reboot, Disconnect, Login, Outage, Capacity, Admit, Partition, Surge, Failover, P2PChange, TokenPurge],
    Field(discriminator="kind"),
]
EVENT_KINDS: dict[str, type[_Event]] = {
    cls.model_fields["kind"].annotation.__args__[0]: cls
    for cls in (Reboot, Disconnect, Login, Outage, Capacity, Admit, Partition, Surge, Failover, P2PChange,
                TokenPurge)
}

_ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


def _env_reference(value: Any) -> Any:
    """Secrets enter only as `${VAR}`; a literal is refused without echoing it."""
    if isinstance(value, str) and _ENV_REF.match(value):
        return value
    raise ValueError("a secret may only be given as an environment reference such as "
                     "\"${LOGINSTORM_CLIENT_SECRET}\", never written into the file")


class Fields(_Table):
    username: str = "username"
    password: str = "password"
    csrf: str | None = None


class Success(_Table):
    status: Annotated[list[Annotated[int, Field(ge=100, le=599)]], Field(min_length=1)] = [200]
    json_field: str | None = None


class Heartbeat(_Table):
    path: str
    every: Annotated[float, BeforeValidator(_as_value_error(parse_duration)), Field(gt=0.0)]


class StopRule(_Table):
    error_rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    after: Duration = 30.0
    p99: Duration | None = None


class Target(_Table):
    """docs/model.md section 7: the real endpoint a load test replays the storm against."""

    host: Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]
    allowed_hosts: list[str] = []
    flow: Literal["oauth2-client-credentials", "oauth2-password", "form", "json", "basic"]
    path: Annotated[str, Field(pattern=r"^/")] = "/"
    client_id: str | None = None
    client_secret: Annotated[str, BeforeValidator(_env_reference)] | None = None
    # one account for every device when there is no credentials file (beyond docs/model.md section 7)
    username: str | None = None
    password: Annotated[str, BeforeValidator(_env_reference)] | None = None
    client_auth: Literal["basic", "body"] = "basic"
    credentials: str | None = None
    fields: Fields = Fields()
    success: Success = Success()
    heartbeat: Heartbeat | None = None
    verify_tls: bool = True
    max_rps: Annotated[float, Field(gt=0.0)] | None = None
    stop: StopRule = StopRule()


class Scenario(_Table):
    """One storm: who the clients are, how they retry, what serves them, and what happens."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80)]
    description: str = ""
    duration: Annotated[float, BeforeValidator(_as_value_error(parse_duration)), Field(gt=0.0)]
    seed: Annotated[int, Field(ge=0)] = 0
    resolution: Annotated[float, BeforeValidator(_as_value_error(parse_duration)), Field(gt=0.0)] | None = None
    warmup: Duration | None = None
    population: Population = Population()
    client: Client = Client()
    server: Server
    events: list[Event] = []
    target: Target | None = None

    _scale: float = PrivateAttr(1.0)
    _source: str | None = PrivateAttr(None)

    @property
    def scale(self) -> float:
        """The `--scale` factor this scenario was built with (counts are reported /scale)."""
        return self._scale

    @property
    def source(self) -> str | None:
        """The file this scenario came from, for messages and reports."""
        return self._source

    @property
    def bin_width(self) -> float:
        """Width of a time-series bin: `resolution`, else duration / 1000."""
        return self.resolution if self.resolution is not None else self.duration / 1000.0

    @property
    def warmup_s(self) -> float:
        """Start of the `steady` window: `warmup`, else 10 % of the duration."""
        return self.warmup if self.warmup is not None else 0.1 * self.duration

    def last_event_end(self) -> float:
        """The latest `at` + duration/ramp over all events (0 with none); per-client draws excluded."""
        return max((e.end() for e in self.events), default=0.0)


def table_of(model: BaseModel) -> dict[str, Any]:
    """A table as a scenario file would write it (JSON-safe; `inf` as the string "inf"), which
    `type(model).model_validate` reads back equal: how the lab server publishes its `[server]`.

        >>> from sim.config import load_scenario
        >>> server = load_scenario("quickstart").server
        >>> Server.model_validate(table_of(server)) == server
        True
    """
    return {name: _plain(getattr(model, name)) for name in type(model).model_fields}


def _plain(value: Any) -> Any:
    if isinstance(value, Distribution):
        return _plain(value.to_toml())
    if isinstance(value, BaseModel):
        return table_of(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value
