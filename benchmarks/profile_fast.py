#!/usr/bin/env python
"""Where the fast engine's time goes: a profile of one run, split into the loop's parts.

    .venv/bin/python benchmarks/profile_fast.py                    # skype-2007 x 0.0143 and x 0.143
    .venv/bin/python benchmarks/profile_fast.py --scales 0.143 1.0 --scenario skype-2007

Each scale runs twice, each in a child process: once as users run it, once built with
`LOGINSTORM_FAST_PROFILE=1` (`sim.fast.profile`: the CPU's cycle counter read at the edges of the
loop's parts, each part's own cycles summed; the profiled build is compiled into its own numba
cache, `benchmarks/.profile-cache`, the first time, ~2 minutes). The table gives each part's
nanoseconds per event and its share of the run, and the cost of one call where a part is an
operation (a heap pop or push, a record). The Python side (refilling the draws, growing arrays,
the scenario's events) is timed around the calls of the compiled loop.

The counters cost time themselves (a read is ~10 ns; several parts run per event): compare the
profiled run's total with the plain run's, printed under the table. The parts:

    checks    the loop's checks before each event (room in the arrays, draws left)
    pop       heap pops (the event's entry), with the heap's mean size
    push      heap pushes (timers, replies, service ends)
    event     an event's own work: its source, a hit, a service end's bookkeeping
    stale     heap entries popped for a client that moved on (skipped)
    steps     a client's steps (episode, attempt, retry, success ...): its rows and the policy
    server    dispatch and service starts: the queue, the workers, the request pool
    p2p       the supernodes (a login's home, a supernode's end, the minute's rules)
    records   counters, levels, the share watch
    python    outside the compiled loop: refills, growth, the scenario's events

Results go to stdout and to benchmarks/results/profile_fast.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_fast import in_child  # noqa: E402

RESULTS = HERE / "results" / "profile_fast.json"
CACHE = HERE / ".profile-cache"
PARTS = ("checks", "pop", "push", "event", "stale", "steps", "server", "p2p", "records")


def child(scenario: str, scale: float) -> None:
    """In the child: one run; its timings (and the parts' counters when profiled) as JSON."""
    import numpy as np

    from sim import fast
    from sim.config import load_scenario
    from sim.fast import engine, loop, profile
    from sim.fast.layout import N_PF, S_HN, S_PF, S_PF_HEAP, S_PFN

    s = load_scenario(scenario, scale=scale)
    fast.warm_up()
    compiled = loop.advance
    spent = {"loop": 0.0, "refill": 0.0, "grow": 0.0}
    heap_max = [0]

    def advance(*args):
        t0 = time.perf_counter()
        status = compiled(*args)
        spent["loop"] += time.perf_counter() - t0
        heap_max[0] = max(heap_max[0], int(args[3][S_HN]))
        return status

    make_room = engine.Engine._make_room

    def timed_make_room(self, status):
        t0 = time.perf_counter()
        make_room(self, status)
        spent["refill" if status == engine.REFILL else "grow"] += time.perf_counter() - t0

    loop.advance = advance
    engine.Engine._make_room = timed_make_room
    c0, t0 = profile.cycles(), time.perf_counter()
    eng = engine.Engine(s, s.duration, np.random.default_rng(s.seed))
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    events = eng.run()
    wall = time.perf_counter() - t1
    hz = (profile.cycles() - c0) / (time.perf_counter() - t0)
    S = eng.S
    out = {"scenario": scenario, "scale": scale, "clients": s.population.clients, "profiled": profile.PROFILE,
           "events": events, "attempts": int(eng.records.counts["attempts"].total), "wall_s": wall,
           "setup_s": setup, "hz": hz, "heap_max": heap_max[0], **{f"{k}_s": v for k, v in spent.items()}}
    if profile.PROFILE:
        out["cycles"] = {p: int(S[S_PF + i]) for i, p in enumerate(PARTS)}
        out["calls"] = {p: int(S[S_PFN + i]) for i, p in enumerate(PARTS)}
        out["heap_mean"] = int(S[S_PF_HEAP]) / max(1, int(S[S_PFN + PARTS.index("pop")]))
        assert len(PARTS) == N_PF
    print(json.dumps(out))


def run_child(scenario: str, scale: float, profiled: bool) -> dict:
    """One run in a child (bench_fast's `in_child`), plain or with the profile's counters."""
    env = {}
    if profiled:  # a cache per version of the sources (numba checks only the file of the function it loads)
        from sim.fast.cache import sources_digest
        env.update(LOGINSTORM_FAST_PROFILE="1", NUMBA_CACHE_DIR=str(CACHE / sources_digest()[:16]))
    return in_child(["--child", f"{scenario}:{scale}"], env, script=__file__)


def table(plain: dict, prof: dict) -> list[dict]:
    """One row per part: ns per event, share, calls per event, ns per call (profiled run)."""
    ns = 1e9 / prof["hz"]
    events = prof["events"]
    python = prof["wall_s"] - prof["loop_s"]
    rows = [{"part": p, "ns_per_event": prof["cycles"][p] * ns / events, "calls_per_event": prof["calls"][p] / events,
             "ns_per_call": prof["cycles"][p] * ns / max(1, prof["calls"][p])} for p in PARTS]
    accounted = sum(prof["cycles"].values()) * ns / 1e9
    rows.append({"part": "loop, not in a part", "ns_per_event": (prof["loop_s"] - accounted) * 1e9 / events,
                 "calls_per_event": None, "ns_per_call": None})
    rows.append({"part": "python (refill)", "ns_per_event": prof["refill_s"] * 1e9 / events, "calls_per_event": None,
                 "ns_per_call": None})
    rows.append({"part": "python (other)", "ns_per_event": (python - prof["refill_s"]) * 1e9 / events,
                 "calls_per_event": None, "ns_per_call": None})
    total = prof["wall_s"] * 1e9 / events
    for r in rows:
        r["share"] = r["ns_per_event"] / total
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="skype-2007")
    ap.add_argument("--scales", type=float, nargs="*", default=[0.0143, 0.143])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        name, scale = args.child.rsplit(":", 1)
        child(name, float(scale))
        return 0
    results = []
    for scale in args.scales:
        print(f"{args.scenario} x{scale:g}: plain run, then profiled run (children)", flush=True)
        plain = run_child(args.scenario, scale, False)
        prof = run_child(args.scenario, scale, True)
        rows = table(plain, prof)
        print(f"  {prof['clients']:,} clients, {prof['events']:,} events, {prof['attempts']:,} attempts; "
              f"heap mean {prof['heap_mean']:,.0f} entries at a pop, max {prof['heap_max']:,}")
        print(f"  {'part':22s} {'ns/event':>9s} {'share':>7s} {'calls/event':>12s} {'ns/call':>8s}")
        for r in rows:
            calls = "" if r["calls_per_event"] is None else f"{r['calls_per_event']:.2f}"
            per = "" if r["ns_per_call"] is None else f"{r['ns_per_call']:.0f}"
            print(f"  {r['part']:22s} {r['ns_per_event']:9.0f} {r['share']:7.1%} {calls:>12s} {per:>8s}")
        print(f"  profiled run {prof['wall_s']:.2f} s = {prof['wall_s'] * 1e9 / prof['events']:.0f} ns/event; "
              f"plain run {plain['wall_s']:.2f} s = {plain['wall_s'] * 1e9 / plain['events']:.0f} ns/event "
              f"(loop {plain['loop_s']:.2f} s, refill {plain['refill_s']:.2f} s, other python "
              f"{plain['wall_s'] - plain['loop_s'] - plain['refill_s']:.2f} s); peak RSS "
              f"{plain['peak_rss_bytes'] / 2**20:,.0f} MiB", flush=True)
        results.append({"plain": plain, "profiled": prof, "rows": rows})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "load_average": os.getloadavg(),
                                    "results": results}, indent=2) + "\n")
    print(f"written {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
