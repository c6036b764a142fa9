"""The population-scale engine (`fast`): docs/model.md section 3 as a compiled event loop.

The same model as the reference engine (`sim.des`), executed by a different scheduler: per-client
state lives in numpy arrays, and one numba-compiled loop takes (time, seq, kind, client) entries
from an event queue in time order (a near heap in front of a ring of time buckets) and moves
clients through the same steps as `Model.life` (episode, attempt,
retry timer, online, offline, reboot, give-up). Agreement with `des` is statistical equality,
not an approximation; `tests/test_fast.py` holds the two engines against each other.

Random numbers come from the one seeded generator: each distribution's own vectorised `sample`
fills blocks that the loop consumes (it returns to Python for more), so every draw has exactly
the distribution `des` draws from. The policy formulas are `sim.policies`' own functions,
compiled. Who a fraction event picks and when (`sim.waves`) is drawn in Python at the event's
`at`, between two stretches of the loop; the hits then join the loop as a sorted stream.

    >>> from sim.config import load_scenario
    >>> result = run(load_scenario("scenarios/quickstart.toml"), until=600.0)
    >>> result.summary["engine"]
    'fast'

Server-wide events (outage, capacity, admit, partition, failover, token-purge) act in Python
between two stretches of the loop, at their `at` and at their ends, in the order `des` fires them (file order
at the same instant, an end after the events scheduled before it); a capacity ramp's steps are
heap entries of the loop.

Supernodes (docs/model.md section 3.2) live in the loop too: per client its supernode slot, home and place
in its home's child list (a doubly linked list through two arrays), so a leaving supernode finds
its orphans in O(children); the minute's tick is a heap entry. Promotion picks are uniform among
the ripe ONLINE ordinary clients by rejection from all of them (exact, and an exact full scan
when rejection is slow); these picks, home choices and the tick's stochastic rounding draw from
numba's generator, seeded from the run's generator, so a seed still fixes the run.

Everything in the scenario format is supported but more than 64 partition events (anything
unsupported raises `UnsupportedScenario` naming it, and `--engine auto` falls back to des).

The modules, named after the reference engine's parts (each compiled kernel names the part of
`sim.des`, `sim.server`, `sim.p2p` or `sim.record` it mirrors):

    ===========  ================================================================================
    layout       the packed arrays' fields, as tables (start here)
    heap         the event queue (SimPy's): a near 4-ary heap, a ring of buckets, an overflow heap
    record       `sim.record` over arrays: levels, counters, the share watch
    streams      `sim.streams`: blocks of draws, the policy's delay formula
    limiter      `sim.limiters`' kernels on the client limiter's rows (`Model._limiter_row`)
    protections  `sim.protections`' kernels: concurrency limit, CoDel, Retry-After from the queue
    clients      a client's state counts and wake-ups (`Model.set_state`, `Model.wake`)
    server       `sim.server.LoginServer`: submit, start, dispatch, done, lose, control
    p2p          `sim.p2p.Supernodes`, the tick (`Model.p2p_ticks`), `Model.set_state` (`become`)
    loop         the compiled event loop (`advance`): events and a client's steps (`Model.life`)
    engine       the Python side: `run`, `Engine`, array growth, draw refills, warm-up
    events       the scenario's events as `Engine` acts them between stretches of the loop
    cache        keeps numba's on-disk cache consistent with the package's sources
    jit          how every kernel is compiled (`kernel`: cached, no reference counting)
    profile      cycle counters around the loop's parts, compiled in on request only
    ===========  ================================================================================

numba caches the compiled code in `sim/fast/__pycache__`; `cache` clears it when any module of
the package (or `sim.policies`, `sim.limiters`, `sim.protections`, `sim.record`) changed since it
was written, because numba checks only the file of the function it loads, not the files of the
functions it calls.
"""

from __future__ import annotations

from sim.fast.cache import clear_stale_cache

clear_stale_cache()  # before any compiled function is loaded

from sim.fast.engine import (SUPPORTED_EVENTS, Engine, arrival_times, check_supported, run, warm_up,  # noqa: E402
                             warm_up_source)
from sim.fast.layout import (MAX_PARTITIONS, ONLINE, Q_CHILDREN, Q_DEDICATED, Q_WORKERS, S_N0,  # noqa: E402
                             S_NONS, S_NROOM, S_NSN, S_SFREE)
from sim.fast.loop import advance  # noqa: E402
from sim.fast.streams import POLICY_CODES, policy_delay  # noqa: E402


__all__ = ["run", "warm_up", "warm_up_source", "check_supported", "Engine", "arrival_times", "advance",
           "policy_delay", "POLICY_CODES", "SUPPORTED_EVENTS", "MAX_PARTITIONS", "ONLINE", "Q_CHILDREN",
           "Q_DEDICATED", "Q_WORKERS", "S_N0", "S_NONS", "S_NROOM", "S_NSN", "S_SFREE"]
