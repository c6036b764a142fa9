"""The fast engine compiles once, never twice: `warm_up` takes a lock next to numba's cache, so
processes starting together wait for the first one's compile and then load it."""

from __future__ import annotations

import subprocess
import sys
import time

HOLD = """
import sys, time
from sim.fast.engine import compile_lock
with compile_lock():
    print("holding", flush=True)
    time.sleep(float(sys.argv[1]))
"""
TAKE = """
import time
from sim.fast.engine import compile_lock
started = time.perf_counter()
with compile_lock():
    print(f"{time.perf_counter() - started:.3f}", flush=True)
"""


def test_a_second_process_waits_for_the_compile_lock(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "2.0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "holding"
        waited = float(subprocess.run([sys.executable, "-c", TAKE], capture_output=True, text=True, env=env,
                                      timeout=60, check=True).stdout)
    finally:
        holder.wait(timeout=60)
    assert 1.0 < waited < 30.0  # it waited for the holder (2 s from before the holder's print)
    assert (tmp_path / "compile.lock").exists()
    # free again: the next one takes it at once
    started = time.perf_counter()
    again = float(subprocess.run([sys.executable, "-c", TAKE], capture_output=True, text=True, env=env,
                                 timeout=60, check=True).stdout)
    assert again < 0.5 and time.perf_counter() - started < 30
