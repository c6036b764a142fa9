#!/usr/bin/env python
"""Engine benchmark: the reference engine (`sim.des`) against bare SimPy, and its memory.

Two measurements (the issue's benchmark requirement):

1. **Speed.** A bare SimPy M/M/c loop written here (c = 10 `simpy.Resource` servers, Poisson
   arrivals at 8/s, exponential service of mean 1 s, one process per customer) and loginstorm
   on the same M/M/c scenario (`login_rate` 8, no population, `max_attempts` 1, 10 workers,
   exponential service of mean 1 s, no timeout), both for T simulated seconds, alternated
   (bare, ours, bare, ours, ...) `--repeats` times; the medians are reported. Target: loginstorm
   keeps >= 50 % of bare SimPy's rate. Events are not the same unit in the two engines
   (loginstorm's events include client-process bookkeeping; its server runs on callbacks), so
   customers per wall-clock second (attempts/s for loginstorm) is the like-for-like ratio.
2. **Memory.** One child Python process per size runs a reboot-wave scenario (every client
   online with an endless session, one `reboot` of fraction 1 at 60 s, spread uniform 0-10 min,
   downtime lognormal median 1 min / p99 5 min) for 2 simulated hours; its peak RSS comes from
   `os.wait4` (the child's own `getrusage`). Target: 1 million clients under 3 GB.

    .venv/bin/python benchmarks/bench_engine.py            # default: T = 5000 s, 100k and 1M clients
    .venv/bin/python benchmarks/bench_engine.py --quick    # T = 1000 s, 10k and 100k clients

Results go to stdout (a final plain-text table) and to benchmarks/results/bench_engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

RESULTS = HERE / "results" / "bench_engine.json"
TARGET_RATIO = 0.50
TARGET_BYTES = 3_000_000_000  # "3 GB"
MIB = 1024 * 1024

# M/M/c parameters (the same for both engines)
MMC_C, MMC_LAMBDA, MMC_MEAN_SERVICE = 10, 8.0, 1.0


# --- 1. speed: bare SimPy vs loginstorm on M/M/c ----------------------------------------------

def bare_mmc(T: float, seed: int) -> dict:
    """The bare SimPy M/M/c loop: customers as processes, our own step loop counting events."""
    import simpy

    rng = random.Random(seed)
    env = simpy.Environment()
    res = simpy.Resource(env, capacity=MMC_C)
    counts = {"arrived": 0, "served": 0}

    def customer():
        with res.request() as req:
            yield req
            yield env.timeout(rng.expovariate(1.0 / MMC_MEAN_SERVICE))
        counts["served"] += 1

    def source():
        while True:
            yield env.timeout(rng.expovariate(MMC_LAMBDA))
            counts["arrived"] += 1
            env.process(customer())

    env.process(source())
    step, peek = env.step, env.peek
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while peek() < T:
        step()
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"events": n, "wall_s": wall, "cpu_s": cpu, "customers": counts["served"],
            "arrived": counts["arrived"], "events_per_s": n / wall, "customers_per_s": counts["served"] / wall,
            "customers_per_cpu_s": counts["served"] / cpu if cpu > 0 else None}


def mmc_scenario(T: float, seed: int) -> str:
    return f"""
name = "bench-mmc"
description = "M/M/c: Poisson arrivals 8/s, 10 workers, exponential service mean 1 s, one attempt each"
duration = {T!r}
seed = {seed}

[population]
clients = 0
login_rate = {MMC_LAMBDA!r}

[client]
max_attempts = 1
timeout = "inf"

[server]
workers = {MMC_C}
service_time = {{ dist = "exponential", mean = "{MMC_MEAN_SERVICE}s" }}
"""


def ours_mmc(T: float, seed: int) -> dict:
    """loginstorm's reference engine on the same M/M/c scenario."""
    from sim.config import parse_scenario
    from sim.des import run

    scenario = parse_scenario(mmc_scenario(T, seed), "bench-mmc")
    cpu0, t0 = time.process_time(), time.perf_counter()
    s = run(scenario).summary
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    wall = s["wallclock_s"]  # the event loop only, as the engine reports it
    return {"events": s["events_processed"], "wall_s": wall, "cpu_s": cpu, "run_total_s": total,
            "customers": s["attempts"], "logins": s["logins"],
            "utilization": s["steady"]["utilization"],
            "events_per_s": s["events_processed"] / wall, "customers_per_s": s["attempts"] / wall,
            "customers_per_cpu_s": s["attempts"] / cpu if cpu > 0 else None}


def bench_speed(T: float, repeats: int, seed: int, log) -> dict:
    # warm-up (imports, first-call costs), not measured
    bare_mmc(min(T, 50.0), seed)
    ours_mmc(min(T, 50.0), seed)
    runs = {"bare": [], "ours": []}
    for i in range(repeats):
        for name, fn in (("bare", bare_mmc), ("ours", ours_mmc)):
            r = fn(T, seed)
            runs[name].append(r)
            log(f"  run {i + 1}/{repeats} {name:4s}: {r['events']:>9,d} events in {r['wall_s']:7.3f} s "
                f"= {r['events_per_s']:>9,.0f} events/s, {r['customers']:>8,d} customers "
                f"= {r['customers_per_s']:>8,.0f} customers/s")
    med = {name: {k: statistics.median(r[k] for r in rs)
                  for k in ("events_per_s", "customers_per_s", "customers_per_cpu_s", "wall_s", "events", "customers")}
           for name, rs in runs.items()}
    for name in med:
        med[name]["events_per_customer"] = med[name]["events"] / med[name]["customers"]
        med[name]["customers_per_sim_s"] = med[name]["customers"] / T
    ratio_events = med["ours"]["events_per_s"] / med["bare"]["events_per_s"]
    ratio_customers = med["ours"]["customers_per_s"] / med["bare"]["customers_per_s"]
    ratio_cpu = med["ours"]["customers_per_cpu_s"] / med["bare"]["customers_per_cpu_s"]
    return {"T_s": T, "repeats": repeats, "seed": seed,
            "model": {"c": MMC_C, "lambda_per_s": MMC_LAMBDA, "mean_service_s": MMC_MEAN_SERVICE,
                      "offered_utilization": MMC_LAMBDA * MMC_MEAN_SERVICE / MMC_C},
            "runs": runs, "median": med,
            "ratio_events_per_s": ratio_events, "ratio_customers_per_s": ratio_customers,
            "ratio_customers_per_cpu_s": ratio_cpu, "target_ratio": TARGET_RATIO,
            "meets_target": ratio_customers >= TARGET_RATIO}


def profile_mmc(T: float, seed: int, top: int = 10) -> None:
    """cProfile one loginstorm M/M/c run (where does the time per customer go?)."""
    import cProfile
    import pstats

    ours_mmc(min(T, 50.0), seed)  # imports outside the profile
    prof = cProfile.Profile()
    r = prof.runcall(ours_mmc, T, seed)
    print(f"loginstorm M/M/c, T = {T:g} s under cProfile: {r['events']:,} events, {r['customers']:,} customers, "
          f"loop {r['wall_s']:.3f} s (profiled, slower than unprofiled)")
    for key in ("tottime", "cumulative"):
        print(f"\n--- top {top} by {key} ---")
        pstats.Stats(prof, stream=sys.stdout).sort_stats(key).print_stats(top)


# --- 2. memory: reboot wave in a child process ------------------------------------------------

def reboot_scenario(clients: int, clients_per_worker: int, seed: int) -> str:
    workers = max(1, round(clients / clients_per_worker))
    return f"""
name = "bench-reboot-wave"
description = "Every client reboots within 10 minutes and logs in again"
duration = "2h"
seed = {seed}
resolution = "1m"

[population]
clients = {clients}
online_at_start = 1.0
session = "inf"

[client]
timeout = "10s"
policy = {{ name = "exponential", base = "1s", cap = "5m" }}

[server]
workers = {workers}
service_time = {{ dist = "lognormal", median = "40ms", p99 = "300ms" }}
queue_limit = 1_000_000_000

[[events]]
at = "60s"
kind = "reboot"
fraction = 1.0
spread = {{ dist = "uniform", low = "0s", high = "10m" }}
downtime = {{ dist = "lognormal", median = "1m", p99 = "5m" }}
"""


def child_reboot(clients: int, clients_per_worker: int, seed: int) -> None:
    """Inside the child: run the reboot wave, print one JSON line with the facts."""
    from sim.config import parse_scenario
    from sim.des import run

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # after imports
    scenario = parse_scenario(reboot_scenario(clients, clients_per_worker, seed), "bench-reboot-wave")
    t0 = time.perf_counter()
    s = run(scenario).summary
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    keys = ("clients", "duration_s", "wallclock_s", "events_processed", "episodes", "logins", "attempts",
            "timeouts", "rejected", "peak_offered_rps", "capacity_rps", "recovery_s", "metastable")
    out = {k: s[k] for k in keys}
    out.update(workers=scenario.server.workers, run_total_s=total, baseline_rss_bytes=baseline,
               self_peak_rss_bytes=peak)
    print(json.dumps(out), flush=True)


def measure_memory(clients: int, clients_per_worker: int, seed: int, timeout: float) -> dict:
    """One child per size; its peak RSS and CPU times from os.wait4 (that child alone)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-reboot", str(clients),
           "--clients-per-worker", str(clients_per_worker), "--seed", str(seed)]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT))
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            p.kill()  # this child only, by its own handle

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            out = p.stdout.read()
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
            p.stdout.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    rec = {"clients": clients, "measured": False, "child_wall_s": wall,
           "peak_rss_bytes": ru.ru_maxrss * 1024, "child_user_s": ru.ru_utime, "child_sys_s": ru.ru_stime}
    if timed_out.is_set():
        rec["error"] = f"killed after the {timeout:.0f} s child timeout"
        return rec
    if p.returncode != 0:
        rec["error"] = f"child exited with status {p.returncode}: {stderr.strip()[-2000:]}"
        return rec
    child = json.loads(out.decode().strip().splitlines()[-1])
    rec.update(child)
    rec["measured"] = True
    rec["events_per_s"] = child["events_processed"] / child["wallclock_s"] if child["wallclock_s"] else None
    rec["under_target"] = rec["peak_rss_bytes"] < TARGET_BYTES
    return rec


def extrapolate(measured: list[dict], clients: int) -> dict:
    """Linear in clients through the two largest measured sizes (clearly an extrapolation)."""
    pts = sorted((m for m in measured if m.get("measured")), key=lambda m: m["clients"])[-2:]
    if len(pts) < 2:
        return {}
    (n0, a), (n1, b) = [(m["clients"], m) for m in pts]

    def line(key: str) -> float:
        slope = (b[key] - a[key]) / (n1 - n0)
        return b[key] + slope * (clients - n1)

    rss = line("peak_rss_bytes")
    return {"extrapolated": True, "from_sizes": [n0, n1], "peak_rss_bytes": rss,
            "wallclock_s": line("wallclock_s"), "events_processed": line("events_processed"),
            "under_target": rss < TARGET_BYTES,
            "per_client_rss_bytes": (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / (n1 - n0)}


# --- reporting --------------------------------------------------------------------------------

def git_state() -> tuple[str | None, bool | None]:
    """The checkout's commit and whether tracked files differ from it (None, None without git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        return None, None
    return commit, dirty


def machine() -> dict:
    import numpy
    import simpy

    commit, dirty = git_state()
    return {"nproc": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "simpy": simpy.__version__, "numpy": numpy.__version__,
            "git_commit": commit, "git_dirty": dirty}


def mib(b: float) -> str:
    return f"{b / MIB:,.0f} MiB"


def table(speed: dict | None, memory: list[dict]) -> str:
    lines = []
    if speed is not None:
        b, o = speed["median"]["bare"], speed["median"]["ours"]
        lines += [
            f"M/M/c speed: c={MMC_C}, lambda={MMC_LAMBDA:g}/s, mean service {MMC_MEAN_SERVICE:g} s, "
            f"T={speed['T_s']:g} simulated s, median of {speed['repeats']} alternating runs",
            f"{'':30s}{'bare SimPy':>14s}{'loginstorm des':>16s}{'ratio':>9s}",
            f"{'events/s':30s}{b['events_per_s']:>14,.0f}{o['events_per_s']:>16,.0f}{speed['ratio_events_per_s']:>9.1%}",
            f"{'customers/s (wall)':30s}{b['customers_per_s']:>14,.0f}{o['customers_per_s']:>16,.0f}"
            f"{speed['ratio_customers_per_s']:>9.1%}",
            f"{'customers/s (CPU time)':30s}{b['customers_per_cpu_s']:>14,.0f}{o['customers_per_cpu_s']:>16,.0f}"
            f"{speed['ratio_customers_per_cpu_s']:>9.1%}",
            f"{'events per customer':30s}{b['events_per_customer']:>14.2f}{o['events_per_customer']:>16.2f}",
            f"{'customers per simulated s':30s}{b['customers_per_sim_s']:>14.3f}{o['customers_per_sim_s']:>16.3f}",
            f"{'loop wall time (s)':30s}{b['wall_s']:>14.3f}{o['wall_s']:>16.3f}",
            "Events are not the same unit: loginstorm's include client-process bookkeeping (bare SimPy's",
            "include Resource request/release), so customers/s is the like-for-like comparison.",
            "CPU time: bare = its loop; loginstorm = the whole run() (setup and summary included).",
            f"Target (customers/s ratio >= {TARGET_RATIO:.0%}): "
            f"{'MET' if speed['meets_target'] else 'NOT MET'} ({speed['ratio_customers_per_s']:.1%}).",
            "",
        ]
    if memory:
        lines += [
            "Reboot wave memory (fraction 1.0 at 60 s, spread U(0,10m), downtime lognormal 1m/5m, 2 h simulated):",
            f"{'clients':>10s}{'workers':>9s}{'peak RSS':>13s}{'base RSS':>11s}{'loop wall s':>13s}"
            f"{'CPU s':>8s}{'events':>12s}{'events/s':>10s}{'attempts':>11s}{'timeouts':>10s}  < 3 GB",
        ]
        for m in memory:
            if m.get("measured"):
                lines.append(
                    f"{m['clients']:>10,d}{m['workers']:>9,d}{mib(m['peak_rss_bytes']):>13s}"
                    f"{mib(m['baseline_rss_bytes']):>11s}{m['wallclock_s']:>13.1f}"
                    f"{m['child_user_s'] + m['child_sys_s']:>8.1f}{m['events_processed']:>12,d}"
                    f"{m['events_per_s']:>10,.0f}{m['attempts']:>11,d}{m['timeouts']:>10,d}  "
                    f"{'yes' if m['under_target'] else 'NO'}")
            else:
                lines.append(f"{m['clients']:>10,d}  NOT MEASURED: {m.get('error', '?')}")
                x = m.get("extrapolation")
                if x:
                    lines.append(
                        f"{'':10s}  EXTRAPOLATION (linear from {x['from_sizes'][0]:,} and {x['from_sizes'][1]:,} "
                        f"clients, not a measurement): peak RSS ~{mib(x['peak_rss_bytes'])}, loop wall "
                        f"~{x['wallclock_s']:,.0f} s, {'under' if x['under_target'] else 'OVER'} 3 GB")
        lines.append("peak RSS: the child's ru_maxrss (os.wait4); base RSS: the child after imports, before the model;")
        lines.append("loop wall s: the engine's event loop (wallclock_s); CPU s: the whole child, user + sys; "
                     "events/s: per loop wall s.")
        lines.append("3 GB = 3,000,000,000 bytes = 2,861 MiB.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller run: T = 1000 s, sizes 10k,100k")
    ap.add_argument("--T", type=float, default=None,
                    help="simulated seconds of each M/M/c run (default 5000; quick 1000)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternating runs per engine; the median is reported (default 3)")
    ap.add_argument("--sizes", default=None, help="comma-separated client counts for the memory runs "
                    "(default 100000,1000000; quick 10000,100000); empty to skip")
    ap.add_argument("--clients-per-worker", type=int, default=5000,
                    help="reboot-wave workers = clients / this (default 5000: peak utilization about 0.5)")
    ap.add_argument("--child-timeout", type=float, default=1800.0,
                    help="seconds before a memory child is killed and its size extrapolated (default 1800)")
    ap.add_argument("--skip-speed", action="store_true", help="memory runs only")
    ap.add_argument("--profile", action="store_true",
                    help="only profile one loginstorm M/M/c run of --T (default 2000) s with cProfile: "
                         "top entries by tottime and cumtime")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--child-reboot", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child_reboot is not None:
        child_reboot(args.child_reboot, args.clients_per_worker, args.seed)
        return 0

    if args.profile:
        profile_mmc(args.T if args.T is not None else 2000.0, args.seed)
        return 0

    T = args.T if args.T is not None else (1000.0 if args.quick else 5000.0)
    sizes_arg = args.sizes if args.sizes is not None else ("10000,100000" if args.quick else "100000,1000000")
    sizes = [int(float(x)) for x in sizes_arg.split(",") if x.strip()]

    def log(msg: str) -> None:
        print(msg, flush=True)

    started, results = opening(argv, log)

    speed = None
    if not args.skip_speed:
        log(f"\n[1] M/M/c speed, T = {T:g} simulated s, {args.repeats} alternating runs per engine")
        speed = bench_speed(T, args.repeats, args.seed, log)
        results["speed"] = speed

    memory: list[dict] = []
    if sizes:
        log(f"\n[2] reboot-wave memory, one child process per size: {', '.join(f'{n:,}' for n in sizes)}")
        for n in sizes:
            rec = measure_memory(n, args.clients_per_worker, args.seed, args.child_timeout)
            if rec.get("measured"):
                log(f"  {n:>10,d} clients: peak RSS {mib(rec['peak_rss_bytes'])}, loop {rec['wallclock_s']:.1f} s, "
                    f"{rec['events_processed']:,} events, {rec['attempts']:,} attempts")
            else:
                rec["extrapolation"] = extrapolate(memory, n)
                log(f"  {n:>10,d} clients: NOT MEASURED ({rec.get('error')})")
            memory.append(rec)
        results["memory"] = {"clients_per_worker": args.clients_per_worker, "target_bytes": TARGET_BYTES,
                             "runs": memory}

    finish(results, started, table(speed, memory), args.out, log)
    return 0


def opening(argv: list[str] | None, log) -> tuple[float, dict]:
    """The opening lines of a benchmark (its command and the machine); its start and results dict."""
    command = "python " + " ".join(
        shlex.quote(a) for a in ([str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:])))
    info = machine()
    log(f"command: {command}")
    log(f"machine: nproc={info['nproc']} python={info['python']} simpy={info['simpy']} numpy={info['numpy']} "
        f"git={info['git_commit']}{' (dirty)' if info['git_dirty'] else ''} "
        f"loadavg={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return time.perf_counter(), {"command": command, "argv": sys.argv, "machine": info,
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": os.getloadavg()}


def finish(results: dict, started: float, text: str, out, log) -> None:
    """The closing lines of a benchmark: its table, total time and load, and the JSON written."""
    results["total_wall_s"] = time.perf_counter() - started
    results["loadavg_end"] = os.getloadavg()
    results["table"] = text
    log("\n" + text)
    log(f"\ntotal wall time {results['total_wall_s']:.0f} s; "
        f"loadavg {' '.join(f'{x:.2f}' for x in results['loadavg_end'])} (shared machine: figures are noisy)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    log(f"results: {out}")


if __name__ == "__main__":
    sys.exit(main())
