"""Raw per-attempt and per-state-change rows, for comparisons with the simulator and for our tests.

Locust's statistics are bucketed and lagged (percentiles rounded to about two significant
digits, its current rate averaged over the window from 12 s to 2 s ago, history percentiles
cumulative since the start; docs/loadtests.md), so with `--attempt-log FILE` every process also
writes one CSV row per attempt, and with `--state-log FILE` one row per change of a device's
state (`offline`, `connecting`, `online`, `gave_up`; a newcomer's first row has an empty
`from`). In a distributed run each worker writes its own files, `FILE` with `.wN` before the
suffix. Times are seconds of story time (the start of the load test); rows hold no credentials
and no tokens.

With a client limiter (`[client.limiter]`, docs/loadtests.md "Limiters and breakers in a load
test") the attempt log has two more kinds of row, neither of them a request: `short_circuited`, a
call the limiter refused locally (nothing was sent; `seconds` 0, `status` 0; it counts toward
`max_attempts` and the policy's delay follows, in `wait_s`), and `suppressed`, a retry the
limiter denied after a failed attempt (the episode ends there; `attempt` is the number the retry
would have had). They are the simulator's `short_circuited` and `suppressed` counters.

The `resume` column is 1 for an attempt sent as a session resumption (docs/model.md section
3.4: `client.resume_window` > 0 and the device held a refresh token younger than it, so the flow
sent the refresh-token grant), else 0; a resumption row with outcome `ok` resumed a session.
They are the simulator's `resumptions` and `resumed` counters. (Logs written before the column
existed read as full logins.)
"""

from __future__ import annotations

import csv
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path

from loadtests.flows import Outcome

__all__ = ["AttemptLog", "StateLog", "COLUMNS", "SHORT_CIRCUITED", "SUPPRESSED", "NOT_SENT", "STATE_COLUMNS",
           "worker_path", "worker_files", "PROGRESS", "STOPPED", "recent_rates", "MISCONFIGURED",
           "MISCONFIGURED_STATUS", "FIRST_ATTEMPTS", "misconfiguration"]

COLUMNS = ("device", "episode", "attempt", "start_s", "seconds", "outcome", "status", "retry_after_s",
           "wait_s", "message", "resume")
STATE_COLUMNS = ("t_s", "device", "from", "to")
#: the `outcome` of an attempt-log row that is not a request: the limiter's (as sim.record.COUNTS names them)
SHORT_CIRCUITED, SUPPRESSED = "short_circuited", "suppressed"
NOT_SENT = frozenset({SHORT_CIRCUITED, SUPPRESSED})
#: with --progress, the master (or local) process prints these lines on stdout, one JSON object
#: after the prefix; `loginstorm loadtest` reads them (this module is gevent-free, so it can import them)
PROGRESS, STOPPED = "loginstorm-progress ", "loginstorm-stopped "

#: the misconfiguration stop: the reason of its `loginstorm-stopped` line starts with MISCONFIGURED
MISCONFIGURED = "misconfigured target: "
#: answers that say the request itself is wrong (path, credentials, flow), unlike 429/503 or a timeout
MISCONFIGURED_STATUS = frozenset({401, 403, 404})
#: how many finished attempts (at most; fewer with fewer devices) the misconfiguration stop looks at
FIRST_ATTEMPTS = 20


def misconfiguration(statuses: Sequence[int], needed: int, path: str, flow: str) -> str | None:
    """Why the run should stop now: the first finished attempts (`statuses`, 0 for no answer, at
    least `needed` of them) all answered 401, 403 or 404. None while fewer are known, or if any did
    not (a success, a refusal, a timeout). The hint names the target's path and flow, no secret.

        >>> print(misconfiguration([404] * 5, 5, "/nope", "json"))    # doctest: +NORMALIZE_WHITESPACE
        misconfigured target: the first 5 attempts all failed with HTTP 404 (5): the path is wrong?
        (target.path '/nope'); --keep-going runs on regardless
        >>> misconfiguration([401] * 4 + [429], 5, "/", "basic") is None, misconfiguration([401] * 4, 5, "/", "basic")
        (True, None)
    """
    if len(statuses) < max(1, needed) or not all(s in MISCONFIGURED_STATUS for s in statuses):
        return None
    counts = Counter(statuses)
    hints = []
    if 404 in counts:
        hints.append(f"the path is wrong? (target.path {path!r})")
    if counts.keys() & {401, 403}:
        hints.append(f"credentials or flow wrong? (--credentials, target.flow {flow!r}, client id/secret)")
    seen = ", ".join(f"{status} ({counts[status]})" for status in sorted(counts))
    return (f"{MISCONFIGURED}the first {len(statuses)} attempts all failed with HTTP {seen}: "
            f"{'; '.join(hints)}; --keep-going runs on regardless")


def recent_rates(samples: deque, span: float = 10.0) -> tuple[float, float]:
    """Attempts/s and failures/s over the last `span` seconds of (t, attempts, failures) samples,
    dropping older ones. (Locust's own current_rps is measured back from the last request, so it
    holds its last value once the attempts stop.)

        >>> recent_rates(deque([(0.0, 0, 0), (1.0, 50, 10), (2.0, 60, 10)]))
        (30.0, 5.0)
        >>> recent_rates(deque([(0.0, 0, 0), (1.0, 50, 10), (12.0, 50, 10)]))    # no attempt since 1 s
        (0.0, 0.0)
    """
    while len(samples) > 2 and samples[1][0] <= samples[-1][0] - span:
        samples.popleft()
    (t0, n0, f0), (t1, n1, f1) = samples[0], samples[-1]
    return ((n1 - n0) / (t1 - t0), (f1 - f0) / (t1 - t0)) if t1 > t0 else (0.0, 0.0)


def worker_path(path: str, worker_index: int | None) -> Path:
    """`attempts.csv` -> `attempts.w2.csv` for worker 2; unchanged for a local run."""
    p = Path(path)
    return p if worker_index is None else p.with_name(f"{p.stem}.w{worker_index}{p.suffix}")


def worker_files(path: Path) -> list[Path]:
    """The files a run with `--attempt-log path` (or `--state-log`) wrote: the local one or the workers'."""
    return sorted(p for p in path.parent.glob(f"{path.stem}*{path.suffix}")
                  if p == path or (p.stem.startswith(path.stem + ".w") and p.stem[len(path.stem) + 2:].isdigit()))


class _CsvLog:
    columns: tuple[str, ...] = ()

    def __init__(self, path: Path | None) -> None:
        self._file = None
        self._writer = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", newline="", encoding="utf-8", buffering=1)   # lines survive a kill
            self._writer = csv.writer(self._file)
            self._writer.writerow(self.columns)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


class AttemptLog(_CsvLog):
    """One row per attempt; `start` in story seconds."""

    columns = COLUMNS

    def write(self, device: int, episode: int, attempt: int, start: float, seconds: float,
              outcome: Outcome, wait: float | None, resume: bool = False) -> None:
        if self._writer is None:
            return
        self._writer.writerow((device, episode, attempt, f"{start:.6f}", f"{seconds:.6f}", outcome.kind,
                               outcome.status, "" if outcome.retry_after is None else f"{outcome.retry_after:g}",
                               "" if wait is None else f"{wait:.6f}", outcome.message, int(resume)))


class StateLog(_CsvLog):
    """One row per change of a device's state, in story seconds."""

    columns = STATE_COLUMNS

    def write(self, t: float, device: int, old: str, new: str) -> None:
        if self._writer is not None:
            self._writer.writerow((f"{t:.6f}", device, old, new))
