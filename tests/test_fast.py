"""The population-scale engine (`sim.fast`) against the reference engine and against theory.

Agreement is statistical: each check runs the same scenario on both engines over independent
replications (SeedSequence children) and compares the means of summary fields and of the online
share of every bin with Welch's t-test, two-sided, 1 % family-wise per test (Bonferroni). The theory
checks hold the fast engine alone to Erlang C, with the helpers of `test_theory`.

The first test to run compiles the loop (about 10-15 s on 2 cores); numba caches it on disk
(`cache=True`), so later runs start at once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim import des, fast
from sim.config import load_scenario, parse_scenario
from sim.des import UnsupportedScenario
from sim.policies import POLICIES, make_policy
from test_theory import MMC, check_mean, queue_scenario, seeds, steady
from theory import erlang_c, t_quantile

ALPHA = 0.01

# Many features at once, under a storm: churn, arrivals, three kinds of fraction events with
# waves, a rate limit, lifo with drop_expired, decorrelated jitter, max_attempts and give-up.
MIXED = """
name = "mixed"
duration = "30m"
seed = 3
resolution = "30s"
warmup = "5m"

[population]
clients = 3000
online_at_start = 0.8
login_rate = 0.5
session = { dist = "exponential", mean = "40m" }
offline = { dist = "lognormal", median = "5m", p99 = "20m" }

[client]
timeout = { dist = "uniform", low = "2s", high = "6s" }
connect_delay = { dist = "exponential", mean = "1s" }
max_attempts = 8
give_up_after = "5m"
relaunch = "2m"
rtt = "20ms"
policy = { name = "decorrelated-jitter", base = "1s", cap = "1m" }

[server]
workers = 2
service_time = { dist = "exponential", mean = "80ms" }
queue_limit = 100
discipline = "lifo"
drop_expired = true
retry_after = "3s"
rate_limit = { rate = 22, burst = 40, retry_after = "2s" }

[[events]]
at = "3m"
kind = "reboot"
fraction = 0.9
spread = { dist = "uniform", low = "0s", high = "10s" }
downtime = { dist = "lognormal", median = "20s", p99 = "60s" }
waves = [{ offset = "0s", weight = 0.7 }, { offset = "2m", weight = 0.3 }]

[[events]]
at = "12m"
kind = "disconnect"
fraction = 0.3
spread = { dist = "uniform", low = "0s", high = "20s" }

[[events]]
at = "20m"
kind = "login"
fraction = 0.5
spread = { dist = "uniform", low = "0s", high = "1m" }
"""

FIELDS = ("episodes", "logins", "gave_up", "attempts", "amplification", "timeouts", "rejected", "wasted",
          "wasted_work_fraction", "lowest_online_share", "recovery_s.p90", "recovery_s.p99",
          "login_time_s.p50", "login_time_s.p95", "steady.utilization", "steady.mean_orbit")


# --- helpers ------------------------------------------------------------------------------------

def field(summary: dict, path: str):
    value = summary
    for key in path.split("."):
        value = value[key]
    return value


def both_engines(scenario, reps: int, base: int = 2007) -> dict[str, list]:
    children = np.random.SeedSequence(base).spawn(reps)
    return {name: [engine.run(scenario, rng=np.random.default_rng(child)) for child in children]
            for name, engine in (("des", des), ("fast", fast))}


def welch(what: str, a, b, alpha: float = ALPHA) -> float:
    """Assert equal means (Welch, two-sided `alpha`); returns t. Two constant samples must be equal."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = a.mean() - b.mean()
    if va + vb == 0:
        assert diff == pytest.approx(0.0, abs=1e-9 * max(1.0, abs(a.mean()))), f"{what}: des {a} != fast {b}"
        return 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = diff / math.sqrt(va + vb)
    crit = t_quantile(1 - alpha / 2, max(1, int(df)))
    assert abs(t) <= crit, (f"{what}: des mean {a.mean():.6g} vs fast {b.mean():.6g}, t = {t:.2f} "
                            f"(critical {crit:.2f}, df {df:.1f}); des {np.round(a, 4)}, fast {np.round(b, 4)}")
    return t


def assert_agree(runs: dict[str, list], fields=FIELDS) -> dict[str, float]:
    """Every field, and the online share of every bin, agree between the engines.

    ALPHA is the family-wise level of one call (Bonferroni): each field gets ALPHA / (fields + 1),
    the bins of the online share together the remaining share.
    """
    ts = {}
    each = ALPHA / (len(fields) + 1)
    for path in fields:
        a = [field(r.summary, path) for r in runs["des"]]
        b = [field(r.summary, path) for r in runs["fast"]]
        assert None not in a and None not in b, f"{path}: undefined in some runs (des {a}, fast {b})"
        ts[path] = welch(path, a, b, alpha=each)
    shares = {name: np.array([share(r.timeseries) for r in rs]) for name, rs in runs.items()}
    nbins = shares["des"].shape[1]
    for i in range(nbins):
        welch(f"online share of bin {i}", shares["des"][:, i], shares["fast"][:, i], alpha=each / nbins)
    return ts


def share(series: dict) -> np.ndarray:
    wanting = series["online"] + series["connecting"] + series["gave_up"]
    return np.divide(series["online"], wanting, out=np.ones_like(wanting), where=wanting > 0)


# --- the compiled formulas are the policies' own ----------------------------------------------

@pytest.mark.parametrize("name", list(POLICIES))
def test_compiled_policy_formula_equals_numpy_form(name):
    """policy_delay (compiled from sim.policies' functions) against Policy.formula on arrays."""
    rng = np.random.default_rng(11)
    for params in ({}, {"base": 0.25, "cap": 90.0}, {"base": 3.0, "multiplier": 1.5}):
        p = make_policy(name, **params)
        n = np.concatenate([np.arange(200.0), rng.integers(0, 10**6, 300).astype(float)])
        u = rng.random(len(n))
        prev = np.where(rng.random(len(n)) < 0.2, p.base if hasattr(p, "base") else 1.0, rng.random(len(n)) * 500)
        expected = np.broadcast_to(p.formula(n, u, prev), n.shape)
        code = fast.POLICY_CODES[type(p).kernel]
        got = np.array([fast.policy_delay(code, n[i], u[i], prev[i], *p.kernel_args()) for i in range(len(n))])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0.0, err_msg=f"{name} {params}")


# --- agreement with the reference engine ------------------------------------------------------

def test_quickstart_agrees_with_des():
    runs = both_engines(load_scenario("scenarios/quickstart.toml"), reps=10)
    assert_agree(runs, FIELDS[:-1])  # the tail is quiet: steady.mean_orbit is ~0 in most runs


def test_mixed_features_agree_with_des():
    runs = both_engines(parse_scenario(MIXED, "test_fast"), reps=10)
    assert_agree(runs, FIELDS + ("steady.blocking", "steady.mean_wait_s"))


@pytest.mark.slow
@pytest.mark.parametrize("sets", [
    ("client.policy.name=\"none\"", "server.queue_limit=1000", "duration=\"30m\""),
    ("client.policy.name=\"full-jitter\"", "server.cancel_on_timeout=true", "server.queue_limit=\"inf\""),
    ("client.policy.name=\"grpc\"", "client.timeout={dist=\"exponential\", mean=\"5s\"}", "server.discipline=\"lifo\""),
], ids=["no-backoff", "full-jitter-cancel", "grpc-lifo"])
def test_quickstart_variants_agree_with_des_many_replications(sets):
    runs = both_engines(load_scenario("scenarios/quickstart.toml", sets), reps=14)
    fields = [f for f in FIELDS if all(field(r.summary, f) is not None for rs in runs.values() for r in rs)]
    assert len(fields) >= 10, fields
    assert_agree(runs, fields)


@pytest.mark.slow
def test_mixed_features_agree_with_des_many_replications():
    runs = both_engines(parse_scenario(MIXED, "test_fast"), reps=20, base=1)
    assert_agree(runs, FIELDS + ("steady.blocking", "steady.mean_wait_s"))


# --- theory: M/M/c ----------------------------------------------------------------------------

def test_mmc_erlang_c_on_the_fast_engine():
    """Poisson arrivals, exponential service, one attempt each: Erlang C, lambda / c mu, Little."""
    c, lam, mu = MMC["workers"], MMC["lam"], 1 / MMC["service_mean"]
    warmup, reps = 100.0, 12
    text = queue_scenario("mmc", **MMC, duration=warmup + 3000.0, warmup=warmup)
    runs = [fast.run(parse_scenario(text, "test_fast", seed=s)).summary for s in seeds(reps, text)]
    p_wait = erlang_c(c, lam / mu)
    wq = p_wait / (c * mu - lam)
    check_mean("p_wait (Erlang C)", steady(runs, "p_wait"), p_wait, slack=0.003, max_band=0.05)
    check_mean("mean_wait_s", steady(runs, "mean_wait_s"), wq, slack=0.003, max_band=0.3 * wq)
    check_mean("utilization", steady(runs, "utilization"), lam / (c * mu), slack=0.002, max_band=0.02)
    check_mean("mean_in_system", steady(runs, "mean_in_system"), lam * (wq + 1 / mu), slack=0.02, max_band=0.6)
    assert steady(runs, "blocking") == [0.0] * reps


# --- reproducibility, records, scope ----------------------------------------------------------

def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "wallclock_s"}


def test_same_seed_same_summary_different_seed_different():
    s = parse_scenario(MIXED, "test_fast")
    a, b = fast.run(s), fast.run(s)
    assert _comparable(a.summary) == _comparable(b.summary)
    for name in a.timeseries:
        np.testing.assert_array_equal(a.timeseries[name], b.timeseries[name])
    other = fast.run(parse_scenario(MIXED, "test_fast", seed=4))
    assert _comparable(other.summary) != _comparable(a.summary)
    assert a.summary["engine"] == "fast" and a.summary["events_processed"] > 0


def test_records_have_the_reference_shape_and_conserve_clients():
    s = load_scenario("scenarios/quickstart.toml")
    f, d = fast.run(s, until=1200.0), des.run(s, until=1200.0)
    assert set(f.summary) == set(d.summary) and set(f.summary["steady"]) == set(d.summary["steady"])
    assert {k: v.shape for k, v in f.timeseries.items()} == {k: v.shape for k, v in d.timeseries.items()}
    total = sum(f.timeseries[k] for k in ("online", "connecting", "offline", "gave_up"))
    np.testing.assert_allclose(total, s.population.clients, rtol=1e-9)
    assert f.timeseries["attempts"].sum() == f.summary["attempts"]
    assert f.summary["duration_s"] == 1200.0


UNSUPPORTED = [
    ('[[events]]\nat = "1m"\nkind = "outage"\nduration = "1m"', "outage"),
    ('[[events]]\nat = "1m"\nkind = "capacity"\nfactor = 2.0', "capacity"),
    ('[[events]]\nat = "1m"\nkind = "admit"\nfraction = 0.5', "admit"),
    ('[[events]]\nat = "1m"\nkind = "partition"\nduration = "1m"\nhang = "5s"', "partition"),
    ('[[events]]\nat = "1m"\nkind = "surge"\nduration = "1m"\nfactor = 2.0', "surge"),
    ('[[events]]\nat = "1m"\nkind = "failover"\nfactor = 1.0', "failover"),
]


@pytest.mark.parametrize("extra, named", UNSUPPORTED, ids=[n for _, n in UNSUPPORTED])
def test_unsupported_events_are_named(extra, named):
    text = 'name = "u"\nduration = "10m"\n[population]\nclients = 10\n[server]\nworkers = 1\nservice_time = "10ms"\n'
    with pytest.raises(UnsupportedScenario, match=rf'kind = "{named}"'):
        fast.run(parse_scenario(text + extra + "\n", "test_fast"))


@pytest.mark.parametrize("key, named", [
    ('reject_cost = "5ms"', "reject_cost"),
    ("p2p = { supernode_ratio = 0.01, children = 50, slots = 1 }", "p2p"),
])
def test_unsupported_server_features_are_named(key, named):
    text = ('name = "u"\nduration = "10m"\n[population]\nclients = 10\n[server]\nworkers = 1\n'
            f'service_time = "10ms"\n{key}\n')
    with pytest.raises(UnsupportedScenario, match=named):
        fast.run(parse_scenario(text, "test_fast"))


# --- the engine choice (`--engine auto`) -------------------------------------------------------------

def test_auto_takes_fast_for_large_supported_populations_and_says_so():
    from sim.runner import AUTO_FAST_CLIENTS, choose_engine

    small = load_scenario("scenarios/quickstart.toml")
    large = load_scenario("scenarios/quickstart.toml", scale=AUTO_FAST_CLIENTS / small.population.clients)
    assert choose_engine(small, "auto") == ("des", None)
    engine, note = choose_engine(large, "auto")
    assert engine == "fast" and "fast for 100,000 clients" in note
    p2p = load_scenario("scenarios/skype-2007.toml")                  # millions of clients, p2p: not yet fast
    engine, note = choose_engine(p2p, "auto")
    assert engine == "des" and "cannot run this yet" in note and "p2p" in note
    assert choose_engine(p2p, "fast") == ("fast", None)               # asked for: run() raises, naming it
    with pytest.raises(UnsupportedScenario, match="p2p"):
        fast.run(p2p, until=1.0)
