"""Backoff policies: how long a client waits before retry n (docs/model.md section 4).

Pure (numpy and the standard library only): the simulator's engines and the Locust users import
the very same objects. Each policy is a frozen dataclass whose delay is ONE function,
``formula(n, u, previous)``, of the retry number n (0 for the first retry), one uniform draw
u in [0, 1) and the previous delay, written with numpy ufuncs so that it takes floats and arrays
alike. ``delay`` draws u for one client, ``delays`` one u per element; for the same generator
state they give the same numbers, bit for bit::

    policy = make_policy("full-jitter", base=1.0, cap=300.0)
    wait = policy.delay(n, rng)            # one client before its retry n
    waits = policy.delays(retries, rng)    # an array of clients, each at its own retry number

Decorrelated jitter remembers: its ``previous`` is its own last draw (taken before Retry-After),
which the caller keeps and resets to None at each episode. The other policies ignore
``previous``, so one loop serves every policy::

    previous = None                                    # a new episode
    for n in range(retries):
        previous = policy.delay(n, rng, previous)
        wait = with_retry_after(previous, retry_after, honor=True)

Growing delays never overflow: the exponent stops where ``min(c, b·m^n)`` stops growing, and an
uncapped delay levels off near ``MAX_DELAY`` instead of reaching inf (0 · inf would be nan).

    >>> [ExponentialBackoff(base=1.0, cap=5.0).mean_delay(n) for n in range(4)]
    [1.0, 2.0, 4.0, 5.0]
    >>> make_policy("grpc")
    GrpcBackoff(base=1.0, cap=120.0, multiplier=1.6, max_attempts=0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar, Union

import numpy as np

from sim.suggest import did_you_mean

__all__ = [
    "MAX_DELAY", "KERNELS", "envelope", "Policy", "NoBackoff", "ConstantBackoff", "RandomBackoff", "ExponentialBackoff",
    "FullJitter", "EqualJitter", "DecorrelatedJitter", "GrpcBackoff",
    "POLICIES", "make_policy", "policy_names", "with_retry_after",
]

#: a float or an array of floats: every formula takes either
Real = Union[float, np.ndarray]

#: Seconds near which an uncapped delay levels off (at most this, or b x this for b < 1 s):
#: beyond any simulated duration, yet jitter (x1.2) and 3 x previous stay finite.
MAX_DELAY: float = 1e300

_SHARED = ("base", "cap", "multiplier", "max_attempts")  # every policy accepts these keys


# --- the formulas, once ---------------------------------------------------------------------
# Each row of the policy table (docs/model.md section 4) is one plain function of (n, u, previous, base, cap,
# multiplier, top), written with numpy ufuncs only: on arrays it is the vectorised form the Policy classes
# call; on floats numba compiles the very same function for the fast engine (`sim.fast`
# registers these with numba, so this module never imports it). `top` is the retry number
# where the envelope stops growing (``_growth_limit``); `previous` is already resolved (the
# caller passes b at the start of an episode).


def envelope(n: Real, base: float, cap: float, multiplier: float, top: float) -> Real:
    """v = min(c, b·m^n), with n clamped at `top` so that m^n never overflows."""
    return np.minimum(cap, base * np.power(multiplier, np.minimum(n, top)))


def none_delay(n: Real, u: Real, previous: Real, base: float, cap: float, multiplier: float, top: float) -> Real:
    return 0.0 * u  # shaped like u


def constant_delay(n: Real, u: Real, previous: Real, base: float, cap: float, multiplier: float, top: float) -> Real:
    return 0.0 * u + base  # shaped like u


def random_delay(n: Real, u: Real, previous: Real, base: float, cap: float, multiplier: float, top: float) -> Real:
    return -base * np.log1p(-u)  # Exp(mean b) by inverse transform


def exponential_delay(n: Real, u: Real, previous: Real, base: float, cap: float, multiplier: float,
                      top: float) -> Real:
    return envelope(n, base, cap, multiplier, top)


def full_jitter_delay(n: Real, u: Real, previous: Real, base: float, cap: float, multiplier: float,
                      top: float) -> Real:
    return u * envelope(n, base, cap, multiplier, top)


def equal_jitter_delay(n: Real, u: Real, previous: Real, base: float, cap: float, multiplier: float,
                       top: float) -> Real:
    half = envelope(n, base, cap, multiplier, top) / 2
    return half + u * half


def decorrelated_delay(n: Real, u: Real, previous: Real, base: float, cap: float, multiplier: float,
                       top: float) -> Real:
    p = np.minimum(np.maximum(previous, base), MAX_DELAY)  # a previous below b counts as b
    return np.minimum(cap, base + u * (3.0 * p - base))


def grpc_delay(n: Real, u: Real, previous: Real, base: float, cap: float, multiplier: float, top: float) -> Real:
    return envelope(n, base, cap, multiplier, top) * (0.8 + 0.4 * u)


@dataclass(frozen=True, repr=False)
class Policy:
    """A backoff policy: the delay before retry n of an episode, and how many attempts it allows.

    Subclasses define ``formula`` (and ``mean_delay``); ``delay`` and ``delays`` only draw u.
    """

    max_attempts: int = field(default=0, kw_only=True)  # counts the first attempt; 0 = unlimited

    name: ClassVar[str] = ""           # the policy table (docs/model.md section 4) name
    random: ClassVar[bool] = False     # draws u (deterministic policies leave the generator alone)
    uses_previous: ClassVar[bool] = False  # the caller must keep the last draw (decorrelated)
    formula_text: ClassVar[str] = ""   # its row in that table, for display
    kernel: ClassVar = staticmethod(none_delay)  # the module-level formula function (one per row)

    def __post_init__(self) -> None:
        _validate(self)

    def kernel_args(self) -> tuple[float, float, float, float]:
        """(base, cap, multiplier, top) for ``kernel``; fields the policy lacks take neutral values."""
        return (float(getattr(self, "base", 1.0)), float(getattr(self, "cap", math.inf)),
                float(getattr(self, "multiplier", 1.0)), float(getattr(self, "_top", 0.0)))

    def formula(self, n: Real, u: Real, previous: Real | None = None) -> Real:
        """The delay before retry n given the uniform draw u in [0, 1); pure, no generator."""
        base = getattr(self, "base", 1.0)
        return type(self).kernel(n, u, base if previous is None else previous, *self.kernel_args())

    def mean_delay(self, retry: int, previous: float | None = None) -> float | None:
        """E[delay before retry n], exact; None where no closed form exists."""
        raise NotImplementedError

    def delay(self, retry: int, rng: np.random.Generator, previous: float | None = None) -> float:
        """One client's delay before retry ``retry``: ``policy.delay(0, rng)``."""
        u = rng.random() if self.random else 0.0
        prev = None if previous is None else np.array([previous], dtype=float)
        # Evaluated on 1-element arrays: numpy's loops for contiguous arrays (SIMD) may differ
        # from its scalar loops in the last bit, and delay() must equal delays() exactly.
        return float(np.asarray(self.formula(np.array([retry], dtype=float), np.array([u]), prev))[0])

    def delays(self, retries: np.ndarray, rng: np.random.Generator,
               previous: np.ndarray | None = None) -> np.ndarray:
        """One delay per element of ``retries``, one draw each: ``policy.delays(n_array, rng)``."""
        n = np.array(retries, dtype=float)  # a fresh contiguous copy, as in delay()
        u = rng.random(n.shape) if self.random else np.zeros(n.shape)
        prev = None if previous is None else np.array(previous, dtype=float)
        return np.broadcast_to(self.formula(n, u, prev), n.shape).astype(float)

    def allows_retry(self, attempts_so_far: int) -> bool:
        """False once ``max_attempts`` attempts were made (always True when it is 0)."""
        return self.max_attempts == 0 or attempts_so_far < self.max_attempts

    def __repr__(self) -> str:  # round-trips, with `math` in scope: FullJitter(base=1.0, cap=math.inf, ...)
        shown = [f for f in fields(self) if f.init and not f.kw_only] + [f for f in fields(self) if f.kw_only]
        args = ", ".join(f"{f.name}={_literal(getattr(self, f.name))}" for f in shown)
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True, repr=False)
class NoBackoff(Policy):
    """Retry at once: ``NoBackoff()``. Only the round trip (``client.rtt``) separates attempts."""

    name: ClassVar[str] = "none"
    formula_text: ClassVar[str] = "0"
    kernel: ClassVar = staticmethod(none_delay)

    def delay(self, retry: int, rng: np.random.Generator, previous: float | None = None) -> float:
        return 0.0      # the formula without its array round trip (no draw, so no stream to keep in step)

    def mean_delay(self, retry: int, previous: float | None = None) -> float:
        return 0.0


@dataclass(frozen=True, repr=False)
class ConstantBackoff(Policy):
    """The same wait before every retry: ``ConstantBackoff(base=5.0)``."""

    base: float = 1.0

    name: ClassVar[str] = "constant"
    formula_text: ClassVar[str] = "b"
    kernel: ClassVar = staticmethod(constant_delay)

    def mean_delay(self, retry: int, previous: float | None = None) -> float:
        return self.base


@dataclass(frozen=True, repr=False)
class RandomBackoff(Policy):
    """Exponential waits with mean b, by inverse transform: ``RandomBackoff(base=10.0)``.

    Memoryless: every client in the orbit retries at rate theta = 1/b, the classical retrial
    queue (research/backoff-anchors.md section 8), whose closed forms the engines are held to.
    """

    base: float = 1.0

    name: ClassVar[str] = "random"
    random: ClassVar[bool] = True
    formula_text: ClassVar[str] = "Exp(mean b)"
    kernel: ClassVar = staticmethod(random_delay)

    def mean_delay(self, retry: int, previous: float | None = None) -> float:
        return self.base


@dataclass(frozen=True, repr=False)
class _Growing(Policy):
    """Policies built on the envelope v = min(c, b·m^n)."""

    base: float = 1.0
    cap: float = math.inf
    multiplier: float = 2.0
    _top: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_top", _growth_limit(self.base, self.cap, self.multiplier))

    def envelope(self, n: Real) -> Real:
        """v = min(c, b·m^n), the un-jittered delay before retry n (levels off near MAX_DELAY)."""
        return envelope(n, self.base, self.cap, self.multiplier, self._top)


@dataclass(frozen=True, repr=False)
class ExponentialBackoff(_Growing):
    """Doubling without jitter: ``ExponentialBackoff(base=1.0, cap=300.0)`` waits 1, 2, 4, ... 300 s.

    Clients that failed together retry together; the AWS blog's "clear loser" (research/
    backoff-anchors.md 1.4: at 100 contending clients 12.9x the completion time of full jitter).
    """

    name: ClassVar[str] = "exponential"
    formula_text: ClassVar[str] = "min(c, b·m^n)"
    kernel: ClassVar = staticmethod(exponential_delay)

    def mean_delay(self, retry: int, previous: float | None = None) -> float:
        return float(self.envelope(retry))


@dataclass(frozen=True, repr=False)
class FullJitter(_Growing):
    """U(0, v): ``FullJitter(base=1.0, cap=20.0)`` is the AWS SDKs' standard retry mode.

    From Brooker's "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015):
    sleep = random_between(0, min(cap, base * 2 ** attempt)); the blog's first retry is
    attempt 1, so its base 5 is b = 10 here. The least work of the five in the blog's sims.
    """

    name: ClassVar[str] = "full-jitter"
    random: ClassVar[bool] = True
    formula_text: ClassVar[str] = "U(0, min(c, b·m^n))"
    kernel: ClassVar = staticmethod(full_jitter_delay)

    def mean_delay(self, retry: int, previous: float | None = None) -> float:
        return float(self.envelope(retry)) / 2


@dataclass(frozen=True, repr=False)
class EqualJitter(_Growing):
    """v/2 + U(0, v/2): ``EqualJitter(base=1.0, cap=300.0)`` never waits less than half of v.

    The AWS blog's temp = min(cap, base * 2 ** attempt); sleep = temp/2 + random_between(0, temp/2).
    """

    name: ClassVar[str] = "equal-jitter"
    random: ClassVar[bool] = True
    formula_text: ClassVar[str] = "v/2 + U(0, v/2), v = min(c, b·m^n)"
    kernel: ClassVar = staticmethod(equal_jitter_delay)

    def mean_delay(self, retry: int, previous: float | None = None) -> float:
        return 0.75 * float(self.envelope(retry))


@dataclass(frozen=True, repr=False)
class DecorrelatedJitter(Policy):
    """min(c, U(b, 3·previous)), previous starting at b: ``DecorrelatedJitter(base=1.0, cap=60.0)``.

    The AWS blog's sleep = min(cap, random_between(base, sleep * 3)), sleep held per client and
    starting at base (same b as here). The caller keeps ``previous``: the last value ``delay``
    returned in this episode (None at its start); a previous below b counts as b.

        previous = None
        for n in range(3):
            previous = policy.delay(n, rng, previous)
    """

    base: float = 1.0
    cap: float = math.inf

    name: ClassVar[str] = "decorrelated-jitter"
    random: ClassVar[bool] = True
    uses_previous: ClassVar[bool] = True
    formula_text: ClassVar[str] = "min(c, U(b, 3·previous)), previous starts at b"
    kernel: ClassVar = staticmethod(decorrelated_delay)

    def mean_delay(self, retry: int, previous: float | None = None) -> float | None:
        """E[delay] given ``previous``, exact; at retry 0, previous None means b (as in delay).

        At retry n > 0 without ``previous`` (unlike delay, where None means b) it is the mean
        over whole episodes: m_n = (b + 3·m_(n-1))/2 = 3b·1.5^n - b, exact by linearity when
        uncapped (inf once that overflows); None with a finite cap (no closed form).
        """
        if previous is not None or retry == 0:
            return self._mean_given(self.base if previous is None else previous)
        if math.isfinite(self.cap):
            return None  # E[min(c, .)] of a random previous has no closed form
        try:
            return 3 * self.base * 1.5**retry - self.base
        except OverflowError:
            return math.inf

    def _mean_given(self, previous: float) -> float:
        """E[min(c, X)] for X ~ U(b, h), h = 3·previous: c minus the mean shortfall below c."""
        b, c = self.base, self.cap
        h = 3.0 * min(max(previous, b), MAX_DELAY)
        if c >= h:
            return (b + h) / 2
        # = (integral of x over [b, c] + c·(h - c)) / (h - b), in a form exact at c = b
        return c - (c - b) ** 2 / (2 * (h - b))


@dataclass(frozen=True, repr=False)
class GrpcBackoff(_Growing):
    """gRPC connection backoff: ``GrpcBackoff()`` waits about 1, 1.6, 2.56, ... 120 s, +-20 %.

    grpc/grpc doc/connection-backoff.md: INITIAL_BACKOFF 1 s, MULTIPLIER 1.6, JITTER 0.2,
    MAX_BACKOFF 120 s (MIN_CONNECT_TIMEOUT 20 s is the attempt timeout, ``client.timeout`` here).
    Jitter comes after the cap, as there, so a delay reaches 1.2·c (144 s). docs/model.md section 4 simplifies
    the original in two ways: the first retry is jittered too, and the delay counts from the
    failure rather than from the start of the failed attempt.
    """

    base: float = 1.0
    cap: float = 120.0
    multiplier: float = 1.6

    name: ClassVar[str] = "grpc"
    random: ClassVar[bool] = True
    formula_text: ClassVar[str] = "min(c, b·m^n) · U(0.8, 1.2)"
    kernel: ClassVar = staticmethod(grpc_delay)

    def mean_delay(self, retry: int, previous: float | None = None) -> float:
        return float(self.envelope(retry))  # U(0.8, 1.2) has mean 1


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (NoBackoff, ConstantBackoff, RandomBackoff, ExponentialBackoff, FullJitter,
                EqualJitter, DecorrelatedJitter, GrpcBackoff)
}


def policy_names() -> list[str]:
    """The policy names in the order of docs/model.md section 4."""
    return list(POLICIES)


def make_policy(name: str, **params: float) -> Policy:
    """The policy a scenario names: ``make_policy("full-jitter", base=1.0, cap=300.0)``.

    base, cap, multiplier and max_attempts are accepted by every policy and ignored where the
    formula has no use for them (``--set client.policy.name=none`` keeps working on a file that
    sets base and cap); any other key, or an unknown name, is a ValueError with a suggestion.
    """
    cls = POLICIES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown policy {name!r}{did_you_mean(str(name), POLICIES)} "
                         f"(one of {', '.join(POLICIES)})")
    takes = {f.name for f in fields(cls) if f.init}
    for key in params:
        if key not in _SHARED:
            raise ValueError(f"policy {name!r} takes no parameter {key!r}{did_you_mean(key, _SHARED)} "
                             f"(known: {', '.join(_SHARED)})")
    return cls(**{key: value for key, value in params.items() if key in takes})


def with_retry_after(delay: Real, retry_after: Real | None, honor: bool) -> Real:
    """The wait before the next attempt: max(delay, Retry-After) when honoured and given.

    docs/model.md section 3.1 (botocore's lower bound too). Works on arrays; NaN in ``retry_after`` means
    no header for that client. The policy's own ``previous`` stays the undelayed draw.
    """
    if not honor or retry_after is None:
        return delay
    wait = np.fmax(delay, retry_after)
    return float(wait) if np.ndim(wait) == 0 else wait


# --- validation and helpers ----------------------------------------------------------------


def _validate(policy: Policy) -> None:
    """Check and normalise the fields a policy has; ValueError naming the field."""
    present = {f.name for f in fields(policy) if f.init}
    if "base" in present:
        base = _number(policy, "base")
        if not 0 < base <= MAX_DELAY:
            raise ValueError(f"base: must be > 0 and finite, got {_seconds(base)}")
    if "cap" in present:
        cap = _number(policy, "cap")
        if not cap >= policy.base:
            raise ValueError(f"cap: must be >= base ({_seconds(policy.base)}), got {_seconds(cap)}")
    if "multiplier" in present:
        multiplier = _number(policy, "multiplier")
        if not 1 <= multiplier < math.inf:
            raise ValueError(f"multiplier: must be a finite number >= 1, got {multiplier:g}")
    attempts = policy.max_attempts
    if isinstance(attempts, bool) or not isinstance(attempts, (int, np.integer)) or attempts < 0:
        raise ValueError(f"max_attempts: must be a whole number >= 0 (0 = unlimited), got {attempts!r}")
    object.__setattr__(policy, "max_attempts", int(attempts))


def _number(policy: Policy, key: str) -> float:
    """The field as a float (stored back), or ValueError naming it."""
    value = getattr(policy, key)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{key}: must be a number, got {value!r}")
    object.__setattr__(policy, key, float(value))
    return float(value)


def _growth_limit(base: float, cap: float, multiplier: float) -> float:
    """The retry number from which min(cap, base·multiplier^n) stops growing.

    Clamping n there keeps multiplier^n and base·multiplier^n finite (at most about MAX_DELAY),
    so no n overflows; with a finite cap below MAX_DELAY the clamped value still reaches cap.
    """
    if multiplier == 1.0:
        return 0.0
    log_m = math.log(multiplier)
    safe = max(0, math.floor((math.log(MAX_DELAY) - max(0.0, math.log(base))) / log_m))
    if math.isinf(cap):
        return float(safe)
    k = max(0, math.ceil(math.log(cap / base) / log_m))
    while k < safe and base * multiplier**k < cap:  # the logarithms may round k down by one
        k += 1
    return float(min(k, safe))


def _seconds(value: float) -> str:
    return f"{value:g}" if not math.isfinite(value) else f"{value:g}s"


def _literal(value: object) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "math.inf" if value > 0 else "-math.inf"
    return repr(value)


#: every formula function a compiled engine needs (the envelope first: the others call it)
KERNELS = (envelope, none_delay, constant_delay, random_delay, exponential_delay, full_jitter_delay,
           equal_jitter_delay, decorrelated_delay, grpc_delay)
