"""Scenario files: every error message in one table, overrides, scaling, the shipped files."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from sim.config import ScenarioError, load_scenario, parse_scenario, scale_scenario, shipped_scenarios
from sim.distributions import Lognormal
from sim.scenario import Scenario

BASE = """
name = "t"
duration = "1h"
[server]
workers = 4
service_time = "50ms"
"""


def _with(extra: str = "", replace: tuple[str, str] | None = None) -> str:
    text = BASE if replace is None else BASE.replace(*replace)
    return text + extra


REBOOT = '\n[[events]]\nat = "10m"\nkind = "reboot"\n'

#: (scenario text, fragments that the message must contain)
BAD = [
    pytest.param(_with(replace=("duration", "durration")),
                 ["durration: unknown key 'durration'; did you mean 'duration'?", "duration: missing required key"],
                 id="typo-top-level"),
    pytest.param(_with(replace=("workers", "workrs")),
                 ["server.workrs: unknown key 'workrs'; did you mean 'workers'?"], id="typo-server"),
    pytest.param(_with(replace=("workers = 4", 'workers = "many"')),
                 ["server.workers: expected a whole number, got 'many'"], id="wrong-type"),
    pytest.param(_with(replace=("workers = 4", "workers = 2.5")),
                 ["server.workers: expected a whole number"], id="not-whole"),
    pytest.param(_with(replace=("workers = 4", "workers = -1")), ["server.workers: must be >= 0"], id="negative"),
    pytest.param(_with(replace=("workers = 4", "workers = 0")), ["server.workers: must be >= 1"], id="no-capacity"),
    pytest.param(_with(replace=('service_time = "50ms"', "")),
                 ["server.service_time: missing required key"], id="missing-required"),
    pytest.param(_with(replace=('"50ms"', '{ dist = "lognorml", median = "1s", p99 = "2s" }')),
                 ["server.service_time.dist: unknown distribution 'lognorml'; did you mean 'lognormal'?"],
                 id="dist-typo"),
    pytest.param(_with(replace=('"50ms"', '{ dist = "lognormal", median = "1s", p99 = "500ms" }')),
                 ["server.service_time.p99: must be greater than median"], id="dist-impossible"),
    pytest.param(_with(replace=('"50ms"', '{ dist = "lognormal", median = "1s", p9 = "5s" }')),
                 ["server.service_time", "unknown key 'p9'", "did you mean 'p99'?"], id="dist-key-typo"),
    pytest.param(_with(replace=('"1h"', '"5 minutes"')), ["duration: expected a duration like"], id="bad-duration"),
    pytest.param(_with(replace=('"1h"', '"-5m"')), ["duration: expected a duration"], id="negative-duration"),
    pytest.param(_with(replace=('"1h"', '"inf"')), ["duration: must be finite"], id="infinite-duration"),
    pytest.param(_with(REBOOT.replace("reboot", "rebot")),
                 ["events.0.kind: unknown event kind 'rebot'; did you mean 'reboot'?"], id="event-kind-typo"),
    pytest.param(_with('\n[[events]]\nat = "1m"\n'), ["events.0.kind: missing key 'kind'"], id="event-no-kind"),
    pytest.param(_with(REBOOT + "fraction = 1.5\n"), ["events.0.fraction: must be <= 1"], id="fraction-range"),
    pytest.param(_with(REBOOT + "fractoin = 0.5\n"),
                 ["events.0.fractoin: unknown key 'fractoin'; did you mean 'fraction'?"], id="event-key-typo"),
    pytest.param(_with(REBOOT.replace('"10m"', '"2h"')),
                 ["events.0.at: must be before the end of the run (1h), got 2h"], id="event-out-of-range"),
    pytest.param(_with('\n[[events]]\nat = "10m"\nkind = "outage"\n'),
                 ["events.0.duration: missing required key"], id="event-missing-required"),
    pytest.param(_with(REBOOT + 'waves = [{ offset = "0s", weight = 0 }]\n'),
                 ["events.0.waves.0.weight: must be > 0"], id="wave-weight"),
    pytest.param(_with('[client]\npolicy = { name = "ful-jitter" }\n'),
                 ["client.policy.name: unknown policy 'ful-jitter'; did you mean 'full-jitter'?"], id="policy-typo"),
    pytest.param(_with('[client]\npolicy = { name = "exponential", base = "10s", cap = "1s" }\n'),
                 ["client.policy.cap: must be >= base"], id="policy-cap"),
    pytest.param(_with('[client]\npolicy = { name = "exponential", bsae = "1s" }\n'),
                 ["client.policy.bsae: unknown key 'bsae'; did you mean 'base'?"], id="policy-key-typo"),
    pytest.param(_with('[client]\nhonor_retry_after = "yes"\n'),
                 ["client.honor_retry_after: expected true or false"], id="bool-type"),
    pytest.param(_with('[population]\nonline_at_start = 1.2\n'),
                 ["population.online_at_start: must be <= 1"], id="share-range"),
    pytest.param(_with('discipline = "lifoo"\n', replace=("[server]\n", "[server]\n")),
                 ["server.discipline: expected one of", "did you mean 'lifo'?"], id="enum-typo"),
    pytest.param(_with("queue_limit = -5\n"), ["server.queue_limit: expected a whole number >= 0"], id="queue-limit"),
    pytest.param(_with("rate_limit = { rate = 0 }\n"), ["server.rate_limit.rate: must be > 0"], id="rate-limit"),
    pytest.param(_with("[server.p2p]\nsupernode_ratio = 0.01\nslots = 2\n"),
                 ["server.p2p.children: missing required key"], id="p2p-missing"),
    pytest.param(_with(replace=('name = "t"', "")), ["name: missing required key"], id="no-name"),
    pytest.param(_with(replace=('name = "t"', 'name = "my storm!"')), ["name: must match"], id="bad-name"),
    pytest.param(BASE.replace('name = "t"', 'name = "t"\nwarmup = "2h"'),
                 ["warmup: must be before the end of the run (1h)"], id="warmup"),
    pytest.param(_with(replace=("[server]", "server = 3\n[client]")), ["server"], id="table-type"),
    pytest.param("name = \n", ["not valid TOML"], id="toml-syntax"),
]


@pytest.mark.parametrize(("text", "fragments"), BAD)
def test_bad_scenario_names_file_key_and_expectation(text, fragments):
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.toml")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert all(line.startswith("bad.toml: ") for line in message.splitlines())


def test_literal_secret_is_refused_without_being_echoed():
    secret = "hunter2-sup3r-s3cret"
    text = BASE + f'\n[target]\nhost = "http://127.0.0.1:8080"\nflow = "basic"\nclient_secret = "{secret}"\n'
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "t.toml")
    assert "target.client_secret" in str(info.value) and "environment reference" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value.problems)


def test_target_host_must_be_allowed_unless_loopback():
    target = '\n[target]\nhost = "{host}"\nflow = "json"\nallowed_hosts = ["auth.staging.example.com"]\n'
    for ok in ("http://127.0.0.1:8080", "http://localhost", "https://auth.staging.example.com"):
        assert parse_scenario(BASE + target.format(host=ok)).target.host == ok
    with pytest.raises(ScenarioError, match=r"target.host: 'auth.example.com' is not in target.allowed_hosts"):
        parse_scenario(BASE + target.format(host="https://auth.example.com"))


def test_sets_override_any_key_with_the_same_validation():
    s = parse_scenario(BASE + REBOOT, sets=[
        "server.workers=800", "client.policy.name=full-jitter", "client.policy.cap=5m",
        "events.0.fraction=0.3", "server.rate_limit.rate=50", "server.discipline=lifo",
        "client.timeout={dist='exponential', mean='3s'}",
    ])
    assert s.server.workers == 800
    assert s.client.build_policy().name == "full-jitter" and s.client.policy.cap == 300.0
    assert s.events[0].fraction == 0.3 and s.server.rate_limit.rate == 50
    assert s.server.discipline == "lifo" and s.client.timeout.mean == 3.0
    with pytest.raises(ScenarioError, match=r"server.workers: expected a whole number, got 'lots' \(from --set\)"):
        parse_scenario(BASE, sets=["server.workers=lots"])
    with pytest.raises(ScenarioError,
                       match=r"events.3.fraction: no item '3': there is 1 event \(index 0, or 1 to add one\)"):
        parse_scenario(BASE + REBOOT, sets=["events.3.fraction=0.1"])
    with pytest.raises(ScenarioError,
                       match=r"server.wokers: unknown key 'wokers'; did you mean 'workers'\? .*from --set"):
        parse_scenario(BASE, sets=["server.wokers=3"])


def test_set_can_append_an_event():
    s = parse_scenario(BASE, sets=["events.0.kind=outage", "events.0.at=5m", "events.0.duration=1m"])
    assert s.events[0].kind == "outage" and s.events[0].at == 300 and s.events[0].duration == 60


def test_scale_multiplies_population_and_capacity_only():
    text = BASE.replace("workers = 4", "workers = 400\nqueue_limit = 1000\nrate_limit = { rate = 200, burst = 300 }")
    text = text.replace("[server]",
                        "[population]\nclients = 7_000_000\nlogin_rate = 10\n[client]\ntimeout = \"10s\"\n[server]")
    full = parse_scenario(text + REBOOT)
    small = parse_scenario(text + REBOOT, scale=0.01)
    assert small.scale == 0.01 and full.scale == 1.0
    assert small.population.clients == 70_000 and small.population.login_rate == pytest.approx(0.1)
    assert small.server.workers == 4 and small.server.queue_limit == 10
    assert small.server.rate_limit.rate == pytest.approx(2.0) and small.server.rate_limit.bucket == pytest.approx(3.0)
    # shares, times and per-client figures stay
    assert small.events == full.events and small.client == full.client
    assert small.server.service_time == full.server.service_time and small.duration == full.duration
    tiny = scale_scenario(full, 1e-6)
    assert tiny.server.workers == 1 and tiny.population.clients == 7  # a positive count stays >= 1
    assert parse_scenario(text.replace("queue_limit = 1000", 'queue_limit = "inf"'),
                          scale=0.5).server.queue_limit == math.inf


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_scale_must_be_positive_and_finite(bad):
    with pytest.raises(ScenarioError, match="--scale: must be a number > 0"):
        parse_scenario(BASE, scale=bad)


def test_defaults_follow_the_contract():
    s = parse_scenario(BASE)
    assert (s.seed, s.population.clients, s.population.online_at_start, s.population.login_rate) == (0, 0, 1.0, 0.0)
    assert s.population.session.mean == math.inf and s.client.timeout.mean == math.inf
    assert s.client.give_up_after == math.inf and s.server.queue_limit == math.inf
    assert s.client.connect_delay.mean == 0 and s.server.reject_cost == 0 and s.server.retry_after == 0
    assert s.client.build_policy().name == "none" and s.server.discipline == "fifo"
    assert s.bin_width == pytest.approx(3.6) and s.warmup_s == pytest.approx(360.0)
    assert s.client.rtt == pytest.approx(0.010)
    outage = parse_scenario(BASE + '\n[[events]]\nat = "1m"\nkind = "outage"\nduration = "1m"\n').events[0]
    assert outage.mode == "refuse" and outage.drop_sessions is False
    grpc = parse_scenario(BASE + '[client]\npolicy = "grpc"\n').client.build_policy()
    assert (grpc.base, grpc.cap, grpc.multiplier) == (1.0, 120.0, 1.6)


def test_scenarios_are_immutable():
    s = parse_scenario(BASE)
    with pytest.raises(ValidationError, match="frozen"):
        s.server.workers = 5  # type: ignore[misc]


def test_missing_file_is_a_scenario_error(tmp_path):
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "nope.toml")


@pytest.mark.parametrize("path", shipped_scenarios(), ids=lambda p: p.stem)
def test_every_shipped_scenario_is_valid_and_described(path):
    s = load_scenario(path)
    assert isinstance(s, Scenario) and s.name == path.stem
    assert len(s.description) > 40, "a description a user understands"
    assert s.source == str(path)


def test_every_key_scenario_uses_every_key():
    """The fixture must keep up with the format: every field of every table set explicitly."""
    text = next(p for p in shipped_scenarios() if p.stem == "every-key").read_text()
    import tomllib

    from sim.config import _keys_at
    raw = tomllib.loads(text)

    def walk(node, loc):
        yield loc, node
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, loc + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, dict):
                    yield from walk(v, loc + [i] + ([v["kind"]] if "kind" in v else []))

    missing = []
    kinds = {e["kind"] for e in raw["events"]}
    from sim.scenario import EVENT_KINDS
    assert kinds == set(EVENT_KINDS)
    from sim.limiters import Limiter
    for loc, node in walk(raw, []):
        if isinstance(node, dict) and "dist" not in node:
            expected = set(_keys_at(loc))
            if loc == ["client", "limiter"]:  # one kind's keys; groups or group_size, not both
                expected = {"kind", "scope", "group_size"} | set(Limiter.KEYS[node["kind"]])
            if loc == ["server", "concurrency"]:  # one kind's keys (sim.protections.LIMIT_KEYS)
                from sim.protections import LIMIT_KEYS
                expected = {"kind"} | set(LIMIT_KEYS[node["kind"]])
            missing += [".".join(map(str, loc + [k])) for k in expected - set(node)]
    assert missing == []
    s = load_scenario(next(p for p in shipped_scenarios() if p.stem == "every-key"))
    assert isinstance(s.server.service_time, Lognormal)


def test_scale_keeps_the_overload_slowdown_at_the_same_load_per_worker():
    text = BASE.replace("workers = 4", "workers = 400\noverload = { knee = 2000, per_request = 0.0005 }")
    small = parse_scenario(text, scale=0.01)
    assert small.server.overload.knee == pytest.approx(20) and small.server.overload.per_request == pytest.approx(0.05)
    # 3 000 in the system at full size is 30 at 1 %: the same service-time factor, 1.5
    full = parse_scenario(text).server.overload
    assert 1 + full.per_request * (3000 - full.knee) == pytest.approx(
        1 + small.server.overload.per_request * (30 - small.server.overload.knee))
