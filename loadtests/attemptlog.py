"""Raw per-attempt rows, for comparisons with the simulator and for our tests.

Locust's statistics are bucketed and lagged (../shared/research/loadtest-anchors.md item 7), so
with `--attempt-log FILE` every process also writes one CSV row per attempt. In a distributed
run each worker writes its own file, `FILE` with `.wN` before the suffix. Rows hold no
credentials and no tokens.
"""

from __future__ import annotations

import csv
from pathlib import Path

from loadtests.flows import Outcome

__all__ = ["AttemptLog", "COLUMNS", "worker_path"]

COLUMNS = ("device", "episode", "attempt", "start_s", "seconds", "outcome", "status", "retry_after_s",
           "wait_s", "message")


def worker_path(path: str, worker_index: int | None) -> Path:
    """`attempts.csv` -> `attempts.w2.csv` for worker 2; unchanged for a local run."""
    p = Path(path)
    return p if worker_index is None else p.with_name(f"{p.stem}.w{worker_index}{p.suffix}")


class AttemptLog:
    """Appends rows to a CSV file; `start` is story time 0 (epoch seconds)."""

    def __init__(self, path: Path | None) -> None:
        self._file = None
        self._writer = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(COLUMNS)

    def write(self, device: int, episode: int, attempt: int, start: float, seconds: float,
              outcome: Outcome, wait: float | None) -> None:
        if self._writer is None:
            return
        self._writer.writerow((device, episode, attempt, f"{start:.6f}", f"{seconds:.6f}", outcome.kind,
                               outcome.status, "" if outcome.retry_after is None else f"{outcome.retry_after:g}",
                               "" if wait is None else f"{wait:.6f}", outcome.message))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
