#!/usr/bin/env python
"""Fast-engine benchmark: attempts/s against the reference engine, and population scale.

1. **Speed ratio.** The same storm (quickstart at `--scale`, about 14 000 attempts per 5 000
   clients) on `des` and on `fast`, alternated `--repeats` times; attempts per wall-clock second
   of each (medians) and their ratio. Target: fast >= 50x des.
2. **Scale.** One child Python process per size runs a reboot wave (every client online with an
   endless session, one `reboot` of fraction 1 at 60 s, spread uniform 0-10 min, downtime
   lognormal median 1 min / p99 5 min, 10 s timeout, exponential backoff, one worker per 2 000
   clients) for 2 simulated hours on `fast`: wall time of the run, peak RSS from `os.wait4`.
3. **The Skype 2007 storm** (`scenarios/skype-2007.toml`, 72 h, supernodes) on `fast`, one child
   per `--skype` scale (1.0 is the full 7 M clients): wall time, events/s, attempts, peak RSS.
   At `--skype-ratio` (a size both engines handle) `des` and `fast` run the same storm once
   each: attempts per second and their ratio.
4. **Compile time.** A child with an empty numba cache directory times its first run (compile
   + run) against a second run in the same process.
5. **M/M/10 against Ciw** (`bench_mmc.py`'s measurement: fast, des and Ciw 3.2.7, installed for
   the benchmark only): customers per second of each. Target: fast >= 2,000,000/s.

Targets (issue "fast engine speed, re-targeted"): skype-2007 full size <= 240 s and <= 2 GB peak
RSS; 1 M clients (`--skype 0.143`) <= 25 s; fast >= 50x des on skype-2007 at 0.2 %; M/M/10
>= 2 M customers/s. Where the time goes: `profile_fast.py`.

    .venv/bin/python benchmarks/bench_fast.py                 # 10^5 and 10^6 clients, Skype to 10^6
    .venv/bin/python benchmarks/bench_fast.py --sizes 100000 1000000 10000000 --skype 0.0143 0.143 1.0
    .venv/bin/python benchmarks/bench_fast.py --sizes --skype 1.0 --no-mmc   # the full Skype storm only

Results go to stdout and to benchmarks/results/bench_fast.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from bench_engine import reboot_scenario as engine_reboot_scenario  # noqa: E402  (the same storm as there)

RESULTS = HERE / "results" / "bench_fast.json"
MIB = 1024 * 1024


def reboot_scenario(clients: int, seed: int = 1) -> str:
    """bench_engine's reboot wave, one worker per 2 000 clients."""
    return engine_reboot_scenario(clients, 2000, seed)


def bench_ratio(scale: float, repeats: int, log) -> dict:
    from sim import des, fast
    from sim.config import load_scenario

    s = load_scenario("quickstart", scale=scale)
    fast.run(s)  # compile or load the cache, outside the measurement
    rates: dict[str, list[float]] = {"des": [], "fast": []}
    for i in range(repeats):
        for name, engine in (("des", des), ("fast", fast)):
            t0 = time.perf_counter()
            summary = engine.run(s).summary
            wall = time.perf_counter() - t0
            rates[name].append(summary["attempts"] / wall)
            log(f"  {name:4s} run {i + 1}: {summary['attempts']:,} attempts in {wall:.3f} s")
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {"scenario": "quickstart", "scale": scale, "repeats": repeats, "attempts_per_s": med,
            "ratio": med["fast"] / med["des"], "runs": rates}


def child_scale(clients: int) -> None:
    """In the child: one run, its timings as JSON on stdout."""
    from sim import fast
    from sim.config import parse_scenario

    s = parse_scenario(reboot_scenario(clients), "bench-fast")
    t0 = time.perf_counter()
    summary = fast.run(s).summary
    wall = time.perf_counter() - t0
    print(json.dumps({"clients": clients, "wall_s": wall, "loop_s": summary["wallclock_s"],
                      "attempts": summary["attempts"], "events": summary["events_processed"],
                      "recovery_p99_s": summary["recovery_s"]["p99"]}))


def child_skype(scale: float) -> None:
    """In the child: the Skype 2007 storm at `scale`, its timings as JSON on stdout."""
    from sim import fast
    from sim.config import load_scenario

    s = load_scenario("skype-2007", scale=scale)
    warm = fast.warm_up()
    t0 = time.perf_counter()
    summary = fast.run(s).summary
    wall = time.perf_counter() - t0
    print(json.dumps({"scale": scale, "clients": s.population.clients, "wall_s": wall, "warm_up_s": warm,
                      "loop_s": summary["wallclock_s"], "attempts": summary["attempts"],
                      "events": summary["events_processed"], "lowest_online_share": summary["lowest_online_share"]}))


def bench_skype_ratio(scale: float, log) -> dict:
    from sim import des, fast
    from sim.config import load_scenario

    s = load_scenario("skype-2007", scale=scale)
    fast.warm_up()
    rates = {}
    for name, engine in (("des", des), ("fast", fast)):
        t0 = time.perf_counter()
        summary = engine.run(s).summary
        wall = time.perf_counter() - t0
        rates[name] = summary["attempts"] / wall
        log(f"  {name:4s}: {summary['attempts']:,} attempts, {summary['events_processed']:,} events in {wall:.2f} s")
    return {"scenario": "skype-2007", "scale": scale, "attempts_per_s": rates, "ratio": rates["fast"] / rates["des"]}


def child_compile() -> None:
    from sim import fast
    from sim.config import load_scenario

    s = load_scenario("quickstart", scale=0.1)
    t0 = time.perf_counter()
    fast.run(s)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast.run(s)
    print(json.dumps({"first_run_s": first, "second_run_s": time.perf_counter() - t0}))


def in_child(args: list[str], env: dict | None = None, script: str = __file__) -> dict:
    """Run `script` (this one) in a child; its JSON line, and its peak RSS and CPU times from os.wait4."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen([sys.executable, script, *args], stdout=out, cwd=ROOT,
                             env={**os.environ, **(env or {})})
        _, status, ru = os.wait4(p.pid, 0)
        out.seek(0)
        text = out.read().decode()
    if status != 0:
        raise RuntimeError(f"child {args} failed with status {status}: {text}")
    result = json.loads(text.strip().splitlines()[-1])
    result.update(peak_rss_bytes=ru.ru_maxrss * 1024, child_user_s=ru.ru_utime, child_sys_s=ru.ru_stime)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--scale", type=float, default=1.0, help="quickstart scale for the ratio")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skype", type=float, nargs="*", default=[0.0143, 0.143],
                    help="skype-2007 scales to run on fast (1.0: 7 M clients)")
    ap.add_argument("--skype-ratio", type=float, default=0.002, help="skype-2007 scale for des against fast")
    ap.add_argument("--no-mmc", action="store_true", help="skip the M/M/10 against Ciw")
    ap.add_argument("--no-ratio", action="store_true", help="skip the quickstart and skype des-vs-fast ratios")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "compile":
        child_compile()
        return 0
    if args.child and args.child.startswith("skype:"):
        child_skype(float(args.child.split(":")[1]))
        return 0
    if args.child:
        child_scale(int(args.child))
        return 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    log("compile (empty numba cache, in a child):")
    with tempfile.TemporaryDirectory() as cache:
        compiled = in_child(["--child", "compile"], env={"NUMBA_CACHE_DIR": cache})
    log(f"  first run {compiled['first_run_s']:.1f} s (compile + run), second {compiled['second_run_s']:.3f} s")
    ratio = skype_ratio = mmc = None
    if not args.no_ratio:
        log(f"speed ratio on quickstart x{args.scale:g}:")
        ratio = bench_ratio(args.scale, args.repeats, log)
        log(f"  des {ratio['attempts_per_s']['des']:,.0f} attempts/s, fast {ratio['attempts_per_s']['fast']:,.0f} "
            f"attempts/s: ratio {ratio['ratio']:.0f}x")
    scale = []
    log("reboot wave, 2 h, fast engine (child per size; cache warm):")
    for n in args.sizes:
        r = in_child(["--child", str(n)])
        scale.append(r)
        log(f"  {n:>10,d} clients: {r['wall_s']:7.2f} s total ({r['loop_s']:.2f} s loop), {r['attempts']:>12,d} "
            f"attempts = {r['attempts'] / r['loop_s']:,.0f}/s, peak RSS {r['peak_rss_bytes'] / MIB:,.0f} MiB")
    if not args.no_ratio:
        log(f"skype-2007 x{args.skype_ratio:g}, des against fast:")
        skype_ratio = bench_skype_ratio(args.skype_ratio, log)
        log(f"  des {skype_ratio['attempts_per_s']['des']:,.0f} attempts/s, fast "
            f"{skype_ratio['attempts_per_s']['fast']:,.0f} attempts/s: ratio {skype_ratio['ratio']:.0f}x "
            f"(target >= 50x)")
    if not args.no_mmc:
        from bench_mmc import measure as measure_mmc, table as mmc_table
        log("M/M/10 (lambda 8/s, mean service 1 s, 20,000 s), fast, des and Ciw:")
        mmc = measure_mmc(20_000.0, args.repeats, log)
        log(mmc_table(mmc))
    skype = []
    log("skype-2007, 72 h, fast engine (child per scale; cache warm):")
    for scale_ in args.skype:
        r = in_child(["--child", f"skype:{scale_}"])
        skype.append(r)
        log(f"  {r['clients']:>10,d} clients: {r['wall_s']:8.1f} s ({r['loop_s']:.1f} s loop), "
            f"{r['events']:>13,d} events = {r['events'] / r['loop_s']:,.0f}/s, {r['attempts']:,} attempts, "
            f"peak RSS {r['peak_rss_bytes'] / MIB:,.0f} MiB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    fresh = {"command": " ".join(sys.argv), "load_average": os.getloadavg(), "compile": compiled, "ratio": ratio,
             "scale": scale, "skype_ratio": skype_ratio, "skype": skype, "mmc": mmc}
    RESULTS.write_text(json.dumps({**old, **{k: v for k, v in fresh.items() if v not in (None, [])}}, indent=2)
                       + "\n")  # a partial run keeps the figures it did not measure
    log(f"written {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
