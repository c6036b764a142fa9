"""Many simulations at once: the one runner behind `compare`, `sweep` and `threshold`.

A batch is a list of `Run`s (a scenario, a seed, an engine); `executor` hands back a function
that runs them here, in a process pool or on a Dask cluster, and passes each `Finished` run to a
callback as it ends (in any order: the key says which run it was). Seeds travel with the runs, so
the numbers never depend on the executor, the number of jobs or the order runs end in.

    >>> from sim.config import load_scenario
    >>> from sim.runner import replication_seeds
    >>> s = load_scenario("scenarios/quickstart.toml")
    >>> runs = [Run(k, s, seed, "des", until=300.0) for k, seed in enumerate(replication_seeds(s.seed, 2))]
    >>> done = {}
    >>> with executor("serial") as run_all:
    ...     run_all(runs, lambda f: done.__setitem__(f.key, f.summary["attempts"]))
    >>> sorted(done)
    [0, 1]

A script that uses a process pool needs the `if __name__ == "__main__":` guard: workers start with
`forkserver` (or `spawn`), which imports the script again.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.runner import run_engine
from sim.scenario import Scenario

__all__ = ["Run", "Finished", "RunAll", "executor", "run_one", "cores", "EXECUTORS"]

#: what `executor` takes besides a Dask scheduler address or a `dask.distributed.Client`
EXECUTORS = ("serial", "process", "local")


@dataclass(frozen=True)
class Run:
    """One simulation of a batch: `key` names it for the caller (a variant and a replication, say)."""

    key: Hashable
    scenario: Scenario
    seed: Any                 # an int or a numpy SeedSequence: the run's generator is default_rng(seed)
    engine: str               # "des" or "fast", already chosen
    until: float | None = None
    series: bool = False      # hand back the time series too (compare draws them; a sweep does not)


@dataclass(frozen=True)
class Finished:
    """What one run produced."""

    key: Hashable
    summary: dict[str, Any]
    timeseries: dict[str, np.ndarray] | None


RunAll = Callable[[list[Run], Callable[[Finished], None]], None]


def run_one(run: Run) -> Finished:
    """Simulate one run; module-level so that a worker process or Dask can unpickle it."""
    result = run_engine(run.engine, run.scenario, until=run.until, rng=np.random.default_rng(run.seed))
    return Finished(run.key, result.summary, result.timeseries if run.series else None)


@contextmanager
def executor(kind: Any = "process", jobs: int | None = None) -> Iterator[RunAll]:
    """A function that runs a batch and hands over each run as it ends; owns the pool or cluster.

    kind: "serial" (here); "process" (a process pool of `jobs` workers, default one per core;
    jobs=1 is serial); "local" (a Dask LocalCluster of `jobs` single-threaded workers); another
    string is a Dask scheduler address; anything else is taken as a `dask.distributed.Client`.
    A failed run, or Ctrl-C, cancels the runs not started yet and raises.
    """
    if kind == "serial" or (kind == "process" and jobs == 1):
        yield _serial
    elif kind == "process":
        with ProcessPoolExecutor(max_workers=jobs or cores(), mp_context=_context()) as pool:
            yield lambda runs, done: _pool(pool, runs, done)
    else:
        with _dask_client(kind, jobs) as client:
            yield lambda runs, done: _dask(client, runs, done)


def cores() -> int:
    """The processors this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _serial(runs: list[Run], done: Callable[[Finished], None]) -> None:
    for run in runs:
        done(run_one(run))


def _pool(pool: ProcessPoolExecutor, runs: list[Run], done: Callable[[Finished], None]) -> None:
    futures = [pool.submit(run_one, run) for run in runs]
    try:
        for future in as_completed(futures):
            done(future.result())
    except BaseException:  # a failed run or Ctrl-C: drop the runs not started yet
        for future in futures:
            future.cancel()
        raise


@contextmanager
def _dask_client(kind: Any, jobs: int | None) -> Iterator[Any]:
    if not isinstance(kind, str):
        yield kind  # a Client the caller owns
        return
    if kind != "local" and ":" not in kind:
        raise ValueError(f"executor must be serial, process, local, a Dask scheduler address such as "
                         f"tcp://10.0.0.5:8786, or a dask.distributed Client; got {kind!r}")
    from dask.distributed import Client, LocalCluster  # only when asked for: an optional weight
    if kind == "local":
        with LocalCluster(n_workers=jobs or cores(), threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
    else:
        with Client(kind) as client:
            yield client


def _dask(client: Any, runs: list[Run], done: Callable[[Finished], None]) -> None:
    from dask.distributed import as_completed as dask_completed
    futures = [client.submit(run_one, run, pure=False) for run in runs]
    try:
        for future in dask_completed(futures):
            done(future.result())
    except BaseException:
        client.cancel(futures)
        raise


def _context() -> multiprocessing.context.BaseContext:
    """forkserver: workers fork from a clean server process, not from this one and its threads
    (a progress bar refreshes from one); the server imports this module (and so the engines) once,
    so later pools start at once. Spawn where there is no forkserver (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context
