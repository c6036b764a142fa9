"""Run the lab server (`python -m loadtests.lab`) as a subprocess for a test, stopped by its PID.

    with running_lab("quickstart", "--set", "server.workers=2") as lab:
        urllib.request.urlopen(lab.url + "/healthz")
        lab.metrics()['loginstorm_lab_logins_total{result="success"}']

The lab listens on a free port (`--port 0`) and names it on its first stdout line; the helper
reads it, waits for `/healthz`, and on exit terminates that process (then kills it if it will
not stop), never anything found by name.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_S = 20.0
STOP_S = 10.0
_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass
class LabProcess:
    url: str
    port: int
    pid: int
    proc: subprocess.Popen = field(repr=False)
    stdout_lines: list[str] = field(repr=False)
    stderr_file: Path = field(repr=False)
    reader: threading.Thread = field(repr=False)

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def metrics(self) -> dict[str, float]:
        """GET /metrics parsed: {"name{labels}": value} (a metric without labels is just its name)."""
        return parse_metrics(self.get("/metrics").decode())

    def metrics_json(self) -> dict:
        return json.loads(self.get("/metrics.json"))

    def stop(self) -> None:
        """Stop the lab now (e.g. to read its complete output inside the `with` block)."""
        _stop(self.proc)
        self.reader.join(timeout=STOP_S)  # all of stdout read

    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@contextmanager
def running_lab(*args: str, env: Mapping[str, str] | None = None) -> Iterator[LabProcess]:
    """Start the lab with these arguments (after `--port 0`); `env` adds to the environment."""
    cmd = [sys.executable, "-m", "loadtests.lab", "--port", "0", *args]
    with tempfile.TemporaryDirectory(prefix="lab-") as tmp:
        stderr_file = Path(tmp) / "stderr.txt"
        with open(stderr_file, "w") as stderr:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                    env={**os.environ, **(env or {})})
        lines: list[str] = []
        first: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc, lines, first), daemon=True)
        reader.start()
        try:
            yield _started(proc, first, lines, stderr_file, reader)
        finally:
            _stop(proc)
            reader.join(timeout=STOP_S)
            proc.stdout.close()


def _read_lines(proc: subprocess.Popen, lines: list[str], first: queue.Queue) -> None:
    for line in proc.stdout:
        if not lines:
            first.put(line)
        lines.append(line)
    first.put(None)  # end of output (the process exited)


def _started(proc: subprocess.Popen, first: queue.Queue, lines: list[str], stderr_file: Path,
             reader: threading.Thread) -> LabProcess:
    deadline = time.monotonic() + STARTUP_S
    try:
        line = first.get(timeout=STARTUP_S)
    except queue.Empty:
        line = None
    match = _LISTENING.search(line or "")
    if match is None:
        raise RuntimeError(f"the lab did not start within {STARTUP_S:g} s (exit status {proc.poll()}); "
                           f"stdout: {line!r}; stderr:\n{stderr_file.read_text(errors='replace')}")
    url = match.group(1)
    lab = LabProcess(url, int(url.rsplit(":", 1)[1]), proc.pid, proc, lines, stderr_file, reader)
    while time.monotonic() < deadline:
        try:
            if lab.get("/healthz", timeout=1.0) == b"ok":
                return lab
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    raise RuntimeError(f"the lab at {url} did not answer /healthz within {STARTUP_S:g} s "
                       f"(exit status {proc.poll()}); stderr:\n{lab.stderr()}")


def _stop(proc: subprocess.Popen) -> None:
    """Terminate this process (by its PID, through its Popen handle); kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_S)
