"""The population-scale engine (`sim.fast`) against the reference engine and against theory.

Agreement is statistical: each check runs the same scenario on both engines over independent
replications (SeedSequence children) and compares the means of summary fields and of the online
share of every bin with Welch's t-test, two-sided, 1 % family-wise per test (Bonferroni): on
scenarios built to exercise many features at once, and on the shipped scenarios scaled down. The
precise-rule stories of `test_engine` (docs/model.md section 3.1, exact outcomes of small timelines) run here
on the fast engine too. The theory checks hold the fast engine alone to Erlang C, with the helpers
of `test_theory`.

The first test to run compiles the loop (about 10-15 s on 2 cores); numba caches it on disk
(`cache=True`), so later runs start at once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim import des, fast
from sim.config import load_scenario, parse_scenario
from sim.results import UnsupportedScenario
from sim.policies import POLICIES, make_policy
import test_engine
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

# The server-side events under a storm: reject work, both outage modes (one dropping every
# session), staged admission, a capacity ramp then a cut, a surge of new clients, a rate limit.
SERVER_EVENTS = """
name = "server-events"
duration = "30m"
seed = 5
resolution = "30s"
warmup = "5m"

[population]
clients = 1500
online_at_start = 0.9
login_rate = 0.3
session = { dist = "exponential", mean = "30m" }
offline = { dist = "lognormal", median = "3m", p99 = "15m" }

[client]
timeout = { dist = "uniform", low = "2s", high = "6s" }
give_up_after = "10m"
relaunch = "2m"
rtt = "20ms"
policy = { name = "full-jitter", base = "1s", cap = "1m" }

[server]
workers = 3
service_time = { dist = "exponential", mean = "60ms" }
queue_limit = 60
reject_cost = "5ms"
retry_after = "3s"
rate_limit = { rate = 45, burst = 60, retry_after = "2s" }

[[events]]
at = "3m"
kind = "outage"
duration = "1m"
drop_sessions = true

[[events]]
at = "3m"
kind = "admit"
fraction = 0.3
retry_after = "20s"

[[events]]
at = "4m"
kind = "capacity"
factor = 2.0
ramp = "3m"

[[events]]
at = "6m"
kind = "admit"
fraction = 0.7
retry_after = "20s"

[[events]]
at = "9m"
kind = "admit"
fraction = 1.0

[[events]]
at = "12m"
kind = "surge"
duration = "3m"
factor = 20.0

[[events]]
at = "16m"
kind = "capacity"
factor = 0.67

[[events]]
at = "20m"
kind = "outage"
duration = "1m"
mode = "blackhole"

[[events]]
at = "22m"
kind = "reboot"
fraction = 0.3
spread = { dist = "uniform", low = "0s", high = "30s" }
"""

# Failing back ends (a short hang that errors, a long one that outlives the timeout, a bulkhead),
# two failovers (slow propagation, then IP takeover), a capacity ramp replaced halfway, overlapping
# outages, deadline propagation and reject work on a bounded queue.
FAILOVER_PARTITION = """
name = "failover-partition"
duration = "30m"
seed = 6
resolution = "30s"
warmup = "5m"

[population]
clients = 1500
online_at_start = 1.0
session = { dist = "exponential", mean = "20m" }
offline = "1m"

[client]
timeout = "5s"
connect_delay = { dist = "uniform", low = "0s", high = "2s" }
max_attempts = 10
relaunch = "1m"
policy = { name = "exponential", base = "1s", cap = "30s" }

[server]
workers = 4
service_time = { dist = "lognormal", median = "50ms", p99 = "300ms" }
queue_limit = 100
cancel_on_timeout = true
reject_cost = "2ms"
retry_after = "2s"

[[events]]
at = "2m"
kind = "partition"
duration = "10m"
fraction = 0.3
failure = 0.5
hang = "2s"
isolate_at = "8m"

[[events]]
at = "5m"
kind = "partition"
duration = "5m"
fraction = 0.2
hang = "10s"

[[events]]
at = "14m"
kind = "failover"
factor = 1.5
propagation = { dist = "lognormal", median = "20s", p99 = "2m" }

[[events]]
at = "18m"
kind = "capacity"
factor = 0.5
ramp = "2m"

[[events]]
at = "19m"
kind = "capacity"
factor = 1.0

[[events]]
at = "22m"
kind = "outage"
duration = "1m"
mode = "blackhole"
drop_sessions = true

[[events]]
at = "22m30s"
kind = "outage"
duration = "1m"

[[events]]
at = "26m"
kind = "failover"
factor = 1.0
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


def defined(runs: dict[str, list], fields) -> list[str]:
    """The fields defined in every run of both engines."""
    return [f for f in fields if all(field(r.summary, f) is not None for rs in runs.values() for r in rs)]


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


EVENT_FIELDS = FIELDS + ("errors", "steady.blocking", "steady.mean_wait_s", "steady.abandonment")


@pytest.mark.parametrize("text", [SERVER_EVENTS, FAILOVER_PARTITION], ids=["server-events", "failover-partition"])
def test_server_events_agree_with_des(text):
    runs = both_engines(parse_scenario(text, "test_fast"), reps=10)
    fields = defined(runs, EVENT_FIELDS)
    assert len(fields) >= 14, fields
    assert_agree(runs, fields)


@pytest.mark.slow
@pytest.mark.parametrize("text", [SERVER_EVENTS, FAILOVER_PARTITION], ids=["server-events", "failover-partition"])
def test_server_events_agree_with_des_many_replications(text):
    runs = both_engines(parse_scenario(text, "test_fast"), reps=14, base=11)
    assert_agree(runs, defined(runs, EVENT_FIELDS))


# The shipped scenarios whose events the fast engine models, scaled down (and shortened) so that
# des runs a replication in well under a second.
SHIPPED = {
    "lync-2014": (0.001, ('duration="25m"', 'events.0.at="3m"', 'events.1.at="12m"', 'events.1.ramp="5m"')),
    "discord-restart": (0.0006, ('duration="30m"', 'warmup="20m"')),
    "roblox-2021": (0.0002, ()),
    "failover-dns": (0.003, ('duration="1h"',)),
    "failover-ip": (0.003, ('duration="45m"',)),
    "exchange-2014": (0.001, ('duration="2h"', 'events.0.duration="1h"', 'events.0.isolate_at="1h30m"')),
    "monday-morning": (0.0004, ()),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_scenarios_agree_with_des(name):
    scale, sets = SHIPPED[name]
    runs = both_engines(load_scenario(f"scenarios/{name}.toml", sets, scale=scale), reps=8)
    assert_agree(runs, defined(runs, EVENT_FIELDS))


@pytest.mark.slow
@pytest.mark.parametrize("sets", [
    ("client.policy.name=\"none\"", "server.queue_limit=1000", "duration=\"15m\""),
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


@pytest.mark.slow
def test_a_dispatch_short_of_draws_resumes_at_its_instant(monkeypatch):
    """Blocks of 40 draws: releasing a long queue to many new workers at once runs out of service
    draws mid-dispatch again and again; the loop resumes it at the same instant and still agrees."""
    monkeypatch.setattr(fast.engine, "BLOCK", 40)  # the Python side sizes and refills the blocks
    text = SERVER_EVENTS.replace("queue_limit = 60", "queue_limit = 400").replace("factor = 0.67", "factor = 40.0")
    runs = both_engines(parse_scenario(text, "test_fast"), reps=10)
    assert_agree(runs, defined(runs, EVENT_FIELDS))


# --- the precise rules of docs/model.md section 3.1, one story each (tests/test_engine.py), on this engine ---------

@pytest.fixture(autouse=True)
def _rules_on_the_fast_engine(request, monkeypatch):
    if request.function.__module__ == "test_engine":
        monkeypatch.setattr(test_engine, "run", fast.run)


for _name, _test in list(vars(test_engine).items()):
    # every story but the one that checks the summary names its engine "des"
    if _name.startswith("test_") and callable(_test) and _name != "test_summary_invariants":
        globals()["test_rule_" + _name[len("test_"):]] = _test


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


def test_progress_reports_the_run_in_slices_and_changes_nothing():
    """Stopping the loop every 1/200 of the run to report is invisible in the outputs."""
    s = parse_scenario(MIXED, "test_fast")
    seen = []
    a = fast.run(s, progress=lambda t, n: seen.append((t, n)))
    b = fast.run(s)
    assert _comparable(a.summary) == _comparable(b.summary)
    times, counts = zip(*seen)
    assert len(seen) >= 150 and list(times) == sorted(times) and list(counts) == sorted(counts)
    assert times[-1] == s.duration and counts[-1] == a.summary["events_processed"]
    assert fast.warm_up() >= 0.0 and fast.warm_up() == fast.warm_up()  # paid once per process


def compiled_signatures() -> dict[str, int]:
    """How many signatures each compiled function of the engine's package has."""
    import importlib
    import pkgutil
    names = [m.name for m in pkgutil.iter_modules(fast.__path__, "sim.fast.")]
    return {f"{name}.{f}": len(d.signatures) for name in names
            for f, d in vars(importlib.import_module(name)).items() if hasattr(d, "signatures")}


@pytest.mark.parametrize("clients", [0, 1, 2, 50])
def test_one_compiled_signature_for_any_population(clients):
    """Every population size reuses the warm-up's compiled code: a new signature would be a
    new compilation (about a minute for the loop) in the middle of someone's run."""
    fast.warm_up()
    warm = compiled_signatures()
    text = test_engine.scenario_text(duration=60, population={"clients": clients}, server={"workers": 2},
                                     events=[{"at": 5, "kind": "capacity", "factor": 2.0, "ramp": 10}])
    fast.run(parse_scenario(text, "test_fast"))
    fast.run(parse_scenario(text, "test_fast"), until=30)  # an int `until` too
    assert len(fast.advance.signatures) == 1, fast.advance.signatures
    assert compiled_signatures() == warm


def test_records_have_the_reference_shape_and_conserve_clients():
    s = load_scenario("scenarios/quickstart.toml")
    f, d = fast.run(s, until=1200.0), des.run(s, until=1200.0)
    assert set(f.summary) == set(d.summary) and set(f.summary["steady"]) == set(d.summary["steady"])
    assert {k: v.shape for k, v in f.timeseries.items()} == {k: v.shape for k, v in d.timeseries.items()}
    total = sum(f.timeseries[k] for k in ("online", "connecting", "offline", "gave_up"))
    np.testing.assert_allclose(total, s.population.clients, rtol=1e-9)
    assert f.timeseries["attempts"].sum() == f.summary["attempts"]
    assert f.summary["duration_s"] == 1200.0


def too_many_partitions(clients: int):
    """A scenario with one partition event more than the compiled table holds."""
    parts = "".join(f'[[events]]\nat = "{i + 1}s"\nkind = "partition"\nduration = "1s"\nfraction = 0.1\nhang = "1s"\n'
                    for i in range(fast.MAX_PARTITIONS + 1))
    return parse_scenario(f'name = "u"\nduration = "10m"\n[population]\nclients = {clients}\n[server]\nworkers = 1\n'
                          'service_time = "10ms"\n' + parts, "test_fast")


def test_more_partitions_than_the_compiled_table_are_named():
    with pytest.raises(UnsupportedScenario, match=f"more than {fast.MAX_PARTITIONS} partition events"):
        fast.run(too_many_partitions(10))


def test_every_event_kind_is_supported():
    from sim.scenario import EVENT_KINDS
    assert set(EVENT_KINDS) == set(fast.SUPPORTED_EVENTS)
    fast.check_supported(load_scenario("scenarios/every-key.toml"))  # p2p, supernode_fraction, p2p-rules


# --- the engine choice (`--engine auto`) -------------------------------------------------------------

def test_auto_takes_fast_for_large_supported_populations_and_says_so():
    from sim.runner import AUTO_FAST_CLIENTS, choose_engine

    small = load_scenario("scenarios/quickstart.toml")
    large = load_scenario("scenarios/quickstart.toml", scale=AUTO_FAST_CLIENTS / small.population.clients)
    assert choose_engine(small, "auto") == ("des", None)
    engine, note = choose_engine(large, "auto")
    assert engine == "fast" and "fast for 100,000 clients" in note
    p2p = load_scenario("scenarios/skype-2007.toml")                  # millions of clients, supernodes
    assert choose_engine(p2p, "auto") == ("fast", "engine auto: fast for 7,000,000 clients (des below 100,000)")
    engine, note = choose_engine(too_many_partitions(200_000), "auto")
    assert engine == "des" and "cannot run this yet" in note and "partition" in note
