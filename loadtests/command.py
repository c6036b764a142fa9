"""`loginstorm loadtest`: replay a scenario's storm against a real endpoint, safely, and set it
beside the simulation (docs/model.md section 7).

Locust runs as a subprocess on `loadtests/locustfile.py` (its own interpreter: gevent patches
the one it runs in), headless, with the device users' attempt and state logs in the output
folder. This process checks the target before anything is sent, shows a live progress line
from the run's `loginstorm-progress` lines, stops the run on Ctrl-C, SIGTERM or SIGHUP (SIGINT to
Locust, by its PID: its own Ctrl-C path, which still writes its statistics and HTML report; on
Linux Locust also gets it if this process dies anyhow), and afterwards turns the logs into the
simulator's `timeseries.csv` and `summary.json` (`loadtests.measure`) and the
measured-versus-simulated report (`loadtests.versus`). The progress lines also count the
exceptions raised inside the devices (Locust's `runner.exceptions`): `LoadtestResult.device_errors`.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from loadtests.attemptlog import PROGRESS, STOPPED
from loadtests.measure import CLIENT_FIELDS, measured_run, read_logs
from loadtests.options import locust_argv
from loadtests.storm import Storm, StormError, StormOptions, check_host, host_allowed, load_storm, target_host

__all__ = ["LoadtestOptions", "LoadtestResult", "LoadtestError", "Interrupted", "run_loadtest", "lab_capacity",
           "terminate_as_interrupt", "NO_LOGIN_EXIT",
           "DEVICE_ERROR_EXIT"]

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_GRACE_S = 30.0
#: the exit status of `loginstorm loadtest` when no login succeeded (2: bad input; 1: Locust failed)
NO_LOGIN_EXIT = 3
#: ... and when devices raised exceptions: a bug of ours, since every input was checked before the run
DEVICE_ERROR_EXIT = 1
#: the signals that stop a run: Ctrl-C, `kill`, a closed terminal
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@dataclass(frozen=True)
class LoadtestOptions:
    storm: StormOptions
    host: str | None                  # None: the target's host (--target FILE or the scenario's [target])
    out: Path
    run_time: float | None = None
    processes: int = 1
    max_rps: float = 0.0
    stop_on_error_rate: float = 0.0
    stop_after: float = 0.0
    stop_on_p99: float = 0.0
    keep_going: bool = False          # no stop when the first attempts all answer 401/403/404
    capacity: str = "auto"            # auto | lab | none | FILE | workers=..,rate_limit.rate=..
    replications: int = 3
    from_logs: Path | None = None     # no run: measure the attempt and state logs already in this folder
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)


class LoadtestError(RuntimeError):
    """Locust could not run the load test (its own error output is in the message)."""


class Interrupted(LoadtestError):
    """Stopped before any attempt was made: no outputs."""


@dataclass
class LoadtestResult:
    summary: dict
    files: list[Path]
    stopped: str | None
    interrupted: bool
    returncode: int
    device_errors: int = 0            # exceptions raised inside the devices (a bug): Locust's runner.exceptions
    device_error: str | None = None   # the first one's message (secret-free)


def _locust_command(o: LoadtestOptions) -> list[str]:
    """Locust's own options, then ours (`loadtests.options`), with the logs in the output folder."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
           "--host", o.host, "--exit-code-on-error", "0",
           "--csv", str(o.out / "locust"), "--html", str(o.out / "locust.html"),
           "--logfile", str(o.out / "locust.log")]
    if o.run_time and math.isfinite(o.run_time):
        cmd += ["-t", f"{max(1, round(o.run_time))}s"]
    if o.processes > 1:
        cmd += ["--processes", str(o.processes)]
    return cmd + locust_argv(o.storm, o, attempt_log=str(o.out / "attempts.csv"),
                             state_log=str(o.out / "states.csv"), progress=True)


def run_loadtest(o: LoadtestOptions, show=None) -> LoadtestResult:
    """Run the load test; `show(progress_dict)` is called at each progress line. Raises StormError
    (nothing sent) on a bad scenario, target, credentials or a host that is not allowed."""
    storm = load_storm(o.storm, accounts=o.from_logs is None)
    where = "--host" if o.host else "target.host"
    o = replace(o, host=target_host(o.host, storm, required=o.from_logs is None))
    _check_capacity(o.capacity)
    if o.from_logs is not None:                 # nothing is sent: the host is a label of the outputs
        return _from_logs(replace(o, host=o.host.rstrip("/")), storm)
    o = replace(o, host=check_host(o.host, storm.target.allowed_hosts, where))
    _make_out(o.out)
    for stale in list(o.out.glob("attempts*.csv")) + list(o.out.glob("states*.csv")):
        stale.unlink()
    errors = (o.out / "locust.stderr.txt").open("w", encoding="utf-8")
    stopped, interrupted, elapsed, progress = None, False, 0.0, {}
    with terminate_as_interrupt():
        held = _hold(STOP_SIGNALS)              # none may strike between fork and `proc` below
        try:
            proc = subprocess.Popen(_locust_command(o), stdout=subprocess.PIPE, stderr=errors, text=True,
                                    env={**os.environ, **o.extra_env}, start_new_session=True,
                                    preexec_fn=_locust_preexec(os.getpid(), held))
        except BaseException:
            _release(held)
            errors.close()
            raise
        launched = time.monotonic()
        try:
            _release(held)                      # a signal that came meanwhile strikes here
            for line in proc.stdout:
                if line.startswith(PROGRESS):
                    progress = json.loads(line[len(PROGRESS):])
                    elapsed = max(elapsed, float(progress["elapsed_s"]))
                    if show is not None:
                        show(progress)
                elif line.startswith(STOPPED):
                    stopped = json.loads(line[len(STOPPED):])["reason"]
            proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            _stop(proc)
        finally:
            errors.close()
    if proc.returncode not in (0, None) and not interrupted and elapsed == 0:
        tail = (o.out / "locust.stderr.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise LoadtestError(f"Locust exited with code {proc.returncode} before the storm began:\n" + "\n".join(tail))
    if interrupted and not _logged_attempts(o.out):
        raise Interrupted("interrupted before the storm began: no attempt was made, so there is nothing to report")
    horizon = _horizon(o, storm)
    if interrupted and elapsed == 0:            # before the first progress line: the clock since the start
        elapsed = time.monotonic() - launched
    end = min(horizon, elapsed) if (stopped or interrupted) and elapsed > 0 else horizon
    summary, files = _write_outputs(o, storm, end, stopped, interrupted, o.out)
    return LoadtestResult(summary, files, stopped, interrupted, proc.returncode if proc.returncode is not None else -1,
                          progress.get("device_errors", 0), progress.get("device_error"))


def _logged_attempts(folder: Path) -> int:
    """Attempt rows in the attempt logs (each file starts with its header)."""
    rows = 0
    for path in folder.glob("attempts*.csv"):
        with path.open(encoding="utf-8") as handle:
            rows += max(0, sum(1 for _ in handle) - 1)
    return rows


@contextmanager
def terminate_as_interrupt():
    """SIGTERM and SIGHUP (`kill`, `timeout`, a closed terminal, a CI job's end) stop the run as
    Ctrl-C does: Locust is stopped and the outputs are written, rather than this process dying
    and leaving Locust to go on sending. A signal this process was started ignoring (`nohup`
    ignores SIGHUP) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield                                   # signal handlers can only be set on the main thread
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {}
    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT and signal.getsignal(sig) not in (signal.SIG_IGN, None):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _hold(signals: tuple[int, ...]) -> set[int]:
    """Block `signals` in this thread (POSIX, main thread); the set blocked, for `_release`."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return set()
    return set(signals) - signal.pthread_sigmask(signal.SIG_BLOCK, signals)


def _release(held: set[int]) -> None:
    if held:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _locust_preexec(parent: int, held: set[int]):
    """For Popen's preexec_fn (POSIX): Locust does not inherit the signals held while it starts,
    handles SIGINT as Ctrl-C even if this process runs with it ignored (a background job, nohup,
    some CI runners), and on Linux gets SIGINT when this process dies, even by SIGKILL (prctl
    PR_SET_PDEATHSIG), so that no load outlives the command. Everything the child calls is
    looked up here, before the fork."""
    if os.name != "posix":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    unblock, sigint, default = signal.pthread_sigmask, signal.SIGINT, signal.SIG_DFL

    def arm() -> None:
        signal.signal(sigint, default)
        if held:
            unblock(signal.SIG_UNBLOCK, held)
        if prctl is not None:
            prctl(1, sigint)                    # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:          # the parent died before the line above
                os._exit(1)
    return arm


def _check_capacity(capacity: str) -> None:
    """A bad --capacity (a file or KEY=VALUE) stops the command before the load test, not after it."""
    if capacity not in ("auto", "lab", "none"):
        from loadtests.capacity import read_capacity
        try:
            read_capacity(capacity)
        except ValueError as exc:
            raise StormError(str(exc)) from None


def _make_out(out: Path) -> None:
    """The output folder, or StormError naming --out (before anything is sent)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StormError(f"--out {out}: cannot make the folder ({exc.strerror or exc})") from None


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C: let Locust stop gracefully (SIGINT: it writes its statistics and HTML report; on
    SIGTERM it would skip the report), then make sure it is gone."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(STOP_GRACE_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):     # too slow, or a second Ctrl-C: stop now
        _kill_session(proc)
        proc.wait()


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL to the session started for Locust (it and its worker processes)."""
    with suppress(ProcessLookupError):
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()


def _story_scenario(storm: Storm):
    from sim.config import compress_scenario
    return compress_scenario(storm.scenario, storm.plan.speed)


def _from_logs(o: LoadtestOptions, storm: Storm) -> LoadtestResult:
    """`--from-logs DIR`: the outputs of a run made elsewhere (e.g. Locust master and workers on
    several machines, their `attempts*.csv` and `states*.csv` gathered in DIR)."""
    logs = o.from_logs
    if not list(logs.glob("attempts*.csv")) or not list(logs.glob("states*.csv")):
        raise StormError(f"--from-logs {logs}: no attempts*.csv and states*.csv (Locust's --attempt-log and "
                         "--state-log) here")
    _make_out(o.out)
    try:
        summary, files = _write_outputs(o, storm, _horizon(o, storm), None, False, logs)
    except ValueError as exc:  # rows that no device wrote: the folder given, not a bug
        raise StormError(f"--from-logs {logs}: {exc}") from None
    return LoadtestResult(summary, files, None, False, 0)


def _horizon(o: LoadtestOptions, storm: Storm) -> float:
    """Where the story ends in real seconds: its (compressed) duration, or --run-time if shorter."""
    return storm.plan.duration if not o.run_time else min(storm.plan.duration, o.run_time)


def _write_outputs(o: LoadtestOptions, storm: Storm, end: float, stopped, interrupted,
                   logs: Path) -> tuple[dict, list[Path]]:
    """summary.json and timeseries.csv from the logs in `logs`, then the report beside the simulation."""
    from sim.runner import finite_json, write_timeseries
    attempts, states = read_logs(logs / "attempts.csv", logs / "states.csv")
    run = measured_run(_story_scenario(storm), end, attempts, states)
    summary = {k: run.summary[k] for k in CLIENT_FIELDS}
    client = storm.scenario.client
    summary.update(target=o.host, speed=storm.plan.speed, policy=client.policy.preset or storm.policy.name,
                   limiter=storm.limiter.describe() if storm.limiter is not None else None,
                   devices=storm.plan.devices, stopped=stopped, interrupted=interrupted)
    summary = finite_json(summary)
    (o.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = [o.out / "summary.json", write_timeseries(run.timeseries, o.out / "timeseries.csv")]
    return summary, files + _write_versus(o, storm, summary, run.timeseries, end)


def lab_capacity(host: str) -> dict | None:
    """The lab server's published `[server]` table (GET /server.json), None if the host is not a lab."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/server.json", timeout=3) as answer:
            published = json.load(answer)
    except (OSError, ValueError):
        return None
    return published if isinstance(published, dict) and "server" in published else None


def _write_versus(o: LoadtestOptions, storm: Storm, measured_summary: dict, measured_ts: dict,
                  end: float) -> list[Path]:
    """The simulation of what the load test did, up to where it ended (`end`, real seconds), and
    the report that sets the two side by side."""
    from loadtests.capacity import Capacity, read_capacity, twin_server
    from loadtests.twin import simulated_twin
    from loadtests.versus import write_versus_report
    from sim.scenario import Server
    notes, capacity = [], None
    if o.capacity in ("auto", "lab"):
        published = lab_capacity(o.host) if host_allowed(o.host, []) or o.capacity == "lab" else None
        if published is not None and published.get("mode") == "sleep":
            capacity = Capacity("lab", "the lab's own table", server=Server.model_validate(published["server"]))
            notes.append("capacity: the lab server's own [server] table (GET /server.json)")
        elif published is not None:
            notes.append("the lab runs in cpu mode: its service time is the hash; give --capacity from "
                         "`loginstorm calibrate`")
        elif o.capacity == "lab":
            notes.append(f"{o.host} did not answer GET /server.json: no lab capacity to simulate")
    elif o.capacity != "none":
        capacity = read_capacity(o.capacity)
        notes.append(f"capacity: {capacity.label}")
    if capacity is None:
        notes.append("no capacity known (--capacity): the report shows the measured storm only")
        return _measured_only_report(o, storm, measured_summary, measured_ts, notes)
    server, _sources = twin_server(storm.scenario, capacity)   # a real server's figures: not scaled
    simulated = simulated_twin(storm.scenario, speed=storm.plan.speed, capacity=server, until=end,
                               replications=o.replications)
    return write_versus_report(o.out, storm.scenario, speed=storm.plan.speed,
                               measured_summary=measured_summary, measured_ts=measured_ts,
                               simulated=simulated,
                               title=f"{storm.scenario.name}, {storm.policy.name}: load test vs simulation",
                               notes=notes, capacity=capacity, until=end)


def _measured_only_report(o: LoadtestOptions, storm: Storm, summary: dict, ts: dict, notes: list[str]) -> list[Path]:
    """report.html without a simulation: the simulator's run figure of the measured storm."""
    import html

    from loadtests.versus import versus_curves
    from sim.plots import figure_images, versus_figure
    from sim.report import figure_html, html_page, table_html, write_html

    story = _story_scenario(storm)
    clients = float(summary["clients"])
    div = {"bins_compared": len(ts["t"]), "bin_s": story.bin_width, "clients": clients,
           "online_share": {"definition": "online / clients", "smooth_bins": 3}}
    fig = versus_figure(versus_curves(ts, div), [], story, div, title=f"{storm.scenario.name}, {storm.policy.name}: "
                                                                       "measured by the load test")
    png, _ = figure_images(fig, o.out / "versus", svg=False)
    figure = figure_html(png, "The measured storm (no simulation: no capacity known)")
    rows = [[key, json.dumps(value)] for key, value in summary.items()]
    body = (f"<h1>{html.escape(storm.scenario.name)}: load test</h1>"
            + "".join(f"<p>{html.escape(note)}</p>" for note in notes)
            + figure + table_html(["measured", "value"], rows))
    return [o.out / "versus.png", write_html(o.out / "report.html", html_page(f"{storm.scenario.name}: load test",
                                                                                 body))]
