"""Backoff policies against their docs/model.md section 4 formulas and their analytic means."""

from __future__ import annotations

import ast
import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import sim.policies as policies_module
import sim.suggest as suggest_module
from sim.policies import (
    MAX_DELAY, POLICIES, DecorrelatedJitter, ExponentialBackoff, FullJitter, GrpcBackoff,
    NoBackoff, Policy, make_policy, policy_names, with_retry_after,
)

# The contract: docs/model.md section 4, in table order.
MODEL_NAMES = ["none", "constant", "random", "exponential", "full-jitter", "equal-jitter",
               "decorrelated-jitter", "grpc"]
RANDOM_NAMES = {"random", "full-jitter", "equal-jitter", "decorrelated-jitter", "grpc"}
EPS = 1e-12  # relative slack for one or two roundings
BELOW_ONE = float(np.nextafter(1.0, 0.0))  # the largest u a generator can return

bases = st.floats(1e-3, 1e3)
multipliers = st.one_of(st.just(1.0), st.floats(1.0, 4.0))


@st.composite
def policies(draw: st.DrawFn, names: list[str] = MODEL_NAMES) -> Policy:
    """Any policy with valid parameters: a cap is inf or base times a factor >= 1."""
    name = draw(st.sampled_from(names))
    base = draw(bases)
    cap = draw(st.one_of(st.just(math.inf), st.floats(1.0, 1e4).map(lambda f: base * f)))
    return make_policy(name, base=base, cap=cap, multiplier=draw(multipliers))


def envelope(p: Policy, n: int) -> float:
    """v = min(c, b·m^n) by plain Python arithmetic, independent of the module's clamping."""
    return min(p.cap, p.base * p.multiplier**n)  # type: ignore[attr-defined]


# --- bounds and formulas -------------------------------------------------------------------


@given(p=policies(), n=st.integers(0, 200), u=st.floats(0.0, 1.0, exclude_max=True),
       factor=st.floats(1.0, 50.0))
def test_every_delay_stays_within_its_formula_bounds(p: Policy, n: int, u: float, factor: float) -> None:
    prev = getattr(p, "base", 1.0) * factor
    d = float(p.formula(n, u, prev))
    assert 0 <= d < math.inf
    if hasattr(p, "cap") and p.name != "grpc":
        assert d <= p.cap * (1 + EPS)
    if p.name == "none":
        assert d == 0
    elif p.name == "constant":
        assert d == p.base
    elif p.name == "exponential":
        assert d == pytest.approx(envelope(p, n), rel=EPS)
    elif p.name == "full-jitter":
        assert d <= envelope(p, n) * (1 + EPS)
    elif p.name == "equal-jitter":
        v = envelope(p, n)
        assert v / 2 * (1 - EPS) <= d <= v * (1 + EPS)
    elif p.name == "decorrelated-jitter":
        assert p.base <= d <= min(p.cap, 3 * prev) * (1 + EPS)
    elif p.name == "grpc":
        v = envelope(p, n)
        assert 0.8 * v * (1 - EPS) <= d <= 1.2 * v * (1 + EPS)
        assert d <= 1.2 * p.cap * (1 + EPS)  # jitter comes after the cap, as in gRPC


EDGES = [  # policy, n, previous, delay at u = 0, delay as u -> 1
    (NoBackoff(), 4, None, 0.0, 0.0),
    (make_policy("constant", base=3.0), 4, None, 3.0, 3.0),
    (make_policy("random", base=2.0), 4, None, 0.0, 2.0 * 53 * math.log(2)),  # -b·log(2^-53)
    (make_policy("exponential", base=0.5, cap=30.0), 3, None, 4.0, 4.0),
    (make_policy("exponential", base=0.5, cap=30.0), 9, None, 30.0, 30.0),
    (make_policy("full-jitter", base=0.5, cap=30.0), 3, None, 0.0, 4.0),
    (make_policy("full-jitter", base=0.5, multiplier=3.0), 2, None, 0.0, 4.5),
    (make_policy("equal-jitter", base=0.5, cap=30.0), 3, None, 2.0, 4.0),
    (make_policy("equal-jitter", base=0.5, cap=30.0), 10, None, 15.0, 30.0),
    (make_policy("decorrelated-jitter", base=2.0), 0, None, 2.0, 6.0),
    (make_policy("decorrelated-jitter", base=2.0), 5, 10.0, 2.0, 30.0),
    (make_policy("decorrelated-jitter", base=2.0, cap=12.0), 5, 10.0, 2.0, 12.0),
    (make_policy("grpc"), 0, None, 0.8, 1.2),
    (make_policy("grpc"), 2, None, 0.8 * 2.56, 1.2 * 2.56),
    (make_policy("grpc"), 50, None, 0.8 * 120, 1.2 * 120),
]


@pytest.mark.parametrize("p, n, prev, at_zero, near_one", EDGES, ids=lambda x: getattr(x, "name", None))
def test_formula_at_the_edges_of_u(p: Policy, n: int, prev: float | None, at_zero: float,
                                   near_one: float) -> None:
    assert float(p.formula(n, 0.0, prev)) == pytest.approx(at_zero, rel=EPS, abs=1e-300)
    assert float(p.formula(n, BELOW_ONE, prev)) == pytest.approx(near_one, rel=1e-9)


@pytest.mark.parametrize("base, multiplier, k", [(1.0, 2.0, 3), (0.1, 1.6, 17), (5.0, 1.1, 38), (0.3, 3.0, 9)])
@pytest.mark.parametrize("nudge", [-1, 0, 1])
def test_cap_is_reached_exactly(base: float, multiplier: float, k: int, nudge: int) -> None:
    # caps at, one ulp below and one ulp above b·m^k: logarithms alone misjudge where v stops growing
    cap = base * multiplier**k
    cap = float(np.nextafter(cap, math.inf * nudge)) if nudge else cap
    p = make_policy("exponential", base=base, cap=cap, multiplier=multiplier)
    assert [p.mean_delay(n) for n in (k + 1, k + 5, 10**6)] == [cap] * 3
    assert np.all(p.delays(np.arange(k + 1, k + 50), np.random.default_rng(0)) == cap)


@given(p=policies(), u=st.floats(0.0, 1.0, exclude_max=True), n=st.integers(0, 300))
def test_delay_never_shrinks_with_the_retry_number(p: Policy, u: float, n: int) -> None:
    assert float(p.formula(n + 1, u, None)) >= float(p.formula(n, u, None))


# --- means against theory ------------------------------------------------------------------

N = 100_000
MEAN_CASES = [(name, n, base, cap)
              for name in MODEL_NAMES
              for n, base, cap in [(0, 1.0, math.inf), (3, 0.5, math.inf), (5, 2.0, 30.0), (12, 1.0, 300.0)]
              if name != "decorrelated-jitter" or n == 0]  # later retries: tested given `previous`


def assert_mean(sample: np.ndarray, expected: float) -> None:
    """The sample mean within 5 standard errors (exact when the sample does not vary)."""
    se = sample.std(ddof=1) / math.sqrt(len(sample))
    assert abs(sample.mean() - expected) <= 5 * se + 1e-12 * abs(expected), (sample.mean(), expected, se)


@pytest.mark.parametrize("name, n, base, cap", MEAN_CASES)
def test_sample_mean_matches_mean_delay(name: str, n: int, base: float, cap: float) -> None:
    p = make_policy(name, base=base, cap=cap)
    sample = p.delays(np.full(N, n), np.random.default_rng(1000 + n))
    expected = p.mean_delay(n)
    assert expected is not None
    assert_mean(sample, expected)


@pytest.mark.parametrize("base, cap, prev", [
    (1.0, math.inf, 1.0),    # retry 0: U(1, 3)
    (1.0, math.inf, 7.5),
    (1.0, 2.0, 1.0),         # cap inside [b, 3p]
    (0.5, 10.0, 5.0),
    (0.5, 1.0, 100.0),       # cap almost at b: nearly always capped
    (2.0, 2.0, 4.0),         # cap = base: always b
    (1.0, 50.0, 10.0),       # cap above 3p: never binds
])
def test_decorrelated_mean_given_previous(base: float, cap: float, prev: float) -> None:
    p = make_policy("decorrelated-jitter", base=base, cap=cap)
    sample = p.delays(np.full(N, 4), np.random.default_rng(7), previous=np.full(N, prev))
    assert_mean(sample, p.mean_delay(4, previous=prev))


@pytest.mark.parametrize("base", [1.0, 0.2])
def test_decorrelated_unconditional_mean_follows_the_recursion(base: float) -> None:
    # chains of draws, each fed back as previous: retries 0..3 of N independent episodes
    p = make_policy("decorrelated-jitter", base=base)
    rng = np.random.default_rng(11)
    previous = None
    for n in range(4):
        previous = p.delays(np.full(N, n), rng, previous)
    m = 2 * base  # m_0 = E[U(b, 3b)]
    for _ in range(3):
        m = (base + 3 * m) / 2
    assert p.mean_delay(3) == pytest.approx(m)
    assert_mean(previous, p.mean_delay(3))


def test_decorrelated_mean_has_no_closed_form_with_a_cap_after_retry_0() -> None:
    p = make_policy("decorrelated-jitter", base=1.0, cap=60.0)
    assert p.mean_delay(0) == pytest.approx(2.0)
    assert p.mean_delay(3) is None
    assert p.mean_delay(3, previous=4.0) == pytest.approx(p.mean_delay(0, previous=4.0))


# --- scalar and vectorised forms, seeds ----------------------------------------------------


@given(p=policies(), seed=st.integers(0, 2**32),
       steps=st.lists(st.tuples(st.integers(0, 150), st.floats(1.0, 100.0)), min_size=1, max_size=30))
def test_scalar_and_vectorised_delays_are_identical(p: Policy, seed: int,
                                                    steps: list[tuple[int, float]]) -> None:
    ns = np.array([n for n, _ in steps])
    prev = np.array([f for _, f in steps]) * getattr(p, "base", 1.0)
    rng1, rng2 = np.random.default_rng(seed), np.random.default_rng(seed)
    one_by_one = [p.delay(int(n), rng1, float(q)) for n, q in zip(ns, prev)]
    assert np.array_equal(np.array(one_by_one), p.delays(ns, rng2, prev))
    assert rng1.random() == rng2.random()  # the same number of draws


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_scalar_and_vectorised_agree_without_previous(name: str) -> None:
    p = make_policy(name, base=0.3, cap=500.0)
    ns = np.arange(60) % 25
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [p.delay(int(n), rng1) for n in ns] == p.delays(ns, rng2).tolist()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_delays_and_only_random_policies_draw(name: str) -> None:
    p = make_policy(name, base=0.5, cap=100.0)
    ns = np.arange(200) % 20
    a = p.delays(ns, np.random.default_rng(42))
    assert np.array_equal(a, p.delays(ns, np.random.default_rng(42)))
    b = p.delays(ns, np.random.default_rng(43))
    assert p.random == (name in RANDOM_NAMES)
    assert (not np.array_equal(a, b)) == p.random
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    p.delay(3, rng)
    assert (rng.bit_generator.state != before) == p.random


# --- decorrelated jitter's memory ----------------------------------------------------------


@given(base=bases, cap_factor=st.floats(1.0, 100.0), u=st.floats(0.0, 1.0, exclude_max=True),
       f1=st.floats(1.0, 50.0), f2=st.floats(1.0, 50.0))
def test_decorrelated_larger_previous_gives_larger_delay(base: float, cap_factor: float, u: float,
                                                         f1: float, f2: float) -> None:
    p = make_policy("decorrelated-jitter", base=base, cap=base * cap_factor)
    small, large = sorted((base * f1, base * f2))
    assert float(p.formula(0, u, small)) <= float(p.formula(0, u, large))
    assert p.mean_delay(0, previous=small) <= p.mean_delay(0, previous=large)


def test_decorrelated_mean_grows_with_previous_in_samples() -> None:
    p = make_policy("decorrelated-jitter", base=1.0, cap=40.0)
    ns = np.zeros(N)
    means = [p.delays(ns, np.random.default_rng(3), np.full(N, prev)).mean() for prev in (1, 3, 10, 30)]
    assert means == sorted(means) and means[0] < means[-1]


def test_decorrelated_previous_none_is_base() -> None:
    p = make_policy("decorrelated-jitter", base=1.5, cap=30.0)
    ns = np.arange(50)
    assert np.array_equal(p.delays(ns, np.random.default_rng(9)),
                          p.delays(ns, np.random.default_rng(9), np.full(50, 1.5)))
    assert p.delay(4, np.random.default_rng(9)) == p.delay(4, np.random.default_rng(9), 1.5)


# --- no overflow, no nan -------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("cap", [math.inf, 300.0])
def test_huge_retry_numbers_neither_warn_nor_produce_nan(name: str, cap: float) -> None:
    p = make_policy(name, base=1.0, cap=cap)
    rng = np.random.default_rng(0)
    huge = 10**6
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        values = [p.delay(huge, rng), p.delay(huge, rng, 1e308),
                  float(p.formula(huge, 0.0)), float(p.formula(huge, BELOW_ONE, 1e308))]
        values += p.delays(np.full(1000, huge), rng).tolist()
        values += p.delays(np.full(1000, huge), rng, np.full(1000, 1e308)).tolist()
        mean = p.mean_delay(huge)
    assert all(0 <= v < math.inf for v in values)
    # levels off: 1.2 x MAX_DELAY for gRPC's jitter, 3 x MAX_DELAY for 3·previous; random is uncapped
    assert max(values) <= {"decorrelated-jitter": 3.0, "random": math.inf}.get(name, 1.2) * min(cap, MAX_DELAY)
    assert mean is None or (not math.isnan(mean) and mean >= 0)
    if name in ("exponential", "grpc") and cap < math.inf:
        assert p.mean_delay(huge) == cap


def test_uncapped_exponential_levels_off_without_falling() -> None:
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        for p in (ExponentialBackoff(), ExponentialBackoff(base=1e-6, multiplier=1.1), GrpcBackoff(cap=math.inf)):
            v = p.delays(np.arange(20_000), np.random.default_rng(0)) if not p.random else \
                p.formula(np.arange(20_000), 0.5)
            assert np.all(np.isfinite(v)) and np.all(np.diff(v) >= 0) and v[-1] > 1e100


# --- attempts, registry, validation --------------------------------------------------------


@pytest.mark.parametrize("max_attempts, allowed_after", [
    (0, [1, 2, 3, 100, 10**6]),   # unlimited
    (1, []),                      # the first attempt only
    (3, [1, 2]),
])
def test_allows_retry_counts_the_first_attempt(max_attempts: int, allowed_after: list[int]) -> None:
    p = make_policy("full-jitter", max_attempts=max_attempts)
    for made in range(1, 8):
        assert p.allows_retry(made) == (made in allowed_after or max_attempts == 0)


def test_registry_holds_the_model_table_in_order() -> None:
    assert policy_names() == MODEL_NAMES
    assert list(POLICIES) == MODEL_NAMES
    for name, cls in POLICIES.items():
        p = make_policy(name)
        assert isinstance(p, cls) and p.name == name and p.formula_text
        assert p.uses_previous == (name == "decorrelated-jitter")


def test_make_policy_defaults() -> None:
    grpc = make_policy("grpc")
    assert (grpc.base, grpc.cap, grpc.multiplier, grpc.max_attempts) == (1.0, 120.0, 1.6, 0)
    full = make_policy("full-jitter")
    assert (full.base, full.cap, full.multiplier) == (1.0, math.inf, 2.0)
    assert make_policy("decorrelated-jitter") == DecorrelatedJitter(base=1.0, cap=math.inf)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_policy_accepts_the_shared_keys(name: str) -> None:
    p = make_policy(name, base=2.0, cap=50.0, multiplier=3.0, max_attempts=4)
    assert p.max_attempts == 4
    for key, value in (("base", 2.0), ("cap", 50.0), ("multiplier", 3.0)):
        assert getattr(p, key, value) == value  # taken where the formula uses it, else ignored
    assert make_policy("none", base=2.0, cap=50.0) == NoBackoff()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_repr_round_trips(name: str) -> None:
    p = make_policy(name, base=0.25, max_attempts=5)
    namespace = {"math": math, **{cls.__name__: cls for cls in POLICIES.values()}}
    assert eval(repr(p), namespace) == p  # noqa: S307 - our own repr
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_attempts = 1  # type: ignore[misc]


ALL_NAMES = "none, constant, random, exponential, full-jitter, equal-jitter, decorrelated-jitter, grpc"
ERRORS = [  # name, parameters, the whole message or its start
    ("ful-jitter", {}, f"unknown policy 'ful-jitter'; did you mean 'full-jitter'? (one of {ALL_NAMES})"),
    ("GRPC", {}, f"unknown policy 'GRPC'; did you mean 'grpc'? (one of {ALL_NAMES})"),
    ("fibonacci", {}, f"unknown policy 'fibonacci' (one of {ALL_NAMES})"),
    ("full-jitter", {"bsae": 1.0},
     "policy 'full-jitter' takes no parameter 'bsae'; did you mean 'base'? "
     "(known: base, cap, multiplier, max_attempts)"),
    ("none", {"jitter": 0.2}, "policy 'none' takes no parameter 'jitter' (known: base, cap, multiplier, max_attempts)"),
    ("exponential", {"cap": 0.5}, "cap: must be >= base (1s), got 0.5s"),
    ("grpc", {"base": 2.0, "cap": 1.5}, "cap: must be >= base (2s), got 1.5s"),
    ("exponential", {"cap": math.nan}, "cap: must be >= base (1s), got nan"),
    ("constant", {"base": 0.0}, "base: must be > 0 and finite, got 0s"),
    ("random", {"base": -1.0}, "base: must be > 0 and finite, got -1s"),
    ("full-jitter", {"base": math.inf}, "base: must be > 0 and finite, got inf"),
    ("equal-jitter", {"base": math.nan}, "base: must be > 0 and finite, got nan"),
    ("constant", {"base": "1s"}, "base: must be a number, got '1s'"),
    ("constant", {"base": True}, "base: must be a number, got True"),
    ("grpc", {"multiplier": 0.5}, "multiplier: must be a finite number >= 1, got 0.5"),
    ("exponential", {"multiplier": math.inf}, "multiplier: must be a finite number >= 1, got inf"),
    ("none", {"max_attempts": -1}, "max_attempts: must be a whole number >= 0 (0 = unlimited), got -1"),
    ("constant", {"max_attempts": 2.5}, "max_attempts: must be a whole number >= 0 (0 = unlimited), got 2.5"),
]


@pytest.mark.parametrize("name, params, message", ERRORS)
def test_errors_name_the_field_and_suggest(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        make_policy(name, **params)
    assert str(info.value) == message


def test_parameters_are_stored_as_plain_numbers() -> None:
    p = make_policy("exponential", base=2, cap=np.float32(64), max_attempts=np.int64(3))
    assert type(p.base) is float and type(p.cap) is float and type(p.max_attempts) is int
    assert p == ExponentialBackoff(base=2.0, cap=64.0, max_attempts=3)


# --- Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize("delay, retry_after, honor, expected", [
    (1.0, 5.0, True, 5.0),
    (7.0, 5.0, True, 7.0),
    (1.0, None, True, 1.0),
    (1.0, 5.0, False, 1.0),
    (1.0, 0.0, True, 1.0),
])
def test_with_retry_after_on_scalars(delay: float, retry_after: float | None, honor: bool,
                                     expected: float) -> None:
    wait = with_retry_after(delay, retry_after, honor)
    assert wait == expected and isinstance(wait, float)


def test_with_retry_after_on_arrays() -> None:
    delays = np.array([1.0, 7.0, 3.0, 0.0])
    after = np.array([5.0, 5.0, np.nan, 2.0])  # nan: no Retry-After for that client
    assert with_retry_after(delays, after, True).tolist() == [5.0, 7.0, 3.0, 2.0]
    assert with_retry_after(delays, 4.0, True).tolist() == [4.0, 7.0, 4.0, 4.0]
    assert with_retry_after(delays, after, False) is delays


def test_decorrelated_previous_is_the_draw_not_the_honoured_wait() -> None:
    # the documented loop: the policy remembers its own draw even when Retry-After is longer
    p = make_policy("decorrelated-jitter", base=1.0, cap=1000.0)
    rng = np.random.default_rng(2)
    previous, waits = None, []
    for n in range(5):
        previous = p.delay(n, rng, previous)
        waits.append(with_retry_after(previous, 500.0, honor=True))
        assert previous <= 3 ** (n + 1)  # would exceed 500 from retry 1 on had the wait been fed back
    assert waits == [500.0] * 5


# --- purity --------------------------------------------------------------------------------


def _imports(path: str) -> set[str]:
    tree = ast.parse(Path(path).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return imported | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_module_imports_only_numpy_and_the_standard_library() -> None:
    # the one loginstorm module it may use is the "did you mean", itself standard library only
    assert _imports(policies_module.__file__) <= {"__future__", "math", "numpy", "dataclasses", "typing", "sim.suggest"}
    assert _imports(suggest_module.__file__) <= {"__future__", "difflib", "collections.abc"}


def test_full_jitter_doc_example_matches_aws_blog_mapping() -> None:
    # The AWS blog's first retry is attempt 1 with base 5: U(0, min(cap, 5·2^1)) = U(0, 10) = b = 10 here.
    p = FullJitter(base=10.0, cap=2000.0)
    assert [p.mean_delay(n) * 2 for n in range(3)] == [10.0, 20.0, 40.0]
    assert p.mean_delay(20) * 2 == 2000.0
