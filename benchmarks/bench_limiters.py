"""What a client limiter costs the engines: time per event with each limiter against none.

    .venv/bin/python benchmarks/bench_limiters.py              # quickstart x 40 (200,000 clients), 5 rounds
    .venv/bin/python benchmarks/bench_limiters.py 10 3         # quickstart x 10, 3 rounds

Runs quickstart (at the given scale, cut at 20 minutes) on the fast engine without a limiter and
with each kind shared by all devices, in turn, round after round (so that a busy machine slows
every variant alike), and prints per variant the median wall clock, the events processed and the
median time per event relative to no limiter. The des engine runs the same variants at 1/40 of
that scale. A limiter that binds changes the storm itself (fewer attempts, give-ups, and fixed
costs weigh more in a shorter run), so its figure is only indicative; "budget per device" never
binds here and runs the very same storm, so its ratio is the limiter's own cost. Compilation is
done before the first round.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim import des, fast  # noqa: E402
from sim.config import load_scenario  # noqa: E402

VARIANTS = {
    "none": [],
    # one login per device never drains a budget of its own: the very same storm, so this line is the
    # pure cost of the limiter's bookkeeping (state rows, a kernel call per call, answer and retry)
    "budget per device": ["client.limiter.kind=budget"],
    "quota": ["client.policy=aws-sdk-standard", "client.limiter.scope=shared"],
    "throttle": ["client.policy=grpc-retry", "client.limiter.scope=shared"],
    "budget": ["client.limiter.kind=budget", "client.limiter.scope=shared"],
    "adaptive": ["client.limiter.kind=adaptive", "client.limiter.scope=shared"],
    "breaker": ["client.policy=polly", "client.limiter.scope=shared"],
    "breaker per device": ["client.policy=resilience4j"],
}


def measure(engine, scale: float, rounds: int,
            variants: dict[str, list[str]] = VARIANTS) -> dict[str, tuple[float, float, int]]:
    """Per variant (the first is the baseline): median wall clock, median time per event relative
    to the baseline's, events processed."""
    scenarios = {name: load_scenario("quickstart", sets=sets, scale=scale) for name, sets in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    events: dict[str, int] = {}
    for _ in range(rounds):
        for name, s in scenarios.items():
            started = time.perf_counter()
            result = engine.run(s, until=1200.0)
            times[name].append(time.perf_counter() - started)
            events[name] = result.summary["events_processed"]
    first = next(iter(variants))
    base = statistics.median(times[first]) / events[first]
    return {name: (statistics.median(t), statistics.median(t) / events[name] / base, events[name])
            for name, t in times.items()}


def report(variants: dict[str, list[str]], what: str, argv: list[str]) -> int:
    """`measure` on fast at the scale in argv (default 40) and on des at 1/40 of it, printed as a table."""
    scale = float(argv[1]) if len(argv) > 1 else 40.0
    rounds = int(argv[2]) if len(argv) > 2 else 5
    width = max(len(what), *map(len, variants))
    fast.warm_up()
    for label, engine, at in (("fast", fast, scale), ("des", des, scale / 40)):
        print(f"{label} engine, quickstart x {at:g}, 20 min, {rounds} rounds (medians)")
        print(f"  {what:{width}} {'wall clock':>10} {'events':>12} {'time per event vs none':>24}")
        for name, (seconds, ratio, n) in measure(engine, at, rounds, variants).items():
            print(f"  {name:{width}} {seconds:9.2f}s {n:12,} {ratio:23.2f}x")
    return 0


def main() -> int:
    return report(VARIANTS, "limiter", sys.argv)


if __name__ == "__main__":
    raise SystemExit(main())
