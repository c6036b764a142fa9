"""Distributions against theory: sample moments vs exact moments, quantiles, round trips, errors."""

from __future__ import annotations

import math
import statistics
import tomllib

import numpy as np
import pytest
from hypothesis import given, strategies as st

import sim.distributions
from sim.distributions import (DISTRIBUTIONS, Constant, Distribution, Empirical, Exponential,
                               Lognormal, Normal, Uniform, _inv_norm_cdf, inf, parse_distribution)

N = 200_000
SEED = 20070816

MOMENT_CASES = [
    Constant(2.5),
    Constant(0.0),
    Exponential(2.0),
    Exponential(0.05),
    Exponential(3600.0),
    Lognormal(median=0.08, p99=0.6),
    Lognormal(median=120.0, p99=480.0),
    Lognormal(median=0.08, p99=1.0),      # heavy-ish: sigma ~ 1.09, kurtosis ~ 200
    Uniform(0.0, 30.0),
    Uniform(5.0, 5.5),
    Normal(mean=300.0, sd=60.0),          # truncation negligible
    Normal(mean=0.5, sd=1.0),             # 31 % of the untruncated mass is below 0
    Normal(mean=0.0, sd=2.0),             # half-normal
    Normal(mean=0.1, sd=3.0),
    Normal(mean=4.0, sd=0.0),             # degenerate: a constant
    Empirical((5.0, 10.0, 30.0)),
    Empirical((0.0, 1.0, 1.0, 100.0)),
]


@pytest.mark.parametrize("dist", MOMENT_CASES, ids=repr)
def test_sample_moments_match_theory(dist: Distribution) -> None:
    x = dist.sample(np.random.default_rng(SEED), N)
    assert x.shape == (N,) and (x >= 0).all()
    mean, var = dist.mean, dist.variance
    assert math.isfinite(mean) and math.isfinite(var)
    # Standard errors of the sample mean and of the sample variance (from the 4th central moment).
    assert abs(x.mean() - mean) <= 5 * math.sqrt(var / N) + 1e-12 * mean
    m2 = x.var()
    m4 = np.mean((x - x.mean()) ** 4)
    se_var = math.sqrt(max(m4 - m2 ** 2, 0.0) / N)
    assert abs(m2 - var) <= 5 * se_var + 1e-12 * var


@pytest.mark.parametrize("mu, sd", [(0.0, 1.0), (0.5, 1.0), (0.1, 3.0), (2.0, 1.0), (300.0, 60.0),
                                    (1e-3, 5.0), (7200.0, 1800.0)])
def test_truncated_normal_moments_match_numerical_integration(mu: float, sd: float) -> None:
    x = np.linspace(0.0, mu + 40 * sd, 400_001)
    density = np.exp(-0.5 * ((x - mu) / sd) ** 2)  # unnormalised; the ratios below normalise it
    mass = np.trapezoid(density, x)
    mean = np.trapezoid(x * density, x) / mass
    var = np.trapezoid((x - mean) ** 2 * density, x) / mass
    dist = Normal(mean=mu, sd=sd)
    assert dist.mean == pytest.approx(mean, rel=1e-8)
    assert dist.variance == pytest.approx(var, rel=1e-7)


def test_normal_keeps_the_files_parameters_apart_from_its_truncated_moments() -> None:
    dist = Normal(mean=0.0, sd=2.0)
    assert (dist.mu, dist.sd) == (0.0, 2.0)
    assert dist.mean == pytest.approx(2.0 * math.sqrt(2 / math.pi))  # half-normal mean
    assert dist.variance == pytest.approx(4.0 * (1 - 2 / math.pi))
    assert Normal(mean=4.0, sd=0.0).mean == 4.0 and Normal(mean=4.0, sd=0.0).variance == 0.0
    assert Normal(mean=1e6, sd=1.0).mean == pytest.approx(1e6, rel=1e-15)


# --- lognormal quantiles ------------------------------------------------------------------------

@given(median=st.floats(1e-4, 1e5), ratio=st.floats(1.0001, 1e3))
def test_lognormal_hits_both_quantiles(median: float, ratio: float) -> None:
    dist = Lognormal(median=median, p99=median * ratio)
    assert dist.quantile(0.5) == pytest.approx(dist.median, rel=1e-9)
    assert dist.quantile(0.99) == pytest.approx(dist.p99, rel=1e-9)
    assert dist.mu == pytest.approx(math.log(median))


@pytest.mark.parametrize("median, p99", [(0.08, 0.6), (120.0, 480.0), (0.08, 1.0)])
def test_lognormal_sample_quantiles(median: float, p99: float) -> None:
    dist = Lognormal(median=median, p99=p99)
    x = dist.sample(np.random.default_rng(SEED), N)
    for q in (0.5, 0.9, 0.99):
        theory = dist.quantile(q)
        pdf = math.exp(-0.5 * ((math.log(theory) - dist.mu) / dist.sigma) ** 2) / (
            theory * dist.sigma * math.sqrt(2 * math.pi))
        se = math.sqrt(q * (1 - q) / N) / pdf  # standard error of a sample quantile
        assert abs(np.quantile(x, q) - theory) <= 5 * se


def test_lognormal_quantile_edges() -> None:
    dist = Lognormal(median=1.0, p99=10.0)
    assert dist.quantile(0.0) == 0.0 and dist.quantile(1.0) == inf
    with pytest.raises(ValueError, match="must be in"):
        dist.quantile(1.5)


def test_inverse_normal_cdf_against_the_standard_library() -> None:
    reference = statistics.NormalDist()
    points = np.concatenate([np.linspace(1e-9, 1 - 1e-9, 5001),
                             10.0 ** -np.arange(1.0, 300.0, 0.5),
                             1 - 10.0 ** -np.arange(1.0, 16.0, 0.25),
                             [0.02425, 0.5, 0.97575, 0.975, 0.99]])
    for p in points:
        expected = reference.inv_cdf(float(p))
        assert abs(_inv_norm_cdf(float(p)) - expected) <= 1e-12 * max(1.0, abs(expected)), p
    assert _inv_norm_cdf(0.5) == 0.0
    assert (_inv_norm_cdf(0.0), _inv_norm_cdf(1.0)) == (-inf, inf)


# --- round trips --------------------------------------------------------------------------------

durations = st.floats(0.0, 1e7, allow_nan=False)
positive = st.floats(1e-6, 1e6)


@st.composite
def lognormals(draw: st.DrawFn) -> Lognormal:
    median = draw(positive)
    p99 = draw(st.floats(median, 1e9, exclude_min=True))
    return Lognormal(median=median, p99=p99)


@st.composite
def uniforms(draw: st.DrawFn) -> Uniform:
    low, high = sorted((draw(durations), draw(durations)))
    return Uniform(low, high)


distributions = st.one_of(
    st.builds(Constant, st.one_of(durations, st.just(inf))),
    st.builds(Exponential, positive),
    lognormals(),
    uniforms(),
    st.builds(Normal, mean=durations, sd=durations),
    st.builds(Empirical, st.lists(st.one_of(durations, st.just(inf)), min_size=1, max_size=8)
              .map(tuple)),
)


def test_every_kind_is_covered_by_the_strategies() -> None:
    assert set(DISTRIBUTIONS) == {"constant", "exponential", "lognormal", "uniform", "normal",
                                  "empirical"}


@given(distributions)
def test_repr_round_trips(dist: Distribution) -> None:
    again = eval(repr(dist), vars(sim.distributions))
    assert again == dist and hash(again) == hash(dist)


@given(distributions)
def test_to_toml_round_trips_through_a_scenario_file(dist: Distribution) -> None:
    table = dist.to_toml()
    assert parse_distribution(table) == dist
    text = f"x = {_toml_value(table)}\n"  # as a scenario file would hold it
    assert parse_distribution(tomllib.loads(text)["x"]) == dist


def _toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    assert isinstance(value, float), value  # seconds are always written as floats
    return repr(value)


def test_special_reprs_and_tables() -> None:
    assert repr(Constant(inf)) == "Constant(value=inf)"
    assert Constant(inf).to_toml() == "inf" and Constant(10).to_toml() == 10.0
    assert repr(Normal(mean=300, sd=60)) == "Normal(mean=300.0, sd=60.0)"
    assert Normal(mean=300, sd=60).to_toml() == {"dist": "normal", "mean": 300.0, "sd": 60.0}
    assert Empirical([1, inf]).to_toml() == {"dist": "empirical", "values": [1.0, "inf"]}
    assert repr(Constant(-0.0)) == "Constant(value=0.0)"


# --- the sampling interface ---------------------------------------------------------------------

KINDS = [Constant(1.5), Exponential(2.0), Lognormal(0.08, 0.6), Uniform(1.0, 2.0),
         Normal(mean=0.2, sd=1.0), Empirical((1.0, 2.0, 3.0))]


@pytest.mark.parametrize("dist", KINDS, ids=repr)
def test_sample_shapes_types_and_seeding(dist: Distribution) -> None:
    rng = np.random.default_rng(SEED)
    one = dist.sample(rng)
    assert type(one) is float and one >= 0
    assert dist.sample(rng, 5).shape == (5,)
    assert dist.sample(rng, (2, 3)).shape == (2, 3)
    first = dist.sample(np.random.default_rng(1), 1000)
    second = dist.sample(np.random.default_rng(1), 1000)
    assert np.array_equal(first, second) and (first >= 0).all()
    assert [dist.sample(np.random.default_rng(1)) for _ in range(2)] == [
        dist.sample(np.random.default_rng(1))] * 2


@pytest.mark.parametrize("dist, zero, infinite", [
    (Constant(0), True, False), (Constant(inf), False, True), (Constant(1), False, False),
    (Uniform(0, 0), True, False), (Normal(mean=0, sd=0), True, False),
    (Empirical((inf, inf)), False, True), (Empirical((0.0, inf)), False, False),
    (Exponential(1e-9), False, False), (Lognormal(1e-6, 2e-6), False, False),
])
def test_is_zero_and_is_infinite(dist: Distribution, zero: bool, infinite: bool) -> None:
    assert (dist.is_zero, dist.is_infinite) == (zero, infinite)


def test_infinite_constant_samples_inf() -> None:
    rng = np.random.default_rng(SEED)
    assert Constant(inf).sample(rng) == inf and np.isinf(Constant(inf).sample(rng, 3)).all()
    assert Constant(inf).mean == inf


# --- parsing ------------------------------------------------------------------------------------

def test_parse_bare_durations_and_tables() -> None:
    assert parse_distribution("10s") == Constant(10.0)
    assert parse_distribution(0).is_zero and parse_distribution("inf").is_infinite
    assert parse_distribution({"dist": "exponential", "mean": "2s"}) == Exponential(2.0)
    assert parse_distribution({"dist": "normal", "mean": "5m", "sd": "1m"}) == Normal(mean=300, sd=60)
    assert parse_distribution({"dist": "empirical", "values": ["5s", 10, "inf"]}) == Empirical(
        (5.0, 10.0, inf))
    assert parse_distribution({"dist": "constant", "value": "250ms"}) == Constant(0.25)
    built = Uniform(0, 1)
    assert parse_distribution(built) is built


NAMES = "(one of constant, exponential, lognormal, uniform, normal, empirical)"
TABLE_HINT = 'expected a duration or a distribution table like {dist = "exponential", mean = "2s"}'


@pytest.mark.parametrize("value, message", [
    ({"dist": "lognorml", "median": "80ms", "p99": "600ms"},
     f"dist: unknown distribution 'lognorml'; did you mean 'lognormal'? {NAMES}"),
    ({"dist": "gamma", "mean": "1s"}, f"dist: unknown distribution 'gamma' {NAMES}"),
    ({"dist": 3}, "dist: unknown distribution 3 "),
    ({"mean": "2s"}, "missing key 'dist'"),
    ({"dist": "lognormal", "mediam": "80ms", "p99": "600ms"},
     "unknown key 'mediam' for a lognormal distribution; did you mean 'median'? (keys: median, p99)"),
    ({"dist": "exponential", "mean": "1s", "sd": "1s"},
     "unknown key 'sd' for a exponential distribution (keys: mean)"),
    ({"dist": "lognormal", "median": "80ms"},
     "missing key 'p99' for a lognormal distribution (keys: median, p99)"),
    ({"dist": "lognormal", "median": "80ms", "p99": "50ms"},
     "p99: must be greater than median (80ms), got 50ms"),
    ({"dist": "lognormal", "median": "80ms", "p99": "80ms"}, "p99: must be greater than median"),
    ({"dist": "lognormal", "median": 0, "p99": 1}, "median: must be > 0"),
    ({"dist": "lognormal", "median": "1s", "p99": "inf"}, "p99: must be finite"),
    ({"dist": "uniform", "low": "40s", "high": "30s"}, "low: must be <= high (30s), got 40s"),
    ({"dist": "uniform", "low": "0s", "high": "inf"}, "high: must be finite"),
    ({"dist": "exponential", "mean": -1}, "mean: a duration must be >= 0"),
    ({"dist": "exponential", "mean": 0}, "mean: must be > 0"),
    ({"dist": "exponential", "mean": "2 parsecs"}, "mean: expected a duration like"),
    ({"dist": "exponential", "mean": True}, "mean: expected a duration"),
    ({"dist": "exponential", "mean": [2]}, "mean: expected a duration"),
    ({"dist": "normal", "mean": "5m", "sd": "-1m"}, "sd: expected a duration like"),
    ({"dist": "normal", "mean": "5m", "sd": math.nan}, "sd: a duration must be >= 0"),
    ({"dist": "constant", "value": "-5s"}, "value: expected a duration like"),
    ({"dist": "empirical", "values": []}, "values: needs at least one value"),
    ({"dist": "empirical", "values": "5s"}, "values: expected a list of durations"),
    ({"dist": "empirical", "values": ["5s", "soon"]}, "values[1]: expected a duration like"),
    (-3, "a duration must be >= 0"),
    ("soon", "expected a duration like"),
    ([1, 2], f"{TABLE_HINT}, got list [1, 2]"),
    (True, f"{TABLE_HINT}, got bool True"),
    (None, f"{TABLE_HINT}, got NoneType None"),
])
def test_parse_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_distribution(value)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("build, message", [
    (lambda: Constant(math.nan), "value: must be a number, got nan"),
    (lambda: Constant(-1.0), "value: must be >= 0"),
    (lambda: Exponential(-1.0), "mean: must be >= 0"),
    (lambda: Exponential(0.0), "mean: must be > 0"),
    (lambda: Exponential("2s"), "mean: expected a number of seconds"),
    (lambda: Lognormal(1.0, inf), "p99: must be finite"),
    (lambda: Normal(mean=-1.0, sd=1.0), "mean: must be >= 0"),
    (lambda: Normal(mean=1.0, sd=-1.0), "sd: must be >= 0"),
    (lambda: Uniform(0.0, inf), "high: must be finite"),
    (lambda: Empirical(()), "values: needs at least one value"),
    (lambda: Empirical((1.0, -2.0)), "values[1]: must be >= 0"),
])
def test_constructor_errors_name_the_field(build, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value).startswith(message), str(caught.value)
