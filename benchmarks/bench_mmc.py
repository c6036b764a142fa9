#!/usr/bin/env python
"""M/M/10 on three engines: loginstorm `fast`, loginstorm `des` and Ciw 3.2.7, customers per second.

One plain M/M/c queue (c = 10 servers, Poisson arrivals at 8/s, exponential service of mean 1 s,
so rho = 0.8; infinite FIFO queue) runs for `--T` simulated seconds (default 20 000, about
160 000 customers) on three engines, in rounds (fast, des, Ciw; `--repeats` rounds, default 3,
round i with seed `--seed` + i); the medians are reported:

1. loginstorm's population engine, `fast.run(scenario)`. `fast.warm_up()` runs first, so numba's
   compile (or its cache load) is not in the measurement; its time is reported apart.
2. loginstorm's reference engine, `des.run(scenario)`.
3. Ciw 3.2.7 (https://ciw.readthedocs.io), a peer discrete-event library for queueing networks:
   `ciw.Simulation(network)` and `simulate_until_max_time(T)`.

loginstorm's scenario is bench_engine.py's `mmc_scenario` (`login_rate` 8, `clients` 0,
`max_attempts` 1, 10 workers, exponential service of mean 1 s, no timeout). Customers are
attempts for loginstorm (`summary["attempts"]`, counted at arrival) and completed records for Ciw
(`len(Q.get_all_records())`, counted at departure); the two differ by the few customers still in
the system at T. Wall time is the run call alone, no imports and no scenario parsing: loginstorm's
`run()` (setup, event loop, summary) and Ciw's `Simulation()` + `simulate_until_max_time()`; the
event loop alone (loginstorm's `wallclock_s`, Ciw's `simulate_until_max_time`) is the `loop` column.
Target: fast >= 2,000,000 customers/s (per wall second of the run call).

Agreement: each engine's mean wait in queue against Erlang C's Wq for M/M/10 at rho = 0.8
(computed here). loginstorm's is `summary["steady"]["mean_wait_s"]` (requests that started
service after the 10 % warm-up); Ciw's is the mean `waiting_time` of its records (all of them;
the steady-window figure is in the JSON too).

Ciw is not a project dependency. The first run installs it with
`python -m pip install --quiet --target benchmarks/.ciw/ciw-3.2.7-pyX.Y ciw==3.2.7` (git-ignored,
reused by later runs) and each Ciw run is a child process with PYTHONPATH set to that folder, so
Ciw never enters the project's virtualenv. When pip cannot install it (offline), Ciw is reported
"not measured".

    .venv/bin/python benchmarks/bench_mmc.py                  # T = 20 000 s, 3 rounds: ~30 s, more the first time
    .venv/bin/python benchmarks/bench_mmc.py --T 5000 --repeats 1 --no-ciw

Results go to stdout (a final plain-text table) and to benchmarks/results/bench_mmc.json.
`measure(T, repeats, log)` is the same measurement as a function, for other scripts to import.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:  # imported from elsewhere (bench_fast.py)
    sys.path.insert(0, str(HERE))

from bench_engine import MMC_C, MMC_LAMBDA, MMC_MEAN_SERVICE, finish, mmc_scenario, opening  # noqa: E402

RESULTS = HERE / "results" / "bench_mmc.json"
TARGET_FAST = 2_000_000  # customers per wall second
CIW_VERSION = "3.2.7"
CIW_CACHE = HERE / ".ciw"  # git-ignored
ENGINES = ("fast", "des", "ciw")
LABELS = {"fast": "loginstorm fast", "des": "loginstorm des", "ciw": f"Ciw {CIW_VERSION}"}


# --- theory -----------------------------------------------------------------------------------

def erlang_c(c: int, lam: float, mean_service: float) -> dict:
    """M/M/c: the probability of waiting (Erlang C) and the mean wait in queue Wq = C / (c mu - lambda)."""
    a = lam * mean_service  # offered load in Erlangs
    rho = a / c
    if rho >= 1:
        raise ValueError(f"unstable M/M/c: rho = {rho}")
    terms = sum(a ** k / math.factorial(k) for k in range(c))
    top = a ** c / math.factorial(c) / (1 - rho)
    p_wait = top / (terms + top)
    wq = p_wait / (c / mean_service - lam)
    return {"c": c, "lambda_per_s": lam, "mean_service_s": mean_service, "rho": rho,
            "p_wait": p_wait, "mean_wait_s": wq, "mean_in_queue": lam * wq}


# --- loginstorm -------------------------------------------------------------------------------

def loginstorm_once(name: str, T: float, seed: int) -> dict:
    """One run of loginstorm's `fast` or `des` engine on bench_engine's M/M/c scenario."""
    from sim import des, fast
    from sim.config import parse_scenario

    engine = fast if name == "fast" else des
    scenario = parse_scenario(mmc_scenario(T, seed), "bench-mmc")
    cpu0, t0 = time.process_time(), time.perf_counter()
    s = engine.run(scenario).summary
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    st = s["steady"]
    return {"engine": name, "seed": seed, "customers": int(s["attempts"]), "served": int(s["logins"]),
            "wall_s": wall, "loop_s": float(s["wallclock_s"]), "cpu_s": cpu,
            "events": int(s["events_processed"]),
            "mean_wait_s": st["mean_wait_s"], "p_wait": st["p_wait"], "utilization": st["utilization"]}


# --- Ciw, in a child process ------------------------------------------------------------------

def ciw_dir() -> Path:
    """Where this interpreter's Ciw lives (compiled dependencies are per Python version)."""
    return CIW_CACHE / f"ciw-{CIW_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"


def ensure_ciw(log) -> tuple[Path | None, str | None]:
    """Ciw installed into its cache folder (pip --target, the first time): (folder, None) or (None, why not)."""
    target = ciw_dir()
    if (target / f"ciw-{CIW_VERSION}.dist-info").is_dir():
        return target, None
    CIW_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CIW_CACHE / f"installing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--target", str(tmp), f"ciw=={CIW_VERSION}"]
    log(f"  installing Ciw {CIW_VERSION} for this benchmark only: {shlex.join(cmd)}")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        err = None if p.returncode == 0 else f"pip exited with status {p.returncode}: " + \
            (p.stderr.strip().splitlines() or ["(no message)"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        err = f"pip could not run: {e}"
    if err is None and not (tmp / f"ciw-{CIW_VERSION}.dist-info").is_dir():
        err = f"pip finished but {tmp.name}/ciw-{CIW_VERSION}.dist-info is missing"
    if err is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        return None, f"could not install ciw=={CIW_VERSION} with pip (offline?): {err}"
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    log(f"  installed in {time.perf_counter() - t0:.0f} s into {target.relative_to(ROOT)}")
    return target, None


def child_ciw(T: float, seed: int) -> None:
    """Inside the child (PYTHONPATH = the Ciw folder): a short warm-up run, then the measured one, as JSON."""
    t0 = time.perf_counter()
    import ciw
    import_s = time.perf_counter() - t0

    def once(T: float, seed: int) -> dict:
        network = ciw.create_network(
            arrival_distributions=[ciw.dists.Exponential(rate=MMC_LAMBDA)],
            service_distributions=[ciw.dists.Exponential(rate=1.0 / MMC_MEAN_SERVICE)],
            number_of_servers=[MMC_C])
        ciw.seed(seed)
        cpu0, t0 = time.process_time(), time.perf_counter()
        Q = ciw.Simulation(network)
        t1 = time.perf_counter()
        Q.simulate_until_max_time(T)
        t2 = time.perf_counter()
        cpu = time.process_time() - cpu0
        recs = Q.get_all_records()
        waits = [r.waiting_time for r in recs]
        warm = 0.1 * T  # loginstorm's steady window: service started in [0.1 T, T)
        steady = [r.waiting_time for r in recs if r.service_start_date >= warm]
        return {"engine": "ciw", "seed": seed, "customers": len(recs), "wall_s": t2 - t0, "loop_s": t2 - t1,
                "cpu_s": cpu, "mean_wait_s": statistics.fmean(waits) if waits else None,
                "mean_wait_steady_s": statistics.fmean(steady) if steady else None,
                "p_wait": sum(w > 0 for w in waits) / len(waits) if waits else None,
                "record_types": sorted({str(getattr(r, "record_type", "?")) for r in recs})}

    once(min(T, 50.0), seed)  # first-call costs, not measured
    r = once(T, seed)
    where = Path(ciw.__file__).resolve()  # relative to the checkout: no path of this machine in the results
    r.update(ciw_version=ciw.__version__, ciw_file=str(where.relative_to(ROOT) if where.is_relative_to(ROOT) else
                                                     where.name), import_s=import_s)
    print(json.dumps(r), flush=True)


def ciw_once(path: Path, T: float, seed: int, timeout: float = 1800.0) -> dict:
    """One Ciw run in a child process whose PYTHONPATH is the Ciw folder alone."""
    env = dict(os.environ, PYTHONPATH=str(path), PYTHONNOUSERSITE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-ciw", "--T", repr(T), "--seed", str(seed)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"Ciw child exited with status {p.returncode}: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# --- the measurement --------------------------------------------------------------------------

def measure(T: float = 20_000.0, repeats: int = 3, log=print, *, ciw: bool = True, seed: int = 1) -> dict:
    """The three engines on M/M/10 for T simulated seconds, alternated `repeats` rounds: runs and medians."""
    theory = erlang_c(MMC_C, MMC_LAMBDA, MMC_MEAN_SERVICE)
    t0 = time.perf_counter()
    from sim import fast
    fast_import_s = time.perf_counter() - t0
    warm_up_s = fast.warm_up()  # numba: compile, or load from its on-disk cache (not measured)
    warm = {"fast_import_s": fast_import_s, "fast_warm_up_s": warm_up_s, "fast_warm_up_source": fast.warm_up_source()}
    log(f"  fast warm-up: {warm_up_s:.2f} s ({warm['fast_warm_up_source']}); import {fast_import_s:.2f} s")
    for name in ("fast", "des"):  # first-call costs (imports, caches), not measured
        loginstorm_once(name, min(T, 50.0), seed)

    ciw_info: dict = {"measured": False, "version": CIW_VERSION,
                      "in_project_venv": importlib.util.find_spec("ciw") is not None}
    ciw_path = None
    if not ciw:
        ciw_info["reason"] = "skipped (--no-ciw)"
    else:
        ciw_path, why = ensure_ciw(log)
        if ciw_path is None:
            ciw_info["reason"] = why
            log(f"  Ciw NOT MEASURED: {why}")
        else:
            ciw_info["path"] = str(ciw_path.relative_to(ROOT))

    engines = ["fast", "des"] + (["ciw"] if ciw_path is not None else [])
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for i in range(repeats):
        for name in list(engines):
            load = os.getloadavg()[0]
            try:
                r = ciw_once(ciw_path, T, seed + i) if name == "ciw" else loginstorm_once(name, T, seed + i)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:  # Ciw's child only
                if name != "ciw":
                    raise
                ciw_info["reason"] = f"run {i + 1} failed: {e}"
                log(f"  Ciw NOT MEASURED: {ciw_info['reason']}")
                engines.remove("ciw")
                runs.pop("ciw")
                continue
            r["customers_per_s"] = r["customers"] / r["wall_s"]
            r["customers_per_loop_s"] = r["customers"] / r["loop_s"]
            r["loadavg_1m"] = load
            runs[name].append(r)
            log(f"  round {i + 1}/{repeats} {LABELS[name]:15s}: {r['customers']:>9,d} customers in "
                f"{r['wall_s']:8.3f} s = {r['customers_per_s']:>11,.0f}/s (loop {r['loop_s']:.3f} s), "
                f"mean wait {r['mean_wait_s']:.4f} s, load {load:.2f}")
    if "ciw" in runs:
        first = runs["ciw"][0]
        ciw_info.update(measured=True, child_version=first["ciw_version"], child_file=first["ciw_file"],
                        import_s=first["import_s"])

    median: dict[str, dict] = {}
    for name, rs in runs.items():
        m = {k: statistics.median(r[k] for r in rs)
             for k in ("customers", "wall_s", "loop_s", "cpu_s", "customers_per_s", "customers_per_loop_s")}
        waits = [r["mean_wait_s"] for r in rs]
        m["mean_wait_s"] = statistics.fmean(waits)  # the rounds' mean (different seeds)
        m["mean_wait_min_s"], m["mean_wait_max_s"] = min(waits), max(waits)
        m["wait_vs_theory"] = m["mean_wait_s"] / theory["mean_wait_s"] - 1
        m["customers_per_cpu_s"] = m["customers"] / m["cpu_s"] if m["cpu_s"] > 0 else None
        median[name] = m
    for m in median.values():
        m["ratio_vs_des"] = m["customers_per_s"] / median["des"]["customers_per_s"]
    fast_rate = median["fast"]["customers_per_s"]
    return {"T_s": T, "repeats": repeats, "seed": seed, "theory": theory, "warm_up": warm, "ciw": ciw_info,
            "runs": runs, "median": median, "target_fast_customers_per_s": TARGET_FAST,
            "fast_meets_target": fast_rate >= TARGET_FAST}


# --- reporting --------------------------------------------------------------------------------

def table(res: dict) -> str:
    th, med = res["theory"], res["median"]
    lines = [
        f"M/M/{MMC_C}: lambda = {MMC_LAMBDA:g}/s, exponential service mean {MMC_MEAN_SERVICE:g} s, "
        f"rho = {th['rho']:.2f}, FIFO, infinite queue; T = {res['T_s']:,.0f} simulated s; "
        f"median of {res['repeats']} alternating rounds",
        f"{'engine':17s}{'customers':>11s}{'wall s':>9s}{'customers/s':>13s}{'loop cust/s':>13s}"
        f"{'vs des':>9s}{'mean wait s':>13s}{'vs theory':>11s}",
    ]
    for name in ENGINES:
        if name not in med:
            lines.append(f"{LABELS[name]:17s}  not measured: {res['ciw'].get('reason', '?')}")
            continue
        m = med[name]
        lines.append(f"{LABELS[name]:17s}{m['customers']:>11,.0f}{m['wall_s']:>9.3f}{m['customers_per_s']:>13,.0f}"
                     f"{m['customers_per_loop_s']:>13,.0f}{m['ratio_vs_des']:>8.2f}x{m['mean_wait_s']:>13.4f}"
                     f"{m['wait_vs_theory']:>+11.1%}")
    lines.append(f"{'Erlang C theory':17s}{'':>11s}{'':>9s}{'':>13s}{'':>13s}{'':>9s}{th['mean_wait_s']:>13.4f}"
                 f"   (P(wait) = {th['p_wait']:.4f})")
    fast_rate = med["fast"]["customers_per_s"]
    lines += [
        "wall s: the run call (loginstorm run(): setup + loop + summary; Ciw Simulation() + "
        "simulate_until_max_time());",
        "loop cust/s: per second of the event loop alone. Mean wait: the rounds' mean (seeds differ per round);",
        "loginstorm's is over its steady window (service started after 10 % of T), Ciw's over all its records.",
        f"fast warm-up (numba, not measured): {res['warm_up']['fast_warm_up_s']:.2f} s, "
        f"{res['warm_up']['fast_warm_up_source']}",
        f"target: fast >= {TARGET_FAST:,} customers/s: {'MET' if res['fast_meets_target'] else 'NOT MET'} "
        f"({fast_rate:,.0f}/s per run-call second, {med['fast']['customers_per_loop_s']:,.0f}/s per loop second)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=float, default=20_000.0, help="simulated seconds of each run (default 20000)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternating rounds (fast, des, Ciw); the medians are reported (default 3)")
    ap.add_argument("--no-ciw", action="store_true", help="loginstorm's two engines only (no pip, no Ciw)")
    ap.add_argument("--seed", type=int, default=1, help="seed of round 1 (round i: seed + i - 1)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    ap.add_argument("--child-ciw", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child_ciw:
        child_ciw(args.T, args.seed)
        return 0

    def log(msg: str) -> None:
        print(msg, flush=True)

    started, results = opening(argv, log)
    log(f"\nM/M/{MMC_C}, T = {args.T:g} simulated s, {args.repeats} alternating rounds")
    res = measure(args.T, args.repeats, log, ciw=not args.no_ciw, seed=args.seed)
    results.update(res)
    finish(results, started, table(res), args.out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
