"""Random times as scenario files write them: small frozen value objects, all in seconds.

Each kind knows its exact `mean` and `variance`, so tests can hold samples against theory,
and writes itself back both as Python (`repr`) and as a scenario table (`to_toml`).

    >>> d = parse_distribution({"dist": "lognormal", "median": "80ms", "p99": "600ms"})
    >>> d
    Lognormal(median=0.08, p99=0.6)
    >>> round(d.quantile(0.99), 12), d.to_toml()
    (0.6, {'dist': 'lognormal', 'median': 0.08, 'p99': 0.6})
    >>> parse_distribution("10s"), Constant(inf).is_infinite
    (Constant(value=10.0), True)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from sim.suggest import did_you_mean
from sim.units import format_duration, parse_duration

__all__ = ["Distribution", "Constant", "Exponential", "Lognormal", "Uniform", "Normal",
           "Empirical", "DISTRIBUTIONS", "parse_distribution", "inf"]

#: so that reprs such as ``Constant(value=inf)`` evaluate in this module's namespace
inf = math.inf

Size = int | tuple[int, ...] | None

#: z such that Phi(z) = 0.99: a lognormal's sigma is ln(p99 / median) / Z99
Z99 = 2.3263478740408408

_TABLE_HINT = 'expected a duration or a distribution table like {dist = "exponential", mean = "2s"}'


class Distribution(ABC):
    """A random time in seconds; each kind provides `mean` and `variance` (a field or a property)."""

    dist: ClassVar[str]              # the `dist` name in a scenario file
    keys: ClassVar[tuple[str, ...]]  # the file's keys, in the order of the dataclass fields
    mean: float
    variance: float

    def sample(self, rng: np.random.Generator, size: Size = None) -> float | np.ndarray:
        """One draw as a float (size None), else an array of that shape: ``d.sample(rng, 1000)``."""
        draws = self._draw(rng, size)
        return float(draws) if size is None else draws

    @abstractmethod
    def _draw(self, rng: np.random.Generator, size: Size) -> float | np.ndarray: ...

    @property
    def is_zero(self) -> bool:
        """True when every draw is 0, so an engine can skip drawing (and waiting)."""
        return self.mean == 0 and self.variance == 0

    @property
    def is_infinite(self) -> bool:
        """True when every draw is inf (e.g. ``session = "inf"``): the event never happens."""
        return self.mean == inf and self.variance == 0

    def _params(self) -> dict[str, object]:
        """The parameters under the file's key names (fields and keys pair up by position)."""
        return {key: getattr(self, f.name) for key, f in zip(self.keys, fields(self))}

    def to_toml(self) -> dict[str, object] | float | str:
        """The table a scenario file would hold; `parse_distribution` reads it back equal."""
        return {"dist": self.dist, **{k: _toml(v) for k, v in self._params().items()}}


@dataclass(frozen=True)
class Constant(Distribution):
    """Always the same time: ``"10s"`` or ``{dist = "constant", value = "10s"}``; may be inf."""

    value: float
    dist: ClassVar[str] = "constant"
    keys: ClassVar[tuple[str, ...]] = ("value",)

    def __post_init__(self) -> None:
        _set(self, "value", _seconds("value", self.value, finite=False))

    @property
    def mean(self) -> float:
        return self.value

    @property
    def variance(self) -> float:
        return 0.0

    def _draw(self, rng: np.random.Generator, size: Size) -> float | np.ndarray:
        return self.value if size is None else np.full(size, self.value)

    def to_toml(self) -> float | str:
        return _toml(self.value)


@dataclass(frozen=True)
class Exponential(Distribution):
    """Memoryless time with the given mean: ``{dist = "exponential", mean = "2s"}``."""

    mean: float
    dist: ClassVar[str] = "exponential"
    keys: ClassVar[tuple[str, ...]] = ("mean",)

    def __post_init__(self) -> None:
        _set(self, "mean", _seconds("mean", self.mean, positive=True))

    @property
    def variance(self) -> float:
        return self.mean ** 2

    def _draw(self, rng: np.random.Generator, size: Size) -> float | np.ndarray:
        return rng.exponential(self.mean, size)


@dataclass(frozen=True)
class Lognormal(Distribution):
    """Skewed time set by two quantiles it hits exactly: ``{dist = "lognormal", median = "80ms", p99 = "600ms"}``."""

    median: float
    p99: float
    dist: ClassVar[str] = "lognormal"
    keys: ClassVar[tuple[str, ...]] = ("median", "p99")

    def __post_init__(self) -> None:
        median = _seconds("median", self.median, positive=True)
        p99 = _seconds("p99", self.p99)
        if p99 <= median:
            raise ValueError(f"p99: must be greater than median ({format_duration(median)}), "
                             f"got {format_duration(p99)}")
        _set(self, "median", median)
        _set(self, "p99", p99)

    @property
    def mu(self) -> float:
        """Mean of the underlying normal: ln(median)."""
        return math.log(self.median)

    @property
    def sigma(self) -> float:
        """Standard deviation of the underlying normal, so that the 99th percentile is p99."""
        return (math.log(self.p99) - self.mu) / Z99

    @property
    def mean(self) -> float:
        return _exp(self.mu + self.sigma ** 2 / 2)

    @property
    def variance(self) -> float:
        s2 = self.sigma ** 2
        return math.expm1(s2) * _exp(2 * self.mu + s2) if s2 < 700 else inf

    def quantile(self, q: float) -> float:
        """The time below which a share q of draws fall: ``quantile(0.99) == p99``."""
        return _exp(self.mu + self.sigma * _inv_norm_cdf(q))

    def _draw(self, rng: np.random.Generator, size: Size) -> float | np.ndarray:
        return rng.lognormal(self.mu, self.sigma, size)


@dataclass(frozen=True)
class Uniform(Distribution):
    """Any time in [low, high] equally likely: ``{dist = "uniform", low = "0s", high = "30s"}``."""

    low: float
    high: float
    dist: ClassVar[str] = "uniform"
    keys: ClassVar[tuple[str, ...]] = ("low", "high")

    def __post_init__(self) -> None:
        low, high = _seconds("low", self.low), _seconds("high", self.high)
        if low > high:
            raise ValueError(f"low: must be <= high ({format_duration(high)}), got {format_duration(low)}")
        _set(self, "low", low)
        _set(self, "high", high)

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    @property
    def variance(self) -> float:
        return (self.high - self.low) ** 2 / 12

    def _draw(self, rng: np.random.Generator, size: Size) -> float | np.ndarray:
        return rng.uniform(self.low, self.high, size)


@dataclass(frozen=True, init=False, repr=False)
class Normal(Distribution):
    """A normal time truncated at 0: ``{dist = "normal", mean = "5m", sd = "1m"}``.

    `mean=` and `sd` are the untruncated normal's, as the file writes them (stored as `mu`,
    `sd`); the `mean` and `variance` properties are those of the truncated distribution.
    """

    mu: float
    sd: float
    dist: ClassVar[str] = "normal"
    keys: ClassVar[tuple[str, ...]] = ("mean", "sd")

    def __init__(self, mean: float, sd: float) -> None:
        _set(self, "mu", _seconds("mean", mean))
        _set(self, "sd", _seconds("sd", sd))

    def __repr__(self) -> str:
        return f"Normal(mean={self.mu!r}, sd={self.sd!r})"

    def _truncation(self) -> tuple[float, float]:
        """a = -mu/sd, where 0 sits in standard units, and lam = phi(a) / (1 - Phi(a))."""
        a = -self.mu / self.sd
        tail = 0.5 * math.erfc(a / math.sqrt(2))  # 1 - Phi(a) >= 1/2 since mu >= 0
        return a, math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / tail

    @property
    def mean(self) -> float:
        if self.sd == 0:
            return self.mu
        _, lam = self._truncation()
        return self.mu + self.sd * lam

    @property
    def variance(self) -> float:
        if self.sd == 0:
            return 0.0
        a, lam = self._truncation()
        return self.sd ** 2 * (1 + a * lam - lam ** 2)

    def _draw(self, rng: np.random.Generator, size: Size) -> float | np.ndarray:
        # Rejection: accepts at least half the draws, since mu >= 0.
        if size is None:
            while (x := rng.normal(self.mu, self.sd)) < 0:
                pass
            return x
        out = rng.normal(self.mu, self.sd, size)
        while (negative := out < 0).any():
            out[negative] = rng.normal(self.mu, self.sd, int(negative.sum()))
        return out


@dataclass(frozen=True)
class Empirical(Distribution):
    """One of the given times, each equally likely: ``{dist = "empirical", values = ["5s", "10s", "30s"]}``."""

    values: tuple[float, ...]
    dist: ClassVar[str] = "empirical"
    keys: ClassVar[tuple[str, ...]] = ("values",)

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes)) or not hasattr(self.values, "__iter__"):
            raise ValueError(f"values: expected a list of durations, got {type(self.values).__name__} "
                             f"{self.values!r}")
        values = tuple(_seconds(f"values[{i}]", v, finite=False) for i, v in enumerate(self.values))
        if not values:
            raise ValueError("values: needs at least one value")
        _set(self, "values", values)
        _set(self, "_array", np.array(values))  # cached for vectorised draws; not a field

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def variance(self) -> float:
        if len(set(self.values)) == 1:
            return 0.0
        m = self.mean
        return inf if m == inf else math.fsum((v - m) ** 2 for v in self.values) / len(self.values)

    def _draw(self, rng: np.random.Generator, size: Size) -> float | np.ndarray:
        if size is None:
            return self.values[rng.integers(len(self.values))]
        return self._array[rng.integers(len(self.values), size=size)]


#: every kind by its `dist` name, in the order error messages list them
DISTRIBUTIONS: dict[str, type[Distribution]] = {
    cls.dist: cls for cls in (Constant, Exponential, Lognormal, Uniform, Normal, Empirical)}


def parse_distribution(value: object) -> Distribution:
    """A distribution from a scenario value: a bare duration (a constant) or a ``{dist = ...}`` table.

    Raises ValueError whose message starts with the key at fault, if one is.
    """
    if isinstance(value, Distribution):
        return value
    if isinstance(value, dict):
        return _parse_table(value)
    try:
        return Constant(parse_duration(value))
    except TypeError:
        raise ValueError(f"{_TABLE_HINT}, got {type(value).__name__} {value!r}") from None


def _parse_table(table: dict) -> Distribution:
    names = ", ".join(DISTRIBUTIONS)
    if "dist" not in table:
        raise ValueError(f"missing key 'dist' naming the distribution (one of {names})")
    name = table["dist"]
    cls = DISTRIBUTIONS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"dist: unknown distribution {name!r}{did_you_mean(name, DISTRIBUTIONS)} "
                         f"(one of {names})")
    keys = ", ".join(cls.keys)
    for key in table:
        if key != "dist" and key not in cls.keys:
            raise ValueError(f"unknown key {key!r} for a {name} distribution"
                             f"{did_you_mean(key, cls.keys)} (keys: {keys})")
    for key in cls.keys:
        if key not in table:
            raise ValueError(f"missing key {key!r} for a {name} distribution (keys: {keys})")
    if cls is Empirical:
        return Empirical(_durations("values", table["values"]))
    return cls(**{key: _duration(key, table[key]) for key in cls.keys})


def _duration(key: str, raw: object) -> float:
    """`parse_duration`, with its error prefixed by the key it came from."""
    try:
        return parse_duration(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{key}: {error}") from None


def _durations(key: str, raw: object) -> tuple[float, ...]:
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{key}: expected a list of durations, got {type(raw).__name__} {raw!r}")
    return tuple(_duration(f"{key}[{i}]", v) for i, v in enumerate(raw))


def _seconds(name: str, value: object, *, finite: bool = True, positive: bool = False) -> float:
    """`value` as float seconds, or a ValueError that starts with the field's name."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number of seconds, got {type(value).__name__} {value!r}")
    x = float(value) + 0.0  # + 0.0 turns -0.0 into 0.0
    if math.isnan(x):
        raise ValueError(f"{name}: must be a number, got nan")
    if x < 0:
        raise ValueError(f"{name}: must be >= 0, got {x!r}")
    if positive and x == 0:
        raise ValueError(f"{name}: must be > 0, got 0 (write a constant for a fixed time)")
    if finite and x == inf:
        raise ValueError(f'{name}: must be finite, got inf (write "inf" as a constant)')
    return x


def _set(obj: Distribution, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses normalise their fields this way


def _toml(value: object) -> object:
    """Seconds as a scenario file writes them: floats, "inf" for infinity, lists for tuples."""
    if isinstance(value, tuple):
        return [_toml(v) for v in value]
    return "inf" if value == inf else value


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.78 else inf


# Acklam's rational approximation of the inverse normal CDF (relative error < 1.15e-9).
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01, 1.0)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
      3.754408661907416e+00, 1.0)


def _poly(coefficients: tuple[float, ...], x: float) -> float:
    result = 0.0
    for c in coefficients:
        result = result * x + c
    return result


def _inv_norm_cdf(p: float) -> float:
    """z with Phi(z) = p: Acklam's approximation refined by one Halley step (error ~1e-15)."""
    if not 0 <= p <= 1:
        raise ValueError(f"q: must be in [0, 1], got {p!r}")
    if p > 0.5:
        return -_inv_norm_cdf(1 - p)  # exact: 1 - p has no rounding error for p in [0.5, 1]
    if p == 0:
        return -inf
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        x = _poly(_C, q) / _poly(_D, q)
    else:
        q = p - 0.5
        x = q * _poly(_A, q * q) / _poly(_B, q * q)
    density = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    if density > 0:  # Halley's step on Phi(x) - p; the lower tail keeps erfc accurate
        u = (0.5 * math.erfc(-x / math.sqrt(2)) - p) / density
        x -= u / (1 + x * u / 2)
    return x
