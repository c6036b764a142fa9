"""Whatever it is given, `loginstorm` ends with exit status 0 or 2, without a traceback, in a few
seconds and within a memory bound (issue 18, part 10).

Hypothesis generates scenario documents (the shipped ones mutated: keys deleted, types changed,
numbers out of range, odd durations, unknown keys, mistyped event kinds, grafted tables, deep
nesting, bytes that are not UTF-8, a BOM, empty files, random bytes) and command lines (each
command's own options, read from the Typer app, with good, bad and garbage values). Every call
runs in tests/fuzz_driver.py, a subprocess with the address space capped at MEMORY_MB, a timer of
CALL_TIMEOUT seconds per call and the network shut; a failure shows the command line and the
files it read (Hypothesis's falsifying example), the exception and its last traceback lines.

Valid runs are kept small: the reference engine, a minute or two of simulated time, about
CLIENTS devices (--scale fitted to the scenario), one replication, one job; --no-limits is never
given. The load-test commands that send (loadtest, calibrate) always get one input that must stop
them before anything is sent, or --from-logs (which sends nothing): if one still goes on to the
network or starts Locust, the driver blocks it and the test fails. The lab may go as far as
binding its socket, which the driver blocks too.
"""

from __future__ import annotations

import copy

import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cli import app
from sim.config import shipped_scenarios

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "fuzz_driver.py"
CALL_TIMEOUT = float(os.environ.get("LOGINSTORM_FUZZ_TIMEOUT", "10"))   # seconds per call (interval timer)
HARD_GRACE = 15.0             # more seconds before the driver itself is killed (stuck outside Python)
MEMORY_MB = 1536              # RLIMIT_AS of the driver: the engines need a few hundred MB
CLIENTS = 300                 # the population a valid run is scaled to
SEND = ("loadtest", "calibrate")
NEVER = {"no_limits"}         # options never given: they lift the very bounds under test
OUT_OF_MEMORY = re.compile(r"MemoryError|out of memory", re.IGNORECASE)

QUICK = settings(max_examples=60, deadline=None, derandomize=True, database=None, print_blob=False,
                 suppress_health_check=list(HealthCheck))
THOROUGH = settings(QUICK, max_examples=120)


# --- the driver -----------------------------------------------------------------------------

class Driver:
    """tests/fuzz_driver.py as a subprocess (its own session: killed as a group, by its PID)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self._buffer = b""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOGINSTORM_")}
        # LOGINSTORM_DEBUG: a bug's exception escapes with its traceback (else: exit 1 and one line)
        env.update(MPLBACKEND="Agg", NO_COLOR="1", COLUMNS="120", PYTHONPATH=str(ROOT), LOGINSTORM_DEBUG="1")
        self.proc = subprocess.Popen([sys.executable, str(DRIVER), str(self.workdir), str(MEMORY_MB)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=self.workdir, env=env, start_new_session=True, bufsize=0)
        self._buffer = b""
        ready = self._reply(60)
        assert ready is not None and "ready" in ready, "the fuzz driver did not start"

    def stop(self) -> None:
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc = None

    def call(self, argv: list[str], timeout: float = CALL_TIMEOUT, inject: str | None = None) -> dict[str, Any]:
        """One command line's outcome (see fuzz_driver.run_case), or `died`/`hung`."""
        if self.proc is None:
            self.start()
        try:
            self.proc.stdin.write(json.dumps({"argv": argv, "timeout": timeout, "inject": inject}).encode() + b"\n")
            reply = self._reply(timeout + HARD_GRACE)
        except BrokenPipeError:
            reply = None
        if reply is None:
            code = self.proc.poll()
            self.stop()
            return {"died": code} if code is not None else {"hung": timeout + HARD_GRACE}
        return reply

    def _reply(self, timeout: float) -> dict[str, Any] | None:
        deadline, fd = time.monotonic() + timeout, self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


def failures(outcome: dict[str, Any], command: str) -> list[str]:
    """What is wrong with an outcome: [] when the call ended as a command line should."""
    if "died" in outcome:
        return [f"the driver died (status {outcome['died']}): a crash below Python, or killed for memory"]
    if "hung" in outcome:
        return [f"no end within {outcome['hung']:g} s, not even at the timer (stuck outside Python)"]
    found = []
    if outcome["timeout"]:
        found.append(f"no end within the {CALL_TIMEOUT:g} s bound:\n{outcome['traceback']}")
    blocked = outcome["blocked"]
    if blocked and not (command == "lab" and blocked.startswith("socket.bind")):
        found.append(f"went on to send (blocked by the driver): {blocked}")
    if outcome["exception"]:
        found.append(f"an exception escaped: {outcome['exception']}\n{outcome['traceback']}")
    elif "Traceback" in outcome["output"]:
        found.append("a traceback in the output")
    if OUT_OF_MEMORY.search(outcome["output"]):
        found.append(f"met the {MEMORY_MB} MB memory limit: a run this big must be refused before it starts")
    if not (found or blocked) and outcome["exit_code"] not in (0, 2):
        found.append(f"exit status {outcome['exit_code']}")
    return found


@dataclass(frozen=True)
class Case:
    """A command line and the files it reads (path under the work folder -> bytes; None: a folder)."""

    argv: tuple[str, ...]
    files: tuple[tuple[str, bytes | None], ...] = ()

    def write(self, root: Path) -> None:
        for entry in root.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for name, content in FIXTURES + self.files:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(exist_ok=True) if content is None else path.write_bytes(content)

    def __repr__(self) -> str:
        shown = [f"loginstorm {shlex.join(self.argv)}"]
        shown += [f"--- {name}:\n{_shown(content)}" for name, content in self.files if content is not None]
        return "\n".join(shown)


def _shown(content: bytes) -> str:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        text = repr(content)
    return text if len(text) <= 3000 else text[:3000] + f"... ({len(text)} characters)"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = Driver(tmp_path_factory.mktemp("fuzz"))
    yield d
    d.stop()


def check(driver: Driver, case: Case) -> None:
    case.write(driver.workdir)
    outcome = driver.call(list(case.argv))
    problems = failures(outcome, case.argv[0])
    if problems:
        driver.stop()                     # a fresh driver for the next example: this one's state is suspect
    output = outcome.get("output", "")[-1500:]
    assert not problems, "\n".join(problems) + f"\n--- output (last lines):\n{output}"


# --- scenario documents ---------------------------------------------------------------------

SHIPPED = {p.stem: p.read_bytes() for p in shipped_scenarios()}
EVERY_KEY = tomllib.loads(SHIPPED["every-key"].decode("utf-8"))

NUMBERS = (0, -1, 1, 2, 0.5, 1e-300, 1e300, -1e300, math.nan, math.inf, -math.inf, 2**63, -(2**63), 10**30)
DURATIONS = ("0s", "1ms", "30s", "2m", "30d", "-5m", "abc", "", "inf", "-inf", "nan", "1e300s", "1e400s", "5",
             "1h30", "1.5.2m", "10 m", "\u0663s", "1e-300s")
OTHERS = (True, False, [], [1, "a"], {}, {"dist": "bogus"}, {"dist": "uniform", "low": "5s", "high": "1s"},
          {"dist": "lognormal", "median": "1s", "p99": "0s"}, {"dist": "empirical", "values": []},
          {"dist": "normal", "mean": "1s", "sd": "inf"}, "x" * 5000, "\u00e9\u200b", "${LOGINSTORM_NOPE}",
          {"name": "grpc", "multiplier": 1e300}, {"rate": 1e-300}, [[[[[]]]]],
          # limiters and presets (a [client.limiter] table, a policy name)
          {"kind": "breaker", "window_type": "time", "window": "0s"}, {"kind": "quota", "capacity": -1},
          {"kind": "adaptive", "k": 1e300}, {"kind": "budget", "ttl": "1ms"}, {"kind": "breaker", "window": 1e9},
          {"kind": "throttle", "scope": "shared", "groups": 0}, "aws-sdk-standard", "polly", "presets")
# a fresh copy each time: a mutation may add keys to a table it drew, which must not leak into later examples
VALUES = st.sampled_from(NUMBERS + DURATIONS + OTHERS).map(copy.deepcopy)
KINDS = ("reboot", "disconnect", "login", "outage", "capacity", "admit", "partition", "surge", "failover",
         "p2p-rules", "reboto", "Reboot", "p2p_rules", "outages", "", " reboot", 7, None)
KEYS = ("bogus", "", "a.b", "\u00e9", "workrs", "clients ", "Duration", "kind", "at", "dist", "waves")


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a parsed document, tables and lists included (not the root)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found.append(prefix + (key,))
        found += paths(value, prefix + (key,))
    return found


def _parent(doc: dict, path: tuple) -> Any:
    """The table or list that holds the last key of `path`."""
    for key in path[:-1]:
        doc = doc[key]
    return doc


def delete_key(doc: dict, draw: Callable) -> None:
    if options := paths(doc):
        path = draw(st.sampled_from(options))
        del _parent(doc, path)[path[-1]]


def replace_value(doc: dict, draw: Callable) -> None:
    if options := paths(doc):
        path = draw(st.sampled_from(options))
        _parent(doc, path)[path[-1]] = draw(VALUES)


def add_unknown_key(doc: dict, draw: Callable) -> None:
    """A key no table has, or a near-miss of one of the table's own keys."""
    tables = [doc] + [value for p in paths(doc) if isinstance(value := _parent(doc, p)[p[-1]], dict)]
    table = draw(st.sampled_from(tables))
    key = draw(st.sampled_from(KEYS + tuple(table))) + draw(st.sampled_from(("", "s", "_", "\u200b")))
    table[key] = draw(VALUES)


def mistype_event_kind(doc: dict, draw: Callable) -> None:
    events = doc.get("events")
    if isinstance(events, list) and events and isinstance(events[0], dict):
        event = events[draw(st.integers(0, len(events) - 1))]
        if isinstance(event, dict):
            event["kind"] = draw(st.sampled_from(KINDS))


def graft_table(doc: dict, draw: Callable) -> None:
    """A table of every-key.toml put into this document: p2p, target, protections, another event."""
    what = draw(st.sampled_from([("server", "p2p"), ("target",), ("server", "rate_limit"), ("server", "overload"),
                                 ("client", "policy"), ("events",)]))
    if what == ("events",):
        event = dict(draw(st.sampled_from(EVERY_KEY["events"])), at="30s")
        doc["events"] = (doc["events"] if isinstance(doc.get("events"), list) else []) + [event]
        return
    table = doc
    for key in what[:-1]:
        table = table.setdefault(key, {}) if isinstance(table.get(key, {}), dict) else {}
    table[what[-1]] = json.loads(json.dumps(_parent(EVERY_KEY, what)[what[-1]]))


MUTATIONS = (delete_key, replace_value, replace_value, add_unknown_key, mistype_event_kind, graft_table)


def toml(doc: dict) -> str:
    """A parsed document as TOML again, every table inline (the loader sees the same values)."""
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in doc.items())


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))           # None and the like: a string


def _nested(depth: int, opening: bytes, closing: bytes) -> bytes:
    return b"deep = " + opening * depth + b"1" * (opening == b"{a = ") + closing * depth + b"\n"


@st.composite
def raw_bytes(draw, text: bytes) -> bytes:
    """The document's bytes, mostly as written, else spoilt: a BOM, bytes that are not UTF-8, cut
    short, CRLF, a key twice, nesting thousands deep, UTF-16, empty, random bytes."""
    at = draw(st.integers(0, len(text)))
    line = text.split(b"\n")[0] + b"\n"
    return draw(st.sampled_from([
        *[text] * 20,
        b"\xef\xbb\xbf" + text,
        text[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x00", b"\xed\xa0\x80", b"\x7f"])) + text[at:],
        text[:at],
        text.replace(b"\n", b"\r\n"),
        text + line,
        text + _nested(draw(st.sampled_from([50, 3000, 100_000])), b"[", b"]"),
        text + _nested(draw(st.sampled_from([50, 3000, 100_000])), b"{a = ", b"}"),
        text.decode("utf-8", "replace").encode("utf-16"),
        b"",
        draw(st.binary(max_size=300)),
    ]))


@st.composite
def documents(draw) -> tuple[bytes, float]:
    """A shipped scenario, mutated; its bytes and its population (to fit --scale to)."""
    name = draw(st.sampled_from(sorted(SHIPPED)))
    doc = tomllib.loads(SHIPPED[name].decode("utf-8"))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3, 4]))):
        draw(st.sampled_from(MUTATIONS))(doc, draw)
    return draw(raw_bytes(toml(doc).encode("utf-8"))), population(doc)


def population(doc: Any) -> float:
    clients = doc.get("population", {}).get("clients") if isinstance(doc, dict) and \
        isinstance(doc.get("population"), dict) else None
    ok = isinstance(clients, (int, float)) and not isinstance(clients, bool) and math.isfinite(clients)
    return float(clients) if ok and clients > 0 else 1.0


def fitted_scale(clients: float) -> str:
    """--scale that makes a run of about CLIENTS devices."""
    return f"{min(1.0, CLIENTS / clients):.3g}"


# --- command lines --------------------------------------------------------------------------

QUICKSTART = SHIPPED["quickstart"]
TARGET = b'[target]\nhost = "http://127.0.0.1:9"\nflow = "json"\npath = "/api/login"\n'
#: a load test's logs (loadtests.attemptlog) as --from-logs reads them: plausible, and spoilt
ATTEMPTS = (b"device,episode,attempt,start_s,seconds,outcome,status,retry_after_s,wait_s,message\n"
            b"1,1,1,0.5,0.01,ok,200,,,\n2,1,1,1.0,0.2,rejected,503,5,,\n2,1,2,6.0,0.1,ok,200,,,\n")
STATES = b"t_s,device,from,to\n0,1,offline,connecting\n0.51,1,connecting,online\n0,2,offline,connecting\n"
SPOILT_ATTEMPTS = ATTEMPTS + b"3,1,1,nan,inf,ok,200,,,\n4,1,1,1e300,-1,bogus,0,,,\nx,,\n"
SPOILT_STATES = STATES + b"1e300,2,bogus,online\n-1,3,online,online\n"
FIXTURES: tuple[tuple[str, bytes | None], ...] = (
    ("c/good.toml", QUICKSTART), ("c/target.toml", TARGET), ("c/garbage.bin", bytes(range(256)) * 3),
    ("c/empty.toml", b""), ("c/file.txt", b"a file\n"), ("c/empty", None),
    ("c/users.csv", b"username,password\nalice,secret1\nbob,secret2\n"), ("c/bad.csv", b"\xff\xfe,\n,,,\n"),
    ("c/logs/attempts.csv", ATTEMPTS), ("c/logs/states.csv", STATES),
    ("c/spoilt/attempts.csv", SPOILT_ATTEMPTS), ("c/spoilt/states.csv", SPOILT_STATES),
    ("c/other/attempts.csv", b"t,device,latency\n0.5,1,0.01\n"), ("c/other/states.csv", b"\xff\n"),
    ("c/capacity.toml", b"[server]\nworkers = 1\nservice_time = \"20ms\"\n"),
)
SCENARIO_CLIENTS = {**{name: population(tomllib.loads(text.decode())) for name, text in SHIPPED.items()},
                    "c/good.toml": population(tomllib.loads(QUICKSTART.decode()))}
SCENARIOS = (*SHIPPED, "c/good.toml", "c/good.toml", "c/target.toml", "c/garbage.bin", "c/empty.toml", "c/missing.toml",
             "c", "", "quickstrat", "c/file.txt", "c/\udcff.toml")
SET_KEYS = ("server.workers", "population.clients", "population.login_rate", "duration", "resolution", "warmup",
            "seed", "client.timeout", "client.policy", "client.policy.name", "events.0.fraction", "events.0.at",
            "events.0.kind", "events.99.at", "events.-1.at", "server.p2p", "server", "target.host", "a.b.c.d",
            "server..workers", "", "server.workers.x", "events", "client.rtt", "client.policy",
            "client.limiter.kind", "client.limiter.scope", "client.limiter.window", "client.limiter.groups",
            "client.limiter", "server.fault_rate", "server.fault_when")
SET_VALUES = ("1", "2", "0", "-1", "0.5", "nan", "inf", "1e300", "1" + "0" * 30, "abc", '"30s"', "1ms", "30d",
              "", "{", "[[", "[" * 3000 + "]" * 3000, "{}", "[]", '{name = "full-jitter"}', "true", '"\u00e9"',
              "fifo", "x" * 10000, '"none"', '"reboot"', '"aws-sdk-standard"', '"polly"', '"breaker"', '"shared"',
              '{kind = "budget", percent = 1e300}', '"after-service"')


def _tokens(*values: str) -> st.SearchStrategy[list[str]]:
    return st.sampled_from(values).map(lambda v: [v])


SETS = st.builds(lambda k, sep, v: [f"{k}{sep}{v}"], st.sampled_from(SET_KEYS), st.sampled_from(("=", "==", ":", "")),
                 st.sampled_from(SET_VALUES))
SECONDS = ("0.1", "1", "3", "0", "-1", "nan", "inf", "1e300", "abc", "")
OUT = ("c/out", "c/out/deeper", "", "c/file.txt", "c/file.txt/sub", "/proc/loginstorm-fuzz", "/dev/null",
       "c/\u00fcn\u00efc\u00f8d\u00e9 out")
#: values for each option, by the parameter's name: good ones, bad ones and garbage
VALUES_BY_NAME: dict[str, st.SearchStrategy[list[str]]] = {
    "sets": SETS,
    "seed": _tokens("0", "1", "4294967296", "-1", "x", "1.5", "18446744073709551616", "1" + "0" * 40),
    "engine": _tokens("des", "des", "auto", "DES", "fst", "", "numba"),
    "until": _tokens("1m", "90s", "1ms", "0", "0s", "-5m", "abc", "", "nan"),
    "replications": _tokens("1", "2", "0", "-1", "x", "99999999999", "1" + "0" * 30),
    "jobs": _tokens("1", "2", "0", "-1", "x", "1000000000"),
    "out_dir": _tokens(*OUT), "out": _tokens(*OUT), "out_file": _tokens(*(f"{o}/server.toml" for o in OUT), *OUT),
    "policy": _tokens("exponential", "full-jitter", "none", "grpc", "expo", "", "all", "Exponential",
                      "aws-sdk-standard", "polly", "presets"),
    "policies": _tokens("none,exponential", "exponential", "expo,none", "", ",", "all,all", "none,none", "bogus",
                        "presets", "aws-sdk-standard,polly", "aws-sdk-standrd"),
    "base": _tokens("1s", "250ms", "5m", "inf", "0s", "-1s", "abc", "", "1e300s", "nan"),
    "cap": _tokens("1s", "5m", "inf", "0s", "-1s", "abc", "", "1e300s", "nan"),
    "multiplier": _tokens("1", "1.6", "2", "0.5", "0", "-1", "nan", "inf", "1e300", "abc"),
    "retries": _tokens("1", "10", "30", "0", "31", "-1", "x", "1" + "0" * 20),
    "variant": _tokens("lifo=server.discipline=lifo", "=", "a=", "=server.workers=3", "x=server.workers=abc",
                       "x=bogus.key=1", "x=server.workers=1,server.queue_limit=5", "noequals", "a=server.workers=2",
                       "y=server.workers=1e300", "z=population.clients=1" + "0" * 30),
    "grid": _tokens("server.workers=1,2", "events.0.fraction=0.1:0.5:2", "client.timeout=1s,5s", "server.workers=",
                    "=1,2", "server.workers=1:10:0", "server.workers=1:4:1000000000", "bogus=1,2", "server.workers=a,b",
                    "seed=1,2", "events.0.fraction=0.01:1:2:log", "server.workers=1:1e300:2", "server.workers=2:1:2",
                    "server.workers=0:0:1:log", "x", "", "client.policy=1,2", "server.workers=nan:inf:2"),
    "dask": _tokens("nowhere", "serial", "process", ""),
    "vary": _tokens("server.workers", "events.0.fraction", "client.timeout", "population.clients", "bogus.key", "",
                    "seed", "server.discipline", "events.99.at"),
    "lo": _tokens("1", "0.05", "1s", "0", "-1", "nan", "inf", "abc", "1e300", ""),
    "hi": _tokens("4", "0.9", "30s", "0", "-1", "nan", "inf", "abc", "1e300", ""),
    "recovery_limit": _tokens("10m", "30s", "0", "-1m", "abc", "", "inf"),
    "tolerance": _tokens("5%", "50%", "0.5", "30s", "0", "0%", "-5%", "abc", "", "nan", "1e-300", "100%", "1000%"),
    "host": _tokens("http://127.0.0.1:9", "http://localhost:9", "127.0.0.1", "localhost", "::1", "", "[::1]",
                    "http://127.0.0.1:99999", "http://[::1", "ftp://127.0.0.1", "http://user@127.0.0.1:9"),
    "port": _tokens("0", "8080", "65535", "65536", "-1", "x", "99999"),
    "mode": _tokens("sleep", "cpu", "CPU", "", "bogus"),
    "hash_iterations": _tokens("1", "1000", "0", "-1", "x", "1" + "0" * 30),
    "users": _tokens("1", "5", "0", "-1", "x", "1" + "0" * 12),
    "credentials": _tokens("c/users.csv", "c/bad.csv", "c/missing.csv", "c", "c/garbage.bin", "c/empty.toml"),
    "write_credentials": _tokens("c/new.csv", "c/file.txt/sub.csv", "/proc/loginstorm-fuzz.csv", "c"),
    "target": _tokens("c/target.toml", "c/good.toml", "c/garbage.bin", "c/missing.toml", "c"),
    "from_logs": _tokens("c/logs", "c/spoilt", "c/other", "c/empty", "c/missing", "c/file.txt"),
    "speed": _tokens("1", "10", "0.5", "0", "-1", "nan", "inf", "1e300", "abc"),
    "run_time": _tokens("10s", "0", "-1s", "abc", "", "inf", "1e300s"),
    "stop_after": _tokens("10s", "0", "-1s", "abc", "", "inf", "1e300s"),
    "stop_on_p99": _tokens("5s", "0", "-1s", "abc", "", "inf"),
    "processes": _tokens("1", "2", "0", "-1", "x"),
    "max_rps": _tokens("0", "10", "-1", "nan", "inf", "abc"),
    "stop_on_error_rate": _tokens("0", "0.5", "1", "1.5", "-0.1", "nan", "abc"),
    "capacity": _tokens("auto", "lab", "none", "workers=1,service_time=20ms", "workers=abc", "bogus=1",
                        "c/capacity.toml", "c/missing.toml", "c/garbage.bin", "", "rate_limit.rate=20",
                        "workers=1e300"),
    "max_concurrency": _tokens("1", "64", "0", "1025", "x"),
    "step_seconds": _tokens(*SECONDS), "warmup": _tokens(*SECONDS), "timeout": _tokens(*SECONDS),
    "files": st.lists(st.sampled_from(SCENARIOS), min_size=1, max_size=3),
}
#: an option not in the table above gets values by its type
VALUES_BY_TYPE = {int: _tokens("1", "0", "-1", "x", "1" + "0" * 30), float: _tokens(*SECONDS, "0.5"),
                  str: _tokens("", "x", "\u00e9", "-", "--"), Path: _tokens("c/missing", "c", "c/file.txt", "")}
BAD_SCALES = ("0", "-1", "nan", "inf", "1e300", "abc", "1e-300")
GARBAGE = ("--bogus", "-x", "--", "-", "--help", "--set", "\u00fc", "c/missing.toml")
#: the options every valid run gets first (a later occurrence wins): small, quick, local
SMALL = {"simulate": ["--engine", "des", "--until", "2m", "--out", "c/out"],
         "compare": ["--engine", "des", "--until", "2m", "--replications", "1", "--jobs", "1", "--policies",
                     "none,exponential", "--out", "c/out"],
         "sweep": ["--engine", "des", "--until", "2m", "--replications", "1", "--jobs", "1", "--out", "c/out"],
         "threshold": ["--engine", "des", "--until", "2m", "--replications", "1", "--jobs", "1", "--vary",
                       "server.workers", "--lo", "1", "--hi", "3"],
         "lab": ["--port", "0", "--users", "2"],
         "loadtest": ["--out", "c/lt", "--replications", "1"],
         "calibrate": ["--out", "c/cal/server.toml", "--max-concurrency", "1", "--step-seconds", "0.1"]}
#: the last options of a command that sends: each one stops it before anything is sent
NOTHING_SENT = {
    "loadtest": [["--from-logs", "c/empty"], ["--from-logs", "c/logs", "--capacity", "none"],
                 ["--from-logs", "c/spoilt", "--capacity", "none"], ["--from-logs", "c/other", "--capacity", "none"],
                 ["--host", "127.0.0.1:9"], ["--host", "ftp://127.0.0.1:9"], ["--host", "http://user:pw@127.0.0.1:9"],
                 ["--host", "http://"], ["--host", "http://127.0.0.1:99999"], ["--host", "http://[::1"]],
    "calibrate": [["--host", "127.0.0.1:9"], ["--host", "ftp://127.0.0.1:9"], ["--host", "http://user@127.0.0.1:9"],
                  ["--host", "http://"], ["--host", "http://127.0.0.1:99999"], ["--host", "http://[::1"]],
}
COMMANDS = typer.main.get_command(app).commands
#: the commands a document is given to (validate and simulate more often: each reads all of it)
ON_DOCUMENTS = ("validate", "validate", "simulate", "simulate", "compare", "sweep", "threshold", "loadtest",
                "calibrate", "lab")


def _annotation(param: Any) -> Any:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return getattr(annotation, "__args__", (annotation,))[0] if hasattr(annotation, "__args__") else annotation


def option_tokens(param: Any, draw: Callable) -> list[str]:
    """One occurrence of an option on the command line: its flag and a value (none for a flag)."""
    if getattr(param, "is_flag", False):
        return [draw(st.sampled_from(param.opts + param.secondary_opts))]
    values = VALUES_BY_NAME.get(param.name)
    if values is None:
        values = VALUES_BY_TYPE.get(_annotation(param), VALUES_BY_TYPE[str])
    return [param.opts[0], *draw(values)]


@st.composite
def command_lines(draw, scenario: str | None = None, clients: float | None = None,
                  commands: tuple[str, ...] = tuple(sorted(COMMANDS)), max_options: int = 4) -> list[str]:
    """A command, its argument and some of its options, with small-run options first and, for a
    command that sends, an input that stops it before it sends."""
    command = draw(st.sampled_from(commands))
    params = [p for p in COMMANDS[command].params if p.name not in NEVER]
    argv = [command]
    for param in [p for p in params if not p.opts[0].startswith("-")]:
        if param.name == "files":
            argv += [scenario] if scenario else draw(VALUES_BY_NAME["files"])
        else:
            arg = scenario or draw(st.sampled_from(SCENARIOS))
            argv.append(arg)
            clients = clients or SCENARIO_CLIENTS.get(arg, 1.0)
    argv += SMALL.get(command, [])
    if any(p.name == "scale" for p in params):
        argv += ["--scale", draw(st.sampled_from([fitted_scale(clients or 1.0)] * 12 + list(BAD_SCALES)))]
    options = [p for p in params if p.opts[0].startswith("-")]
    for param in draw(st.lists(st.sampled_from(options), max_size=max_options)) if options else []:
        argv += option_tokens(param, draw)
    if draw(st.integers(0, 9)) == 0 and max_options > 1:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(GARBAGE)))
    if command in NOTHING_SENT:
        argv += draw(st.sampled_from(NOTHING_SENT[command]))
    return argv


@st.composite
def document_cases(draw) -> Case:
    text, clients = draw(documents())
    argv = draw(command_lines("c/doc.toml", clients, commands=ON_DOCUMENTS, max_options=1))
    return Case(tuple(argv), (("c/doc.toml", text),))


# --- the tests ------------------------------------------------------------------------------

def test_the_harness_sees_a_crash_a_hang_a_memory_hog_and_a_send(driver):
    """The checks can fail: an exception, a call past its bound, an allocation past the memory
    limit and a load test that would start Locust are each caught (and a clean call is not)."""
    Case(("validate", "quickstart")).write(driver.workdir)
    assert failures(driver.call(["validate", "quickstart"]), "validate") == []
    crash = failures(driver.call(["validate", "quickstart"], inject="crash"), "validate")
    assert "an exception escaped: RuntimeError: injected crash" in crash[0]
    hang = failures(driver.call(["validate", "quickstart"], timeout=1, inject="hang"), "validate")
    assert hang[0].startswith("no end within")
    hog = failures(driver.call(["validate", "quickstart"], inject="hog"), "validate")
    assert hog[0].startswith(f"met the {MEMORY_MB} MB memory limit")
    send = driver.call(["loadtest", "quickstart", "--host", "http://127.0.0.1:9", "--credentials", "c/users.csv",
                        "--out", "c/lt", "-q"])
    assert "subprocess.Popen" in failures(send, "loadtest")[0]


@QUICK
@given(case=document_cases())
def test_any_scenario_document_exits_0_or_2_quickly(driver, case):
    check(driver, case)


@QUICK
@given(argv=command_lines())
def test_any_command_line_exits_0_or_2_quickly(driver, argv):
    check(driver, Case(tuple(argv)))


@pytest.mark.slow
@THOROUGH
@given(case=document_cases())
def test_many_scenario_documents(driver, case):
    check(driver, case)


@pytest.mark.slow
@THOROUGH
@given(argv=command_lines())
def test_many_command_lines(driver, argv):
    check(driver, Case(tuple(argv)))
