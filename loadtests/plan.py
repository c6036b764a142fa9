"""The storm's script for every device: when it reboots, loses its session or wants to log in.

Pure (numpy and `sim`'s pure modules; no gevent): every Locust process builds the same plan from
the scenario's seed, so a device's story does not depend on which process runs it. The picks and
times come from the functions the simulator uses (`sim.waves`), so a load test replays the story
the simulation tells.

    >>> from sim.config import load_scenario
    >>> plan = build_plan(load_scenario("quickstart", scale=0.01))
    >>> plan.devices, sum(1 for d in range(plan.devices) if plan.actions(d))
    (50, 25)

What a load generator can replay is the clients' side of docs/model.md section 3.1: `reboot`,
`disconnect` and `login` waves, sessions dropped by an `outage` with `drop_sessions` or by a
`failover`, and `login_rate` arrivals (with `surge`s). The rest happens inside the server under
test (`capacity`, `admit`, `partition`, an outage's refusals, the failover's refusals until a
client learns the standby, `p2p-rules`) and is listed in `Plan.server_side`.

A `token-purge` event is played on the clients' side too: the devices it picks (`fraction` of
every device that exists by then, newcomers included, as the simulator picks clients) get a
PURGE action at its `at` and drop their refresh token, so that their next login is a full one
(docs/model.md section 3.4). The server under test is not told: to revoke the tokens on the lab
itself, `POST /admin/purge` (loadtests/lab/app.py).

Whom a later event picks depends on how the storm went. The plan decides it on the *planned*
state: a device is ONLINE unless the plan has it offline (rebooting, or offline with no login
planned), as if every login succeeded at once. For the first event of a scenario (the usual
storm) this is exact; for later events it is an approximation docs/loadtests.md states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.scenario import Disconnect, Failover, Login, Outage, Reboot, Scenario, Surge, TokenPurge
from sim.waves import next_arrival, pick, rate_schedule, wave_times

__all__ = ["Plan", "build_plan", "LOGIN", "REBOOT", "DROP", "PURGE"]

#: action kinds: start an episode now (if OFFLINE) / reboot (arg = downtime) / lose the session (if ONLINE) /
#: drop the refresh token (whatever the state: the next login is a full one)
LOGIN, REBOOT, DROP, PURGE = "login", "reboot", "drop", "purge"
_KINDS = (LOGIN, REBOOT, DROP, PURGE)


@dataclass(frozen=True)
class Plan:
    """Per-device actions in story time (seconds from the start of the load test, after `--speed`)."""

    population: int                    # devices of the scenario's (scaled) population
    arrivals: int                      # devices added by `login_rate`, after the population
    online_at_start: np.ndarray        # bool per device: holds a session at t = 0
    duration: float
    speed: float
    server_side: tuple[str, ...]       # event kinds in the scenario that only the server can play
    _starts: np.ndarray                # CSR layout: device d's actions are rows _starts[d]:_starts[d+1]
    _times: np.ndarray
    _kinds: np.ndarray
    _args: np.ndarray

    @property
    def devices(self) -> int:
        return self.population + self.arrivals

    def actions(self, device: int) -> list[tuple[float, str, float]]:
        """(time, kind, arg) of one device, in time order."""
        lo, hi = self._starts[device], self._starts[device + 1]
        return [(float(t), _KINDS[k], float(a)) for t, k, a in
                zip(self._times[lo:hi], self._kinds[lo:hi], self._args[lo:hi])]

    def first_attempt_targets(self) -> np.ndarray:
        """Every planned episode start (login, end of a reboot's downtime, dropped session), sorted:
        what the first attempts follow, before `connect_delay`."""
        starts = np.where(self._kinds == _KINDS.index(REBOOT), self._times + self._args, self._times)
        return np.sort(starts[self._kinds != _KINDS.index(PURGE)])


class _Builder:
    def __init__(self, n: int) -> None:
        self.dev: list[np.ndarray] = []
        self.t: list[np.ndarray] = []
        self.kind: list[np.ndarray] = []
        self.arg: list[np.ndarray] = []
        self.n = n

    def add(self, ids: np.ndarray, times: np.ndarray, kind: str, args: np.ndarray | None = None) -> None:
        self.dev.append(np.asarray(ids, dtype=np.int64))
        self.t.append(np.asarray(times, dtype=float))
        self.kind.append(np.full(len(ids), _KINDS.index(kind), dtype=np.int8))
        self.arg.append(np.zeros(len(ids)) if args is None else np.asarray(args, dtype=float))

    def arrays(self, speed: float):
        if not self.dev:
            return np.zeros(self.n + 1, dtype=np.int64), np.empty(0), np.empty(0, np.int8), np.empty(0)
        dev, t, kind, arg = (np.concatenate(x) for x in (self.dev, self.t, self.kind, self.arg))
        order = np.lexsort((t, dev))
        starts = np.searchsorted(dev[order], np.arange(self.n + 1))
        return starts, t[order] / speed, kind[order], arg[order] / speed


def build_plan(scenario: Scenario, speed: float = 1.0) -> Plan:
    """The plan of a (scaled) scenario; `speed` K divides every time of the story by K."""
    if not speed > 0 or math.isinf(speed):
        raise ValueError(f"speed must be a positive number, got {speed}")
    rng = np.random.default_rng(scenario.seed)
    pop = scenario.population
    n = pop.clients
    online = np.zeros(n, dtype=bool)
    online[: int(round(pop.online_at_start * n))] = True
    online_at_start = online.copy()
    back_at = np.full(n, math.inf)           # planned start of the next episode of an offline device
    arrival_times = _arrivals(scenario, rng)
    build = _Builder(n + len(arrival_times))
    build.add(np.arange(n, n + len(arrival_times)), arrival_times, LOGIN)
    server_side = []
    for event in sorted(scenario.events, key=lambda e: e.at):
        if event.at >= scenario.duration:
            continue
        # the planned state at the event: a device whose planned episode has begun counts as online
        online |= back_at <= event.at
        back_at[online] = math.inf
        if isinstance(event, (Reboot, Disconnect, Login)):
            eligible = np.flatnonzero(~online & np.isinf(back_at) if isinstance(event, Login) else online)
            ids = pick(rng, eligible, event.fraction)
            hit = wave_times(rng, event.at, len(ids), event.spread, event.wave_table())
            if isinstance(event, Reboot):
                downtime = np.zeros(len(ids)) if event.downtime.is_zero else event.downtime.sample(rng, len(ids))
                build.add(ids, hit, REBOOT, downtime)
                online[ids] = False
                back_at[ids] = hit + downtime
            elif isinstance(event, Login):
                build.add(ids, hit, LOGIN)
                back_at[ids] = hit
            else:
                build.add(ids, hit, DROP)
        elif isinstance(event, TokenPurge):   # every device there by then, as sim.des picks clients
            ids = pick(rng, np.arange(n + int(np.sum(arrival_times < event.at))), event.fraction)
            build.add(ids, np.full(len(ids), event.at), PURGE)
        elif isinstance(event, Failover) or (isinstance(event, Outage) and event.drop_sessions):
            ids = np.flatnonzero(online)
            build.add(ids, np.full(len(ids), event.at), DROP)
            if isinstance(event, Outage) or event.factor != 1.0:
                server_side.append(event.kind)
        elif not isinstance(event, Surge):
            server_side.append(event.kind)
    starts, times, kinds, args = build.arrays(speed)
    return Plan(n, len(arrival_times), online_at_start, scenario.duration / speed, speed,
                tuple(dict.fromkeys(server_side)), starts, times, kinds, args)


def _arrivals(scenario: Scenario, rng: np.random.Generator) -> np.ndarray:
    """`login_rate` newcomers (a Poisson process, multiplied by surges) over the run."""
    surges = [(e.at, e.duration, e.factor) for e in scenario.events if isinstance(e, Surge)]
    if scenario.population.login_rate <= 0 and not surges:
        return np.empty(0)
    schedule = rate_schedule(scenario.population.login_rate, surges)
    times, t = [], 0.0
    while True:
        t = next_arrival(t, rng.exponential(), schedule)
        if t >= scenario.duration:
            return np.array(times)
        times.append(t)
