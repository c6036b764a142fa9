#!/usr/bin/env python
"""Load-generator benchmark: login attempts per CPU-second of our Locust device user against a
plain `FastHttpUser` doing the same POST, in the same run (issue 6).

One lab server (`python -m loadtests.lab`, sleep mode, `service_time = "0s"`, many workers, no
queue limit, no rate limit) runs on 127.0.0.1 at a free port and serves generated users. Then
`--rounds` rounds of two phases run, the order swapped each round. Each phase is one
`locust --headless` process with `--users` users:

- **device**: `loadtests/locustfile.py` on a scenario where every device is offline at t = 0
  with `offline = "0s"`, so it logs in at once, and retries at once with policy `none`
  (`max_attempts` 0, `give_up_after` inf: forever). Its attempts are Locust's `login attempt`.
- **plain**: a `FastHttpUser` with `wait_time = constant(0)`, written here, that POSTs the
  same form (`grant_type=password&username=...&password=...`) to `/oauth/token`.

With `--answer wrong-password` (the default) both send a wrong password and get the same 400
`invalid_grant` after the same check. With `--answer success` both log in successfully; then the
device's session ends at once (`session = "0s"`) and it logs in again, and each login also
reports a `login episode`.

A small probe locustfile loaded next to each one (`-f FILE,probe.py`) counts the phase's
requests and reads the process's CPU time (`getrusage`, user + sys) over a steady window:
`--seconds` long, after `--warmup` seconds. Start-up (imports, building the storm) is left out.
The whole-process figures (Request Count from Locust's final `--json-file` statistics, CPU
from `os.wait4`, start-up included) are reported next to the window ones as a cross-check.

    .venv/bin/python benchmarks/bench_loadgen.py                    # 3 rounds x 2 phases x 12 s, about 2 minutes
    .venv/bin/python benchmarks/bench_loadgen.py --rounds 5 --json /tmp/bench_loadgen.json

Target: the device user keeps >= 85 % of the plain FastHttpUser's attempts per CPU-second. The
median of the per-round ratios is judged. The lab shares the machine with the load generator;
per CPU-second figures hold up under that sharing, wall-clock rates do not. With two CPUs or
more, Locust runs on the first and the lab on the others (`--no-pin`: both anywhere). Nothing but
127.0.0.1 is contacted, and every process started here is stopped through its own handle.
Exit status: 0 at PASS, 1 below the target or when the two phases did not get the same answer.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
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
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(path))

from bench_engine import git_state  # noqa: E402  (the benchmarks share how they record the checkout)
from lab_process import running_lab  # noqa: E402  (tests/lab_process.py: start and stop the lab by PID)

TARGET_RATIO = 0.85
DEVICE_LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
NAMES = {"device": "login attempt", "plain": "/oauth/token"}
ANSWERS = ("wrong-password", "success")
STOP_GRACE_S = 60.0   # a phase still running this long after its run time is killed

SCENARIO = """\
name = "bench-loadgen"
description = "Load-generator benchmark: every device logs in at once and retries at once, forever."
duration = "{duration}s"        # also the end of the device phase
seed = 1

[population]
clients = {devices}
online_at_start = 0.0           # every device starts offline ...
offline = "0s"                  # ... and wants to log in at once
session = "0s"                  # a successful login ends at once: log in again

[client]
timeout = "30s"
policy = {{ name = "none" }}      # retry at once; max_attempts 0 and give_up_after inf: never give up

[server]
workers = {workers}             # never all busy: no queueing
service_time = "0s"             # sleep mode: no sleep, only the (cheap) credential check
"""

PLAIN_LOCUSTFILE = '''\
"""The baseline: a plain FastHttpUser POSTing the device's form to /oauth/token in a loop."""
import csv
import itertools
import os
from urllib.parse import urlencode

from locust import FastHttpUser, constant, task

with open(os.environ["BENCH_LOADGEN_CREDENTIALS"], newline="", encoding="utf-8") as handle:
    ROWS = [(row["username"], row["password"]) for row in csv.DictReader(handle)]
HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
_rows = itertools.count()


class PlainLogin(FastHttpUser):
    wait_time = constant(0)

    def on_start(self):
        username, password = ROWS[next(_rows) % len(ROWS)]
        self.body = urlencode({"grant_type": "password", "username": username, "password": password})

    @task
    def login(self):
        self.client.post("/oauth/token", data=self.body, headers=HEADERS)
'''

PROBE_LOCUSTFILE = '''\
"""Counts one request name and this process's CPU seconds over a window after a warm-up."""
import json
import os
import resource
import time

import gevent
from locust import events

NAME = os.environ["BENCH_LOADGEN_NAME"]
WARMUP_S = float(os.environ["BENCH_LOADGEN_WARMUP"])
WINDOW_S = float(os.environ["BENCH_LOADGEN_WINDOW"])
seen = {"requests": 0, "failures": 0}


@events.request.add_listener
def _count(name, exception, **_):
    if name == NAME:
        seen["requests"] += 1
        seen["failures"] += exception is not None


def _snapshot():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"time": time.perf_counter(), "cpu_s": usage.ru_utime + usage.ru_stime, **seen}


def _measure(environment):
    gevent.sleep(WARMUP_S)
    first = _snapshot()
    gevent.sleep(WINDOW_S)
    last = _snapshot()
    result = {key: last[key] - first[key] for key in last}
    result["users"] = environment.runner.user_count
    with open(os.environ["BENCH_LOADGEN_OUT"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)


@events.test_start.add_listener
def _start(environment, **_):
    gevent.spawn(_measure, environment)
'''


# --- one phase ------------------------------------------------------------------------------------

def phase_command(kind: str, work: Path, url: str, args, prefix: Path) -> list[str]:
    locustfile = DEVICE_LOCUSTFILE if kind == "device" else work / "plain.py"
    cmd = [sys.executable, "-m", "locust", "-f", f"{locustfile},{work / 'probe.py'}", "--headless",
           "--host", url, "-t", f"{run_time(args):g}s", "--json-file", str(prefix),
           "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    if kind == "device":   # the storm's shape spawns every device at once; -u and -r are not used
        return cmd + ["--scenario", str(work / "scenario.toml"), "--credentials", str(credentials(work, args))]
    return cmd + ["-u", str(args.users), "-r", str(args.users)]


def run_time(args) -> float:
    return args.warmup + args.seconds + 2.0


def credentials(work: Path, args) -> Path:
    return work / ("users.csv" if args.answer == "success" else "wrong.csv")


def run_phase(kind: str, number: int, work: Path, lab, args, cpus: set[int] | None) -> dict:
    """One locust process; the probe's window figures and the whole process's."""
    prefix, probe_out = work / f"{kind}{number}", work / f"{kind}{number}-window.json"
    env = {**os.environ, "BENCH_LOADGEN_NAME": NAMES[kind], "BENCH_LOADGEN_WARMUP": str(args.warmup),
           "BENCH_LOADGEN_WINDOW": str(args.seconds), "BENCH_LOADGEN_OUT": str(probe_out),
           "BENCH_LOADGEN_CREDENTIALS": str(credentials(work, args))}
    lab_before, lab_cpu_before = lab.metrics_json(), process_cpu(lab.pid)
    with open(f"{prefix}.out", "w") as out, open(f"{prefix}.err", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(phase_command(kind, work, lab.url, args, prefix), cwd=ROOT, env=env,
                                stdout=out, stderr=err)
        # kill() polls first, so a late timer cannot signal a reaped (and reused) PID
        timer = threading.Timer(run_time(args) + STOP_GRACE_S, proc.kill)  # this process only, by its handle
        timer.start()
        try:
            if cpus:
                pin(proc.pid, cpus)
            _, status, usage = os.wait4(proc.pid, 0)   # its own rusage: CPU of the whole process
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
    lab_after, lab_cpu_after = lab.metrics_json(), process_cpu(lab.pid)
    stderr = Path(f"{prefix}.err").read_text(errors="replace")
    if proc.returncode != 0 or not probe_out.exists():
        raise RuntimeError(f"{kind} phase failed (exit status {proc.returncode}); stderr:\n{stderr[-3000:]}")
    window = json.loads(probe_out.read_text())
    whole_cpu = usage.ru_utime + usage.ru_stime
    whole_requests = final_request_count(Path(f"{prefix}.json"), NAMES[kind])
    return {
        "phase": kind, "round": number, "name": NAMES[kind], "users": window["users"],
        "window_s": window["time"], "attempts": window["requests"], "failures": window["failures"],
        "cpu_s": window["cpu_s"], "attempts_per_cpu_s": window["requests"] / window["cpu_s"],
        "attempts_per_s": window["requests"] / window["time"], "cores": window["cpu_s"] / window["time"],
        "whole_wall_s": wall, "whole_attempts": whole_requests, "whole_cpu_s": whole_cpu,
        "whole_attempts_per_cpu_s": whole_requests / whole_cpu,
        "lab_completed": lab_after["completed_total"] - lab_before["completed_total"],
        "lab_cores": (lab_cpu_after - lab_cpu_before) / wall,
        "cpu_warnings": stderr.count("CPU usage above"),
    }


def cpu_split(enabled: bool) -> tuple[set[int] | None, set[int] | None]:
    """(generator CPUs, lab CPUs): the first CPU for Locust, the others for the lab, so that
    neither preempts the other; (None, None) with --no-pin or a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of the process (affinity is per thread; threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:   # a thread that has just ended
            pass


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (the lab) from /proc, via psutil (installed with Locust)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def final_request_count(path: Path, name: str) -> int:
    """Request Count of `name` in Locust's final statistics (`--json-file`). Not `--csv`: its
    `_stats.csv` is the last once-a-second write, up to a second short of the end."""
    entries = json.loads(path.read_text())
    return sum(e["num_requests"] for e in entries if e["name"] == name)


def check_answer(result: dict, answer: str) -> str | None:
    """Both phases must get the same answer: all failures (400) or all successes."""
    expected = result["attempts"] if answer == "wrong-password" else 0
    if result["users"] == 0 or result["attempts"] == 0:
        return f"{result['phase']} round {result['round']}: no users or no attempts in the window"
    if result["failures"] != expected:
        return (f"{result['phase']} round {result['round']}: {result['failures']} of {result['attempts']} "
                f"attempts failed; expected {'all' if expected else 'none'}")
    return None


# --- the run ----------------------------------------------------------------------------------------

def write_files(work: Path, args) -> None:
    devices = args.users
    (work / "scenario.toml").write_text(SCENARIO.format(duration=f"{run_time(args):g}", devices=devices,
                                                        workers=max(1000, 4 * devices)))
    (work / "plain.py").write_text(PLAIN_LOCUSTFILE)
    (work / "probe.py").write_text(PROBE_LOCUSTFILE)


def write_wrong_passwords(work: Path) -> None:
    """users.csv (written by the lab) with every password replaced by a wrong one."""
    with (work / "users.csv").open(newline="") as handle:
        names = [row["username"] for row in csv.DictReader(handle)]
    fd = os.open(work / "wrong.csv", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["username", "password"])
        writer.writerows([name, f"wrong-{i}"] for i, name in enumerate(names))


def bench(args, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
        work = Path(tmp)
        write_files(work, args)
        with running_lab(str(work / "scenario.toml"), "--mode", "sleep", "--write-credentials",
                         str(work / "users.csv"), "--users", str(args.users), "--serve") as lab:
            if not lab.url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"the lab is not on 127.0.0.1: {lab.url}")
            write_wrong_passwords(work)
            generator_cpus, lab_cpus = cpu_split(args.pin)
            if lab_cpus:
                pin(lab.pid, lab_cpus)
            log(f"lab: {lab.stdout().strip()} (pid {lab.pid})")
            log("CPUs: " + (f"locust on {sorted(generator_cpus)}, lab on {sorted(lab_cpus)}" if lab_cpus
                             else "not pinned"))
            phases, problems = [], []
            for number in range(1, args.rounds + 1):
                order = ("device", "plain") if number % 2 else ("plain", "device")
                for kind in order:
                    r = run_phase(kind, number, work, lab, args, generator_cpus)
                    phases.append(r)
                    problems += [p for p in [check_answer(r, args.answer)] if p]
                    log(f"  round {number} {kind:6s}: {r['attempts']:>7,d} attempts in {r['window_s']:5.1f} s, "
                        f"{r['cpu_s']:5.2f} CPU-s -> {r['attempts_per_cpu_s']:>6,.0f} attempts/CPU-s "
                        f"({r['attempts_per_s']:,.0f}/s, generator {r['cores']:.2f} cores, lab {r['lab_cores']:.2f})")
    return summarize(phases, problems, args)


def summarize(phases: list[dict], problems: list[str], args) -> dict:
    rounds = []
    for number in range(1, args.rounds + 1):
        device, plain = (next(p for p in phases if p["round"] == number and p["phase"] == k)
                         for k in ("device", "plain"))
        rounds.append({"round": number, "device": device["attempts_per_cpu_s"], "plain": plain["attempts_per_cpu_s"],
                       "ratio": device["attempts_per_cpu_s"] / plain["attempts_per_cpu_s"],
                       "whole_ratio": device["whole_attempts_per_cpu_s"] / plain["whole_attempts_per_cpu_s"]})
    median = {key: statistics.median(r[key] for r in rounds) for key in ("device", "plain", "ratio", "whole_ratio")}
    return {"phases": phases, "rounds": rounds, "median": median, "problems": problems,
            "target_ratio": TARGET_RATIO, "meets_target": median["ratio"] >= TARGET_RATIO and not problems}


# --- reporting ---------------------------------------------------------------------------------------

def machine() -> dict:
    import gevent
    import geventhttpclient
    import locust

    commit, dirty = git_state()
    return {"nproc": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
            "locust": locust.__version__, "gevent": gevent.__version__,
            "geventhttpclient": getattr(geventhttpclient, "__version__", "?"), "git_commit": commit,
            "git_dirty": dirty}


def table(result: dict, args) -> str:
    by = {(p["round"], p["phase"]): p for p in result["phases"]}
    lines = [
        f"Login attempts per CPU-second of the load generator: {args.users} users, answer {args.answer}, "
        f"window {args.seconds:g} s after {args.warmup:g} s warm-up, {args.rounds} rounds",
        f"{'round':>5s}{'device att/CPU-s':>18s}{'plain att/CPU-s':>17s}{'ratio':>8s}"
        f"{'device att/s':>14s}{'plain att/s':>13s}{'dev cores':>11s}{'plain cores':>13s}{'whole ratio':>13s}",
    ]
    for r in result["rounds"]:
        d, p = by[(r["round"], "device")], by[(r["round"], "plain")]
        lines.append(f"{r['round']:>5d}{r['device']:>18,.0f}{r['plain']:>17,.0f}{r['ratio']:>8.1%}"
                     f"{d['attempts_per_s']:>14,.0f}{p['attempts_per_s']:>13,.0f}{d['cores']:>11.2f}"
                     f"{p['cores']:>13.2f}{r['whole_ratio']:>13.1%}")
    m = result["median"]
    lines += [
        f"{'med.':>5s}{m['device']:>18,.0f}{m['plain']:>17,.0f}{m['ratio']:>8.1%}{'':>64s}{m['whole_ratio']:>13.1%}",
        "ratio = device / plain in the same round; the median row is the median of each column.",
        "cores = generator CPU-s per window second; whole ratio = the same from the whole process",
        "(final Request Count / os.wait4 CPU of the process, start-up included).",
    ]
    lines += [f"PROBLEM: {p}" for p in result["problems"]]
    verdict = "PASS" if result["meets_target"] else "BELOW TARGET"
    lines.append(f"Target (device keeps >= {TARGET_RATIO:.0%} of plain FastHttpUser's attempts/CPU-s): "
                 f"{verdict} (median ratio {m['ratio']:.1%}).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50, help="Locust users (devices) per phase (default 50)")
    ap.add_argument("--seconds", type=float, default=12.0, help="measured window of each phase (default 12)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before the window (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of device + plain (default 3)")
    ap.add_argument("--answer", choices=ANSWERS, default="wrong-password",
                    help="what the lab answers both phases (default wrong-password: 400 invalid_grant)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin Locust to the first CPU and the lab to the others")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.users < 1 or args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        ap.error("--users and --rounds must be >= 1, --seconds > 0, --warmup >= 0")

    def log(msg: str) -> None:
        print(msg, flush=True)

    command = " ".join(shlex.quote(a) for a in [sys.executable, str(Path(sys.argv[0]))]
                       + (argv if argv is not None else sys.argv[1:]))
    info = machine()
    log(f"command: {command}")
    log(f"machine: nproc={info['nproc']} python={info['python']} locust={info['locust']} gevent={info['gevent']} "
        f"loadavg={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started, started_at, loadavg_start = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), os.getloadavg()
    result = bench(args, log)
    text = table(result, args)
    log("\n" + text)
    total = time.perf_counter() - started
    log(f"\ntotal wall time {total:.0f} s; loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(shared machine: wall-clock rates are noisy, per CPU-second ones less so)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "argv": sys.argv, "machine": info,
                                         "options": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(args).items()},
                                         "started": started_at,
                                         "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(),
                                         "total_wall_s": total, **result, "table": text}, indent=2) + "\n")
        log(f"results: {args.json}")
    return 0 if result["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
