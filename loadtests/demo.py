"""`make demo-loadtest`: the lab server, a one-minute scaled quickstart storm against it with two
policies, and a page that sets the two measured-versus-simulated reports side by side.

    python -m loadtests.demo --out out/demo-loadtest

The lab sends no Retry-After (`--set server.retry_after=0s`, for the lab and the load test
alike), so the two policies differ: `none` retries a refused login at once, `full-jitter` waits.
For each policy a fresh lab server (`loginstorm lab quickstart --scale S`, loopback, a free port)
serves generated users; `loginstorm loadtest` replays the storm against it and simulates the same
thing with the lab's own `[server]` table; the lab is then stopped by its PID.
"""

from __future__ import annotations

import argparse
import html
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

from loadtests.command import terminate_as_interrupt
from sim.report import html_page, table_html, write_html

POLICIES = ("none", "full-jitter")
#: without the quickstart's Retry-After of 5 s on a full queue, the policies alone decide when
#: devices retry: `none` hammers the refusing lab, `full-jitter` spreads out
DEFAULT_SETS = ["server.retry_after=0s"]


def _lab(scenario: str, scale: float, sets: list[str], users: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "lab", scenario, "--scale", repr(scale), "--port", "0",
                             *_set_args(sets), "--write-credentials", str(users), "--users", "2000", "--serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        first = lines.get(timeout=30)
    except queue.Empty:
        first = ""
    if "listening on " not in first:
        _stop(proc)
        raise SystemExit("loginstorm demo: the lab server did not start")
    return proc, first.split("listening on ", 1)[1].split()[0]


def _loadtest(cmd: list[str]) -> int:
    """`loginstorm loadtest` in its own session; Ctrl-C or `kill` here reaches it once, as SIGTERM,
    so that it stops Locust gracefully and still writes its report (then this raises again)."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc, grace=60)
        raise


def _stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    with terminate_as_interrupt():       # `kill` stops the lab and the load test, as Ctrl-C does
        try:
            return _demo(argv)
        except KeyboardInterrupt:
            print("loginstorm demo: interrupted; the load test and the lab are stopped", file=sys.stderr)
            return 130


def _demo(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo-loadtest"))
    parser.add_argument("--scenario", default="quickstart")
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--speed", type=float, default=10.0)
    parser.add_argument("--run-time", default="60s")
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                        help="override a scenario key, for the lab and the load test alike (default: "
                             f"{' '.join(DEFAULT_SETS)})")
    args = parser.parse_args(argv)
    args.sets = DEFAULT_SETS if args.sets is None else args.sets
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for policy in POLICIES:
        lab, url = _lab(args.scenario, args.scale, args.sets, args.out / "users.csv")
        try:
            print(f"{policy}: the storm against the lab at {url} ({args.run_time})", flush=True)
            returncode = _loadtest([sys.executable, "-m", "sim.cli", "loadtest", args.scenario, "--host", url,
                                    "--scale", repr(args.scale), "--speed", repr(args.speed), "--policy", policy,
                                    "--credentials", str(args.out / "users.csv"), "--run-time", args.run_time,
                                    "--out", str(args.out / policy), *_set_args(args.sets)])
        finally:
            _stop(lab)
        if returncode != 0:
            return returncode
        versus = json.loads((args.out / policy / "versus.json").read_text())
        summary = json.loads((args.out / policy / "summary.json").read_text())
        rows.append([policy, f"{summary['attempts']:,}", _x(versus["amplification"]["measured"]),
                     _x(versus["amplification"]["simulated"]),
                     _s(versus["recovery_p90_s"]["measured"]), _s(versus["recovery_p90_s"]["simulated"]),
                     f"{versus['online_share']['max_gap'] * 100:.1f} points", versus["verdict"]["text"]])
    body = (f"<h1>Load test vs simulation: {html.escape(args.scenario)} at scale {args.scale:g}, "
            f"speed {args.speed:g}</h1><p>Each policy's storm ran against a fresh lab server for "
            f"{html.escape(args.run_time)}; its report: "
            + ", ".join(f"<a href=\"{p}/report.html\">{p}</a>" for p in POLICIES) + ".</p>"
            + table_html(["policy", "attempts", "amplification measured", "simulated", "recovery p90 measured",
                          "simulated", "largest online-share gap", "verdict"], rows))
    index = write_html(args.out / "index.html", html_page("loginstorm: load test vs simulation", body))
    print(f"wrote {index}")
    return 0


def _set_args(sets: list[str]) -> list[str]:
    return [word for item in sets for word in ("--set", item)]


def _x(value: float | None) -> str:
    """An amplification (attempts per episode); none when no episode began, as in a run cut short."""
    return "n/a" if value is None else f"{value:.2f}"


def _s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    raise SystemExit(main())
