"""The fuzz test's driver: runs `loginstorm` command lines one after another, in this process
through Typer's runner, each bounded in time and all in memory, with the network shut.

    python tests/fuzz_driver.py WORKDIR MEMORY_MB  < one JSON case a line   > one JSON outcome a line

A case is `{"argv": [...], "timeout": seconds}` (or `"inject"`: the harness's own self-test);
its outcome says how the call ended: exit code, the exception that escaped the runner with the
last lines of its traceback, the output's tail, whether it timed out or reached the network.
`tests/test_fuzz.py` judges the outcomes; this file only runs the calls.

The bounds: RLIMIT_AS caps the address space (a huge allocation is a MemoryError, not a swapping
machine; the reference engine and the cached compiled one need a few hundred MB), an interval
timer raises `CallTimeout` in a call that runs too long; the test kills this process (by its
PID) if even that does not end the call. The network: every IP socket's connect, bind and
sendto, and every subprocess, raise `NetworkBlocked`; only loopback names resolve. Both are
BaseExceptions, so that no `except Exception` in the code under test can swallow them.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from typing import Iterator

OUTPUT_TAIL = 3000          # characters of the output kept in an outcome
TRACEBACK_LINES = 16        # last lines of an escaped exception's traceback
LOOPBACK = {None, "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


class CallTimeout(BaseException):
    """The call ran past its time bound (raised by the interval timer)."""


class NetworkBlocked(BaseException):
    """The call tried to reach the network or start a process: nothing is ever sent from here."""


def _blocked(what: str):
    def refuse(self, *args, **kwargs):
        if getattr(self, "family", None) == socket.AF_UNIX:     # a process pool's own plumbing
            return original[what](self, *args, **kwargs)
        raise NetworkBlocked(f"socket.{what}{args!r}")
    return refuse


original = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex", "bind", "sendto")}
_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    """Name resolution for loopback names only; any other name is unknown (no DNS query)."""
    name = host.decode() if isinstance(host, bytes) else host
    if name not in LOOPBACK:
        raise socket.gaierror(socket.EAI_NONAME, f"name resolution is off in the fuzz test: {name!r}")
    return _getaddrinfo(host, *args, **kwargs)


class _NoProcess:
    def __new__(cls, *args, **kwargs):
        raise NetworkBlocked(f"subprocess.Popen({args[0] if args else kwargs.get('args')!r})")


def shut_network() -> None:
    for name in original:
        setattr(socket.socket, name, _blocked(name))
    socket.getaddrinfo = _loopback_only
    subprocess.Popen = _NoProcess


def limit_memory(megabytes: int) -> None:
    """Cap the address space (inherited by a process pool's workers)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = megabytes << 20 if hard == resource.RLIM_INFINITY else min(megabytes << 20, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _on_alarm(signum, frame):
    raise CallTimeout()


@contextmanager
def injected(kind: str | None) -> Iterator[None]:
    """The harness's self-test: `loginstorm validate` made to crash, hang or eat memory, for one call."""
    if kind is None:
        yield
        return
    import sim.cli.scenarios as commands

    def crash(path):
        raise RuntimeError("injected crash")

    def hang(path):
        while True:
            time.sleep(0.01)

    def hog(path):
        return bytearray(1 << 40)

    kept = commands.read_scenario
    commands.read_scenario = {"crash": crash, "hang": hang, "hog": hog}[kind]
    try:
        yield
    finally:
        commands.read_scenario = kept


def run_case(runner, app, case: dict) -> dict:
    """One call of the CLI, bounded by `case["timeout"]` seconds."""
    started = time.perf_counter()
    outcome: dict = {"exit_code": None, "exception": None, "traceback": None, "output": "", "timeout": False,
                     "blocked": None}
    signal.setitimer(signal.ITIMER_REAL, float(case["timeout"]))
    try:
        with injected(case.get("inject")):
            result = runner.invoke(app, case["argv"], catch_exceptions=True)
        signal.setitimer(signal.ITIMER_REAL, 0)
        outcome["exit_code"] = result.exit_code
        outcome["output"] = result.output[-OUTPUT_TAIL:]
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            outcome["exception"] = f"{type(result.exception).__name__}: {result.exception}"[:500]
            lines = "".join(traceback.format_exception(*result.exc_info)).splitlines()
            outcome["traceback"] = "\n".join(lines[-TRACEBACK_LINES:])
    except CallTimeout as exc:
        outcome["timeout"] = True
        outcome["traceback"] = "\n".join("".join(traceback.format_exception(exc)).splitlines()[-TRACEBACK_LINES:])
    except NetworkBlocked as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        outcome["blocked"] = str(exc)[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    outcome["seconds"] = round(time.perf_counter() - started, 3)
    return outcome


def main(workdir: str, megabytes: int) -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)                    # what bypasses the runner's capture must not garble the protocol
    os.dup2(null, 2)
    os.chdir(workdir)
    limit_memory(megabytes)
    shut_network()
    signal.signal(signal.SIGALRM, _on_alarm)
    from typer.testing import CliRunner

    from sim.cli import app
    runner = CliRunner()
    protocol.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        protocol.write(json.dumps(run_case(runner, app, json.loads(line))) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
