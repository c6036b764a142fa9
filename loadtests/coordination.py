"""Which device each Locust user plays, and when the story starts, across processes.

Every process builds the same plan; what must be shared is who plays which row and the start
time. A local run counts rows itself. In a distributed run (`--processes N`, or `--master` with
`--worker`s) each worker asks the master, with a custom message, for as many rows as it has
been told to run users (so no row is left with a worker that has no user for it), and the master
answers with the rows and its start time (workers on other machines need synchronised clocks, as
NTP gives).
"""

from __future__ import annotations

import itertools
import time

import gevent.event
from locust.runners import MasterRunner, WorkerRunner

__all__ = ["Rows", "install"]

CLAIM, GRANT = "loginstorm:claim", "loginstorm:rows"
WAIT_S = 30.0


class Rows:
    """Hands out device rows 0, 1, 2, ... of the plan; `start` is story time 0 (epoch seconds)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.start: float | None = None
        self._local = itertools.count()
        self._free: list[int] = []
        self._asked = 0           # worker: rows asked for in this test
        self._granted: gevent.event.Event | None = None
        self._next = 0            # master: the next row to grant
        self.on_grant = None      # worker: called with the master's worker count at each grant

    @property
    def distributed_worker(self) -> bool:
        return isinstance(self.runner, WorkerRunner)

    def begin(self) -> None:
        """A new test: story time starts now (master and local runner); a worker forgets its rows."""
        self.start = None if self.distributed_worker else time.time()
        self._local = itertools.count()
        self._free = []
        self._asked = 0
        self._next = 0

    def claim(self) -> int:
        """The next row for a user of this process (blocks a worker until the master answers)."""
        if not self.distributed_worker:
            if self.start is None:
                self.begin()
            return next(self._local)
        while not self._free:
            if self._granted is None:
                self._granted = gevent.event.Event()
                count = max(1, sum(self.runner.target_user_classes_count.values()) - self._asked)
                self._asked += count
                self.runner.send_message(CLAIM, {"count": count})
            if not self._granted.wait(WAIT_S):
                raise RuntimeError("the master did not grant device rows within 30 s")
        return self._free.pop(0)

    def _on_claim(self, environment, msg, **_) -> None:
        if self.start is None:
            self.begin()
        first = self._next
        self._next += int(msg.data["count"])
        self.runner.send_message(GRANT, {"first": first, "count": int(msg.data["count"]), "start": self.start,
                                         "workers": self.runner.worker_count}, client_id=msg.node_id)

    def _on_grant(self, environment, msg, **_) -> None:
        self.start = float(msg.data["start"])
        if self.on_grant is not None:
            self.on_grant(int(msg.data.get("workers", 1)))
        self._free.extend(range(msg.data["first"], msg.data["first"] + msg.data["count"]))
        granted, self._granted = self._granted, None
        if granted is not None:
            granted.set()


def install(environment) -> Rows:
    """Attach a `Rows` to the environment's runner and register the messages it needs."""
    rows = Rows(environment.runner)
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(CLAIM, rows._on_claim)
    elif isinstance(environment.runner, WorkerRunner):
        environment.runner.register_message(GRANT, rows._on_grant)
    return rows
